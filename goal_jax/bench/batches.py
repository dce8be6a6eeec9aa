"""Random batches of the batch contract's shapes (DESIGN.md), for timing without a data pipeline."""
import numpy as np

from goal_jax.text import packing as text_packing
from goal_jax.text import tokenizer as text_tokenizer
from goal_jax.text.tokenizer import EOT_ID, SOT_ID


def random_ids(rng: np.random.Generator, shape: tuple[int, ...], context: int,
               vocab_size: int = EOT_ID + 1, lengths: np.ndarray | None = None) -> np.ndarray:
  """SOT, random word ids, EOT at a random position in the second half (or at `lengths` - 1),
  then 0-padding; for a vocabulary without CLIP's ids (SigLIP's), random ids then EOS (1) to
  the end (sticky EOS)."""
  if lengths is None:
    lengths = rng.integers(context // 2, context + 1, size=shape)
  positions = np.arange(context)
  if vocab_size <= EOT_ID:
    ids = rng.integers(2, vocab_size, size=(*shape, context), dtype=np.int32)
    return np.where(positions < lengths[..., None] - 1, ids, 1).astype(np.int32)
  ids = rng.integers(1, SOT_ID, size=(*shape, context), dtype=np.int32)
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


def _random_fraction_boxes(rng, shape) -> np.ndarray:
  """`[..., 4]` (x0, y0, x1, y1) fractions of the image with x0 < x1, y0 < y1."""
  corners = np.sort(rng.uniform(size=(*shape, 2, 2)), axis=-2)  # [..., (min, max), (x, y)]
  corners[..., 1, :] = np.maximum(corners[..., 1, :], corners[..., 0, :] + 1e-3)
  return np.minimum(corners.reshape(*shape, 4), 1.0).astype(np.float32)


def sentence_lengths(rng: np.random.Generator, shape: tuple[int, ...], context: int
                     ) -> np.ndarray:
  """Tokens of a sentence with its SOT and EOT, about as DOCCI's: its captions have 17 words a
  sentence on average (123 words in 7.1 sentences, GOAL's copy of the test split), ~1.2 CLIP
  tokens a word; lognormal around 22, at most `context`."""
  return np.clip(np.round(rng.lognormal(np.log(22), 0.35, size=shape)), 4, context).astype(int)


def synthetic_batch(c, batch: int, sentence_context: int = 77,
                    max_sentences: int = 8, seed: int = 0, max_regions: int = 4,
                    region_context: int | None = None,
                    hard_negatives: int = 10, pixels: bool = False,
                    short_text_packing: int = 0, short_text_rows: int = 1,
                    packed_captions: tuple[str, ...] = ("summary", "sentences"),
                    local_context: int = 0) -> dict[str, np.ndarray]:
  """Every field of the batch contract (DESIGN.md) but `record_index`, random, fixed shapes;
  the short captions and the local sentence of sentence-like lengths (`sentence_lengths`), the
  `packed_captions` packed in `short_text_rows` rows of `short_text_packing` tokens when it is
  set, the local sentence cut to `local_context` when it is set (as the pipeline does); the
  region captions and hard negatives at
  `region_context` (default `sentence_context`); images as uint8 `pixels`
  (`normalize_on="device"`, the recipes') or as normalised floats."""
  rng = np.random.default_rng(seed)
  size, lc, m = c.image_size, c.context_length, max_sentences
  r, k, lr = max_regions, hard_negatives, region_context or sentence_context
  shape = (batch, size, size, 3)
  image = ((lambda: rng.integers(0, 256, size=shape, dtype=np.uint8)) if pixels
           else (lambda: rng.normal(size=shape).astype(np.float32)))
  ids = lambda shape, context: random_ids(rng, shape, context, c.vocab_size)
  short = lambda shape: random_ids(rng, shape, sentence_context, c.vocab_size,
                                   sentence_lengths(rng, shape, sentence_context))
  region_valid = np.arange(r)[None, :] < rng.integers(1, r + 1, size=(batch, 1))
  out = {
      "image": image(),
      "text": ids((batch,), lc),
      "summary": short((batch,)),
      "sentences": short((batch, m)),
      "sentence_valid": np.arange(m)[None, :] < rng.integers(1, m + 1, size=(batch, 1)),
      "span_mask": _random_spans(rng, (batch, m), lc),
      "patch_mask": _random_boxes(rng, (batch, m), c.grid_size),
      "local_image": image(),
      "local_text": random_ids(rng, (batch,), lc, c.vocab_size,
                               sentence_lengths(rng, (batch,), lc)),
      "local_span_mask": _random_spans(rng, (batch,), lc),
      "local_patch_mask": _random_boxes(rng, (batch,), c.grid_size),
      "local_valid": np.ones((batch,), bool),
      "region_box": _random_fraction_boxes(rng, (batch, r)),
      "region_text": random_ids(rng, (batch, r), lr, c.vocab_size,
                                sentence_lengths(rng, (batch, r), lr)),
      "region_valid": region_valid,
      "region_negatives": random_ids(rng, (batch, r, k), lr, c.vocab_size,
                                     sentence_lengths(rng, (batch, r, k), lr)),
      "region_negative_valid": region_valid[..., None] & (
          np.arange(k) < rng.integers(0, k + 1, size=(batch, r, 1))),
  }
  if local_context and local_context < lc:
    out["local_text"], out["local_text_truncated"] = text_tokenizer.shorten(out["local_text"],
                                                                            local_context)
  if short_text_packing:
    out.update(text_packing.pack_fields(out, packed_captions, short_text_packing,
                                        short_text_rows))
  return out
