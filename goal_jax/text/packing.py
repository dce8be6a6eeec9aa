"""A pair's short captions packed back to back into one row for a causal text tower.

MulCLIP encodes each pair's summary and up to `max_sentences` sentences at CLIP's 77-token
context: nine rows of 77 tokens at the recipe's eight sentences, for about 190 real tokens on
DOCCI (7.1 sentences of 17 words a caption, counted on GOAL's copy of its test split). A causal
tower's output at a caption's EOT token depends on that caption's tokens alone, so the captions
can share one row of `width` tokens: each caption's positions count from 0 at its start and its
tokens attend only within it (`segments`), which gives the same embeddings for a fraction of the
work (the row's length instead of nine times 77).

Which captions fit: in order, the summary first, a caption is kept while the row's tokens so
far and its own fit in `width`; those after it are dropped, as sentences past `max_sentences`
are, and `kept` says which (the trainer logs the dropped sentences, `short_text/dropped`). A
width of at least the sentence context always keeps the summary. Only a causal tower whose
embedding is its EOT token's (CLIP's) gives the same embeddings this way; SigLIP's text tower
attends to its padding and pools the last position.
"""
from __future__ import annotations

import numpy as np

FIELDS = ("short_ids", "short_positions", "short_segments", "short_ends", "short_kept")


def caption_lengths(ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Tokens of each caption up to and including its EOT (CLIP's largest id, so the first
  maximum, as the text tower finds it); 0 where not `valid`."""
  return np.where(valid, np.argmax(ids, axis=-1) + 1, 0).astype(np.int32)


def kept_captions(lengths: np.ndarray, valid: np.ndarray, width: int) -> np.ndarray:
  """Which captions of `lengths` `[..., S]` a row of `width` keeps: a prefix, as the sums only
  grow."""
  return np.asarray(valid, bool) & (np.cumsum(lengths, axis=-1) <= width)


def pack(ids: np.ndarray, valid: np.ndarray, width: int) -> dict[str, np.ndarray]:
  """Packs captions `ids` `[..., S, L]` (`valid` `[..., S]`) into rows `[..., width]`.

  Returns the batch fields `short_ids`, `short_positions` (within its caption) and
  `short_segments` (caption k is k + 1, padding 0), each `[..., width]` int32; `short_ends`
  `[..., S]` int32, the row position of each kept caption's EOT (0 if not kept); `short_kept`
  `[..., S]` bool.
  """
  ids, valid = np.asarray(ids), np.asarray(valid, bool)
  num, length = ids.shape[-2:]
  lengths = caption_lengths(ids, valid)
  kept = kept_captions(lengths, valid, width)
  lengths = np.where(kept, lengths, 0)
  stops = np.cumsum(lengths, axis=-1)
  starts = stops - lengths
  position = np.arange(width)
  # The caption holding row position p is the number of captions that end at or before p.
  caption = np.sum(stops[..., None, :] <= position[:, None], axis=-1)  # [..., width]; num: none
  inside = caption < num
  held = np.minimum(caption, num - 1)
  offset = position - np.take_along_axis(starts, held, axis=-1)
  token = np.take_along_axis(ids.reshape(*ids.shape[:-2], num * length),
                             held * length + np.clip(offset, 0, length - 1), axis=-1)
  return {"short_ids": np.where(inside, token, 0).astype(np.int32),
          "short_positions": np.where(inside, offset, 0).astype(np.int32),
          "short_segments": np.where(inside, caption + 1, 0).astype(np.int32),
          "short_ends": np.where(kept, stops - 1, 0).astype(np.int32),
          "short_kept": kept}
