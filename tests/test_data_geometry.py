"""Resize geometry and box -> patch masks, against cases worked out by hand below.

Grids: B/16 at 224 px is 14 x 14 patches, L/14 at 224 px is 16 x 16. The non-square image is
300 high x 600 wide: `center_crop` resizes it to 224 x 448 and cuts columns 112..336, so original x
maps to `x * 448 / 600 - 112` and y to `y * 224 / 300`; `squash` maps x to `x * 224 / 600`.
"""
import numpy as np
import pytest
from PIL import Image

from goal_jax.data import geometry


def _mask(grid, rows, cols):
  """Expected mask from half-open row/col ranges, built independently of the module."""
  out = np.zeros((grid, grid), dtype=bool)
  for r in range(*rows):
    for c in range(*cols):
      out[r, c] = True
  return out.reshape(-1)


B16 = dict(image_size=224, patch_size=16)  # G = 14
L14 = dict(image_size=224, patch_size=14)  # G = 16
WIDE = (300, 600)  # (height, width)

# (box, original_hw, model, geometry, mode, expected rows, expected cols)
CASES = [
    # Square 448 image, box -> (32, 48, 96, 80) in the input; every geometry/mode agrees.
    ((64, 96, 192, 160), (448, 448), B16, "squash", "exact", (3, 5), (2, 6)),
    ((64, 96, 192, 160), (448, 448), B16, "center_crop", "exact", (3, 5), (2, 6)),
    ((64, 96, 192, 160), (448, 448), B16, "squash", "goal", (3, 5), (2, 6)),
    # L/14: cols 32/14=2.29 -> 2 .. 96/14=6.86 -> 7; rows 48/14=3.43 -> 3 .. 80/14=5.71 -> 6.
    ((64, 96, 192, 160), (448, 448), L14, "squash", "exact", (3, 6), (2, 7)),
    ((64, 96, 192, 160), (448, 448), L14, "center_crop", "goal", (3, 6), (2, 7)),
    # Wide image, centre crop, exact: box -> (112, 44.8, 201.6, 112).
    ((300, 60, 420, 150), WIDE, B16, "center_crop", "exact", (2, 7), (7, 13)),
    ((300, 60, 420, 150), WIDE, L14, "center_crop", "exact", (3, 8), (8, 15)),
    # Same box, squash, exact: x -> 112 .. 156.8.
    ((300, 60, 420, 150), WIDE, B16, "squash", "exact", (2, 7), (7, 10)),
    # GOAL's stretch ignores the crop: x1'=112, y1'=round(44.8)=45, x2'=round(156.8)=157, y2'=112.
    ((300, 60, 420, 150), WIDE, B16, "center_crop", "goal", (2, 7), (7, 10)),
    ((300, 60, 420, 150), WIDE, L14, "center_crop", "goal", (3, 8), (8, 12)),
    # Edge-touching box, visible after the crop: x -> 37.33 .. 186.67, y -> 186.67 .. 224.
    ((200, 250, 400, 300), WIDE, B16, "center_crop", "exact", (11, 14), (2, 12)),
    ((200, 250, 400, 300), WIDE, L14, "center_crop", "exact", (13, 16), (2, 14)),
    # Edge-touching on a square image: the last column/row are included and nothing beyond.
    ((200, 0, 224, 224), (224, 224), B16, "squash", "exact", (0, 14), (12, 14)),
    ((200, 0, 224, 224), (224, 224), B16, "squash", "goal", (0, 14), (12, 14)),
    # Left strip of the wide image: cropped away by center_crop, so exact falls back to the patch
    # under its centre (x=-74.7 -> col 0, y=112 -> row 7); GOAL still selects the stretched strip
    # x' in [0, round(37.33)=37) -> cols 0..2.
    ((0, 0, 100, 300), WIDE, B16, "center_crop", "exact", (7, 8), (0, 1)),
    ((0, 0, 100, 300), WIDE, L14, "center_crop", "exact", (8, 9), (0, 1)),
    ((0, 0, 100, 300), WIDE, B16, "center_crop", "goal", (0, 14), (0, 3)),
    # Degenerate point box at input (50, 50): exact falls back to its patch (3, 3); GOAL's rule
    # [50 // 16, ceil(50 / 16)) = [3, 4) already selects one patch.
    ((100, 100, 100, 100), (448, 448), B16, "squash", "exact", (3, 4), (3, 4)),
    ((100, 100, 100, 100), (448, 448), B16, "squash", "goal", (3, 4), (3, 4)),
    ((100, 100, 100, 100), (448, 448), L14, "squash", "exact", (3, 4), (3, 4)),
    # Degenerate on a patch boundary (input 32): GOAL's set [2, 2) is empty -> centre guard (2, 2).
    ((64, 64, 64, 64), (448, 448), B16, "squash", "goal", (2, 3), (2, 3)),
    ((64, 64, 64, 64), (448, 448), B16, "squash", "exact", (2, 3), (2, 3)),
    # Inverted box (x2 < x1): degenerate, centre (40, 40) -> patch (2, 2).
    ((96, 96, 64, 64), (448, 448), B16, "squash", "exact", (2, 3), (2, 3)),
]


