"""DCI (Densely Captioned Images): one JSON per image, the photos from SA-1B shard sa_000138.

Layout of the manual dir (`densely_captioned_images/` itself, or a folder holding it):
  complete/<N>-data.json   (or annotations/<N>-data.json): `image`, `short_caption`,
                           `extra_caption`, masks...
  photos/sa_<id>.jpg
  splits.json              {"train": [...], "valid": [...], "test": [...]} annotation file names
  DCI_test.json            only for `goal_test`: GOAL's released 1,999-image test list
                           (`[{filename, caption}]`, joined to DCI by image file name)
The caption is `extra_caption` (what GOAL, TULIP and FG-CLIP use); an empty one is a bad record
(203 of 7,805). The summary is `short_caption`. `full` is every annotation file, sorted (TFDS reserves the split name `all`).
File names from `splits.json` must stay inside the annotation folder (`common.inside`); an image
is looked up by its base name in `photos/`, so it cannot leave the dataset either.
"""
import functools
import pathlib
from typing import Iterator

from goal_jax.data import records
from goal_jax.data.raw import common

SPLITS = ("train", "valid", "test", "goal_test", "full")
GOAL_TEST_FILE = "DCI_test.json"
SPLITS_FILE = "splits.json"


def dataset_root(manual_dir) -> pathlib.Path:
  root = common.require_dir(manual_dir)
  nested = root / "densely_captioned_images"
  return nested if nested.is_dir() else root


def annotation_dir(root: pathlib.Path) -> pathlib.Path:
  for name in ("complete", "annotations"):
    if (root / name).is_dir():
      return root / name
  raise FileNotFoundError(f"DCI: neither complete/ nor annotations/ found in {root}")


def available_splits(manual_dir) -> tuple[str, ...]:
  root = dataset_root(manual_dir)
  present = ["full"]
  if (root / SPLITS_FILE).is_file():
    present[:0] = ["train", "valid", "test"]
  if _goal_test_file(root):
    present.insert(-1, "goal_test")
  return tuple(present)


def _goal_test_file(root: pathlib.Path) -> pathlib.Path | None:
  for folder in (root, root.parent, root / "datasets"):
    if (folder / GOAL_TEST_FILE).is_file():
      return folder / GOAL_TEST_FILE
  return None


def read_examples(manual_dir, split: str) -> Iterator[records.RawExample | records.BadRecord]:
  root = dataset_root(manual_dir)
  files = _split_files(root, split)
  yield from common.read_entries(_entries(files), lambda e, w: _parse(e, w, root))


def count(manual_dir, split: str) -> int:
  """The split's annotation files (one per image), listed without being read."""
  return len(_split_files(dataset_root(manual_dir), split))


def _split_files(root, split):
  annotations = annotation_dir(root)
  if split == "full":
    return sorted(annotations.glob("*.json"))
  if split == "goal_test":
    return _goal_test_files(root, annotations)
  if split in ("train", "valid", "test"):
    return _listed_files(root, annotations, split)
  raise ValueError(f"DCI has no split {split!r}; splits: {SPLITS}")


def _entries(files):
  for path in files:
    if isinstance(path, records.BadRecord):
      yield path.origin, path
    elif not path.is_file():
      yield str(path), common.FieldError(f"annotation file {path} not found", path.stem)
    else:
      try:
        yield str(path), common.load_json(path)
      except ValueError as e:
        yield str(path), common.FieldError(str(e), path.stem)


def _listed_files(root, annotations, split):
  listed = common.get(common.load_json(root / SPLITS_FILE), split, list)
  files = []
  for number, name in enumerate(listed):
    if not isinstance(name, str):
      raise ValueError(f"{root / SPLITS_FILE}: {split} lists {name!r}, expected file names "
                       "(numeric indices into an unsorted directory listing are not supported)")
    name = name if name.endswith(".json") else f"{name}.json"
    try:
      files.append(common.inside(annotations, name, f"{SPLITS_FILE} entry"))
    except common.FieldError as e:
      where = f"{root / SPLITS_FILE}[{split}][{number}]"
      files.append(records.BadRecord(pathlib.PurePosixPath(name).stem or where, where,
                                     e.reason, str(e)))
  return files


@functools.lru_cache(maxsize=4)
def _image_index(annotations: pathlib.Path) -> dict[str, pathlib.Path]:
  """Image file name -> annotation file; one pass over all annotation files (cached)."""
  index = {}
  for path in sorted(annotations.glob("*.json")):
    try:
      image = common.load_json(path).get("image")
    except (ValueError, AttributeError):
      continue  # reported when (if) the file is read as a record
    if isinstance(image, str):
      index[pathlib.PurePosixPath(image).name] = path
  return index


def _goal_test_files(root, annotations):
  path = _goal_test_file(root)
  if path is None:
    raise FileNotFoundError(f"DCI goal_test: put GOAL's {GOAL_TEST_FILE} (datasets/{GOAL_TEST_FILE}"
                            f" in the GOAL repository) in {root}")
  index = _image_index(annotations)
  files = []
  for number, entry in enumerate(common.load_json(path)):
    where = f"{path}[{number}]"
    try:
      name = pathlib.PurePosixPath(common.get(entry, "filename", str).replace("\\", "/")).name
    except common.FieldError as e:
      files.append(records.BadRecord(where, where, records.WRONG_FIELD_TYPE, str(e)))
      continue
    if name in index:
      files.append(index[name])
    else:
      files.append(records.BadRecord(pathlib.PurePath(name).stem, where,
                                     records.MISSING_ANNOTATION,
                                     f"no DCI annotation in {annotations} has image {name}"))
  return files


def _parse(entry, where: str, root: pathlib.Path):
  if isinstance(entry, records.BadRecord):
    return entry  # found while listing files: passed on as it is
  if isinstance(entry, common.FieldError):
    raise entry
  image = common.get(entry, "image", str, pathlib.Path(where).stem)
  image_name = pathlib.PurePosixPath(image).name
  record_id = pathlib.PurePosixPath(image_name).stem
  path = common.inside(root / "photos", image_name, "image", record_id or where)
  return records.RawExample(
      id=record_id, image=str(path),
      caption=common.get(entry, "extra_caption", str, record_id),
      summary=common.get(entry, "short_caption", str, record_id),
      source=f"photos/{image_name}", origin=where)

