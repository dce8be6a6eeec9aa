"""The detail copy: local crops and LISM's regions come from full-resolution pixels.

Why: a record's `image` is a small copy (short side 256) for the global pair, while GOAL cuts its
local images from the original photo (LISM saves each matched crop cut from the original image,
https://github.com/PerceptualAI-Lab/GOAL `LISM/`). On DOCCI or SA-1B photos (short side 1,500+)
a typical LISM box is ~300 original pixels wide but ~50 pixels of the 256 copy (27 at p10): cut
from that copy and upscaled to 224, the local InfoNCE and TSL targets see a blur, and LISM would
segment and score the same blur.

So preparation also stores a detail copy (`records.make_record(detail=True)`, on by default): the
image at `detail_short_side` (default 0: the original pixels; never upscaled), as 256-pixel JPEG
tiles (`images.encode_detail`) in the record fields `detail_tiles` and `detail_layout`
(DESIGN.md). A local crop decodes only the tiles its box overlaps, with JPEG DCT scaling when the
box is at least twice the model's input (`images.crop_detail`); LISM decodes the whole copy.

Why tiles, measured on 20 generated DOCCI-sized photos (1,600 x 2,000) on a 2-core CPU (README,
Measurements; `python -m goal_jax.bench.input --detail_photos=20`): one whole JPEG of the original
costs ~13 ms of CPU to decode for every local crop, more than all the rest of a GOAL record's
input work (~7.5 ms), which would make the input pipeline the bottleneck of training; tiles cost
~1.5-2 ms for a typical box (a GOAL record ~10 ms) for 9 % more bytes than that one JPEG. Crops
stored at the model's resolution when pairs are made would be smaller (12 kB) and cheaper
(0.3 ms), but LISM needs the full image anyway, and a change of model resolution, geometry or
pair selection would need every crop cut again. A 1,024 copy halves the bytes at the same cost
per crop, so the default keeps the original pixels, as GOAL.

Records without a detail copy (prepared before it existed, or with `--nodetail`) still work:
crops then come from the stored copy, which this module logs once per process and counts
(`small_copy_crops`), and `survey` counts for the trainer and LISM before they start.
"""
import dataclasses
import threading
from typing import Any, Mapping

from absl import logging
import numpy as np
from PIL import Image

from goal_jax.data import geometry
from goal_jax.data import images

NO_DETAIL = np.zeros((3,), np.int32)  # `detail_layout` of a record without a detail copy
_small_copy_crops = 0  # crops this process cut from a stored copy smaller than the original
_count_lock = threading.Lock()  # Grain's read threads crop concurrently


def layout(record: Mapping[str, Any]) -> np.ndarray:
  """`detail_layout` (height, width, tile) of a record; zeros for one without (older shards)."""
  value = record.get("detail_layout")
  return NO_DETAIL if value is None else np.asarray(value, np.int32).reshape(3)


def has_tiles(record: Mapping[str, Any]) -> bool:
  """The record stores detail tiles (a copy larger than its `image`)."""
  return int(layout(record)[2]) > 0


def _stored_is_small(record: Mapping[str, Any], stored_hw) -> bool:
  """No detail copy, and the stored image is smaller than the original."""
  return not layout(record)[0] and tuple(int(v) for v in stored_hw) != tuple(
      int(v) for v in record["original_size"])


def _note_small_copy(record: Mapping[str, Any], stored_hw) -> None:
  global _small_copy_crops
  with _count_lock:
    _small_copy_crops += 1
    first = _small_copy_crops == 1
  if first:
    height, width = (int(v) for v in record["original_size"])
    logging.warning(
        "record %s has no detail copy: its local crops (and those of every such record) come "
        "from the stored %dx%d copy of a %dx%d image, not the original pixels. Prepare the "
        "dataset again (the detail copy is on by default) to crop as GOAL does.",
        record.get("id", "?"), stored_hw[1], stored_hw[0], width, height)


def small_copy_crops() -> int:
  """How many crops this process has cut from a stored copy smaller than the original."""
  return _small_copy_crops


def local_crop(record: Mapping[str, Any], box, image: Image.Image, *,
               min_short_side: int | None = None) -> Image.Image:
  """The crop of `box` (original pixels) from the largest copy of the image the record holds.

  Args:
    record: a decoded record (`builder.decode_record`, or any dict with its fields).
    box: (x1, y1, x2, y2) in original pixels.
    image: the record's decoded stored `image`, used when it has no detail tiles.
    min_short_side: the model's input side: the crop may be decoded at 1/2..1/8 scale as long
      as its short side stays at least this (`images.crop_detail`); None decodes it whole.
  """
  original_hw = tuple(int(v) for v in record["original_size"])
  if has_tiles(record):
    frame = layout(record)
    window = geometry.crop_box(box, original_hw, (int(frame[0]), int(frame[1])))
    return images.crop_detail(record["detail_tiles"], frame, window,
                              min_short_side=min_short_side)
  stored_hw = (image.height, image.width)
  if _stored_is_small(record, stored_hw):
    _note_small_copy(record, stored_hw)
  return image.crop(geometry.crop_box(box, original_hw, stored_hw))


def full_image(record: Mapping[str, Any], image: Image.Image) -> Image.Image:
  """The detail copy as one image when the record has tiles, else the stored `image` (LISM)."""
  if has_tiles(record):
    return images.decode_detail(record["detail_tiles"], layout(record))
  return image


@dataclasses.dataclass(frozen=True)
class Survey:
  """Where the crops of a sample of records would come from.

  Attributes:
    seen: records looked at.
    small_copy: of those, records with neither detail tiles nor a stored image at full size.
    with_pair: records with a usable local pair (one not matched to the full image).
    small_copy_pairs: records with a usable pair whose crop would come from the small copy.
  """
  seen: int
  small_copy: int
  with_pair: int
  small_copy_pairs: int


def survey(source, max_records: int = 512) -> Survey:
  """Counts over up to `max_records` records spread evenly through `source` (raw shard items
  or decoded records): what the trainer and LISM log before they start."""
  count = len(source)
  indices = np.unique(np.linspace(0, count - 1, min(count, max_records)).astype(int))
  small = with_pair = small_pairs = 0
  for index in indices:
    record = source[int(index)]
    stored = record["image"]
    stored = stored if isinstance(stored, np.ndarray) and stored.ndim == 3 else bytes(stored)
    is_small = _stored_is_small(record, images.original_size(stored))
    usable = bool(np.any(~np.asarray(record["pair_is_full_image"], bool)))
    small += is_small
    with_pair += usable
    small_pairs += is_small and usable
  return Survey(len(indices), small, with_pair, small_pairs)
