"""GOAL's released JSON files: `{filename, caption}` lists and LISM training files with segments.

Each split is one GOAL file, looked up in the manual dir or its `datasets/` folder:

  split               file                                     kind
  docci_test          docci_test.json                          list (5,100)
  dci_test            DCI_test.json                            list (1,999)
  urban1k_test        urban_dataset_test.json                  list (1,000)
  sharegpt4v_test     sharegpt4v_test.json                     list
  coco_test           coco_test.json                           list
  flickr30k_test      flickr30k_test.json                      list
  dci_train           DCI_segment_sim_bbox_del_org.json        training (segments + boxes)
  docci_train         docci_segment_sim_bbox_del_org.json      training (segments + boxes)
  dci_train_global    DCI_train_del_org.json                   list
  docci_train_global  docci_train_del_org.json                 list

A list entry is `{filename, caption}`. A training entry is `{original_filename, original_caption,
segment: [{filename, caption, similarity_score, bbox_coordinates: {x1, y1, x2, y2, width,
height}}]}`: every segment becomes a `LocalPair` (sentence text, matched to the split caption at
preparation; box x1, y1, x2, y2 in original pixels; score = similarity_score; full image when the
crop file is LISM's `original_image.jpg`). bbox `width`/`height` are the CROP size (LISM's
`make_bbox.py` writes them so): kept as the pair's `norm_size`, which only the reproduction of
the released code's box normalisation reads (`config.input.box_norm=json`); everything else uses
the true image size, from the image.

Paths in these files are verbatim from the authors' machines (`../DCI/...`, `chage/path/to/...`).
Rule: the longest trailing part of the recorded path that exists under the manual dir is used
(`common.remap_path`), so put (or symlink) the images under the manual dir keeping at least their
file names, e.g. `<manual_dir>/photos/sa_1543972.jpg` or `<manual_dir>/images/test_00000.jpg`.
Absolute paths and `..` are therefore expected here, and harmless: the lookup never leaves the
manual dir. The record id is the image file stem.
"""
import pathlib
from typing import Iterator

from goal_jax.data import records
from goal_jax.data.raw import common

FILES = {
    "docci_test": "docci_test.json",
    "dci_test": "DCI_test.json",
    "urban1k_test": "urban_dataset_test.json",
    "sharegpt4v_test": "sharegpt4v_test.json",
    "coco_test": "coco_test.json",
    "flickr30k_test": "flickr30k_test.json",
    "dci_train": "DCI_segment_sim_bbox_del_org.json",
    "docci_train": "docci_segment_sim_bbox_del_org.json",
    "dci_train_global": "DCI_train_del_org.json",
    "docci_train_global": "docci_train_del_org.json",
}
SPLITS = tuple(FILES)
FULL_IMAGE_CROP = "original_image.jpg"  # LISM's name for "the sentence matched the whole image"
_NUMBER = (int, float)


def _find(root: pathlib.Path, split: str) -> pathlib.Path | None:
  for folder in (root, root / "datasets"):
    if (folder / FILES[split]).is_file():
      return folder / FILES[split]
  return None


def available_splits(manual_dir) -> tuple[str, ...]:
  root = common.require_dir(manual_dir)
  return tuple(split for split in SPLITS if _find(root, split) is not None)


def read_examples(manual_dir, split: str) -> Iterator[records.RawExample | records.BadRecord]:
  if split not in FILES:
    raise ValueError(f"goal_json has no split {split!r}; splits: {SPLITS}")
  root = common.require_dir(manual_dir)
  path = _find(root, split)
  if path is None:
    raise FileNotFoundError(f"goal_json {split}: put GOAL's {FILES[split]} in {root} "
                            f"or {root / 'datasets'}")
  entries = ((f"{path}[{n}]", e) for n, e in enumerate(common.iter_json_array(path)))
  yield from common.read_entries(entries, lambda e, w: _parse(e, w, root))


def _parse(entry, where: str, root: pathlib.Path):
  if isinstance(entry, dict) and "segment" in entry:
    filename = common.get(entry, "original_filename", str)
    caption_key = "original_caption"
  else:
    filename = common.get(entry, "filename", str)
    caption_key = "caption"
  record_id = pathlib.PurePosixPath(filename.replace("\\", "/")).stem
  image = common.remap_path(filename, root)
  segments = common.get(entry, "segment", list, record_id) if "segment" in entry else []
  return records.RawExample(
      id=record_id, image=str(image), caption=common.get(entry, caption_key, str, record_id),
      local_pairs=tuple(_local_pair(s, record_id) for s in segments),
      source=common.relative(image, root), origin=where)


def _local_pair(segment, record_id: str) -> records.LocalPair:
  box = common.get(segment, "bbox_coordinates", dict, record_id)
  crop = common.get(segment, "filename", str, record_id)
  norm_size = None
  if "width" in box or "height" in box:
    norm_size = tuple(float(common.get(box, k, _NUMBER, record_id)) for k in ("height", "width"))
    if not all(v > 0 for v in norm_size):
      raise common.FieldError(f"bbox_coordinates height/width {norm_size} must be positive",
                              record_id, reason=records.BAD_BOX)
  return records.LocalPair(
      box=tuple(float(common.get(box, k, _NUMBER, record_id)) for k in ("x1", "y1", "x2", "y2")),
      sentence=common.get(segment, "caption", str, record_id),
      score=float(common.get(segment, "similarity_score", _NUMBER, record_id)),
      is_full_image=pathlib.PurePosixPath(crop.replace("\\", "/")).name == FULL_IMAGE_CROP,
      norm_size=norm_size)
