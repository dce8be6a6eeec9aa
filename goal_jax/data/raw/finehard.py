"""FineHARD: FG-CLIP's boxes, region captions and hard negatives (HF Hub `qihoo360/FineHARD`).

Layout of the manual dir, as `data/data.md` of https://github.com/360CVGroup/FG-CLIP sets it up:
  jsonfiles/*.json    (or the JSON files in the manual dir itself) each a JSON array of entries
  grit-12m/           the images, downloaded with the repository's `data/get_data.sh` and
                      renamed by `data/convert_image_name.py` (`coyo_image_0/00000/<key>.jpg`);
                      `coyo_image_*/` directly in the manual dir works too (a symlink will do)
An entry, as the released loader reads it (`fgclip/train/train_fgclip.py`,
`LazySupervisedBboxDataset`, commit 0fcea59):
  {"f_path": "grit-20m/data-12m/coyo_image_0/00000/<key>.jpg", "caption": <long caption>,
   "short_caption": ..., "bbox_info": [{"bbox": [x0, y0, x1, y1, score], "short_expr": ...,
   "long_expr": ..., "flag_short_neg": 0 or 1, "short_expr_negs": {<name>: <negative>, ...}}]}
Boxes are fractions of the image (the model scales them by the feature map). The loader ignores
the fifth number; by the README, boxes are Yolo-World detections kept above a confidence of 0.4,
so it is taken as that confidence and stored as the pair's score (0 when absent).

How an entry becomes a record:
- The image is `f_path` looked up under the manual dir (then `grit-12m/`) by its longest
  trailing part that exists (`common.remap_path`; the release strips `grit-20m/data-12m/`); the
  id is `f_path` without that prefix and the extension (`coyo_image_0/00000/<key>`).
- The summary is "a photo of " + `short_caption`, the release's short text.
- Each box becomes a local pair (box scaled to the image's pixels, read from its header; an
  inverted box is a bad record, as the release raises). Its sentence is the `short_expr`:
  FineHARD's expressions are phrases SpaCy cut out of the caption, not sentences of it, so each
  is appended to the caption as a sentence of its own (a period added, and to the caption's end
  if it has none, so the splitter keeps them apart; an expression equal to a sentence already
  there resolves to that one). The appended phrases repeat what the caption says; `text` (248
  tokens) may include some after the caption, where the release's long text is the caption
  alone. The `long_expr`, which the release draws at random against `short_expr` for its
  region term, is not stored: the hard negatives are written for `short_expr`.
- A box with `flag_short_neg == 1` carries its `short_expr_negs` (10 in the release) as hard
  negatives, formatted as its sentence (same added period); one equal to the expression itself
  is dropped (it would rank the caption below itself).
"""
import pathlib
import re
from typing import Iterator

from goal_jax.data import images
from goal_jax.data import records
from goal_jax.data.raw import common

SPLITS = ("train",)
SUMMARY_PREFIX = "a photo of "  # the release's short text: "a photo of " + short_caption
PATH_PREFIX = "grit-20m/data-12m/"  # in every released `f_path`; the loader strips it
IMAGE_FOLDERS = ("", "grit-12m")  # where the images are looked for, under the manual dir
_NUMBER = (int, float)
_END = re.compile(r"[.!?][\"')\]]*$")


def _json_files(root: pathlib.Path) -> list[pathlib.Path]:
  folder = root / "jsonfiles" if (root / "jsonfiles").is_dir() else root
  return sorted(folder.glob("*.json"))


def available_splits(manual_dir) -> tuple[str, ...]:
  return SPLITS if _json_files(common.require_dir(manual_dir)) else ()


def read_examples(manual_dir, split: str) -> Iterator[records.RawExample | records.BadRecord]:
  if split not in SPLITS:
    raise ValueError(f"finehard has no split {split!r}; splits: {SPLITS}")
  root = common.require_dir(manual_dir)
  files = _json_files(root)
  if not files:
    raise FileNotFoundError(f"finehard: no FineHARD JSON files in {root / 'jsonfiles'} or {root}")
  entries = ((f"{path}[{n}]", entry) for path in files
             for n, entry in enumerate(common.iter_json_array(path)))
  yield from common.read_entries(entries, lambda e, w: _parse(e, w, root))


