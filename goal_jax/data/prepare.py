"""Raw layout -> pre-segmented ArrayRecord shards, with a summary (`python -m goal_jax.prepare`).

Without `splits`, every split whose raw files are present is prepared (empty ones are dropped). A
bad record (missing/corrupt image, empty caption, no sentence, a sentence over the 248-token
context, a box outside the image, a duplicate id, a wrong field type, text that is not UTF-8, an
image path that leaves the manual dir) raises `records.BadRecordError` naming the dataset, the
record and the file; `skip_bad` skips it and counts it in the summary.

Each record stores its image twice: a small copy for the global pair (`image_short_side`, 256),
and a detail copy (`detail`) that GOAL's local crops and LISM read: the original pixels
(`detail_short_side` caps its short side) as 256-pixel JPEG tiles, so a crop decodes only the tiles
its box overlaps (`goal_jax.data.detail`). Data that only MulCLIP or global fine-tuning reads needs
none.

Images with a side under `min_image_side` (32) are bad records; a JPEG over `max_image_pixels`
(100 MP) is decoded at 1/2..1/8 size, another image over it is a bad record; an image whose
content is another format than its extension says is read as what it is. The last two are counted
in the summary's notes.

Preparing again is safe: the shards are written into a staging folder next to the earlier ones and
swapped in only when every split succeeded, so a failed run leaves the earlier shards as they were.
One run at a time prepares a dataset (`builder.DatasetLock`: a second stops at once, naming the
first), and an unwritable `data_dir` is refused before any work.
Splits of that dataset version not prepared again are kept (the summary lists them, and warns
when they were prepared with other options). An image id found in two splits (say train and
test) is a warning in the summary, with the count; splits kept from an earlier run are compared
too. Splits that share images by design (DOCCI `test_qual` and its parts, DCI `full`) are not
compared. Generated datasets (`synthetic`) take `seed` (another draw with the same statistics) and
`version` (the generator's version, written as the TFDS version `<version>.0.0`; 1 reproduces the
original benchmark); the options are recorded in the dataset's metadata.
"""
import pathlib
from typing import Any, Sequence

from goal_jax.data import builder as builder_lib
from goal_jax.data import images
from goal_jax.data import raw
from goal_jax.data import records

_SHARED_EXAMPLES = 5  # shared ids named in the summary


