"""Image resize/crop geometry and the box -> patch mask that TSL pools over.

Two geometries take an image of any shape to the model's `S x S` input:

- `squash`: resize straight to `S x S` (aspect ratio lost, nothing cut off).
- `center_crop`: resize the shortest side to `S` (the long side to `int(S * long / short)`, as
  torchvision and the HF CLIP processor do), then cut the central `S x S` window (offset
  `(resized - S) // 2`, as the HF processor does). This is what OpenAI CLIP and GOAL feed the model.

Boxes live in ORIGINAL image pixels (continuous: pixel `i` spans `[i, i + 1)`), while the pipeline
reads a stored copy whose short side was pre-resized at preparation. `box_to_patch_mask` maps a box
to the set of `P x P` patches of the `G x G` grid (`G = S / P`, always from the model config) in
one of two modes:

- `exact`: through the geometry actually applied (stored resize, model resize, crop offsets),
  clipped to the visible window; a patch is in the set when the box covers part of it with
  positive area.
- `goal`: GOAL's naive stretch (`x * S / W`, `y * S / H`, rounded and clamped, as
  `get_patch_tokens_from_bbox` in https://github.com/PerceptualAI-Lab/GOAL
  `goal_loss_finetuning.py`), which ignores the centre crop. Kept to reproduce GOAL. Two more of
  its choices are arguments of this mode:
  - `goal_norm_hw`: what the box is divided by. The released code (HEAD) divides by the JSON's
    `bbox_coordinates` width/height, which LISM wrote as the crop's size; the authors' later
    `goal.py` divides by the true image size (the default here).
  - `goal_patch`: the patch side of the grid the box is cut on. The released call site passes
    `patch_size=16` for every model, so for ViT-L/14 at 224 px it computes indices
    `r * 14 + c` on a 14 x 14 grid and reads those positions of the model's 16 x 16 token
    sequence (spatially scrambled). `goal_patch=16` does the same: the 14-grid's flat indices
    are set in the model's `G * G` mask.

Neither mode returns an empty set, since the mean over no tokens is NaN: a box that maps to
nothing visible (degenerate, or cropped away) falls back to the patch under its centre, clamped
into the grid.
"""
import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image

GEOMETRIES = ("squash", "center_crop")
BOX_MODES = ("exact", "goal")
# Tolerance in patch units, so float noise such as 47.99999 / 16 does not add a spurious patch.
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ResizePlan:
  """How a `source_hw` image becomes the `size x size` model input.

  Attributes:
    source_hw: (height, width) of the image the plan is applied to.
    resized_hw: (height, width) after the resize, before the crop.
    offset_yx: (top, left) of the `size x size` window inside the resized image.
    size: the output side `S`.
  """
  source_hw: tuple[int, int]
  resized_hw: tuple[int, int]
  offset_yx: tuple[int, int]
  size: int

  def map_xy(self, x: float, y: float, from_hw: Sequence[int] | None = None) -> tuple[float, float]:
    """Maps a point in `from_hw` pixels (default: the source) to output pixels.

    `from_hw` lets a box given in original pixels be mapped through a plan made for a stored copy
    of another size: both describe the same picture, so only the scale differs.
    """
    from_h, from_w = from_hw if from_hw is not None else self.source_hw
    return (x * self.resized_hw[1] / from_w - self.offset_yx[1],
            y * self.resized_hw[0] / from_h - self.offset_yx[0])


def _check_hw(hw: Sequence[int], what: str) -> tuple[int, int]:
  h, w = (int(v) for v in hw)
  if h <= 0 or w <= 0:
    raise ValueError(f"{what} must be a positive (height, width), got {tuple(hw)}")
  return h, w