@pytest.mark.parametrize("box,hw,model,geom,mode,rows,cols", CASES)
def test_box_to_patch_mask_hand_cases(box, hw, model, geom, mode, rows, cols):
  mask = geometry.box_to_patch_mask(box, hw, geometry=geom, mode=mode, **model)
  grid = model["image_size"] // model["patch_size"]
  assert mask.shape == (grid * grid,) and mask.dtype == bool
  np.testing.assert_array_equal(mask.reshape(grid, grid),
                                _mask(grid, rows, cols).reshape(grid, grid))


def test_stored_copy_gives_same_mask_as_original():
  """A box in original pixels maps the same whether the pipeline reads the original or a copy."""
  # Original 600 x 1200 stored as 256 x 512: same picture as WIDE scaled by 2.
  box = (600, 120, 840, 300)
  mask = geometry.box_to_patch_mask(box, (600, 1200), geometry="center_crop", mode="exact",
                                    stored_hw=(256, 512), **B16)
  np.testing.assert_array_equal(mask, _mask(14, (2, 7), (7, 13)))


def test_grid_comes_from_model_config():
  """L/14 gets a 16-wide grid in both modes (GOAL's code hard-coded 14)."""
  for mode in geometry.BOX_MODES:
    mask = geometry.box_to_patch_mask((0, 0, 10, 10), (224, 224), mode=mode, **L14)
    assert mask.shape == (256,) and mask.sum() == 1 and mask[0]


def test_goal_grid_hard_coded_16_scrambles_l14():
  """GOAL's call site cuts boxes on a 16-pixel grid for every model; on L/14 (16 x 16 tokens) it
  reads the 14-grid's flat indices from the 16-grid's token sequence."""
  # Square 448 image, box -> (32, 48, 96, 80) in the input. 16-pixel cells: cols [2, 6),
  # rows [3, 5) of the 14 x 14 grid, flat r * 14 + c = 44..47 and 58..61. On the 16 x 16 grid
  # those are row 2, cols 12..15 and row 3, cols 10..13, not the box's place.
  box, hw = (64, 96, 192, 160), (448, 448)
  mask = geometry.box_to_patch_mask(box, hw, mode="goal", goal_patch=16, **L14)
  assert mask.shape == (256,)
  assert np.flatnonzero(mask).tolist() == [44, 45, 46, 47, 58, 59, 60, 61]
  expected = np.zeros((16, 16), bool)
  expected[2, 12:16] = expected[3, 10:14] = True
  np.testing.assert_array_equal(mask.reshape(16, 16), expected)
  # The model's own grid (the default) puts it where the box is: rows 3..5, cols 2..6 of 16.
  np.testing.assert_array_equal(geometry.box_to_patch_mask(box, hw, mode="goal", **L14),
                                _mask(16, (3, 6), (2, 7)))
  # On B/16 the hard-coded grid is the model's: nothing changes.
  np.testing.assert_array_equal(
      geometry.box_to_patch_mask(box, hw, mode="goal", goal_patch=16, **B16),
      geometry.box_to_patch_mask(box, hw, mode="goal", **B16))
  # B/32 at 224 has 7 x 7 tokens: GOAL's 14-grid index 44 does not exist there (its code fails).
  with pytest.raises(ValueError, match="does not fit the model's 7 x 7"):
    geometry.box_to_patch_mask(box, hw, image_size=224, patch_size=32, mode="goal", goal_patch=16)