def prepare(name: str, data_dir, manual_dir=None, *, splits: Sequence[str] | None = None,
            image_short_side: int | None = 256, splitter: str = "sentencex",
            summary: str = "auto", skip_bad: bool = False, jpeg_quality: int = 90,
            num_workers: int = 0, seed: int | None = None, version: int | None = None,
            detail: bool = True, detail_short_side: int = 0,
            min_image_side: int = records.MIN_IMAGE_SIDE,
            max_image_pixels: int = images.MAX_PIXELS, verbose: bool = True) -> dict[str, Any]:
  """Writes the shards of dataset `name` under `<data_dir>/<name>/` and returns the summary.

  Args:
    name: a key of `goal_jax.data.raw.READERS`.
    data_dir: output root.
    manual_dir: the raw files (not needed for `synthetic` and `photos`).
    splits: splits to prepare; None = those available, empty ones dropped.
    image_short_side: pre-resize short side (never upscaled); 0/None keeps original pixels.
    splitter: sentence splitter (`goal_jax.text.sentences`): `sentencex`, or `goal` to
      reproduce GOAL's `split('.')` exactly.
    summary: `auto`, `first_sentence`, `field` or `none` (see `records.make_record`).
    skip_bad: skip and count bad records instead of raising.
    jpeg_quality: JPEG quality of the stored images.
    num_workers: threads decoding and resizing images (0: up to 8).
    seed, version: generator seed and version of a generated dataset (default its reader's).
    detail: also store the detail copy that GOAL's local crops and LISM read
      (`goal_jax.data.detail`); MulCLIP and global fine-tuning need none.
    detail_short_side: its short side: 0 keeps the original pixels; never upscaled.
    min_image_side: an image with a smaller side is a bad record; 0: no minimum.
    max_image_pixels: a JPEG over it is decoded at 1/2..1/8 size, another image over it is a bad
      record; 0: no limit.
    verbose: print the summary.

  Returns:
    {"dataset", "data_dir", "version", "options", "splits": {split: counts}, "dropped_empty",
     "kept_splits": earlier splits not prepared again (kept as they were),
     "kept_with_other_options": {split: {option: [earlier, now]}},
     "discarded_splits": {split: why an earlier split could not be kept},
     "shared_ids": {"count": ids in more than one split, "pairs": {"a/b": count},
                    "examples": [...], "unchecked": kept splits without an id list}}.
  """
  records.check_detail_side(detail, detail_short_side, image_short_side)
  if min_image_side < 0 or max_image_pixels < 0:
    raise ValueError(f"min_image_side={min_image_side} and max_image_pixels={max_image_pixels} "
                     "must be >= 0 (0: no limit)")
  reader = raw.get_reader(name)
  if reader.needs_manual_dir and manual_dir is None:
    raise ValueError(f"{name} needs --manual_dir: the folder with its raw files")
  builder_lib.check_data_dir(data_dir, name)
  generator = _generator_options(name, reader, seed=seed, version=version)
  dropped = []
  if splits is None:
    splits = []
    for split in reader.available_splits(manual_dir):
      (splits if _has_items(reader, manual_dir, split, generator) else dropped).append(split)
    if not splits:
      raise ValueError(f"{name}: no split has any entry in {manual_dir}")
  else:
    unknown = [s for s in splits if s not in reader.splits]
    if unknown:
      raise ValueError(f"{name} has no split(s) {unknown}; splits: {reader.splits}")
  options = builder_lib.PrepareOptions(
      splitter=splitter, image_short_side=image_short_side or None, summary=summary,
      jpeg_quality=jpeg_quality, skip_bad=skip_bad, num_workers=num_workers,
      generator=generator, detail=detail, detail_short_side=detail_short_side or 0,
      min_image_side=min_image_side, max_image_pixels=max_image_pixels)
  with builder_lib.DatasetLock(name, data_dir):
    result = _build(name, reader, data_dir, manual_dir, splits, options, dropped)
  if verbose:
    print(format_summary(result))
  return result


def _build(name, reader, data_dir, manual_dir, splits, options, dropped) -> dict[str, Any]:
  """`build`, then the summary (read while the lock is held: nothing moves under it)."""
  reports = builder_lib.build(name, reader, data_dir, manual_dir=manual_dir, splits=splits,
                              options=options)
  version = builder_lib.dataset_version(options)
  metadata = builder_lib.prepared_metadata(name, data_dir, version)
  generator = options.generator
  return {
      "dataset": name, "data_dir": str(pathlib.Path(data_dir) / name / version),
      "version": version, "options": {
          "splitter": options.splitter, "image_short_side": options.image_short_side,
          "summary": options.summary, "skip_bad": options.skip_bad,
          "jpeg_quality": options.jpeg_quality, "detail": options.detail,
          "detail_short_side": options.detail_short_side,
          "min_image_side": options.min_image_side,
          "max_image_pixels": options.max_image_pixels, **generator},
      "splits": {split: report.as_dict() for split, report in reports.items()},
      "dropped_empty": dropped,
      "kept_splits": list(reports.kept),
      "kept_with_other_options": _other_options(metadata, reports.kept),
      "discarded_splits": dict(reports.discarded),
      "shared_ids": _shared_ids(name, reader, data_dir, version, reports),
  }


def _generator_options(name, reader, **given) -> dict[str, Any]:
  """The reader's generator options with what was given; an error for datasets read from files."""
  given = {k: v for k, v in given.items() if v is not None}
  if reader.generator is None:
    if given:
      raise ValueError(f"{name} is read from files: --{'/--'.join(given)} only apply to "
                       "generated datasets (synthetic)")
    return {}
  return {**reader.generator, **given}


def _has_items(reader, manual_dir, split, generator) -> bool:
  items = reader.read(manual_dir, split, **generator)
  try:
    return next(iter(items), None) is not None
  finally:
    getattr(items, "close", lambda: None)()


