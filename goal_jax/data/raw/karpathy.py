"""COCO and Flickr30k with Karpathy's splits (`dataset_coco.json`, `dataset_flickr30k.json`).

Layout of the manual dir:
  COCO:   dataset_coco.json, val2014/COCO_val2014_<12d>.jpg, train2014/...  (`filepath/filename`)
  Flickr: dataset_flickr30k.json, flickr30k-images/<id>.jpg (or the images directly there)
One record per image, built from the `raw` sentences: the first is the caption, the next four the
`extra_captions` (the usual 1-versus-5 protocol keeps five; a sixth is dropped). `filepath` and
`filename` must stay inside the manual dir (`common.inside`: no absolute path, no `..`).
"""
import pathlib
from typing import Iterator

from goal_jax.data import records
from goal_jax.data.raw import common

COCO_FILE = "dataset_coco.json"
FLICKR_FILE = "dataset_flickr30k.json"
COCO_SPLITS = ("train", "val", "test", "restval")
FLICKR_SPLITS = ("train", "val", "test")
CAPTIONS_PER_IMAGE = 5


def read_coco(manual_dir, split: str) -> Iterator[records.RawExample | records.BadRecord]:
  return _read(manual_dir, split, COCO_FILE, COCO_SPLITS, flickr=False)


def read_flickr30k(manual_dir, split: str) -> Iterator[records.RawExample | records.BadRecord]:
  return _read(manual_dir, split, FLICKR_FILE, FLICKR_SPLITS, flickr=True)


def _read(manual_dir, split, file_name, splits, flickr):
  if split not in splits:
    raise ValueError(f"{file_name} has no split {split!r}; splits: {splits}")
  root = common.require_dir(manual_dir)
  path = common.find_file(root, [file_name], "Karpathy split file")
  images = common.get(common.load_json(path), "images", list)
  image_root = root / "flickr30k-images" if flickr and (root / "flickr30k-images").is_dir() else root
  entries = ((f"{path}[images][{n}]", entry) for n, entry in enumerate(images))
  yield from common.read_entries(entries, lambda e, w: _parse(e, w, split, root, image_root))


def _parse(entry, where, split, root, image_root):
  filename = common.get(entry, "filename", str)
  record_id = str(entry.get("cocoid", pathlib.PurePosixPath(filename).stem))
  if common.get(entry, "split", str, record_id) != split:
    return None
  folder = entry.get("filepath", "")
  if not isinstance(folder, str):
    raise common.FieldError("field 'filepath' should be str", record_id)
  image = common.inside(image_root, f"{folder}/{filename}" if folder else filename,
                        "filepath/filename", record_id)
  sentences = common.get(entry, "sentences", list, record_id)[:CAPTIONS_PER_IMAGE]
  raws = [common.get(s, "raw", str, record_id) for s in sentences]
  return records.RawExample(  # no sentence at all -> empty caption, a bad record
      id=record_id, image=str(image), caption=raws[0] if raws else "",
      extra_captions=tuple(raws[1:]),
      source=common.relative(image, root), origin=where)
