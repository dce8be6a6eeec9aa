"""Symmetric InfoNCE with CLIP's learnable temperature, dense or inside `jax.shard_map`.

Every loss in `goal_jax.losses` is written once, for the rows one device holds, and takes an
`axis_name`: `None` means the arrays are the whole batch (single device, or GSPMD under jit);
a mesh axis name means the function runs inside `jax.shard_map` over that axis, and the other
modality is all-gathered (with gradients: the transpose of `all_gather` is a reduce-scatter)
while every mean is a `psum` of sums over a `psum` of counts. The two paths therefore give the
same value and the same gradients, which the tests check on 4 CPU devices.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

# A finite "minus infinity": masked logits vanish from softmax without 0 * inf = NaN in the
# label-smoothing sum, and an all-masked row stays finite (it is excluded from the mean anyway).
_MASKED_LOGIT = -1e9
_NORM_EPS = 1e-12
# Loss matmuls are tiny next to the towers; full fp32 keeps TPU/TF32 defaults from rounding the
# cosines (an error of 1e-3 becomes 0.1 in a logit at scale 100).
PRECISION = jax.lax.Precision.HIGHEST


# What to do with two rows of a batch that are the same pair (`RowIdentity`): InfoNCE's diagonal
# targets make each the other's negative, so identical captions are asked to pick "their own"
# image among copies of themselves (a loss floor of ln k for k copies, and opposing gradients).
# "positive": a row's loss is -log of the total probability of its positives (itself and its
# duplicates), MIL-NCE's multi-positive form (Miech et al., CVPR 2020). Not uniform soft targets
# over the positives (SupCon's L_out): for identical texts their sum over the copies equals the
# plain InfoNCE exactly, floor and gradients included. "mask": duplicates leave the row's
# denominator and the target stays the diagonal; "negative": the papers' InfoNCE.
DUPLICATE_POLICIES = ("positive", "mask", "negative")
_HASH_SEEDS = (0x9E3779B1, 0x7FEB352D)  # two independent 32-bit text keys: a 64-bit key


class RowIdentity(NamedTuple):
  """Who a row of a contrastive problem is: two rows are the same pair when their texts have the
  same token ids (`text_key`) or their images the same id (the record index: a training source
  holds one record per image; a region adds its index)."""
  text: jax.Array   # [n, 2] uint32, `text_key` of the row's token ids
  image: jax.Array  # [n] int32


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: every input bit moves every output bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def text_key(tokens: jax.Array) -> jax.Array:
  """`[..., L]` token ids -> `[..., 2]` uint32: equal for equal rows; two different rows collide
  with probability ~2^-64 (a sum of hashed (position, token) pairs under two seeds), which
  keeps the comparison of every row with every row at 2 numbers, not L."""
  position = jnp.arange(tokens.shape[-1], dtype=jnp.uint32)
  token = tokens.astype(jnp.uint32)
  keys = [jnp.sum(_fmix32(_fmix32(position * jnp.uint32(seed) + jnp.uint32(seed)) ^ token),
                  axis=-1, dtype=jnp.uint32) for seed in _HASH_SEEDS]
  return jnp.stack(keys, axis=-1)


def row_identity(tokens: jax.Array, image_id: jax.Array) -> RowIdentity:
  return RowIdentity(text_key(tokens), image_id.astype(jnp.int32))


def same_pairs(identity: RowIdentity, axis_name: str | None) -> jax.Array:
  """`[n, N]` bool: this device's rows against every row of the global batch (itself included)."""
  text_all, image_all = gather(identity.text, axis_name), gather(identity.image, axis_name)
  same_text = jnp.all(identity.text[:, None, :] == text_all[None, :, :], axis=-1)
  return same_text | (identity.image[:, None] == image_all[None, :])


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / ||x|| with a floor, so a zero vector (empty pooling) has a finite value and gradient."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS))


def temperature(logit_scale: jax.Array, max_scale: float | None = None) -> jax.Array:
  """exp(logit_scale) in fp32, optionally clamped from above (open_clip clamps to 100)."""
  scale = jnp.exp(jnp.asarray(logit_scale, jnp.float32))
  if max_scale is not None:
    scale = jnp.minimum(scale, max_scale)
  return scale


