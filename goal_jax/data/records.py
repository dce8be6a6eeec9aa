"""The shard record schema, and how one raw example becomes one validated record.

Readers (`goal_jax.data.raw`) yield `RawExample`s in the raw dataset's own terms. `make_record`
does all the text and image work once, at preparation: caption normalisation, sentence splitting
with stored character offsets, the summary, local pairs resolved to sentence indices, and the image
pre-resized to JPEG with its original size kept. Anything that would make a silently wrong record
raises `BadRecordError` naming the dataset, the record and the file, so the preparation either
stops or (with `skip_bad`) counts the skip by reason.
"""
import dataclasses
import functools
import math
import os
import re
from typing import Any, Mapping, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from goal_jax.data import images
from goal_jax.text import sentences
from goal_jax.text import tokenizer

CAPTION_CONTEXT = 248  # Long-CLIP's stretched text context: a longer sentence never fits whole.
BOX_TOLERANCE = 1.0  # pixels a box may stick out of the image (rounding in LISM's crops)
SUMMARY_RULES = ("auto", "first_sentence", "field", "none")
# The smallest image side a record may have (`prepare --min_image_side`): below it the stored
# copy and every crop would be upscaled blur (a 224 px model input from under 32 px is 7x), and
# such files are mostly icons, spacers and thumbnails that slipped into a crawl.
MIN_IMAGE_SIDE = 32
# Extensions and the format Pillow reads from such a file; another format is read (Pillow goes
# by the content) and noted in the summary.
_EXTENSION_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP",
                      ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}

# Reasons a record is bad; the preparation summary counts skips by these names.
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
IMAGE_TOO_SMALL = "image_too_small"
IMAGE_TOO_LARGE = "image_too_large"
EMPTY_CAPTION = "empty_caption"
NO_SENTENCE = "no_sentence"
SENTENCE_TOO_LONG = "sentence_too_long"
BOX_OUTSIDE_IMAGE = "box_outside_image"
BAD_BOX = "bad_box"
UNMATCHED_SENTENCE = "unmatched_sentence"
DUPLICATE_ID = "duplicate_id"
WRONG_FIELD_TYPE = "wrong_field_type"
MISSING_ANNOTATION = "missing_annotation"
NOT_UTF8 = "not_utf8"
PATH_OUTSIDE_DATASET = "path_outside_dataset"
BAD_HARD_NEGATIVE = "bad_hard_negative"

# The shard record fields, in DESIGN.md's order.
FIELDS = ("id", "image", "original_size", "detail_tiles", "detail_layout", "caption",
          "extra_captions", "summary", "sentence_starts", "sentence_ends", "splitter",
          "pair_sentence", "pair_box", "pair_score", "pair_is_full_image", "source",
          "raw_caption", "pair_norm_size", "pair_hard_negatives", "pair_hard_negative_count")


@dataclasses.dataclass(frozen=True)
class LocalPair:
  box: tuple[float, float, float, float]  # x1, y1, x2, y2 in ORIGINAL image pixels
  sentence: int | str  # sentence index, or the sentence text (matched at preparation)
  score: float = 0.0
  is_full_image: bool = False
  # (height, width) the source divides this box by: GOAL's JSON `bbox_coordinates` height/width
  # (LISM's crop size; its released code divides by it). None: the source gives none.
  norm_size: tuple[float, float] | None = None
  # Captions that each change one attribute of `sentence` (FG-CLIP's hard negatives): what the
  # region must NOT match. Empty: none (most sources).
  hard_negatives: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RawExample:
  id: str  # unique within the dataset split
  image: Any  # file path (str or Path), encoded image bytes, or HxWx3 uint8 array
  caption: str  # long caption, raw (normalised at preparation)
  extra_captions: tuple[str, ...] = ()  # COCO/Flickr captions 2..5
  summary: str | None = None  # None -> summary rule at preparation
  local_pairs: tuple[LocalPair, ...] = ()
  source: str = ""  # original relative path of the image
  origin: str = ""  # annotation file (and line/item) the example came from, for error messages


@dataclasses.dataclass(frozen=True)
class BadRecord:
  """A reader's report of an entry it could not turn into a `RawExample` (wrong field type...).

  Readers yield it instead of raising so that `skip_bad` can count it and go on.
  """
  id: str
  origin: str
  reason: str
  detail: str