def _other_options(metadata, kept) -> dict[str, dict[str, list[Any]]]:
  """{kept split: {option: [earlier, now]}} for options that change what a record holds."""
  split_options = metadata.get("split_options", {})
  def record_options(entry):
    options = entry.get("options") or {}
    return {**{k: options.get(k) for k in builder_lib.RECORD_OPTIONS},
            "manual_dir": entry.get("manual_dir")}
  now = record_options(metadata)
  differ = {}
  for split in kept:
    earlier = record_options(split_options.get(split, {}))
    changed = {k: [earlier[k], now[k]] for k in now if earlier[k] != now[k]}
    if changed:
      differ[split] = changed
  return differ


def _shared_ids(name, reader, data_dir, version, reports) -> dict[str, Any]:
  """Ids written to more than one split (train/test leakage), kept splits included.

  Pairs of splits that hold the same images by design (`DatasetReader.contains`) are skipped.
  """
  ids = {split: set(report.ids) for split, report in reports.items()}
  unchecked = []
  for split in reports.kept:
    kept = builder_lib.split_ids(name, split, data_dir, version)
    if kept is None:
      unchecked.append(split)
    else:
      ids[split] = set(kept)
  pairs, shared = {}, set()
  order = {split: index for index, split in enumerate(reader.splits)}
  names = sorted(ids, key=lambda split: order.get(split, len(order)))  # "train/test", not reverse
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      if reader.share_images(a, b):
        continue
      both = ids[a] & ids[b]
      if both:
        pairs[f"{a}/{b}"] = len(both)
        shared |= both
  return {"count": len(shared), "pairs": pairs,
          "examples": sorted(shared)[:_SHARED_EXAMPLES], "unchecked": unchecked}


def format_summary(result: dict[str, Any]) -> str:
  """Human-readable summary: per split, written, skipped by reason, caption statistics."""
  lines = [f"{result['dataset']} {result['version']} -> {result['data_dir']}"]
  for split, counts in result["splits"].items():
    tokens, sentences = counts["tokens_per_caption"], counts["sentences_per_caption"]
    lines.append(
        f"  {split}: {counts['written']} records; sentences/caption mean "
        f"{sentences['mean']:.2f} max {sentences['max']}; tokens/caption mean "
        f"{tokens['mean']:.1f} p95 {tokens['p95']:.0f} max {tokens['max']}; truncated at 248: "
        f"{100 * counts['truncated_share']:.1f}%")
    for reason, count in counts["skipped"].items():
      examples = ", ".join(counts["skipped_examples"].get(reason, []))
      lines.append(f"    skipped {count} ({reason}), e.g. {examples}")
    for note, count in counts.get("notes", {}).items():
      lines.append(f"    note: {count} record(s) written with {note}")
  if result["dropped_empty"]:
    lines.append(f"  empty splits not written: {', '.join(result['dropped_empty'])}")
  if result.get("kept_splits"):
    lines.append(f"  kept from the earlier preparation (not prepared again): "
                 f"{', '.join(result['kept_splits'])}")
  differing = {}  # one line per set of differences
  for split, changed in result.get("kept_with_other_options", {}).items():
    what = "; ".join(f"{k} {earlier!r} (now {now!r})" for k, (earlier, now) in changed.items())
    differing.setdefault(what, []).append(split)
  for what, splits in differing.items():
    lines.append(f"  warning: kept split(s) {', '.join(splits)} were prepared with other "
                 f"options: {what}")
  for split, why in result.get("discarded_splits", {}).items():
    lines.append(f"  warning: earlier split {split} was removed: {why}; prepare it again")
  shared = result.get("shared_ids") or {}
  if shared.get("count"):
    pairs = ", ".join(f"{pair}: {count}" for pair, count in shared["pairs"].items())
    lines.append(f"  warning: {shared['count']} image ids appear in more than one split "
                 f"({pairs}), e.g. {', '.join(shared['examples'])}")
  if shared.get("unchecked"):
    lines.append(f"  not checked for shared ids (no id list, prepared by an older version): "
                 f"{', '.join(shared['unchecked'])}")
  return "\n".join(lines)