def gather(x: jax.Array, axis_name: str | None) -> jax.Array:
  """All rows of the global batch (identity when not sharded); differentiable."""
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def global_sum(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Sum over this device's values and, when sharded, over all devices."""
  total = jnp.sum(x)
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def row_offset(n_local: int, axis_name: str | None) -> jax.Array:
  """Global index of this device's first row (the label offset of the local rows)."""
  if axis_name is None:
    return jnp.zeros((), jnp.int32)
  return jax.lax.axis_index(axis_name) * n_local


def batch_mean(values: jax.Array, valid: jax.Array | None, axis_name: str | None) -> jax.Array:
  """Mean of per-sample `values` over the valid samples of the global batch; 0 if none is."""
  values = values.astype(jnp.float32)
  if valid is None:
    valid = jnp.ones(values.shape, bool)
  total = global_sum(jnp.where(valid, values, 0.0), axis_name)
  count = global_sum(valid.astype(jnp.float32), axis_name)
  return total / jnp.maximum(count, 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, column_valid: jax.Array | None = None,
                  label_smoothing: float = 0.0, positives: jax.Array | None = None) -> jax.Array:
  """Per-row softmax cross-entropy over the valid columns, as `torch.nn.functional.cross_entropy`.

  Args:
    logits: `[..., R, K]`.
    labels: `[..., R]` int, the target column of each row.
    column_valid: `[..., K]` bool (or `[..., R, K]`: per row); invalid columns leave every
      denominator.
    label_smoothing: torch semantics, spread over the valid columns only.
    positives: `[..., R, K]` bool, each row's positive columns (its label's among them): the
      loss is -log of their total probability, in place of the label's alone.

  Returns:
    `[..., R]` losses (rows are not masked here; callers drop invalid rows in the mean).
  """
  logits = logits.astype(jnp.float32)
  if column_valid is not None and column_valid.ndim < logits.ndim:
    column_valid = jnp.broadcast_to(column_valid[..., None, :], logits.shape)
  if column_valid is not None:
    logits = jnp.where(column_valid, logits, _MASKED_LOGIT)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  if positives is None:
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  else:
    nll = -jax.nn.logsumexp(jnp.where(positives, log_probs, _MASKED_LOGIT), axis=-1)
  if not label_smoothing:
    return nll
  if column_valid is None:
    column_valid = jnp.ones(logits.shape, bool)
  num_classes = jnp.maximum(jnp.sum(column_valid, axis=-1), 1)
  uniform = -jnp.sum(jnp.where(column_valid, log_probs, 0.0), axis=-1) / num_classes
  return (1.0 - label_smoothing) * nll + label_smoothing * uniform


def duplicate_targets(identity: RowIdentity, labels: jax.Array, valid_all: jax.Array,
                      duplicates: str, axis_name: str | None
                      ) -> tuple[jax.Array, jax.Array | None]:
  """(column_valid `[n, N]`, positives `[n, N]` or None) of `duplicates`
  (`DUPLICATE_POLICIES`)."""
  own = labels[:, None] == jnp.arange(valid_all.shape[0])[None, :]
  same = (same_pairs(identity, axis_name) | own) & valid_all[None, :]
  if duplicates == "mask":
    return valid_all[None, :] & (own | ~same), None
  column_valid = jnp.broadcast_to(valid_all[None, :], same.shape)
  if duplicates == "negative":
    return column_valid, None
  return column_valid, same


def infonce_parts(image: jax.Array, text: jax.Array, scale: jax.Array, *,
                  valid: jax.Array | None = None, label_smoothing: float = 0.0,
                  identity: RowIdentity | None = None, duplicates: str = "negative",
                  axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """(sum of both directions' row losses, number of valid pairs), both over the global batch.

  Building block for objectives that average several InfoNCE problems themselves (SAP averages
  one problem per sentence index and must know which ones are empty). `identity` (this device's
  rows) with `duplicates` = "positive" or "mask" treats rows that are the same pair as such
  (`DUPLICATE_POLICIES`); the relation is symmetric, so both directions use the same targets.
  """
  n_local = image.shape[0]
  if valid is None:
    valid = jnp.ones((n_local,), bool)
  valid = valid.astype(bool)
  image_all, text_all, valid_all = (gather(x, axis_name) for x in (image, text, valid))
  labels = row_offset(n_local, axis_name) + jnp.arange(n_local)
  column_valid, positives = valid_all, None
  if identity is not None:
    column_valid, positives = duplicate_targets(identity, labels, valid_all, duplicates,
                                                axis_name)
  image, text, image_all, text_all = (x.astype(jnp.float32)
                                      for x in (image, text, image_all, text_all))
  image_to_text = scale * jnp.matmul(image, text_all.T, precision=PRECISION)
  text_to_image = scale * jnp.matmul(text, image_all.T, precision=PRECISION)
  losses = (cross_entropy(image_to_text, labels, column_valid, label_smoothing, positives)
            + cross_entropy(text_to_image, labels, column_valid, label_smoothing, positives))
  total = global_sum(jnp.where(valid, losses, 0.0), axis_name)
  count = global_sum(valid.astype(jnp.float32), axis_name)
  return total, count


def infonce(image: jax.Array, text: jax.Array, logit_scale: jax.Array, *,
            valid: jax.Array | None = None, label_smoothing: float = 0.0,
            max_scale: float | None = None, axis_name: str | None = None) -> jax.Array:
  """Symmetric CLIP InfoNCE: ½ [CE(image→text) + CE(text→image)], diagonal targets.

  Args:
    image, text: `[n, E]` L2-normalised embeddings (this device's rows when `axis_name` is set).
    logit_scale: log-space temperature parameter; the logits use `exp(logit_scale)`.
    valid: `[n]` bool; invalid (padded) rows leave both denominators and the mean.
    label_smoothing: torch semantics (Long-CLIP uses 0.1; GOAL and MulCLIP 0).
    max_scale: clamp `exp(logit_scale)` to at most this (GOAL: none).
    axis_name: mesh axis to all-gather over when called inside `jax.shard_map`.

  Returns:
    The scalar loss, averaged over the valid pairs of the global batch (0 if there are none).
  """
  scale = temperature(logit_scale, max_scale)
  total, count = infonce_parts(image, text, scale, valid=valid, label_smoothing=label_smoothing,
                               axis_name=axis_name)
  return total / (2.0 * jnp.maximum(count, 1.0))


def data_parallel(fn: Callable[..., Any], mesh: jax.sharding.Mesh | None,
                  axis_name: str = "data") -> Callable[..., Any]:
  """Runs `fn(*batched, axis_name=...)` on batch-sharded arguments, returning replicated results.

  Every leaf of every positional argument is split along its leading (batch) axis over
  `axis_name`; `fn` must reduce to replicated values (the losses here do, via `psum`).
  Parameters (heads, `logit_scale`, calibration modules) are closed over by `fn`. Works inside
  a jitted train step on a mesh with `AxisType.Auto`. With `mesh=None` it calls `fn` densely.
  """
  if mesh is None:
    return functools.partial(fn, axis_name=None)
  num_shards = mesh.shape[axis_name]

  def run(*batched):
    for leaf in jax.tree.leaves(batched):
      if leaf.ndim == 0 or leaf.shape[0] % num_shards:
        raise ValueError(f"data_parallel: a batched input of shape {leaf.shape} cannot be split "
                         f"into {num_shards} shards along mesh axis {axis_name!r}; the global "
                         "batch size must be a multiple of the number of devices")
    sharded = jax.shard_map(functools.partial(fn, axis_name=axis_name), mesh=mesh,
                            in_specs=P(axis_name), out_specs=P())
    return sharded(*batched)

  return run


def resolve_weights(defaults: Mapping[str, float],
                    overrides: Mapping[str, float] | None) -> dict[str, float]:
  """Defaults updated by `overrides`; an unknown term name is an error, not a silent no-op."""
  weights = dict(defaults)
  for name, value in (overrides or {}).items():
    if name not in weights:
      raise ValueError(f"unknown loss term {name!r}; known terms: {sorted(weights)}")
    weights[name] = float(value)
  return weights


def weighted_total(terms: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
  """Σ weight · term over the computed terms (terms with weight 0 are never computed)."""
  return sum((weights[name] * value for name, value in terms.items()), jnp.zeros((), jnp.float32))