class BadRecordError(ValueError):
  """A record that must not be written; the message names dataset, record and file."""

  def __init__(self, reason: str, detail: str, *, dataset: str = "", record_id: str = "",
               file: str = ""):
    self.reason, self.detail = reason, detail
    self.dataset, self.record_id, self.file = dataset, record_id, file
    super().__init__(f"{dataset or '?'}: record {record_id!r} (file {file or '?'}): "
                     f"{reason}: {detail}")


class CaptionStats(NamedTuple):
  """Per-record numbers for the preparation summary."""
  num_sentences: int
  num_tokens: int  # CLIP BPE tokens of the whole caption, SOT and EOT included, untruncated
  # What was done to a record that was written anyway, counted in the summary: "PNG content in
  # a .jpg file (read as PNG)", "JPEG over --max_image_pixels (decoded at 1/2 size)".
  notes: tuple[str, ...] = ()


def features():
  """The TFDS `FeaturesDict` of a shard record; every feature encodes and decodes without TF."""
  text, tensor = tfds.features.Text, tfds.features.Tensor
  return tfds.features.FeaturesDict({
      "id": text(),
      "image": tensor(shape=(), dtype=np.object_),  # JPEG bytes: decoding is the pipeline's job
      "original_size": tensor(shape=(2,), dtype=np.int32),
      # The detail copy for local crops and LISM (`goal_jax.data.detail`): JPEG tiles, row-major,
      # and (height, width, tile side); no tiles with tile side 0, zeros without a copy.
      "detail_tiles": tensor(shape=(None,), dtype=np.object_),
      "detail_layout": tensor(shape=(3,), dtype=np.int32),
      "caption": text(),
      "extra_captions": tfds.features.Sequence(text()),
      "summary": text(),
      "sentence_starts": tensor(shape=(None,), dtype=np.int32),
      "sentence_ends": tensor(shape=(None,), dtype=np.int32),
      "splitter": text(),
      "pair_sentence": tensor(shape=(None,), dtype=np.int32),
      "pair_box": tensor(shape=(None, 4), dtype=np.float32),
      "pair_score": tensor(shape=(None,), dtype=np.float32),
      "pair_is_full_image": tensor(shape=(None,), dtype=np.bool_),
      "source": text(),
      "raw_caption": text(),  # the reader's caption before normalisation (GOAL's HF form)
      "pair_norm_size": tensor(shape=(None, 2), dtype=np.float32),  # 0: none (`LocalPair`)
      # Hard negatives of all pairs, pair by pair (TFDS stores no ragged string lists), and how
      # many belong to each pair: pair p owns the `count[p]` after those of pairs 0..p-1.
      "pair_hard_negatives": tfds.features.Sequence(text()),
      "pair_hard_negative_count": tensor(shape=(None,), dtype=np.int32),
  })


@functools.lru_cache(maxsize=None)
def splitter_tag(splitter: str) -> str:
  """`name@version` of a sentence splitter, stored in every record."""
  found = sentences.get_splitter(splitter)
  return f"{found.name}@{found.version}"


def best_pair(record: Mapping[str, Any], sentence: int | None = None) -> int | None:
  """Index of the highest-score non-full-image pair (of `sentence`, if given); first on ties.

  The local pair training reads (GOAL's local loss, a sentence's patches), and the one whose
  fields the reproduction switches check.
  """
  scores = np.asarray(record["pair_score"], np.float32)
  usable = ~np.asarray(record["pair_is_full_image"], bool)
  if sentence is not None:
    usable &= np.asarray(record["pair_sentence"]) == sentence
  if not usable.any():
    return None
  return int(np.argmax(np.where(usable, scores, -np.inf)))


