"""The maths of the visualisations: GOAL's attention map, sentence-conditioned patch maps, overlays.

GOAL's map (its released visualisation script): the last vision block's attention averaged over heads,
CLS row and column removed, averaged over query patches (so each key patch gets the mean attention
it receives), reshaped to the G x G grid, upsampled bicubically to the image size, min-max
normalised, coloured with 'jet' and laid over the image at alpha 0.5.

The sentence map shows what MulCLIP's SAP aggregates for one sentence: the softmax over patches of
cos(sentence embedding, projected patch token) / temperature (`losses.mulclip.patch_weights`, the
weights `aggregate_patches` sums the patches with; here we keep the weights themselves). It uses
the raw projected patches: the token calibration that SAP may apply first is not part of a CLIP
checkpoint.

Bicubic upsampling follows PyTorch's `interpolate(mode="bicubic", align_corners=False)` (the
PyTorch scripts' choice): half-pixel centres, cubic convolution with a = -0.75, edge clamping.
"""
import math
from typing import Sequence

import jax
import matplotlib
import numpy as np

from goal_jax.data import geometry as geometry_lib
from goal_jax.losses import mulclip

CUBIC_A = -0.75


def goal_attention_map(attention: np.ndarray) -> np.ndarray:
  """One image's last-block attention [heads, 1+N, 1+N] -> [G, G] attention each patch receives."""
  attention = np.asarray(attention, np.float64)
  if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
    raise ValueError(f"attention must be [heads, T, T], got {attention.shape}")
  patches = attention.shape[1] - 1
  grid = math.isqrt(patches)
  if grid * grid != patches:
    raise ValueError(f"attention over {attention.shape[1]} tokens is not CLS + a square grid")
  received = attention.mean(axis=0)[1:, 1:].mean(axis=0)
  return received.reshape(grid, grid)


def pool_attention_map(attention: np.ndarray) -> np.ndarray:
  """One image's attention-pooling weights [heads, N] (SigLIP's MAP head: how much of each patch
  the embedding is made of) -> [G, G], heads averaged."""
  attention = np.asarray(attention, np.float64)
  grid = math.isqrt(attention.shape[-1])
  if attention.ndim != 2 or grid * grid != attention.shape[-1]:
    raise ValueError(f"pooling attention must be [heads, G*G], got {attention.shape}")
  return attention.mean(axis=0).reshape(grid, grid)


def attention_map(image_out) -> np.ndarray:
  """[G, G] of one image's vision outputs: the pooling head's attention where the tower pools by
  attention (SigLIP), else GOAL's map of the last block's attention (CLIP, a class token)."""
  if "pool_attention" in image_out:
    return pool_attention_map(image_out["pool_attention"])
  return goal_attention_map(image_out["attention"])


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """Cubic-convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fractions t: [n, 4]."""
  a = CUBIC_A
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] matrix of the 1-D bicubic resize (half-pixel centres, clamped taps)."""
  source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  base = np.floor(source)
  weights = _cubic_weights(source - base)
  matrix = np.zeros((out_size, in_size))
  for tap in range(4):
    index = np.clip(base.astype(np.int64) - 1 + tap, 0, in_size - 1)
    np.add.at(matrix, (np.arange(out_size), index), weights[:, tap])
  return matrix


def bicubic_resize(values: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
  """A 2-D map resized to (height, width) like torch's bicubic `interpolate`."""
  values = np.asarray(values, np.float64)
  rows = _bicubic_matrix(values.shape[0], int(size_hw[0]))
  cols = _bicubic_matrix(values.shape[1], int(size_hw[1]))
  return rows @ values @ cols.T


def min_max(values: np.ndarray) -> np.ndarray:
  """Scaled to [0, 1]; a constant map becomes all zeros."""
  values = np.asarray(values, np.float64)
  low, span = values.min(), np.ptp(values)
  return (values - low) / span if span > 0 else np.zeros_like(values)


def heat_image(values01: np.ndarray, cmap: str = "jet") -> np.ndarray:
  """A [0, 1] map -> uint8 RGB [H, W, 3] through a matplotlib colour map."""
  rgba = matplotlib.colormaps[cmap](np.clip(values01, 0.0, 1.0))
  return np.round(rgba[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """`(1 - alpha) * image + alpha * heat`, uint8 RGB of the same size."""
  if image.shape != heat.shape:
    raise ValueError(f"image {image.shape} and heat map {heat.shape} differ")
  mixed = (1.0 - alpha) * image.astype(np.float64) + alpha * heat.astype(np.float64)
  return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def map_overlay(grid_map: np.ndarray, image: np.ndarray, alpha: float = 0.5,
                cmap: str = "jet") -> np.ndarray:
  """Grid map -> bicubic to the image's size -> min-max -> colour map -> overlay on the image."""
  heat = heat_image(min_max(bicubic_resize(grid_map, image.shape[:2])), cmap)
  return overlay(image, heat, alpha)


def sentence_patch_weights(sentences: np.ndarray, patches: np.ndarray,
                           temperature: float = 0.07) -> np.ndarray:
  """[M, N] softmax over patches of cos(sentence_m, patch_n) / temperature (any input scale).

  SAP's own `mulclip.patch_weights`, run in float64 like the rest of this module's host maths.
  """
  with jax.enable_x64(True):
    sentences, patches = jax.device_put((np.asarray(sentences, np.float64),
                                         np.asarray(patches, np.float64)))
    weights = mulclip.patch_weights(sentences, patches, temperature=temperature, normalize=True)
    return jax.device_get(weights)


def model_view_box(image_hw: Sequence[int], image_size: int,
                   geometry: str) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) of the part of the image the model sees, in image pixels.

  The whole image for `squash`; the central square for `center_crop`. A map over the model's
  grid belongs on this window.
  """
  plan = geometry_lib.resize_plan(image_hw, image_size, geometry)
  scale_y = plan.resized_hw[0] / plan.source_hw[0]
  scale_x = plan.resized_hw[1] / plan.source_hw[1]
  top, left = plan.offset_yx[0] / scale_y, plan.offset_yx[1] / scale_x
  bottom, right = top + image_size / scale_y, left + image_size / scale_x
  h, w = plan.source_hw
  return (max(0, round(left)), max(0, round(top)), min(w, round(right)), min(h, round(bottom)))