def as_sentence(text: str) -> str:
  """The text with a final period unless it ends a sentence already."""
  text = text.strip()
  return text if not text or _END.search(text) else text + "."


def _same(a: str, b: str) -> bool:
  return " ".join(a.lower().split()).rstrip(".") == " ".join(b.lower().split()).rstrip(".")


def _parse(entry, where: str, root: pathlib.Path) -> records.RawExample:
  f_path = common.get(entry, "f_path", str)
  record_id = _record_id(f_path)
  image = _find_image(f_path, root, record_id)
  caption = common.get(entry, "caption", str, record_id)
  if not caption.strip():  # the appended expressions must not hide an empty caption
    raise common.FieldError("the caption is empty", record_id, records.EMPTY_CAPTION)
  summary = SUMMARY_PREFIX + common.get(entry, "short_caption", str, record_id)
  boxes = common.get(entry, "bbox_info", list, record_id) if "bbox_info" in entry else []
  pairs = []
  if boxes:
    height, width = _image_size(image, record_id)
    pairs = [_pair(box, record_id, width, height) for box in boxes]
  appended = []
  for pair in pairs:
    if pair.sentence not in appended:
      appended.append(pair.sentence)
  if appended:
    caption = " ".join([as_sentence(caption), *appended])
  return records.RawExample(id=record_id, image=str(image), caption=caption, summary=summary,
                            local_pairs=tuple(pairs), source=common.relative(image, root),
                            origin=where)


def _record_id(f_path: str) -> str:
  parts = [p for p in pathlib.PurePosixPath(f_path.replace("\\", "/").removeprefix(PATH_PREFIX))
           .parts if p not in ("/", ".", "..")]
  if not parts:
    raise common.FieldError(f"empty f_path {f_path!r}")
  return str(pathlib.PurePosixPath(*parts).with_suffix(""))


def _find_image(f_path: str, root: pathlib.Path, record_id: str) -> pathlib.Path:
  """The image under the first of `IMAGE_FOLDERS` that holds it (else named in the error)."""
  for folder in IMAGE_FOLDERS:
    path = common.remap_path(f_path, root / folder)
    if path.is_file():
      return path
  raise common.FieldError(f"image {f_path!r} not found under {root} or {root / 'grit-12m'}: put "
                          "the images there (keeping `coyo_image_*/...`), or pass --skip_bad",
                          record_id, records.MISSING_IMAGE)


def _image_size(image: pathlib.Path, record_id: str) -> tuple[int, int]:
  """(height, width) from the header: the boxes are fractions of it."""
  try:
    return images.original_size(image)
  except FileNotFoundError:
    raise common.FieldError(f"image not found: {image}", record_id,
                            records.MISSING_IMAGE) from None
  except images.ImageDecodeError as e:
    raise common.FieldError(str(e), record_id, records.CORRUPT_IMAGE) from None


def _pair(box, record_id: str, width: int, height: int) -> records.LocalPair:
  values = common.get(box, "bbox", list, record_id)
  if len(values) < 4 or not all(isinstance(v, _NUMBER) and not isinstance(v, bool)
                                for v in values[:5]):
    raise common.FieldError(f"bbox {values!r} should be [x0, y0, x1, y1(, score)] numbers",
                            record_id)
  x0, y0, x1, y1 = (float(v) for v in values[:4])
  if x0 > x1 or y0 > y1:
    raise common.FieldError(f"bbox {values!r} is inverted (x0 > x1 or y0 > y1)", record_id,
                            records.BAD_BOX)
  expression = common.get(box, "short_expr", str, record_id)
  negatives = ()
  if box.get("flag_short_neg", 0) == 1:
    named = common.get(box, "short_expr_negs", dict, record_id)
    negatives = tuple(as_sentence(common.get(named, key, str, record_id)) for key in named)
    negatives = tuple(text for text in negatives if not _same(text, expression))
  return records.LocalPair(box=(x0 * width, y0 * height, x1 * width, y1 * height),
                           sentence=as_sentence(expression),
                           score=float(values[4]) if len(values) > 4 else 0.0,
                           hard_negatives=negatives)