def make_record(example: RawExample, *, dataset: str, splitter: str = "sentencex",
                image_short_side: int | None = 256, summary: str = "auto",
                jpeg_quality: int = 90, detail: bool = True,
                detail_short_side: int | None = None, min_image_side: int = 0,
                max_image_pixels: int | None = images.MAX_PIXELS
                ) -> tuple[dict[str, Any], CaptionStats]:
  """Turns one raw example into a shard record (DESIGN.md schema) and its caption stats.

  Args:
    example: the reader's example.
    dataset: dataset name, prefixed to the id and named in errors.
    splitter: sentence splitter name (`goal_jax.text.sentences`).
    image_short_side: pre-resize so the short side is this (never upscaled); None keeps the size.
    summary: `auto` (the reader's summary, else the first sentence), `first_sentence`, `field`
      (the reader's summary or empty) or `none` (empty).
    jpeg_quality: quality of the re-encoded JPEG.
    detail: also store the detail copy that local crops and LISM read (`goal_jax.data.detail`).
    detail_short_side: its short side (None or 0: the original pixels; never upscaled); not
      below `image_short_side`.
    min_image_side: a smaller image side is a bad record (`IMAGE_TOO_SMALL`); 0: none (the
      preparation's default is `MIN_IMAGE_SIDE`).
    max_image_pixels: a JPEG over it is decoded at 1/2..1/8 size (noted), another image over it
      is a bad record (`IMAGE_TOO_LARGE`); None or 0: no limit (`images.reduction`).

  Raises:
    BadRecordError: with one of the reasons above.
  """
  def bad(reason, detail):
    file = example.origin or example.source or str(example.image)[:200]
    return BadRecordError(reason, detail, dataset=dataset, record_id=str(example.id), file=file)

  _check_types(example, bad)
  _check_utf8(example, bad)
  if summary not in SUMMARY_RULES:
    raise ValueError(f"summary rule {summary!r} is not one of {SUMMARY_RULES}")
  check_detail_side(detail, detail_short_side, image_short_side)

  caption = tokenizer.normalize_text(example.caption)
  if not caption:
    raise bad(EMPTY_CAPTION, "the caption is empty after normalisation")
  spans = [(int(s), int(e)) for s, e in sentences.split_sentences(caption, splitter)]
  if not spans:
    raise bad(NO_SENTENCE, f"the splitter {splitter!r} found no sentence in {caption[:80]!r}")
  _check_spans(spans, len(caption), bad)
  tok = tokenizer.get_tokenizer()
  for index, (start, end) in enumerate(spans):
    length = len(tok.encode(caption[start:end], normalize=False)) + 2
    if length > CAPTION_CONTEXT:
      raise bad(SENTENCE_TOO_LONG, f"sentence {index} has {length} tokens, more than the "
                f"{CAPTION_CONTEXT} context: {caption[start:start + 80]!r}...")

  try:
    notes = _check_image(example.image, min_image_side, max_image_pixels, bad)
    jpeg, original_size = images.encode_resized(
        example.image, short_side=image_short_side, quality=jpeg_quality,
        max_pixels=max_image_pixels)
    # The stored `image` is the same with or without a detail copy: only local crops change.
    tiles, detail_layout = [], np.zeros((3,), np.int32)
    if detail:
      tiles, detail_layout = images.encode_detail(
          example.image, short_side=detail_short_side, quality=jpeg_quality,
          stored_hw=images.resized_size(*original_size, image_short_side),
          max_pixels=max_image_pixels)
  except FileNotFoundError as e:
    raise bad(MISSING_IMAGE, f"image not found: {e.filename or e}") from e
  except images.ImageTooLargeError as e:
    raise bad(IMAGE_TOO_LARGE, str(e)) from e
  except images.ImageDecodeError as e:
    raise bad(CORRUPT_IMAGE, str(e)) from e

  pair_sentence, pair_box, negatives = [], [], []
  for pair in example.local_pairs:
    pair_sentence.append(_resolve_sentence(pair.sentence, caption, spans, bad))
    pair_box.append(_check_box(pair.box, original_size, bad))
    start, end = spans[pair_sentence[-1]]
    negatives.append(_hard_negatives(pair.hard_negatives, caption[start:end], bad))

  record = {
      "id": f"{dataset}/{example.id}",
      "image": jpeg,
      "original_size": np.asarray(original_size, np.int32),
      "detail_tiles": tiles,
      "detail_layout": detail_layout,
      "caption": caption,
      "extra_captions": [tokenizer.normalize_text(c) for c in example.extra_captions],
      "summary": _summary(example, caption, spans, summary, tokenizer.normalize_text),
      "sentence_starts": np.asarray([s for s, _ in spans], np.int32),
      "sentence_ends": np.asarray([e for _, e in spans], np.int32),
      "splitter": splitter_tag(splitter),
      "pair_sentence": np.asarray(pair_sentence, np.int32),
      "pair_box": np.asarray(pair_box, np.float32).reshape(-1, 4),
      "pair_score": np.asarray([p.score for p in example.local_pairs], np.float32),
      "pair_is_full_image": np.asarray([p.is_full_image for p in example.local_pairs], bool),
      "source": example.source,
      "raw_caption": example.caption,
      "pair_norm_size": np.asarray([p.norm_size or (0.0, 0.0) for p in example.local_pairs],
                                   np.float32).reshape(-1, 2),
      "pair_hard_negatives": [text for texts in negatives for text in texts],
      "pair_hard_negative_count": np.asarray([len(texts) for texts in negatives], np.int32),
  }
  num_tokens = len(tok.encode(caption, normalize=False)) + 2
  return record, CaptionStats(len(spans), num_tokens, notes)


