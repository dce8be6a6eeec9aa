"""ShareGPT4V (Share-Captioner 1.2M): one JSON array in LLaVA chat format.

Layout of the manual dir:
  share-captioner_coco_lcs_sam_1246k_1107.json   (or the only *.json file there)
  coco/train2017/<12 digits>.jpg                 COCO train2017
  sam/images/sa_<id>.jpg                         SA-1B shards 0-50
  llava/llava_pretrain/images/...                LAION/CC/SBU 558K
Each item's `image` is a path relative to the manual dir (symlink the image roots there). The
caption is `conversations[1].value` with newlines turned into spaces (Long-CLIP). Items [:1000] are
`test` (ShareGPT4V-1k, Long-CLIP's evaluation), the rest `train`. The file is streamed, so `test`
reads only its first 1,000 items. Missing images (common with partial SA-1B downloads) are bad
records: skip them with `--skip_bad`. An `image` path that is absolute or has `..` is a bad record
(`common.inside`): nothing is read from outside the manual dir.
"""
import itertools
import pathlib
from typing import Iterator

from goal_jax.data import records
from goal_jax.data.raw import common

ANNOTATIONS = "share-captioner_coco_lcs_sam_1246k_1107.json"
SPLITS = ("train", "test")
TEST_SIZE = 1000


def annotation_file(manual_dir) -> pathlib.Path:
  root = common.require_dir(manual_dir)
  if (root / ANNOTATIONS).is_file():
    return root / ANNOTATIONS
  candidates = sorted(root.glob("*.json"))
  if len(candidates) == 1:
    return candidates[0]
  raise FileNotFoundError(f"ShareGPT4V: expected {ANNOTATIONS} (or exactly one *.json) in {root}, "
                          f"found {[c.name for c in candidates]}")


def read_examples(manual_dir, split: str) -> Iterator[records.RawExample | records.BadRecord]:
  if split not in SPLITS:
    raise ValueError(f"ShareGPT4V has no split {split!r}; splits: {SPLITS}")
  path = annotation_file(manual_dir)
  root = path.parent
  items = enumerate(common.iter_json_array(path))
  items = (itertools.islice(items, TEST_SIZE) if split == "test"
           else itertools.islice(items, TEST_SIZE, None))
  entries = ((f"{path}[{number}]", item) for number, item in items)
  yield from common.read_entries(entries, lambda e, w: _parse(e, w, root))


def _parse(entry, where: str, root: pathlib.Path):
  image = common.get(entry, "image", str)
  record_id = entry.get("id", pathlib.PurePosixPath(image).stem)
  if not isinstance(record_id, (str, int)) or isinstance(record_id, bool):
    raise common.FieldError(f"field 'id' should be str, got {type(record_id).__name__}")
  record_id = str(record_id)
  conversations = common.get(entry, "conversations", list, record_id)
  answer = common.get(conversations, 1, dict, record_id)
  caption = common.get(answer, "value", str, record_id)
  path = common.inside(root, image, "image", record_id)
  return records.RawExample(
      id=record_id, image=str(path), caption=caption.replace("\n", " "),
      source=pathlib.PurePosixPath(image).as_posix(), origin=where)
