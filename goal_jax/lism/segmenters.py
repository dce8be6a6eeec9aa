"""Region proposers for LISM, as plug-ins: `segment(image, record) -> Segmentation`.

GOAL runs SAM ViT-H "segment everything" and keeps each mask's bounding box (its released
LISM code). Weights are not always at hand, so the proposer is a registry entry:

- `felzenszwalb` (default) and `slic`: scikit-image superpixels, no weights, CPU.
- `sam`: `transformers`' `pipeline("mask-generation")` on a SAM checkpoint folder the user already
  has on disk (`model_dir=...`; nothing is downloaded). Needs torch, torchvision (the pipeline's
  NMS) and transformers, imported lazily.
- `oracle`: the record's own stored boxes (`pair_box`): ground truth for the `synthetic` dataset
  and the tests.

Interface. A factory takes keyword options (typed by its defaults, so `--segmenter_options`
typos fail) and returns a callable `segment(image, record)`: `image` is the uint8 `[H, W, 3]`
image LISM crops from, the record's detail copy (`goal_jax.data.detail`: the original pixels by
default; the stored 256 px copy for records without one), `record` the decoded shard record (most
segmenters ignore it). It returns a `Segmentation` whose boxes are `(x1, y1, x2, y2)` with
exclusive ends, in that image's pixels, or in original pixels when `in_original` is set. A
segmenter whose parameters are in pixels may segment a smaller copy (`on_smaller_copy`). `areas`
are mask pixel counts in the same pixels (GOAL's area filter reads mask areas); None means "use
the box areas". The callable may be called from several threads at once; one that is not
thread-safe must lock itself (`sam` does).

`register_segmenter(name, factory)` adds one.
"""
import importlib
import inspect
import os
import threading
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
from PIL import Image
import scipy.ndimage
from skimage import segmentation

from goal_jax import config_utils
from goal_jax.data import images


class Segmentation(NamedTuple):
  """Proposed regions of one image.

  Attributes:
    boxes: float32 `[K, 4]` (x1, y1, x2, y2), x2/y2 exclusive.
    areas: float32 `[K]` mask pixel counts, or None for box areas.
    in_original: the boxes are in original-image pixels (else stored-image pixels).
  """
  boxes: np.ndarray
  areas: np.ndarray | None = None
  in_original: bool = False


Segmenter = Callable[[np.ndarray, Mapping[str, Any]], Segmentation]
SegmenterFactory = Callable[..., Segmenter]

_REGISTRY: dict[str, SegmenterFactory] = {}


def register_segmenter(name: str, factory: SegmenterFactory) -> None:
  """Makes `factory(**options) -> segment` available as `--segmenter=name`."""
  if not name.isidentifier():
    raise ValueError(f"segmenter name {name!r} must be an identifier")
  _REGISTRY[name] = factory


def segmenter_names() -> list[str]:
  return sorted(_REGISTRY)


def segmenter_defaults(name: str) -> dict[str, Any]:
  """The factory's keyword options and their defaults (what `--segmenter_options` may set)."""
  return {k: p.default for k, p in inspect.signature(_factory(name)).parameters.items()
          if p.default is not inspect.Parameter.empty}


def parse_options(name: str, text: str | None) -> dict[str, Any]:
  """`"scale=200,sigma=0.8"` -> typed options of segmenter `name` (unknown keys fail)."""
  parsed = config_utils.parse_arg(text, **segmenter_defaults(name))
  return {k: parsed[k] for k in parsed.keys()}


def get_segmenter(name: str, **options) -> Segmenter:
  return _factory(name)(**options)


def _factory(name: str) -> SegmenterFactory:
  if name not in _REGISTRY:
    raise ValueError(f"unknown segmenter {name!r}; registered: {segmenter_names()}")
  return _REGISTRY[name]


def labels_to_boxes(labels: np.ndarray) -> Segmentation:
  """Bounding box and pixel count of every label of a `[H, W]` int label map (one pass each)."""
  labels = np.asarray(labels)
  values, dense = np.unique(labels, return_inverse=True)
  dense = dense.reshape(labels.shape) + 1  # find_objects ignores label 0
  slices = scipy.ndimage.find_objects(dense, max_label=len(values))
  boxes = np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices],
                   np.float32).reshape(-1, 4)
  areas = np.bincount(dense.ravel(), minlength=len(values) + 1)[1:].astype(np.float32)
  return Segmentation(boxes, areas)


def masks_to_boxes(masks) -> Segmentation:
  """Tight boxes and pixel counts of boolean masks `[K, H, W]` (empty masks are dropped)."""
  boxes, areas = [], []
  for mask in masks:
    mask = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:
      boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
      areas.append(mask.sum())
  return Segmentation(np.array(boxes, np.float32).reshape(-1, 4), np.array(areas, np.float32))