def _check_image(image, min_side: int, max_pixels: int | None, bad) -> tuple[str, ...]:
  """Refuses an image too small, or too large to decode; returns the notes on one written anyway.

  Reads the header only: a refused image costs no decoding.
  """
  header = images.read_header(image)
  named = f"image {os.fspath(image)}" if isinstance(image, (str, os.PathLike)) else "the image"
  if min_side and min(header.height, header.width) < min_side:
    raise bad(IMAGE_TOO_SMALL, f"{named} is {header.width}x{header.height} pixels, a side "
              f"under --min_image_side={min_side}")
  notes = []
  if header.format is not None:  # arrays are taken as they are
    try:
      factor = images.reduction(header.height, header.width, header.format, max_pixels)
    except images.ImageTooLargeError as e:
      raise bad(IMAGE_TOO_LARGE, f"{named}: {e}") from None
    if factor > 1:
      notes.append(f"JPEG over --max_image_pixels (decoded at 1/{factor} size or less)")
  if isinstance(image, (str, os.PathLike)):
    extension = os.path.splitext(os.fspath(image))[1].lower()
    expected = _EXTENSION_FORMATS.get(extension)
    if expected and header.format and header.format != expected and not (
        expected == "TIFF" and header.format.startswith("TIFF")):
      notes.append(f"{header.format} content in a {extension} file (read as {header.format})")
  return tuple(notes)


def check_detail_side(detail: bool, detail_short_side: int | None,
                      image_short_side: int | None) -> None:
  """A detail copy smaller than the stored image would make crops worse, not better."""
  if detail and detail_short_side and (not image_short_side
                                       or detail_short_side < image_short_side):
    raise ValueError(f"detail_short_side={detail_short_side} is below the stored image's short "
                     f"side ({image_short_side or 'original'}): use 0 (original pixels) or a "
                     "larger side, or no detail copy")


def _check_types(example, bad):
  """A wrong type from a reader is a bad record, never a str() of something else."""
  def expect(name, value, types):
    if not isinstance(value, types):
      raise bad(WRONG_FIELD_TYPE, f"{name} should be {types}, got {type(value).__name__}")

  expect("id", example.id, str)
  expect("caption", example.caption, str)
  expect("summary", example.summary, (str, type(None)))
  expect("source", example.source, str)
  expect("extra_captions", example.extra_captions, (tuple, list))
  for text in example.extra_captions:
    expect("extra caption", text, str)
  expect("local_pairs", example.local_pairs, (tuple, list))
  for pair in example.local_pairs:
    expect("local pair", pair, LocalPair)
    expect("local pair sentence", pair.sentence, (int, np.integer, str))
    expect("local pair score", pair.score, (int, float, np.number))
    expect("local pair hard negatives", pair.hard_negatives, (tuple, list))
    for text in pair.hard_negatives:
      expect("hard negative", text, str)
  if not example.id:
    raise bad(WRONG_FIELD_TYPE, "empty id")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_utf8(example, bad):
  """Text that was not UTF-8 never reaches a shard, nor gets "repaired" by the normaliser.

  Readers decode with `surrogateescape`, so each undecodable byte becomes one lone surrogate
  (U+DC80..U+DCFF); a JSON `\\udXXX` escape of half a pair is one too. Either would fail (or be
  replaced by ftfy) when the text is stored, far from the file it came from: here it is a bad
  record naming the field and the bytes.
  """
  texts = [("id", example.id), ("caption", example.caption), ("summary", example.summary or ""),
           ("source", example.source)]
  texts += [("extra caption", text) for text in example.extra_captions]
  texts += [("local pair sentence", pair.sentence) for pair in example.local_pairs
            if isinstance(pair.sentence, str)]
  texts += [("hard negative", text) for pair in example.local_pairs
            for text in pair.hard_negatives]
  for name, text in texts:
    found = _SURROGATE.search(text)
    if found:
      start = found.start()
      shown = "".join(_show_char(c) for c in text[max(0, start - 30):start + 10])
      raise bad(NOT_UTF8, f"the {name} is not UTF-8 text: {_show_char(found.group())} near "
                f"'{shown}'; re-encode the file as UTF-8, or pass --skip_bad to skip the record")


