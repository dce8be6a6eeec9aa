"""Random batches of the batch contract's shapes (DESIGN.md), for timing without a data pipeline."""
import numpy as np

from goal_jax.models import clip
from goal_jax.text.tokenizer import EOT_ID, SOT_ID


def random_ids(rng: np.random.Generator, shape: tuple[int, ...], context: int) -> np.ndarray:
  """SOT, random word ids, EOT at a random position in the second half, then 0-padding."""
  ids = rng.integers(1, SOT_ID, size=(*shape, context), dtype=np.int32)
  lengths = rng.integers(context // 2, context + 1, size=shape)
  positions = np.arange(context)
  ids[..., 0] = SOT_ID
  ids = np.where(positions == lengths[..., None] - 1, EOT_ID, ids)
  return np.where(positions < lengths[..., None], ids, 0).astype(np.int32)


def _random_spans(rng, shape, length: int) -> np.ndarray:
  starts = rng.integers(1, length // 2, size=shape)
  ends = starts + rng.integers(1, length // 4, size=shape)
  positions = np.arange(length)
  return (positions >= starts[..., None]) & (positions < ends[..., None])


def _random_boxes(rng, shape, grid: int) -> np.ndarray:
  x0, y0 = rng.integers(0, grid, size=shape), rng.integers(0, grid, size=shape)
  x1, y1 = x0 + rng.integers(1, grid + 1, size=shape), y0 + rng.integers(1, grid + 1, size=shape)
  rows, cols = np.divmod(np.arange(grid * grid), grid)
  return ((cols >= x0[..., None]) & (cols < x1[..., None])
          & (rows >= y0[..., None]) & (rows < y1[..., None]))


def synthetic_batch(c: clip.CLIPConfig, batch: int, sentence_context: int = 77,
                    max_sentences: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
  """Every field of the batch contract (DESIGN.md) but `record_index`, random, fixed shapes."""
  rng = np.random.default_rng(seed)
  size, lc, m = c.image_size, c.context_length, max_sentences
  image = lambda: rng.normal(size=(batch, size, size, 3)).astype(np.float32)
  return {
      "image": image(),
      "text": random_ids(rng, (batch,), lc),
      "summary": random_ids(rng, (batch,), sentence_context),
      "sentences": random_ids(rng, (batch, m), sentence_context),
      "sentence_valid": np.arange(m)[None, :] < rng.integers(1, m + 1, size=(batch, 1)),
      "span_mask": _random_spans(rng, (batch, m), lc),
      "patch_mask": _random_boxes(rng, (batch, m), c.grid_size),
      "local_image": image(),
      "local_text": random_ids(rng, (batch,), lc),
      "local_span_mask": _random_spans(rng, (batch,), lc),
      "local_patch_mask": _random_boxes(rng, (batch,), c.grid_size),
      "local_valid": np.ones((batch,), bool),
  }
