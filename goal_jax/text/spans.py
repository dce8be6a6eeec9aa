"""Sentence -> token span masks over a tokenised long caption (for GOAL's TSL text term).

Layout of a tokenised caption with context L (`ClipTokenizer.__call__`): position 0 is SOT,
caption token t sits at position 1 + t, then EOT. With truncation EOT takes position L - 1, so
only positions 1 .. L - 2 can hold caption tokens. SigLIP's tokenizers have no SOT (their
`caption_start` is 0): caption token t sits at position t and positions 0 .. L - 2 hold them.

Modes:
- `exact` (default): the positions of the caption tokens whose character range overlaps the
  sentence's. A sentence truncated away gets an all-False row (the pipeline drops it from TSL) and
  a partly truncated one keeps its surviving tokens.
- `goal`: the span rule of GOAL's released code, `get_text_tokens_from_segment` in
  https://github.com/PerceptualAI-Lab/GOAL `goal_loss_finetuning.py` (unchanged in the authors'
  later `goal.py`), followed step by step, fallbacks included (`goal_span`). On GOAL's own
  pieces (`--splitter=goal`) it is the exact span shifted by +1 position: the prefix length it
  starts from counts SOT and EOT, so it drops the sentence's first token and takes the token that
  follows, typically the '.' GOAL's splitter cut off (`tests/test_goal_reproduction.py` checks
  this against the official helper). Where the sentence starts at or past position L - 1 (truncated
  away) it pools the last n tokens before position L - 1, other sentences' tokens; the exact
  mode leaves that row empty instead.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from goal_jax.text import tokenizer as tokenizer_lib

MODES = ("exact", "goal")


def _as_ranges(ranges, what: str) -> np.ndarray:
  array = np.asarray(ranges, np.int64).reshape(-1, 2)
  if np.any(array[:, 1] < array[:, 0]):
    bad = int(np.argmax(array[:, 1] < array[:, 0]))
    raise ValueError(f"{what} {bad} has end < start: {tuple(array[bad])}")
  return array


def span_masks(token_offsets: Sequence[tuple[int, int]],
               sentence_offsets: Sequence[tuple[int, int]],
               context_length: int, caption_start: int = 1) -> np.ndarray:
  """Which positions of the tokenised caption belong to each sentence (the `exact` mode).

  Args:
    token_offsets: (start, end) character range of every caption token, untruncated, as returned
      by `ClipTokenizer.encode_with_offsets`. An empty range (start, start), a token holding only
      leading bytes of character `start`, counts as covering that character.
    sentence_offsets: (start, end) character range of each sentence in the same text.
    context_length: L, the tokenised caption's length (SOT and EOT included).
    caption_start: the position of the first caption token (the tokenizer's: CLIP 1, SigLIP 0).

  Returns:
    bool [M, L]; row m marks sentence m's positions; all False if none survive truncation.
  """
  _check_context(context_length, caption_start)
  tokens = _as_ranges(token_offsets, "token")
  sentences = _as_ranges(sentence_offsets, "sentence")
  kept = tokens[:context_length - 1 - caption_start]  # positions caption_start .. L - 2
  token_start = kept[:, 0][None, :]
  token_end = np.maximum(kept[:, 1], kept[:, 0] + 1)[None, :]
  overlaps = (token_start < sentences[:, 1:]) & (token_end > sentences[:, :1])  # [M, T_kept]
  masks = np.zeros((len(sentences), context_length), bool)
  masks[:, caption_start:caption_start + len(kept)] = overlaps
  return masks


def _check_context(context_length: int, caption_start: int = 1) -> None:
  if context_length < caption_start + 2:
    raise ValueError(f"context_length must be >= {caption_start + 2} to hold a caption token, "
                     f"got {context_length}")


def goal_span(caption: str, sentence: str, context_length: int, encode) -> tuple[int, int]:
  """GOAL's `get_text_tokens_from_segment`: the positions [start, end) it pools for `sentence`.

  Step by step as the released code does it (https://github.com/PerceptualAI-Lab/GOAL,
  `goal_loss_finetuning.py`):
  1. collapse whitespace in both texts; split the caption on every '.', strip, drop empty pieces;
  2. the sentence found among the pieces (the first equal one, index k): the prefix is the first
     k pieces joined by ". ", plus ". " when k > 0; not found: the caption before its first
     occurrence (`str.find`);
  3. start = token count of the prefix tokenised with SOT and EOT; n = the sentence's token count
     without them;
  4. start >= L: [max(1, L - 1 - n), L - 1), the last n positions before EOT's; else
     [start, min(start + n, L - 1));
  5. an empty range falls back to [1, min(1 + n, L)).

  Args:
    caption: the long caption, in the normal form the model's ids were made from.
    sentence: the sentence's text (a substring of `caption`).
    context_length: L.
    encode: text -> ids without SOT/EOT, of text already in normal form.
  """
  text = " ".join(caption.split())
  segment = " ".join(sentence.split())
  pieces = [p.strip() for p in text.split(".") if p.strip()]
  if segment in pieces:
    k = pieces.index(segment)
    prefix = ". ".join(pieces[:k]) + (". " if k > 0 else "")
  else:
    found = text.find(segment)
    if found < 0:
      raise ValueError(f"sentence {segment[:60]!r} is not in the caption {text[:60]!r}")
    prefix = text[:found]
  n = len(encode(segment))
  start = len(encode(prefix)) + 2
  if start >= context_length:
    end = context_length - 1
    start = max(1, end - n)
  else:
    end = min(start + n, context_length - 1)
  if end <= start:
    start, end = 1, min(1 + n, context_length)
  return start, end


def goal_span_masks(caption: str, sentence_offsets: Sequence[tuple[int, int]],
                    context_length: int, tokenizer) -> np.ndarray:
  """`goal_span` of every sentence, as bool [M, L] masks."""
  _check_context(context_length)
  sentences = _as_ranges(sentence_offsets, "sentence")
  encode = functools.partial(tokenizer.encode, normalize=False)
  masks = np.zeros((len(sentences), context_length), bool)
  for row, (s, e) in enumerate(sentences):
    start, end = goal_span(caption, caption[s:e], context_length, encode)
    masks[row, start:end] = True
  return masks


def caption_span_masks(caption: str, sentence_offsets: Sequence[tuple[int, int]],
                       context_length: int, mode: str = "exact", tokenizer=None) -> np.ndarray:
  """Span masks of a caption already in normal form, tokenised here (mode: module docstring).

  The masks index `tokenizer(caption, context_length, normalize=False)`: the ids they pool.
  """
  if mode not in MODES:
    raise ValueError(f"unknown span mode {mode!r}; expected one of {MODES}")
  if tokenizer is None:
    tokenizer = tokenizer_lib.get_tokenizer()
  caption_start = tokenizer.caption_start
  if mode == "goal":
    if caption_start != 1:
      raise ValueError("span mode 'goal' reproduces GOAL's rule for CLIP's tokenizer (SOT first); "
                       "use the exact mode with this tokenizer (reproduction=off)")
    return goal_span_masks(caption, sentence_offsets, context_length, tokenizer)
  _, token_offsets = tokenizer.encode_with_offsets(caption)
  return span_masks(token_offsets, sentence_offsets, context_length, caption_start)