def _show_char(char: str) -> str:
  """A surrogateescape'd byte as `\\xNN`, another lone surrogate as `\\uNNNN`, else the char."""
  code = ord(char)
  if 0xDC80 <= code <= 0xDCFF:
    return f"\\x{code - 0xDC00:02x}"
  return f"\\u{code:04x}" if 0xD800 <= code <= 0xDFFF else char


def _check_spans(spans, length, bad):
  previous_end = 0
  for start, end in spans:
    if not previous_end <= start < end <= length:
      raise bad(NO_SENTENCE, f"splitter returned bad offsets {spans} for a caption of {length}")
    previous_end = end


_TRAILING = re.compile(r"[\s.!?;:,]+$")


def _sentence_key(text: str) -> str:
  """GOAL's sentences come without their period: compare without trailing punctuation."""
  return _TRAILING.sub("", text)


def _resolve_sentence(sentence, caption, spans, bad) -> int:
  """Sentence index of a local pair: checked index, or the split sentence its text names.

  Text is matched to the sentence with the same text (ignoring trailing punctuation), else to
  the one sentence that contains it (a GOAL sentence split by a finer rule); anything else fails.
  """
  if not isinstance(sentence, str):
    if not 0 <= int(sentence) < len(spans):
      raise bad(UNMATCHED_SENTENCE, f"local pair sentence {sentence} is out of range: the "
                f"caption has {len(spans)} sentences")
    return int(sentence)
  key = _sentence_key(tokenizer.normalize_text(sentence))
  texts = [_sentence_key(caption[s:e]) for s, e in spans]
  if key in texts:
    return texts.index(key)
  containing = [i for i, text in enumerate(texts) if key and key in text]
  if len(containing) == 1:
    return containing[0]
  raise bad(UNMATCHED_SENTENCE, f"local pair sentence {sentence[:80]!r} matches "
            f"{len(containing)} sentences of the caption (needs exactly one)")


def _hard_negatives(texts, sentence: str, bad) -> list[str]:
  """Normalised like the caption; an empty one, or one that is its own positive, is refused:
  the region would be asked to rank a caption below itself."""
  out = [tokenizer.normalize_text(text) for text in texts]
  positive = _sentence_key(sentence).lower()
  for text in out:
    if not text:
      raise bad(BAD_HARD_NEGATIVE, f"an empty hard negative for the pair of {sentence[:80]!r}")
    if _sentence_key(text).lower() == positive:
      raise bad(BAD_HARD_NEGATIVE, f"hard negative {text[:80]!r} is the pair's own sentence; "
                "remove it from the annotation")
  return out


def _check_box(box, original_size, bad) -> list[float]:
  """Box validated against the original (height, width); clipped inside after the tolerance."""
  try:
    x1, y1, x2, y2 = (float(v) for v in box)
  except (TypeError, ValueError) as e:
    raise bad(WRONG_FIELD_TYPE, f"box {box!r} is not 4 numbers") from e
  height, width = original_size
  if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
    raise bad(BAD_BOX, f"box {box!r} is empty or not finite")
  tol = BOX_TOLERANCE
  if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
    raise bad(BOX_OUTSIDE_IMAGE, f"box {box!r} lies outside the {width}x{height} (w x h) image")
  return [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]


def _summary(example, caption, spans, rule, normalize) -> str:
  field = normalize(example.summary) if example.summary else ""
  first = caption[spans[0][0]:spans[0][1]].strip()
  if rule == "auto":
    return field or first
  return {"first_sentence": first, "field": field, "none": ""}[rule]