def on_smaller_copy(image: np.ndarray, short_side: int,
                    segment: Callable[[np.ndarray], Segmentation]) -> Segmentation:
  """`segment` run on a copy of `image` whose short side is `short_side` (never upscaled; 0: the
  image itself), its boxes and areas scaled back to `image`'s pixels."""
  height, width = image.shape[:2]
  if not short_side or min(height, width) <= short_side:
    return segment(image)
  small_h, small_w = images.resized_size(height, width, short_side)
  found = segment(np.asarray(Image.fromarray(image).resize((small_w, small_h),
                                                           Image.Resampling.BICUBIC)))
  sx, sy = width / small_w, height / small_h
  boxes = np.asarray(found.boxes, np.float64) * np.array([sx, sy, sx, sy])
  areas = None if found.areas is None else np.asarray(found.areas, np.float64) * (sx * sy)
  return Segmentation(boxes.astype(np.float32),
                      None if areas is None else areas.astype(np.float32), found.in_original)


def felzenszwalb(scale: float = 100.0, levels: int = 3, sigma: float = 0.8,
                 min_size: int = 20, short_side: int = 256) -> Segmenter:
  """Felzenszwalb-Huttenlocher graph segmentation (scikit-image) at several scales, pooled.

  One scale gives superpixels OR whole objects depending on their contrast; the regions of scales
  `scale * 3**i`, `i < levels`, together cover both (on `synthetic` scenes, 98 % of the shapes
  get a box with IoU > 0.7 at the defaults, against 93 % for the best single scale).
  It segments a copy with short side `short_side` (0: the image as given): its parameters are in
  pixels, and one level on a 1,600 x 2,000 photo took 19 s on a 2-core CPU against 0.1 s at 256.
  The candidates are still cut from the full image.
  """
  if levels < 1:
    raise ValueError(f"levels must be >= 1, got {levels}")

  def segment_copy(image):
    parts = [labels_to_boxes(segmentation.felzenszwalb(image, scale=scale * 3**i, sigma=sigma,
                                                       min_size=min_size))
             for i in range(levels)]
    return Segmentation(np.concatenate([p.boxes for p in parts]),
                        np.concatenate([p.areas for p in parts]))

  def segment(image, record):
    del record
    return on_smaller_copy(image, short_side, segment_copy)
  return segment


def slic(n_segments: int = 64, compactness: float = 10.0, sigma: float = 1.0,
         short_side: int = 256) -> Segmenter:
  """SLIC superpixels (scikit-image); one box per superpixel, on a copy with short side
  `short_side` (0: the image as given), as `felzenszwalb`."""

  def segment(image, record):
    del record
    return on_smaller_copy(image, short_side, lambda copy: labels_to_boxes(segmentation.slic(
        copy, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0)))
  return segment


def oracle() -> Segmenter:
  """The record's stored local-pair boxes, in original pixels (ground truth on `synthetic`)."""
  def segment(image, record):
    del image
    return Segmentation(np.asarray(record["pair_box"], np.float32).reshape(-1, 4),
                        in_original=True)
  return segment


def sam(model_dir: str = "", points_per_batch: int = 128, device: str = "cpu") -> Segmenter:
  """SAM "segment everything" via `transformers.pipeline("mask-generation")` (GOAL's proposer).

  It is given the whole detail copy, as GOAL gives SAM the original photo; SAM's processor
  resizes it to its own input (1,024 px long side).

  Args:
    model_dir: a local SAM checkpoint folder (e.g. a copy of `facebook/sam-vit-huge`, GOAL's
      choice). Required: this never downloads.
    points_per_batch: points per forward (GOAL: 128); other settings are the pipeline's defaults.
    device: torch device for SAM (`cpu`, `cuda`, `cuda:1`).
  """
  if not model_dir or not os.path.isdir(model_dir):
    raise FileNotFoundError(
        f"segmenter 'sam' needs model_dir=<a local SAM checkpoint folder>; got {model_dir!r}. "
        "Download e.g. facebook/sam-vit-huge yourself and pass "
        "--segmenter_options=model_dir=/path/to/sam-vit-huge")
  try:
    importlib.import_module("torchvision")  # the pipeline's mask NMS needs it
    import transformers  # pylint: disable=g-import-not-at-top; optional dependency
  except ImportError as e:
    raise ImportError(f"segmenter 'sam' needs torch, torchvision and transformers ({e}); "
                      "install torchvision matching the torch extra's version") from e
  generator = transformers.pipeline("mask-generation", model=model_dir, device=device)
  lock = threading.Lock()  # one forward at a time: the torch pipeline is not thread-safe

  def segment(image, record):
    del record
    with lock:
      out = generator(Image.fromarray(image), points_per_batch=points_per_batch)
    return masks_to_boxes(out["masks"])
  return segment


register_segmenter("felzenszwalb", felzenszwalb)
register_segmenter("slic", slic)
register_segmenter("oracle", oracle)
register_segmenter("sam", sam)