def resize_plan(source_hw: Sequence[int], image_size: int, geometry: str) -> ResizePlan:
  """The resize (and crop) taking a `source_hw` image to `image_size x image_size`."""
  h, w = _check_hw(source_hw, "source_hw")
  if geometry == "squash":
    return ResizePlan((h, w), (image_size, image_size), (0, 0), image_size)
  if geometry == "center_crop":
    if h <= w:
      resized = (image_size, int(image_size * w / h))
    else:
      resized = (int(image_size * h / w), image_size)
    offset = ((resized[0] - image_size) // 2, (resized[1] - image_size) // 2)
    return ResizePlan((h, w), resized, offset, image_size)
  raise ValueError(f"unknown geometry {geometry!r}; expected one of {GEOMETRIES}")


def apply_plan(image: Image.Image, plan: ResizePlan) -> np.ndarray:
  """Bicubic resize then crop (PIL, as OpenAI CLIP); returns uint8 `[S, S, 3]`."""
  if (image.height, image.width) != plan.source_hw:
    raise ValueError(f"image is {image.height}x{image.width}, plan expects {plan.source_hw}")
  rgb = image if image.mode == "RGB" else image.convert("RGB")  # convert copies even RGB
  resized = rgb.resize(plan.resized_hw[::-1], Image.Resampling.BICUBIC)
  top, left = plan.offset_yx
  out = resized.crop((left, top, left + plan.size, top + plan.size))
  return np.asarray(out, dtype=np.uint8)


def resize_image(image: Image.Image, image_size: int, geometry: str) -> np.ndarray:
  """`squash` or `center_crop` an image to uint8 `[image_size, image_size, 3]`."""
  return apply_plan(image, resize_plan((image.height, image.width), image_size, geometry))


def grid_size(image_size: int, patch_size: int) -> int:
  """Patches per side, `G = S / P`; the model config must divide evenly."""
  if patch_size <= 0 or image_size % patch_size:
    raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
  return image_size // patch_size


def _mask_from_ranges(rows: tuple[int, int], cols: tuple[int, int], grid: int) -> np.ndarray:
  mask = np.zeros((grid, grid), dtype=bool)
  mask[rows[0]:rows[1], cols[0]:cols[1]] = True
  return mask.reshape(-1)


def _indices_mask(rows, cols, cut_grid: int, grid: int) -> np.ndarray:
  """Flat indices `r * cut_grid + c` of a box cut on another grid, set in the model's mask."""
  r, c = np.meshgrid(np.arange(*rows), np.arange(*cols), indexing="ij")
  indices = (r * cut_grid + c).reshape(-1)
  if indices.max() >= grid * grid:
    raise ValueError(f"patch index {int(indices.max())} of a {cut_grid} x {cut_grid} grid does not "
                     f"fit the model's {grid} x {grid} patches (GOAL's code would fail there too)")
  mask = np.zeros((grid * grid,), dtype=bool)
  mask[indices] = True
  return mask


def _centre_fallback(cx: float, cy: float, patch_size: int, grid: int) -> np.ndarray:
  col = min(max(math.floor(cx / patch_size), 0), grid - 1)
  row = min(max(math.floor(cy / patch_size), 0), grid - 1)
  return _mask_from_ranges((row, row + 1), (col, col + 1), grid)


def _exact_output_box(box, original_hw, image_size, geometry, stored_hw):
  plan = resize_plan(stored_hw if stored_hw is not None else original_hw, image_size, geometry)
  x1, y1 = plan.map_xy(box[0], box[1], from_hw=original_hw)
  x2, y2 = plan.map_xy(box[2], box[3], from_hw=original_hw)
  return x1, y1, x2, y2


def _goal_output_box(box, norm_hw, image_size):
  """GOAL's stretch: scale by S/W, S/H, round (half to even, as Python's round), clamp."""
  h, w = norm_hw
  s = image_size
  x1 = min(max(round(box[0] * s / w), 0), s - 1)
  y1 = min(max(round(box[1] * s / h), 0), s - 1)
  x2 = min(max(round(box[2] * s / w), 0), s)
  y2 = min(max(round(box[3] * s / h), 0), s)
  return x1, y1, x2, y2


def box_to_patch_mask(box_xyxy: Sequence[float], original_hw: Sequence[int], image_size: int,
                      patch_size: int, geometry: str = "squash", mode: str = "exact", *,
                      stored_hw: Sequence[int] | None = None, goal_patch: int = 0,
                      goal_norm_hw: Sequence[float] | None = None) -> np.ndarray:
  """The patches a box covers, as a flat row-major bool mask `[G * G]` (never empty).

  Args:
    box_xyxy: (x1, y1, x2, y2) in original image pixels.
    original_hw: (height, width) of the original image.
    image_size: model input side `S`.
    patch_size: ViT patch side `P`; `G = S / P`.
    geometry: "squash" or "center_crop": how the pipeline makes the model input (used by `exact`).
    mode: "exact" (through the real geometry) or "goal" (GOAL's naive stretch, ignores `geometry`).
    stored_hw: (height, width) of the stored copy the pipeline resizes, when it differs from the
      original (the crop offsets are computed on it, as the pipeline does).
    goal_patch: `goal` mode: the patch side of the grid the box is cut on (0: `patch_size`;
      GOAL's released code: 16 for every model). Its flat indices must fit the model's grid.
    goal_norm_hw: `goal` mode: the (height, width) the box is divided by (None: `original_hw`;
      GOAL's released code: its JSON's crop size).
  """
  original_hw = _check_hw(original_hw, "original_hw")
  grid = grid_size(image_size, patch_size)
  box = tuple(float(v) for v in box_xyxy)
  if len(box) != 4 or not all(math.isfinite(v) for v in box):
    raise ValueError(f"box must be 4 finite numbers (x1, y1, x2, y2), got {box_xyxy}")
  if mode == "exact":
    x1, y1, x2, y2 = _exact_output_box(box, original_hw, image_size, geometry, stored_hw)
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    x1, x2 = max(x1, 0.0), min(x2, float(image_size))
    y1, y2 = max(y1, 0.0), min(y2, float(image_size))
    cols = (math.floor(x1 / patch_size + _EPS), math.ceil(x2 / patch_size - _EPS))
    rows = (math.floor(y1 / patch_size + _EPS), math.ceil(y2 / patch_size - _EPS))
    if x2 <= x1 or y2 <= y1 or cols[1] <= cols[0] or rows[1] <= rows[0]:
      return _centre_fallback(*centre, patch_size, grid)
  elif mode == "goal":
    if geometry not in GEOMETRIES:
      raise ValueError(f"unknown geometry {geometry!r}; expected one of {GEOMETRIES}")
    norm_hw = original_hw if goal_norm_hw is None else tuple(float(v) for v in goal_norm_hw)
    if not all(v > 0 for v in norm_hw):
      raise ValueError(f"goal_norm_hw must be a positive (height, width), got {goal_norm_hw}")
    x1, y1, x2, y2 = _goal_output_box(box, norm_hw, image_size)
    cut = goal_patch or patch_size
    cut_grid = image_size // cut  # As GOAL: `num_patches = image_size // patch_size`.
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    cols = (x1 // cut, -(-x2 // cut))
    rows = (y1 // cut, -(-y2 // cut))
    if cols[1] <= cols[0] or rows[1] <= rows[0]:
      return _centre_fallback(*centre, patch_size, grid)
    if cut != patch_size:
      return _indices_mask(rows, cols, cut_grid, grid)
  else:
    raise ValueError(f"unknown box mode {mode!r}; expected one of {BOX_MODES}")
  return _mask_from_ranges(rows, cols, grid)


def model_box(box_xyxy: Sequence[float], original_hw: Sequence[int], image_size: int,
              geometry: str = "squash", *,
              stored_hw: Sequence[int] | None = None) -> tuple[float, ...] | None:
  """A box in original pixels as (x1, y1, x2, y2) fractions of the model input, clipped to it.

  Through the geometry actually applied, as `box_to_patch_mask`'s `exact` mode (FG-CLIP's
  RoIAlign reads these: `goal_jax.models.roi_align`). With `squash` it is the box divided by the
  image size. None when nothing of the box is visible (cut off by the centre crop, or empty).
  """
  original_hw = _check_hw(original_hw, "original_hw")
  x1, y1, x2, y2 = _exact_output_box(tuple(float(v) for v in box_xyxy), original_hw, image_size,
                                     geometry, stored_hw)
  x1, y1 = max(x1, 0.0) / image_size, max(y1, 0.0) / image_size
  x2, y2 = min(x2, float(image_size)) / image_size, min(y2, float(image_size)) / image_size
  if x2 <= x1 or y2 <= y1:
    return None
  return x1, y1, x2, y2


def crop_box(box_xyxy: Sequence[float], original_hw: Sequence[int],
             stored_hw: Sequence[int]) -> tuple[int, int, int, int]:
  """Integer crop window (left, top, right, bottom) of a box in the stored image.

  The box is scaled from original to stored pixels, widened to whole pixels (floor/ceil), clipped
  to the image, and kept at least one pixel wide and high so a crop always exists.
  """
  oh, ow = _check_hw(original_hw, "original_hw")
  sh, sw = _check_hw(stored_hw, "stored_hw")
  sx, sy = sw / ow, sh / oh
  left = min(max(math.floor(box_xyxy[0] * sx + _EPS), 0), sw - 1)
  top = min(max(math.floor(box_xyxy[1] * sy + _EPS), 0), sh - 1)
  right = min(max(math.ceil(box_xyxy[2] * sx - _EPS), left + 1), sw)
  bottom = min(max(math.ceil(box_xyxy[3] * sy - _EPS), top + 1), sh)
  return left, top, right, bottom
