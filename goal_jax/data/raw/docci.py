r"""DOCCI: `docci_descriptions.jsonlines` (example_id, split, image_file, description) + images/.

Layout of the manual dir (Google's release, unpacked):
  docci_descriptions.jsonlines
  images/<example_id>.jpg
`test_qual` is `test` then `qual_test` (5,100 images): GOAL's DOCCI test set. FineLIP and
FAST-GOAL evaluate on `test` (5,000). Lines end at `\n` (a bare `\r` in a description stays in
it); `image_file` must stay inside `images/` (`common.inside`).
"""
import json
import pathlib
from typing import Iterator

from goal_jax.data import records
from goal_jax.data.raw import common

DESCRIPTIONS = "docci_descriptions.jsonlines"
SPLITS = ("train", "test", "test_qual", "qual_dev", "qual_test")
_MEMBERS = {"test_qual": ("test", "qual_test")}


def read_examples(manual_dir, split: str) -> Iterator[records.RawExample | records.BadRecord]:
  root = common.require_dir(manual_dir)
  path = common.find_file(root, [DESCRIPTIONS], "DOCCI descriptions")
  for member in _MEMBERS.get(split, (split,)):
    yield from common.read_entries(_lines(path), lambda e, w, m=member: _parse(e, w, m, root))


def count(manual_dir, split: str) -> int:
  """The entries `read_examples` yields: one JSON line each, parsed but no image opened (15k
  lines take well under a second)."""
  return sum(1 for _ in read_examples(manual_dir, split))


def _lines(path: pathlib.Path):
  for number, line in common.iter_lines(path):
    if not line.strip():
      continue
    where = f"{path}:{number}"
    try:
      yield where, json.loads(line, strict=False)
    except json.JSONDecodeError as e:
      undecodable = any("\udc80" <= c <= "\udcff" for c in line)
      yield where, common.FieldError(
          f"line is not valid JSON{' (and not UTF-8)' if undecodable else ''}: {e}",
          reason=records.NOT_UTF8 if undecodable else records.WRONG_FIELD_TYPE)


def _parse(entry, where: str, split: str, root: pathlib.Path):
  if isinstance(entry, common.FieldError):
    raise entry
  example_id = common.get(entry, "example_id", str)
  if common.get(entry, "split", str, example_id) != split:
    return None
  image_file = common.get(entry, "image_file", str, example_id)
  image = common.inside(root / "images", image_file, "image_file", example_id)
  return records.RawExample(
      id=example_id, image=str(image),
      caption=common.get(entry, "description", str, example_id),
      source=f"images/{image_file}", origin=where)
