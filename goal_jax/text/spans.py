"""Sentence -> token span masks over a tokenised long caption (for GOAL's TSL text term).

Layout of a tokenised caption with context L (`ClipTokenizer.__call__`): position 0 is SOT,
caption token t sits at position 1 + t, then EOT. With truncation EOT takes position L - 1, so
only positions 1 .. L - 2 can hold caption tokens.

Modes:
- `exact`: the positions of the caption tokens whose character range overlaps the sentence's.
- `goal`: GOAL's released code (`get_text_tokens_from_segment`), reproduced. It takes as start the
  token count of the caption prefix tokenised *with* SOT and EOT, one more than the sentence's real
  first position, and keeps as many tokens as the sentence has: the exact span shifted by +1
  position. So it drops the sentence's first token and includes the token that follows it,
  typically the '.' that GOAL's splitter cut off (or EOT, for a last sentence with no period).
  The research notes (goal.md §1.5) measured this +1 shift on 100 % of 1,091 DCI sentences.
  Like GOAL, the shifted span stops at position L - 2. Unlike GOAL, a span left empty is
  all-False (the pipeline marks the sentence invalid); GOAL then falls back to other tokens (the
  last n before L - 1 when the sentence starts at or after L, else positions 1 .. n).

In both modes a sentence truncated away gets an all-False row and a partly truncated one keeps
its surviving tokens.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

MODES = ("exact", "goal")


def _as_ranges(ranges, what: str) -> np.ndarray:
  array = np.asarray(ranges, np.int64).reshape(-1, 2)
  if np.any(array[:, 1] < array[:, 0]):
    bad = int(np.argmax(array[:, 1] < array[:, 0]))
    raise ValueError(f"{what} {bad} has end < start: {tuple(array[bad])}")
  return array


def span_masks(token_offsets: Sequence[tuple[int, int]],
               sentence_offsets: Sequence[tuple[int, int]],
               context_length: int, mode: str = "exact") -> np.ndarray:
  """Which positions of the tokenised caption belong to each sentence.

  Args:
    token_offsets: (start, end) character range of every caption token, untruncated, as returned
      by `ClipTokenizer.encode_with_offsets`. An empty range (start, start), a token holding only
      leading bytes of character `start`, counts as covering that character.
    sentence_offsets: (start, end) character range of each sentence in the same text.
    context_length: L, the tokenised caption's length (SOT and EOT included).
    mode: "exact" or "goal" (module docstring).

  Returns:
    bool [M, L]; row m marks sentence m's positions; all False if none survive truncation.
  """
  if mode not in MODES:
    raise ValueError(f"unknown span mode {mode!r}; expected one of {MODES}")
  if context_length < 3:
    raise ValueError(f"context_length must be >= 3 to hold a caption token, got {context_length}")
  tokens = _as_ranges(token_offsets, "token")
  sentences = _as_ranges(sentence_offsets, "sentence")
  kept = tokens[:context_length - 2]  # Tokens at positions 1 .. L - 2.
  token_start = kept[:, 0][None, :]
  token_end = np.maximum(kept[:, 1], kept[:, 0] + 1)[None, :]
  overlaps = (token_start < sentences[:, 1:]) & (token_end > sentences[:, :1])  # [M, T_kept]
  masks = np.zeros((len(sentences), context_length), bool)
  shift = 1 if mode == "exact" else 2
  width = min(len(kept), context_length - 1 - shift)  # Nothing lands past position L - 2.
  masks[:, shift:shift + width] = overlaps[:, :width]
  return masks


def caption_span_masks(caption: str, sentence_offsets: Sequence[tuple[int, int]],
                       context_length: int, mode: str = "exact", tokenizer=None) -> np.ndarray:
  """`span_masks` for a caption in normal form (`tokenizer.normalize_text`), tokenised here.

  The masks match `tokenizer(caption, context_length, normalize=False)`: the ids it indexes.
  """
  if tokenizer is None:
    from goal_jax.text import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
    tokenizer = tokenizer_lib.get_tokenizer()
  _, token_offsets = tokenizer.encode_with_offsets(caption)
  return span_masks(token_offsets, sentence_offsets, context_length, mode)
