"""RoIAlign against a numpy transcription of torchvision's CPU kernel (`roi_align_kernel.cpp`):
one loop per bin and sample, its boundary rules and its float32 arithmetic."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax.models import roi_align

F32 = np.float32


def _bilinear(feature, y, x):
  """torchvision's `bilinear_interpolate` (pre-computed weights, same rules) at one point."""
  height, width = feature.shape[:2]
  if y < -1.0 or y > height or x < -1.0 or x > width:
    return np.zeros(feature.shape[-1], F32)
  y, x = max(y, F32(0)), max(x, F32(0))
  y_low, x_low = int(y), int(x)
  if y_low >= height - 1:
    y_high = y_low = height - 1
    y = F32(y_low)
  else:
    y_high = y_low + 1
  if x_low >= width - 1:
    x_high = x_low = width - 1
    x = F32(x_low)
  else:
    x_high = x_low + 1
  ly, lx = F32(y - y_low), F32(x - x_low)
  hy, hx = F32(1 - ly), F32(1 - lx)
  return (hy * hx * feature[y_low, x_low] + hy * lx * feature[y_low, x_high]
          + ly * hx * feature[y_high, x_low] + ly * lx * feature[y_high, x_high])


def reference(features, boxes, output_size=(1, 1), sampling_ratio=-1, aligned=True):
  """`torchvision.ops.roi_align` with FG-CLIP's boxes: fractions times the map's width/height,
  spatial_scale 1 (`_denormalize_boxes`). features `[B, H, W, D]`, boxes `[B, R, 4]`."""
  features, boxes = np.asarray(features, F32), np.asarray(boxes, F32)
  batch, height, width, dim = features.shape
  pooled_h, pooled_w = output_size
  out = np.zeros((batch, boxes.shape[1], pooled_h, pooled_w, dim), F32)
  offset = F32(0.5 if aligned else 0.0)
  for b in range(batch):
    for r, (x0, y0, x1, y1) in enumerate(boxes[b]):
      start_w, start_h = F32(x0 * F32(width)) - offset, F32(y0 * F32(height)) - offset
      end_w, end_h = F32(x1 * F32(width)) - offset, F32(y1 * F32(height)) - offset
      roi_w, roi_h = F32(end_w - start_w), F32(end_h - start_h)
      if not aligned:
        roi_w, roi_h = max(roi_w, F32(1)), max(roi_h, F32(1))
      bin_h, bin_w = F32(roi_h / F32(pooled_h)), F32(roi_w / F32(pooled_w))
      grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / F32(pooled_h))
      grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / F32(pooled_w))
      count = F32(max(grid_h * grid_w, 1))
      for ph in range(pooled_h):
        for pw in range(pooled_w):
          total = np.zeros(dim, F32)
          for iy in range(grid_h):
            y = F32(start_h + F32(ph) * bin_h) + F32(F32(iy + 0.5) * bin_h / F32(grid_h))
            for ix in range(grid_w):
              x = F32(start_w + F32(pw) * bin_w) + F32(F32(ix + 0.5) * bin_w / F32(grid_w))
              total += _bilinear(features[b], y, x)
          out[b, r, ph, pw] = total / count
  return out


BOXES = np.array([[
    [0.0, 0.0, 1.0, 1.0],          # the whole image: 7 x 7 samples on a 7 x 7 map
    [0.30, 0.41, 0.36, 0.47],      # smaller than one patch (0.42 x 0.42 cells): one sample
    [0.0, 0.55, 0.13, 1.0],        # on the left and bottom borders: samples clamped at 0, H - 1
    [0.5, 0.5, 0.5, 0.9],          # zero width: no sample on x, so 0
], [
    [0.93, 0.0, 1.0, 0.07],        # top-right corner, under half a patch from the edges
    [0.1, 0.2, 0.9, 0.35],         # wide and flat: 6 x 2 samples
    [0.25, 0.25, 0.75, 0.75],      # the centre: 4 x 4 samples
    [0.0, 0.0, 0.02, 1.0],         # a sliver on the left edge: grid x < 0 throughout
]], F32)


