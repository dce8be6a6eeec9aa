"""Long text context: Long-CLIP knowledge-preserved stretching and a frozen-prefix transform.

Long-CLIP (Zhang et al., ECCV 2024) found that CLIP's first ~20 text positions are well trained
and the rest barely are, so it keeps the first 20 rows of the 77-row table and linearly
interpolates the others 4x (77 -> 248), extrapolating the last few rows. GOAL trains the stretched
table as one parameter; Long-CLIP/FineLIP keep the first 20 rows frozen. Both are offered here.
"""
from typing import Any, Sequence

import jax
import numpy as np
import optax

LONGCLIP_KEEP = 20
TEXT_POSITIONS_PATH = ("text", "positional_embedding")  # CLIP: [L, D]
SIGLIP_TEXT_POSITIONS_PATH = ("txt", "pos_embedding")  # SigLIP (big_vision's names): [1, L, D]
TEXT_POSITIONS_PATHS = (TEXT_POSITIONS_PATH, SIGLIP_TEXT_POSITIONS_PATH)
# SigLIP's 64 positions stretched as Long-CLIP stretches CLIP's 77: keep 20, 4 target rows per
# source row after them, 20 + 44 x 4 = 196 (the length FG-CLIP 2 trains SigLIP 2 at).
SIGLIP_LONG_CONTEXT = 196


def source_positions(length: int, target_length: int, keep: int = LONGCLIP_KEEP) -> np.ndarray:
  """Fractional source row for each target row: identity below `keep`, then a uniform stretch.

  Row j >= keep reads position keep + (j - keep) * (length - keep) / (target_length - keep), so
  77 -> 248 (keep 20) gives exactly 4 target rows per source row, as in Long-CLIP.
  """
  if not 0 <= keep < length or target_length <= keep:
    raise ValueError(f"cannot stretch {length} positions to {target_length} keeping {keep}")
  rows = np.arange(target_length, dtype=np.float64)
  ratio = (length - keep) / (target_length - keep)
  return np.where(rows < keep, rows, keep + (rows - keep) * ratio)


def stretch_positions(table: Any, target_length: int, keep: int = LONGCLIP_KEEP) -> np.ndarray:
  """Stretches a [length, D] position table to [target_length, D].

  Linear interpolation between neighbouring source rows, and linear extrapolation along the last
  segment (rows length-2 -> length-1) past the end of the table; for 77 -> 248 this is exactly
  Long-CLIP's E'[20+4i+k] = (1-k/4) E[20+i] + (k/4) E[21+i] and
  E'[244+k] = E[76] + k/4 (E[76] - E[75]).
  """
  table = np.asarray(table)
  length = table.shape[0]
  positions = source_positions(length, target_length, keep)
  # The lower row of each segment; the last segment also serves extrapolation.
  lower = np.clip(np.floor(positions).astype(np.int64), 0, length - 2)
  frac = (positions - lower)[:, None]
  work = table.astype(np.float64)
  out = (1.0 - frac) * work[lower] + frac * work[lower + 1]
  return out.astype(table.dtype)


def text_positions_path(params: dict) -> tuple[str, str]:
  """Where the text position table is in `params` (CLIP's or SigLIP's names)."""
  for tower, name in TEXT_POSITIONS_PATHS:
    if name in params.get(tower, {}):
      return tower, name
  raise ValueError(f"no text position table in params (looked for "
                   f"{', '.join('/'.join(p) for p in TEXT_POSITIONS_PATHS)})")


def stretch_text_positions(params: dict, context_length: int, keep: int = LONGCLIP_KEEP) -> dict:
  """Params whose text position table is stretched to `context_length` rows (CLIP's `[L, D]`
  table or SigLIP's `[1, L, D]`).

  Conversion (`convert --text_context`) and the trainer (a checkpoint of another context) both
  stretch here. New `params` and tower dicts; the other leaves are shared, not copied.
  """
  tower, name = text_positions_path(params)
  table = np.asarray(params[tower][name])
  stretched = stretch_positions(table.reshape(table.shape[-2:]), context_length, keep)
  text = {**params[tower], name: stretched.reshape(*table.shape[:-2], *stretched.shape)}
  return {**params, tower: text}


def merge_longclip_positions(table: Any, residual: Any, keep: int = LONGCLIP_KEEP) -> np.ndarray:
  """One table from Long-CLIP's pair: rows < keep from `table`, the rest from `residual`.

  Long-CLIP's forward adds `table * mask1 + residual * mask2` with mask1 = the first `keep` rows.
  """
  table, residual = np.asarray(table), np.asarray(residual)
  if table.shape != residual.shape:
    raise ValueError(f"positional_embedding {table.shape} and positional_embedding_res "
                     f"{residual.shape} differ in shape")
  return np.concatenate([table[:keep], residual[keep:]], axis=0)


def _path_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


POSITION_MODES = ("kps", "kps_frozen_prefix")


def optimizer_transforms(mode: str, frozen_prefix: int) -> list[optax.GradientTransformation]:
  """What the optimizer chains after itself for the stretched table (`config.model.positions`):
  `kps` trains it as one table (GOAL), `kps_frozen_prefix` keeps its first `frozen_prefix` rows
  (Long-CLIP, FineLIP)."""
  if mode == "kps_frozen_prefix":
    return [freeze_position_prefix(frozen_prefix)]
  if mode != "kps":
    raise ValueError(f"config.model.positions={mode!r}: use 'kps' (one trainable table, GOAL) "
                     "or 'kps_frozen_prefix' (Long-CLIP/FineLIP)")
  return []


def freeze_position_prefix(
    keep: int = LONGCLIP_KEEP,
    path: Sequence[str] | None = None) -> optax.GradientTransformation:
  """Zeroes the updates of the first `keep` rows of the text position table (Long-CLIP's freeze).

  Chain it *after* the optimiser (`optax.chain(optax.adamw(...), freeze_position_prefix())`) so
  that weight decay, which adamw folds into its updates, is zeroed too and the rows never move.
  The table is found by the suffix `path` of its tree path (works with or without a 'params'
  root); None: CLIP's or SigLIP's. Rows are the second-to-last axis (SigLIP's table is
  `[1, L, D]`).
  """
  paths = TEXT_POSITIONS_PATHS if path is None else (tuple(path),)

  def update_fn(updates, state, params=None):
    del params
    found = []

    def freeze(leaf_path, update):
      names = _path_names(leaf_path)
      if not any(names[-len(p):] == p for p in paths):
        return update
      found.append(names)
      return update.at[..., :keep, :].set(0)

    updates = jax.tree_util.tree_map_with_path(freeze, updates)
    if not found:
      raise ValueError("freeze_position_prefix: no parameter whose path ends with "
                       f"{' or '.join('/'.join(p) for p in paths)}")
    return updates, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
