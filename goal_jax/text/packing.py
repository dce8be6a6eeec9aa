"""A pair's short captions packed back to back into rows for a causal text tower.

MulCLIP encodes each pair's summary and up to `max_sentences` sentences at CLIP's 77-token
context: nine rows of 77 tokens at the recipe's eight sentences, for about 190 real tokens on
DOCCI (7.1 sentences of 17 words a caption, counted on GOAL's copy of its test split). FG-CLIP
encodes a summary, 4 region captions and 10 hard negatives of each: 45 rows of 77 for sentences
of about 20 tokens. A causal tower's output at a caption's EOT token depends on that caption's
tokens alone, so the captions can share rows of `width` tokens: each caption's positions count
from 0 at its start and its tokens attend only within it (`segments`), which gives the same
embeddings for a fraction of the work.

Which captions fit: in order (`captions_of`: the summary first), each caption goes on in the
current row, or starts the next one when it does not fit there; once one fits in none of the
`rows`, it and those after it are dropped, as sentences past `max_sentences` are, and `kept`
says which (the trainer logs the dropped ones). With a width of at least the caption context the
summary always fits. Only a causal tower whose embedding is its EOT token's (CLIP's) gives the
same embeddings this way (`Family.causal_text`); SigLIP's text tower attends to its padding and
pools the last position.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

FIELDS = ("short_ids", "short_positions", "short_segments", "short_ends", "short_kept")
# The batch fields of short captions, in the order they are packed, and their field groups.
CAPTIONS = (("summary", "summary"), ("sentences", "sentences"), ("region_text", "regions"),
            ("region_negatives", "regions"))


def captions_of(groups: Iterable[str]) -> tuple[str, ...]:
  """The caption fields a batch of these pipeline field groups packs, in packing order."""
  groups = set(groups)
  return tuple(field for field, group in CAPTIONS if group in groups)


def caption_lengths(ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Tokens of each caption up to and including its EOT (CLIP's largest id, so the first
  maximum, as the text tower finds it); 0 where not `valid`."""
  return np.where(valid, np.argmax(ids, axis=-1) + 1, 0).astype(np.int32)


def place(lengths: np.ndarray, valid: np.ndarray, width: int, rows: int = 1
          ) -> tuple[np.ndarray, np.ndarray]:
  """(starts, kept) `[..., S]`: where in the `rows * width` flat row positions each caption of
  `lengths` starts (0 if not kept), and whether it is kept (module docstring)."""
  lengths, valid = np.asarray(lengths), np.asarray(valid, bool)
  starts = np.zeros(lengths.shape, np.int32)
  kept = np.zeros(lengths.shape, bool)
  for pair in np.ndindex(lengths.shape[:-1]):
    row, used = 0, 0
    for k, (length, ok) in enumerate(zip(lengths[pair], valid[pair])):
      if not ok:
        continue
      if used + length > width:
        row, used = row + 1, 0
        if row == rows or length > width:
          break
      starts[pair + (k,)], kept[pair + (k,)] = row * width + used, True
      used += length
  return starts, kept


def pack(ids: np.ndarray, valid: np.ndarray, width: int, rows: int = 1) -> dict[str, np.ndarray]:
  """Packs captions `ids` `[..., S, L]` (`valid` `[..., S]`) into `rows` rows of `width`.

  Returns the batch fields `short_ids`, `short_positions` (within its caption) and
  `short_segments` (caption k is k + 1, padding 0), each `[..., rows, width]` int32; `short_ends`
  `[..., S]` int32, each kept caption's EOT position in the flattened rows (0 if not kept);
  `short_kept` `[..., S]` bool.
  """
  ids, valid = np.asarray(ids), np.asarray(valid, bool)
  lengths = caption_lengths(ids, valid)
  starts, kept = place(lengths, valid, width, rows)
  shape = (*ids.shape[:-2], rows * width)
  packed_ids, positions, segments = (np.zeros(shape, np.int32) for _ in range(3))
  for index in zip(*np.nonzero(kept)):
    pair, start, length = index[:-1], starts[index], lengths[index]
    packed_ids[pair + (slice(start, start + length),)] = ids[index][:length]
    positions[pair + (slice(start, start + length),)] = np.arange(length)
    segments[pair + (slice(start, start + length),)] = index[-1] + 1
  rows_of = lambda x: x.reshape(*shape[:-1], rows, width)
  return {"short_ids": rows_of(packed_ids), "short_positions": rows_of(positions),
          "short_segments": rows_of(segments),
          "short_ends": np.where(kept, starts + lengths - 1, 0).astype(np.int32),
          "short_kept": kept}


def pack_fields(fields: Mapping[str, np.ndarray], captions: Iterable[str], width: int,
                rows: int = 1) -> dict[str, np.ndarray]:
  """`pack` of the `captions` fields of one example or a batch (`stack_captions`)."""
  return pack(*stack_captions(fields, captions), width, rows)


def stack_captions(fields: Mapping[str, np.ndarray], captions: Iterable[str]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(ids `[..., S, L]`, valid `[..., S]`) of the `captions` fields of one example or a batch
  (`[..., L]` ids each, the leading axes those of `summary`), in order, with their validity
  fields: `sentence_valid`, `region_valid`, `region_negative_valid`; the summary is always
  valid."""
  captions = list(captions)
  lead = np.asarray(fields["summary"]).ndim - 1
  lengths = {np.asarray(fields[c]).shape[-1] for c in captions}
  if len(lengths) != 1:
    raise ValueError(f"packed captions must share one context; {captions} have {lengths}: "
                     "set config.input.region_context to the sentence context")
  ids, valid = [], []
  for name in captions:
    field = np.asarray(fields[name])
    ids.append(field.reshape(*field.shape[:lead], -1, field.shape[-1]))
    valid.append(np.ones(field.shape[:lead] + (1,), bool) if name == "summary" else
                 np.asarray(fields[_VALID[name]], bool).reshape(*field.shape[:lead], -1))
  return np.concatenate(ids, axis=lead), np.concatenate(valid, axis=lead)


_VALID = {"sentences": "sentence_valid", "region_text": "region_valid",
          "region_negatives": "region_negative_valid"}


def unpack(values, fields: Mapping, captions: Iterable[str]) -> dict:
  """Splits `values` `[B, S, ...]` over the packed captions (`short_ends`' order) back into
  each caption field's shape (`[B, M, ...]`, `[B, R, K, ...]`)."""
  out, offset = {}, 0
  for name in captions:
    shape = fields[name].shape[1:-1]  # the captions per pair, without the token axis
    count = int(np.prod(shape, dtype=int))
    part = values[:, offset:offset + count]
    out[name] = part.reshape(part.shape[0], *shape, *part.shape[2:])
    offset += count
  if offset != values.shape[1]:
    raise ValueError(f"{values.shape[1]} packed captions, but {list(captions)} hold {offset}")
  return out