def _features(seed=0, shape=(2, 7, 7, 5)):
  return np.random.default_rng(seed).normal(size=shape).astype(F32)


def test_fgclip_region_feature_matches_torchvision_kernel():
  features = _features()
  got = jax.jit(roi_align.region_features)(features, BOXES)
  want = reference(features, BOXES)[:, :, 0, 0]
  assert got.shape == (2, 4, 5) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # The zero-width box takes no sample (count floored at 1): exactly 0, as torchvision.
  np.testing.assert_array_equal(got[0, 3], 0.0)


def test_whole_image_box_on_a_constant_map_is_that_constant():
  """Every sample of the whole-image box is inside: the mean of a constant map is the constant."""
  features = np.full((1, 7, 7, 3), 2.5, F32)
  got = roi_align.region_features(features, BOXES[:1, :1])
  np.testing.assert_allclose(got, 2.5, rtol=1e-6)


@pytest.mark.parametrize("output_size,sampling_ratio,aligned", [
    ((2, 2), -1, True), ((3, 2), -1, True), ((2, 2), 2, True), ((1, 1), 3, False),
    ((2, 3), -1, False)])
def test_general_output_sizes_and_sampling(output_size, sampling_ratio, aligned):
  features = _features(1, (2, 6, 8, 3))  # H != W: y scales by 6, x by 8
  fn = jax.jit(lambda f, b: roi_align.roi_align(f, b, output_size, sampling_ratio, aligned))
  np.testing.assert_allclose(fn(features, BOXES),
                             reference(features, BOXES, output_size, sampling_ratio, aligned),
                             rtol=1e-5, atol=1e-6)


def test_random_boxes_on_a_vit_b16_grid():
  rng = np.random.default_rng(3)
  corners = np.sort(rng.uniform(0, 1, (3, 6, 2, 2)), axis=2)  # [B, R, (lo, hi), (x, y)]
  boxes = np.concatenate([corners[:, :, 0], corners[:, :, 1]], axis=-1).astype(F32)
  features = _features(2, (3, 14, 14, 4))
  np.testing.assert_allclose(roi_align.region_features(features, boxes),
                             reference(features, boxes)[:, :, 0, 0], rtol=1e-5, atol=1e-6)


def test_gradients_are_finite_and_match_the_pooling_weights():
  """The output is linear in the map: d sum(out) / d F is each cell's total weight, finite for
  every box (the empty one included)."""
  features = _features(4)
  grad = jax.grad(lambda f: jnp.sum(roi_align.region_features(f, BOXES)))(features)
  assert np.isfinite(grad).all()
  # Reference gradient: the kernel applied to one-hot maps (linearity), summed over boxes.
  probe = np.zeros((2, 7, 7, 49), F32)
  probe[:, np.arange(7).repeat(7), np.tile(np.arange(7), 7), np.arange(49)] = 1.0
  cell_weights = reference(probe, BOXES)[:, :, 0, 0].sum(axis=1).reshape(2, 7, 7)
  np.testing.assert_allclose(grad, np.broadcast_to(cell_weights[..., None], grad.shape),
                             rtol=1e-5, atol=1e-6)


def test_boxes_outside_the_image_are_clipped_and_shapes_checked():
  features = _features(5)
  outside = np.array([[[-0.2, -0.1, 1.3, 1.0]] * 4] * 2, F32)
  np.testing.assert_allclose(roi_align.region_features(features, outside),
                             roi_align.region_features(features, np.clip(outside, 0, 1)))
  with pytest.raises(ValueError, match=r"boxes \[B, R, 4\]"):
    roi_align.roi_align(features, outside[0])


def test_as_grid_is_row_major():
  tokens = np.arange(2 * 9 * 1, dtype=F32).reshape(2, 9, 1)
  grid = roi_align.as_grid(tokens)
  assert grid.shape == (2, 3, 3, 1) and grid[1, 2, 0, 0] == 9 + 6
  with pytest.raises(ValueError, match="class token"):
    roi_align.as_grid(np.zeros((1, 10, 1), F32))
