"""RoIAlign on a ViT's patch-token map: how FG-CLIP turns a box into one region feature.

FG-CLIP (Xie et al., ICML 2025; https://github.com/360CVGroup/FG-CLIP, first version,
`fgclip/model/clip_strc/fgclip.py` at commit 0fcea59) calls torchvision's
`roi_align(feature_map, boxes, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1,
aligned=True)` on the `[B, D, G, G]` map of projected patch tokens. Its boxes are fractions of
the (squashed) image that `_denormalize_boxes` multiplies by the map's width (x) and height (y),
hence the spatial scale 1. Here boxes are the same fractions, `(x0, y0, x1, y1)` in [0, 1] of the
model input, and box coordinate `x` lands at grid coordinate `x * W - 0.5` (`aligned=True`: a
patch's centre is at its index, so `[0, 1]` spans the whole grid, `-0.5 .. W - 0.5`).

Sampling follows torchvision's CPU kernel (`roi_align_kernel.cpp`) exactly: each of the
`PH x PW` bins averages `n_h x n_w` bilinear samples at the centres of a regular sub-grid, with
`n = sampling_ratio` or, when `sampling_ratio <= 0` (FG-CLIP's -1), `n = ceil(roi_size / output
size)` per axis; a sample with `y < -1` or `y > H` (likewise x) adds 0 but still counts;
coordinates are clamped at 0 and at `H - 1`. The adaptive count depends on the box, which a
fixed-shape program cannot loop over, but it has a static bound: a box inside the image spans at
most the grid, so `n <= ceil(H / PH)`. We place that many samples and mask those past the box's
own `n`: the same samples, not an approximation. Boxes are therefore clipped to [0, 1] first
(the pipeline's already are; torchvision would not clip one that sticks out).

Bilinear weights and those boundary rules act on each axis separately, so a bin's value is
`sum_r sum_c a[r] b[c] F[r, c] / (n_h n_w)` with `a` the sum over the bin's y-samples of their
1-D weights (`b` likewise over x). One `[R·PH·PW, H·W]` weight matrix per image times the
`[H·W, D]` map computes every box at once: torchvision's samples and weights summed in another
order (equal up to float rounding), with no `[R, samples, 4, D]` gather.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# FG-CLIP's call: one output cell, adaptive sampling, half-pixel alignment.
OUTPUT_SIZE = (1, 1)
SAMPLING_RATIO = -1
ALIGNED = True


def _axis_weights(start: jax.Array, extent: jax.Array, pooled: int, sampling_ratio: int,
                  length: int) -> tuple[jax.Array, jax.Array]:
  """One axis: `[..., pooled, length]` summed sample weights per bin, and samples per bin `[...]`.

  `start`, `extent`: the roi's first grid coordinate and size on this axis (`[...]`, float32).
  """
  bin_size = extent / pooled
  if sampling_ratio > 0:
    count = jnp.full(start.shape, sampling_ratio, jnp.int32)
    bound = sampling_ratio
  else:
    count = jnp.ceil(bin_size).astype(jnp.int32)
    bound = math.ceil(length / pooled)  # a roi inside the map spans at most `length`
  p = jnp.arange(pooled, dtype=jnp.float32)[:, None]
  i = jnp.arange(bound, dtype=jnp.float32)[None, :]
  b = bin_size[..., None, None]
  # torchvision: roi_start + p * bin_size + (i + .5) * bin_size / n, in this order.
  coord = (start[..., None, None] + p * b) + (i + 0.5) * b / jnp.maximum(
      count, 1)[..., None, None].astype(jnp.float32)
  used = (jnp.arange(bound) < count[..., None])[..., None, :]  # [..., 1, bound]
  inside = (coord >= -1.0) & (coord <= length)  # outside: the sample adds 0 (and still counts)
  clamped = jnp.clip(coord, 0.0, length - 1.0)
  rows = jnp.arange(length, dtype=jnp.float32)
  tent = jnp.maximum(0.0, 1.0 - jnp.abs(clamped[..., None] - rows))  # [..., pooled, bound, L]
  weights = jnp.sum(jnp.where((used & inside)[..., None], tent, 0.0), axis=-2)
  return weights, count


def roi_align(features: jax.Array, boxes: jax.Array, output_size: tuple[int, int] = OUTPUT_SIZE,
              sampling_ratio: int = SAMPLING_RATIO, aligned: bool = ALIGNED) -> jax.Array:
  """torchvision's `roi_align` of boxes in [0, 1] on a `[B, H, W, D]` map (module docstring).

  Args:
    features: `[B, H, W, D]` row-major patch tokens (any float dtype; computed in float32, as
      FG-CLIP casts its map to float32 first).
    boxes: `[B, R, 4]` (x0, y0, x1, y1) as fractions of the model input, clipped to [0, 1];
      box `r` of image `b` pools `features[b]`. Not differentiated (data, not parameters).
    output_size: `(PH, PW)` bins per box.
    sampling_ratio: samples per bin and axis; `<= 0`: torchvision's adaptive `ceil(roi / bin)`.
    aligned: torchvision's `aligned` (half-pixel offset; False also floors the roi at 1 cell).

  Returns:
    `[B, R, PH, PW, D]` float32.
  """
  if features.ndim != 4 or boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"roi_align expects features [B, H, W, D] and boxes [B, R, 4], got "
                     f"{features.shape} and {boxes.shape}")
  pooled_h, pooled_w = output_size
  _, height, width, dim = features.shape
  boxes = jnp.clip(jax.lax.stop_gradient(boxes).astype(jnp.float32), 0.0, 1.0)
  offset = 0.5 if aligned else 0.0
  x0, y0 = boxes[..., 0] * width - offset, boxes[..., 1] * height - offset
  x1, y1 = boxes[..., 2] * width - offset, boxes[..., 3] * height - offset
  roi_w, roi_h = x1 - x0, y1 - y0
  if not aligned:  # torchvision's legacy rule: a roi is at least one cell
    roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
  rows, count_h = _axis_weights(y0, roi_h, pooled_h, sampling_ratio, height)  # [B, R, PH, H]
  cols, count_w = _axis_weights(x0, roi_w, pooled_w, sampling_ratio, width)   # [B, R, PW, W]
  count = jnp.maximum(count_h * count_w, 1).astype(jnp.float32)
  weights = rows[:, :, :, None, :, None] * cols[:, :, None, :, None, :]  # [B, R, PH, PW, H, W]
  weights = weights / count[:, :, None, None, None, None]
  batch, regions = boxes.shape[:2]
  flat = weights.reshape(batch, regions * pooled_h * pooled_w, height * width)
  pooled = jnp.einsum("bkn,bnd->bkd", flat,
                      features.astype(jnp.float32).reshape(batch, height * width, dim),
                      precision=jax.lax.Precision.HIGHEST)
  return pooled.reshape(batch, regions, pooled_h, pooled_w, dim)


def region_features(features: jax.Array, boxes: jax.Array) -> jax.Array:
  """FG-CLIP's region feature: `roi_align` to one cell, as released; `[B, R, D]` float32."""
  return roi_align(features, boxes, OUTPUT_SIZE, SAMPLING_RATIO, ALIGNED)[:, :, 0, 0]


def as_grid(tokens: jax.Array) -> jax.Array:
  """`[B, G·G, D]` row-major patch tokens (class token already dropped) as `[B, G, G, D]`."""
  side = math.isqrt(tokens.shape[1])
  if side * side != tokens.shape[1]:
    raise ValueError(f"{tokens.shape[1]} patch tokens do not form a square grid; drop the class "
                     "token first")
  return tokens.reshape(tokens.shape[0], side, side, tokens.shape[2])