def test_goal_box_divided_by_json_crop_size():
  """The released code divides the box by its JSON's width/height (the crop's size)."""
  # Wide 300 x 600 image, box (300, 60, 420, 150), crop 90 high x 120 wide. By the crop size:
  # x1' = round(300 * 224 / 120) = 560 -> 223, y1' = round(60 * 224 / 90) = round(149.3) = 149,
  # x2' = 784 -> 224, y2' = round(373.3) -> 224: cols [13, 14), rows [9, 14) of 14.
  box = (300, 60, 420, 150)
  by_crop = geometry.box_to_patch_mask(box, WIDE, mode="goal", goal_norm_hw=(90, 120), **B16)
  np.testing.assert_array_equal(by_crop, _mask(14, (9, 14), (13, 14)))
  # By the true image size (the authors' later fix, and the default): rows 2..6, cols 7..9.
  by_image = geometry.box_to_patch_mask(box, WIDE, mode="goal", **B16)
  np.testing.assert_array_equal(by_image, _mask(14, (2, 7), (7, 10)))
  np.testing.assert_array_equal(
      geometry.box_to_patch_mask(box, WIDE, mode="goal", goal_norm_hw=WIDE, **B16), by_image)
  with pytest.raises(ValueError, match="goal_norm_hw must be a positive"):
    geometry.box_to_patch_mask(box, WIDE, mode="goal", goal_norm_hw=(0, 120), **B16)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="multiple of patch_size"):
    geometry.box_to_patch_mask((0, 0, 1, 1), (10, 10), image_size=224, patch_size=15)
  with pytest.raises(ValueError, match="geometry"):
    geometry.box_to_patch_mask((0, 0, 1, 1), (10, 10), geometry="stretch", **B16)
  with pytest.raises(ValueError, match="box mode"):
    geometry.box_to_patch_mask((0, 0, 1, 1), (10, 10), mode="fuzzy", **B16)
  with pytest.raises(ValueError, match="finite"):
    geometry.box_to_patch_mask((0, 0, float("nan"), 1), (10, 10), **B16)


def test_resize_plan_center_crop_matches_torchvision_rule():
  plan = geometry.resize_plan((300, 600), 224, "center_crop")
  assert plan.resized_hw == (224, 448) and plan.offset_yx == (0, 112)
  plan = geometry.resize_plan((655, 450), 224, "center_crop")  # tall: 224 * 655 / 450 = 326.04
  assert plan.resized_hw == (326, 224) and plan.offset_yx == (51, 0)
  assert geometry.resize_plan((300, 600), 224, "squash").resized_hw == (224, 224)


def test_center_crop_pixels_match_numpy_reference():
  """PIL resize then crop equals a manual crop of PIL's resize of the whole image."""
  rng = np.random.default_rng(0)
  img = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
  out = geometry.resize_image(img, 16, "center_crop")
  full = np.asarray(img.resize((int(16 * 50 / 30), 16), Image.Resampling.BICUBIC))
  left = (full.shape[1] - 16) // 2
  np.testing.assert_array_equal(out, full[:, left:left + 16])
  assert geometry.resize_image(img, 16, "squash").shape == (16, 16, 3)


def test_crop_box_scales_and_never_empty():
  # Original 300 x 600 stored at 128 x 256: scale 0.4267.
  assert geometry.crop_box((300, 60, 420, 150), (300, 600), (128, 256)) == (128, 25, 180, 64)
  # Degenerate and out-of-image boxes still give a 1-pixel crop inside the image.
  assert geometry.crop_box((50, 50, 50, 50), (100, 100), (100, 100)) == (50, 50, 51, 51)
  assert geometry.crop_box((120, 120, 130, 130), (100, 100), (100, 100)) == (99, 99, 100, 100)
