"""TFDS builders writing pre-segmented ArrayRecord shards, and the reading side for Grain.

One small generic builder class, parameterised by a `DatasetReader` and the dataset name, writes
`<data_dir>/<name>/<version>/<name>-<split>.array_record-*` with `file_format="array_record"`.
Records keep the reader's order (`disable_shuffling`, integer keys): Grain shuffles at read time.
Everything here works without TensorFlow (TFDS falls back to its numpy shim).

Preparing again is safe: `build` writes into a hidden staging folder next to the shards and swaps it
in only when every split succeeded, carrying over the splits of the same version that were not
prepared again (see `build`). Each split also gets `<name>-<split>.ids.json`, its record ids, so a
later preparation can check other splits for shared images without reading their shards.

Reading: `load_source(name, split, data_dir)` -> a `ShardSource` (len, random access, picklable)
for `grain.MapDataset.source(...)`; items are dicts of numpy values with str fields as `bytes`.
`decode_record(item)` turns one into plain Python/numpy types (str as `str`). A shard that no
longer reads back (a flipped byte: Riegeli's "chunk data hash mismatch", a cut file) raises
`CorruptShardError`, one line naming the file, the record and the `prepare` command to run.

Writing: `prepare` and `lism` hold `DatasetLock(name, data_dir)` while they write
`<data_dir>/<name>/`, so a second run into the same dataset stops at once; taking it removes the
staging folders a killed run left there. TFDS's writer keeps a split's records in a file until it
cuts the shards (`_RecordSpool`), so memory holds one record at a time, whatever the split's size.
"""
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import glob
import json
import operator
import os
import pathlib
import shutil
import struct
import tempfile
from typing import Any, Callable, Iterable, Iterator
import uuid

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle
from tqdm import tqdm

from goal_jax import files
from goal_jax.data import images
from goal_jax.data import raw
from goal_jax.data import records
from goal_jax.data.raw import DatasetReader

VERSION = "1.0.0"
RELEASE_NOTES = {"1.0.0": "Pre-segmented long-caption records (DESIGN.md shard record schema).",
                 "2.0.0": "Same records; the embedded `synthetic` generator's version 2.",
                 "3.0.0": "Same records; the embedded `synthetic` generator's version 3 (transfer "
                          "splits)."}
_EXAMPLES_PER_REASON = 5  # ids listed per skip reason in the summary
_STAGING_PREFIX = ".preparing-"  # `<data_dir>/<name>/.preparing-<version>-*`: a run in progress
# Options that change what a record holds; a kept split prepared with others is reported.
RECORD_OPTIONS = ("splitter", "image_short_side", "summary", "jpeg_quality", "generator",
                  "detail", "detail_short_side")
_STRING_FIELDS = ("id", "caption", "summary", "splitter", "source")
_ARRAY_FIELDS = {"original_size": np.int32, "sentence_starts": np.int32,
                 "sentence_ends": np.int32, "pair_sentence": np.int32,
                 "pair_score": np.float32, "pair_is_full_image": np.bool_}


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """What preparation does to each example; recorded in the dataset's metadata."""
  splitter: str = "sentencex"
  image_short_side: int | None = 256
  summary: str = "auto"
  jpeg_quality: int = 90
  skip_bad: bool = False
  num_workers: int = 0  # threads for image work; 0 = min(8, cpu count)
  generator: dict = dataclasses.field(default_factory=dict)  # embedded data: seed, version
  detail: bool = True  # store the detail copy for local crops and LISM (`goal_jax.data.detail`)
  detail_short_side: int = 0  # its short side; 0 = the original pixels (never upscaled)
  min_image_side: int = records.MIN_IMAGE_SIDE  # a smaller image is a bad record
  max_image_pixels: int = images.MAX_PIXELS  # above: JPEGs decoded smaller, others bad records


class SplitReport:
  """Counts for one split: written records, skips by reason, caption statistics."""

  def __init__(self):
    self.written = 0
    self.skipped = collections.Counter()
    self.skipped_examples = collections.defaultdict(list)
    self.sentences, self.tokens = [], []
    self.ids: list[str] = []  # written record ids, for the shared-image check across splits
    self.notes = collections.Counter()  # written records with a note (`CaptionStats.notes`)

  def add(self, stats: records.CaptionStats, record_id: str = ""):
    self.written += 1
    self.ids.append(record_id)
    self.sentences.append(stats.num_sentences)
    self.tokens.append(stats.num_tokens)
    self.notes.update(stats.notes)

  def skip(self, error: records.BadRecordError):
    self.skipped[error.reason] += 1
    if len(self.skipped_examples[error.reason]) < _EXAMPLES_PER_REASON:
      self.skipped_examples[error.reason].append(f"{error.record_id} ({error.file})")

  def as_dict(self) -> dict[str, Any]:
    tokens = np.asarray(self.tokens or [0])
    sentences = np.asarray(self.sentences or [0])
    return {
        "written": self.written,
        "skipped": dict(self.skipped),
        "skipped_examples": {k: list(v) for k, v in self.skipped_examples.items()},
        "sentences_per_caption": {"mean": float(sentences.mean()), "max": int(sentences.max())},
        "tokens_per_caption": {"mean": float(tokens.mean()),
                               "p95": float(np.percentile(tokens, 95)),
                               "max": int(tokens.max())},
        "truncated_share": float(np.mean(tokens > records.CAPTION_CONTEXT)),
        "notes": dict(self.notes),
    }


class RecordBuilder:
  """Mixin body of the per-dataset TFDS builders made by `builder_class`."""

  def __init__(self, *, reader: DatasetReader, manual_dir, splits, options: PrepareOptions,
               **kwargs):
    self._reader, self._manual_dir = reader, manual_dir
    self._splits, self._options = tuple(splits), options
    self.reports: dict[str, SplitReport] = {}
    super().__init__(file_format="array_record", **kwargs)

  def _info(self):
    options = dataclasses.asdict(self._options)
    return tfds.core.DatasetInfo(
        builder=self, description=f"{self.name}: long-caption records, pre-segmented.",
        features=records.features(), disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            options=options, splitter=records.splitter_tag(self._options.splitter),
            manual_dir=str(self._manual_dir or "")))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._splits}

  def _generate_examples(self, split: str):
    report = self.reports.setdefault(split, SplitReport())
    options = self._options
    tasks = _tasks(self.name, self._reader.read(self._manual_dir, split, **options.generator),
                   options)
    total = self._reader.count_entries(self._manual_dir, split, **options.generator)
    desc = f"{self.name}/{split}" + ("" if total is not None else " (total unknown)")
    with tqdm(desc=desc, total=total, unit=" records") as progress:
      for future in ordered_map(tasks, options.num_workers):
        progress.update(1)
        try:
          record, stats = future.result()
        except records.BadRecordError as e:
          if not options.skip_bad:
            if hasattr(e, "add_note"):  # Python 3.11+: shown under the traceback
              e.add_note("Fix or remove the record, or pass --skip_bad to skip it and count it "
                         "in the summary; the earlier shards (if any) are left as they were.")
            raise
          report.skip(e)
          continue
        yield report.written, record
        report.add(stats, record["id"])
    self.info.metadata.setdefault("reports", {})[split] = report.as_dict()
    if not report.written:
      raise ValueError(f"{self.name}/{split}: no record written (skipped: "
                       f"{dict(report.skipped)}); nothing to shard")


def _tasks(dataset: str, items, options: PrepareOptions) -> Iterator[Callable[[], Any]]:
  """One callable per reader item, in order: duplicate ids and reader errors become raisers."""
  seen = set()
  make = functools.partial(
      records.make_record, dataset=dataset, splitter=options.splitter,
      image_short_side=options.image_short_side, summary=options.summary,
      jpeg_quality=options.jpeg_quality, detail=options.detail,
      detail_short_side=options.detail_short_side, min_image_side=options.min_image_side,
      max_image_pixels=options.max_image_pixels)
  for item in items:
    if isinstance(item, records.BadRecord):
      yield functools.partial(_raise, records.BadRecordError(
          item.reason, item.detail, dataset=dataset, record_id=item.id, file=item.origin))
    elif isinstance(item, records.RawExample) and item.id in seen:
      yield functools.partial(_raise, records.BadRecordError(
          records.DUPLICATE_ID, "this id was already seen in the split", dataset=dataset,
          record_id=item.id, file=item.origin or item.source))
    else:
      if isinstance(item, records.RawExample):
        seen.add(item.id)
      yield functools.partial(make, item)


def _raise(error):
  raise error


def ordered_map(tasks: Iterable[Callable[[], Any]],
                workers: int = 0) -> Iterator[concurrent.futures.Future]:
  """Futures of `tasks` run on `workers` threads, yielded in order, a bounded window ahead.

  Host work (decoding, resizing, cropping) overlaps with the consumer while memory stays bounded:
  at most `4 * workers` tasks are in flight. `workers=0` means min(8, CPU count); 1 runs each
  task inline when its future is requested. A task's exception is raised by `future.result()`.
  """
  workers = workers or min(8, os.cpu_count() or 1)
  if workers <= 1:
    for task in tasks:
      future = concurrent.futures.Future()
      try:
        future.set_result(task())
      except Exception as e:  # pylint: disable=broad-except
        future.set_exception(e)
      yield future
    return
  pool = concurrent.futures.ThreadPoolExecutor(workers)
  try:
    pending = collections.deque()
    for task in tasks:
      pending.append(pool.submit(task))
      if len(pending) >= 4 * workers:
        yield pending.popleft()
    while pending:
      yield pending.popleft()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def unregistered_builder_class(name: str, body: type, suffix: str, version: str = VERSION):
  """A TFDS `GeneratorBasedBuilder` for dataset `name` with `body` mixed in, made at run time.

  The class is kept out of TFDS's global registry, so any dataset name can be written (by
  `prepare` and by LISM's output) without clashing with TFDS's own datasets.
  """
  with tfds.core.registered.skip_registration():
    return type(f"{name}_{suffix}", (body, tfds.core.GeneratorBasedBuilder), {
        "name": name, "VERSION": tfds.core.Version(version), "RELEASE_NOTES": RELEASE_NOTES,
        "__module__": body.__module__,
        # No checksums file or code folder: without this TFDS probes the package with
        # `importlib_resources`, which is not installed.
        "code_path": None,
        # Nothing is downloaded: TFDS's "Downloading and preparing dataset Unknown size" and
        # "downloaded and prepared to <staging folder>" banners (plain prints) only mislead.
        "_log_download_bytes": lambda self: None, "_log_download_done": lambda self: None})


@functools.lru_cache(maxsize=None)
def builder_class(name: str, version: str = VERSION):
  """The TFDS builder class of dataset `name` (not put in TFDS's global registry)."""
  return unregistered_builder_class(name, RecordBuilder, "records", version)


def dataset_version(options: PrepareOptions) -> str:
  """The TFDS version written: the generator's major version for embedded data, else VERSION."""
  version = options.generator.get("version")
  return VERSION if version is None else f"{int(version)}.0.0"


class BuildReports(dict):
  """`{split: SplitReport}` of one `build`, with what it did to the splits already on disk.

  Attributes:
    kept: earlier splits of the same version not prepared again, carried over unchanged.
    discarded: earlier splits that could not be carried over, with the reason.
  """

  def __init__(self, reports, kept=(), discarded=None):
    super().__init__(reports)
    self.kept, self.discarded = list(kept), dict(discarded or {})


def build(name: str, reader: DatasetReader, data_dir, *, manual_dir=None, splits,
          options: PrepareOptions = PrepareOptions()) -> BuildReports:
  """Writes the shards of `splits`, swapped in only on success; returns the split reports.

  Why: TFDS deletes a dataset's folder before it regenerates it, so a failed run (say, a corrupt
  image without `skip_bad`) left nothing, and preparing one split deleted the others. Here TFDS
  writes into a staging folder `<data_dir>/<name>/.preparing-<version>-*` (a sibling of the
  version folder, so on the same filesystem). On success the splits of the earlier preparation of
  this version that were not prepared again are carried into it (shards hard-linked, else copied;
  split infos, reports, options and id lists merged), and it replaces `<name>/<version>` by one
  atomic exchange of the two folders where the OS has one (Linux `renameat2`), else by two renames
  (the old folder is put back if the second fails). On any failure, interruption included, the
  staging folder is removed and the earlier shards stay as they were, byte for byte.
  """
  version = dataset_version(options)
  with staged_version_dir(name, version, data_dir) as staging:
    builder = builder_class(name, version)(
        reader=reader, manual_dir=manual_dir, splits=splits, options=options,
        data_dir=os.fspath(staging))
    generate(builder)
    fresh = staging / name / version
    for split, report in builder.reports.items():
      (fresh / ids_file_name(name, split)).write_text(json.dumps(report.ids), encoding="utf-8")
    kept, discarded = _carry_over(pathlib.Path(data_dir) / name / version, fresh, name)
  return BuildReports(builder.reports, kept, discarded)


def generate(builder) -> None:
  """Runs a TFDS builder's generation (no downloads: the records come from its reader), holding
  one record in memory at a time (`_RecordSpool`)."""
  tfds.disable_progress_bar()  # ours counts records, skips included
  with tempfile.TemporaryDirectory() as downloads, _spooled_records():
    builder.download_and_prepare(
        download_dir=downloads,
        download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))


@contextlib.contextmanager
def _spooled_records() -> Iterator[None]:
  """TFDS's writer keeps the records of our (ordered) datasets in a `_RecordSpool` meanwhile."""
  shuffler = tfds_shuffle.Shuffler
  tfds_shuffle.Shuffler = _spool_or_shuffler(shuffler)
  try:
    yield
  finally:
    tfds_shuffle.Shuffler = shuffler


def _spool_or_shuffler(shuffler):
  """TFDS's `Shuffler` factory: a `_RecordSpool` for datasets kept in order (ours), else TFDS's."""
  def make(dirpath, hash_salt, disable_shuffling: bool = False, **kwargs):
    if disable_shuffling:
      return _RecordSpool(dirpath)
    return shuffler(dirpath, hash_salt, disable_shuffling=disable_shuffling, **kwargs)
  return make


class _RecordSpool:
  """What TFDS's writer holds a split's records in until it cuts them into shards: one file.

  Why: TFDS's `Shuffler` keeps every serialized record in memory up to 1 GB, then moves them to
  bucket files through `tf.io.gfile`, which needs TensorFlow (not installed: a split over 1 GB,
  some 500 photos of 12 MP with detail copies, failed with `No module named 'tensorflow'`); and
  with TensorFlow the keys of a dataset kept in order all fall into its first bucket, which is
  read back and sorted in memory: the whole split in RAM. Our records come in key order (0, 1,
  2...), so nothing needs sorting: each is appended to a file next to the shards and read back in
  order while the shards are written, then the file is deleted. Memory: one record.
  """

  _HEADER = struct.Struct("<QQ")  # key, size of the record

  def __init__(self, dirpath):
    self._path = os.path.join(os.fspath(dirpath), f"records-{uuid.uuid4().hex}.spool")
    self._file = None
    self._last_key = -1
    self.num_examples = self.size = 0

  @property
  def bucket_lengths(self) -> list[int]:
    return [self.num_examples]

  def add(self, key, data: bytes) -> None:
    if int(key) <= self._last_key:
      raise ValueError(f"records must come in key order: key {key} after {self._last_key}")
    if self._file is None:
      os.makedirs(os.path.dirname(self._path), exist_ok=True)
      self._file = open(self._path, "wb")  # pylint: disable=consider-using-with
    self._last_key = int(key)
    self._file.write(self._HEADER.pack(self._last_key, len(data)))
    self._file.write(data)
    self.num_examples += 1
    self.size += len(data)

  def __iter__(self) -> Iterator[tuple[int, bytes]]:
    if self._file is None:
      return
    self._file.close()
    try:
      with open(self._path, "rb") as spool:
        while header := spool.read(self._HEADER.size):
          key, size = self._HEADER.unpack(header)
          yield key, spool.read(size)
    finally:
      os.remove(self._path)


class DatasetLock(files.FolderLock):
  """`with DatasetLock(name, data_dir):` — one run at a time writes `<data_dir>/<name>/`.

  `prepare` and `lism` hold it for their whole run (`files.FolderLock`: a live holder is named in
  the refusal, a stale one taken over with a warning). Once taken, the staging folders in it
  (`.preparing-*`, see `build`) can only be a killed run's: they are removed, with a one-line
  warning.
  """

  def __init__(self, name: str, data_dir):
    super().__init__(pathlib.Path(data_dir) / name, what="dataset folder")

  def acquire(self) -> None:
    super().acquire()
    stale = sorted(pathlib.Path(self.folder).glob(f"{_STAGING_PREFIX}*"))
    for path in stale:
      shutil.rmtree(path, ignore_errors=True)
    if stale:
      logging.warning("Removed %d staging folder(s) left in %s by a run that was killed: %s",
                      len(stale), self.folder, ", ".join(p.name for p in stale))


def check_data_dir(data_dir, name: str) -> None:
  """Refuses, before any work, a `data_dir` where `<data_dir>/<name>/` cannot be written."""
  files.check_writable(pathlib.Path(data_dir) / name, "the dataset folder",
                       "pass --data_dir=<a writable folder>")


@contextlib.contextmanager
def staged_version_dir(name: str, version: str, data_dir) -> Iterator[pathlib.Path]:
  """Yields a staging data_dir; `<staging>/<name>/<version>`, once the block ends without an
  error, replaces `<data_dir>/<name>/<version>` (see `build`). The staging folder always goes.
  The caller holds `DatasetLock(name, data_dir)`."""
  parent = pathlib.Path(data_dir) / name
  created = not parent.exists()
  parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{version}-", dir=parent))
  try:
    yield staging
    files.replace_directory(staging / name / version, parent / version)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    if created and parent.is_dir() and not any(parent.iterdir()):
      parent.rmdir()


def ids_file_name(name: str, split: str) -> str:
  """The id list of a split: named like its shards, so it travels with them."""
  return f"{name}-{split}.ids.json"


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _carry_over(old: pathlib.Path, fresh: pathlib.Path,
                name: str) -> tuple[list[str], dict[str, str]]:
  """Brings the splits of `old` that `fresh` lacks into `fresh`: shards, split info, metadata.

  TFDS keeps everything a reader needs per split in `dataset_info.json` (its `splits` list: name,
  shard lengths, file name template) and the shard files themselves; `features.json` is common.
  So a kept split is its files (`<name>-<split>.*`) plus its entry in that list, and its report,
  options and id list in `metadata.json`/`*.ids.json`. Returns (kept, {discarded: reason}).
  """
  info = _read_json(fresh / "dataset_info.json")
  metadata = _read_json(fresh / "metadata.json")
  prepared = [split["name"] for split in info.get("splits", [])]
  now = {"options": metadata.get("options", {}), "splitter": metadata.get("splitter"),
         "manual_dir": metadata.get("manual_dir")}
  split_options = {split: now for split in prepared}
  kept, discarded = [], {}
  old_info = _read_json(old / "dataset_info.json")
  if old_info:
    old_metadata = _read_json(old / "metadata.json")
    earlier = {key: old_metadata.get(key) for key in now}
    same_features = ((old / "features.json").is_file() and (old / "features.json").read_bytes()
                     == (fresh / "features.json").read_bytes())
    by_name = {split["name"]: split for split in info.get("splits", [])}
    merged = []
    for split_info in old_info.get("splits", []):
      split = split_info["name"]
      if split in by_name:
        merged.append(by_name.pop(split))
        continue
      if not same_features:
        discarded[split] = "its records have other features (an older record schema)"
        continue
      for path in sorted(old.glob(f"{glob.escape(name)}-{glob.escape(split)}.*")):
        _link_or_copy(path, fresh / path.name)
      merged.append(split_info)
      if split in old_metadata.get("reports", {}):
        metadata.setdefault("reports", {})[split] = old_metadata["reports"][split]
      split_options[split] = old_metadata.get("split_options", {}).get(split, earlier)
      kept.append(split)
    info["splits"] = merged + list(by_name.values())
  metadata["split_options"] = split_options
  (fresh / "dataset_info.json").write_text(json.dumps(info, indent=4), encoding="utf-8")
  (fresh / "metadata.json").write_text(json.dumps(metadata, indent=4), encoding="utf-8")
  return kept, discarded


def _link_or_copy(source: pathlib.Path, target: pathlib.Path):
  """A hard link (no copy of GBs of shards), a copy where the filesystem has none."""
  try:
    os.link(source, target)
  except OSError:
    shutil.copy2(source, target)


def dataset_dir(name: str, data_dir) -> pathlib.Path:
  """`<data_dir>/<name>/<version>` of the newest prepared version."""
  root = pathlib.Path(data_dir) / name
  versions = sorted((p for p in root.glob("*") if (p / "dataset_info.json").is_file()),
                    key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))
  if not versions:
    raise FileNotFoundError(f"no prepared dataset {name!r} under {data_dir}: run `python -m "
                            f"goal_jax.prepare --dataset={name} --data_dir={data_dir}`")
  return versions[-1]


def load_source(name: str, split: str, data_dir) -> "ShardSource":
  """Random-access source of a prepared split (len, `[i]` -> dict; str fields as `bytes`)."""
  builder = tfds.builder_from_directory(os.fspath(dataset_dir(name, data_dir)))
  if split not in builder.info.splits:
    raise ValueError(f"{name} has no prepared split {split!r} in {builder.data_dir}; "
                     f"prepared: {sorted(builder.info.splits)}")
  return ShardSource(builder.as_data_source(split=split), name, split, data_dir)


class CorruptShardError(ValueError):
  """A prepared shard that does not read back; the message (one line) names the file, the
  record and the command that writes the split again. Training saves its checkpoint first."""


class ShardSource:
  """The records of a prepared split: TFDS's `ArrayRecordDataSource` (len, `[i]`, picklable),
  with a read that fails raised as `CorruptShardError`.

  ArrayRecord files are Riegeli files whose chunks carry a hash, so a byte changed on disk (a bad
  sector, a truncated copy) fails the read of the records in that chunk, with Riegeli's
  "chunk data hash mismatch" as a bare `RuntimeError` from deep in the reader.
  """

  def __init__(self, source, name: str, split: str, data_dir):
    self._source, self.name, self.split = source, name, split
    self.data_dir = os.fspath(data_dir)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    index = operator.index(index)
    if not 0 <= index < len(self._source):
      raise IndexError(f"record {index} out of range [0, {len(self._source)})")
    try:
      return self._source[index]
    except Exception as e:  # noqa: BLE001 - any failure to read a record is the file's
      raise CorruptShardError(self._corrupt_message(index, e)) from e

  def __repr__(self) -> str:
    return f"ShardSource({self.name}/{self.split} in {self.data_dir})"

  def _corrupt_message(self, index: int, error: Exception) -> str:
    where, in_file = f"a shard of {self.name}/{self.split} in {self.data_dir}", ""
    # pylint: disable=protected-access
    try:  # array_record's private mapping from a split's index to (file, position in it)
      reader = self._source.data_source
      file_index, position = reader._reader_idx_and_position(index)
      where = f"shard {reader._read_instructions[file_index].filename}"
      in_file = f" (record {position} of that file)" if position != index else ""
    except Exception:  # noqa: BLE001 - a newer array_record: name the split only
      pass
    cause = " ".join(str(error).split()).split(" (")[0][:160] or type(error).__name__
    return (f"{where} is corrupt: record {index} of {self.name}/{self.split}{in_file} does not "
            f"read ({cause}); {rewrite_advice(self.name, self.data_dir, self.split)}")


_FLAG_DEFAULTS = {"splitter": "sentencex", "image_short_side": 256, "summary": "auto",
                  "jpeg_quality": 90, "detail": True, "detail_short_side": 0, "skip_bad": False,
                  "min_image_side": records.MIN_IMAGE_SIDE,
                  "max_image_pixels": images.MAX_PIXELS}


def rewrite_advice(name: str, data_dir, split: str | None = None) -> str:
  """What to run to write `split` (all: None) of a prepared dataset again as it was made.

  From the dataset's metadata: `prepare` with its manual dir and the options that differ from
  the flags' defaults, or for a LISM output the `lism` command (its matches are kept, so only
  the output is written again).
  """
  try:
    metadata = prepared_metadata(name, data_dir)
  except (FileNotFoundError, OSError, ValueError):
    metadata = {}
  split_flag = f" --split={split}" if split else ""
  if "lism" in metadata:
    matching = metadata["lism"].get(split, {}).get("matching", {}) if split else {}
    checkpoint = str(matching.get("scorer", "<the scorer's checkpoint>")).split(" dtype=")[0]
    return (f"write the LISM output again (its mined matches are kept): python -m goal_jax.lism "
            f"--data_dir={data_dir} --dataset={metadata.get('source_dataset', '<source>')}"
            f"{split_flag} --out_dataset={name} --checkpoint={checkpoint} and the options it "
            "was mined with")
  entry = metadata.get("split_options", {}).get(split, metadata) if split else metadata
  options = dict(entry.get("options") or {})
  flags = [f"--dataset={name}"]
  manual_dir = entry.get("manual_dir") or metadata.get("manual_dir")
  if manual_dir:
    flags.append(f"--manual_dir={manual_dir}")
  elif name in raw.READERS and raw.get_reader(name).needs_manual_dir:
    flags.append("--manual_dir=<the raw files>")
  flags.append(f"--data_dir={data_dir}")
  if split:
    flags.append(f"--split={split}")
  if "image_short_side" in options:
    options["image_short_side"] = options["image_short_side"] or 0
  for key, default in _FLAG_DEFAULTS.items():
    value = options.get(key, default)
    if value == default:
      continue
    if isinstance(value, bool):
      flags.append(f"--{'' if value else 'no'}{key}")
    else:
      flags.append(f"--{key}={value}")
  generator = options.get("generator") or {}
  flags += [f"--{key}={generator[key]}" for key in ("seed", "version") if key in generator]
  what = f"the split {split}" if split else "the dataset"
  kept = " (its other splits are kept)" if split else ""
  return f"prepare {what} again{kept}: python -m goal_jax.prepare {' '.join(flags)}"


def version_dir(name: str, data_dir, version: str | None = None) -> pathlib.Path:
  """`<data_dir>/<name>/<version>`; the newest prepared version when `version` is None."""
  return dataset_dir(name, data_dir) if version is None else pathlib.Path(data_dir) / name / version


def prepared_splits(name: str, data_dir, version: str | None = None) -> list[str]:
  """The splits of a prepared dataset, in the order TFDS lists them (newest version: None)."""
  info = _read_json(version_dir(name, data_dir, version) / "dataset_info.json")
  return [split["name"] for split in info.get("splits", [])]


def prepared_metadata(name: str, data_dir, version: str | None = None) -> dict[str, Any]:
  """The options and per-split reports stored with a prepared dataset (newest version: None).

  `options`/`splitter`/`manual_dir` are those of the latest preparation; `split_options[split]`
  holds each split's own (a split kept from an earlier run may differ).
  """
  return _read_json(version_dir(name, data_dir, version) / "metadata.json")


def upscaling_note(name: str, split: str, data_dir, image_size: int) -> str | None:
  """Why a split's images reach a model of `image_size` pixels upscaled, or None: its stored
  copies were prepared with `--image_short_side` below it (224 for a 336-pixel model)."""
  metadata = prepared_metadata(name, data_dir)
  side = ((metadata.get("split_options", {}).get(split, metadata).get("options") or {})
          .get("image_short_side"))
  if not side or side >= image_size:
    return None
  return (f"{name}/{split} was prepared with --image_short_side={side}, below the model's "
          f"{image_size}-pixel input: every image is upscaled; prepare it again with "
          f"--image_short_side={image_size} (or 0, the original pixels)")


def split_ids(name: str, split: str, data_dir, version: str | None = None) -> list[str] | None:
  """The record ids of a prepared split, from its id list; None if it has none (older runs)."""
  path = version_dir(name, data_dir, version) / ids_file_name(name, split)
  return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def decode_record(raw: dict[str, Any]) -> dict[str, Any]:
  """A shard item (or a `make_record` output) as plain types: str, bytes, numpy arrays."""
  out = {key: _to_str(raw[key]) for key in _STRING_FIELDS}
  out["image"] = bytes(raw["image"])
  # Shards older than the detail copy have no such fields: read as "no detail copy".
  out["detail_tiles"] = [bytes(tile) for tile in raw.get("detail_tiles", ())]
  out["detail_layout"] = np.asarray(raw.get("detail_layout", (0, 0, 0)), np.int32).reshape(3)
  out["extra_captions"] = [_to_str(c) for c in raw["extra_captions"]]
  for key, dtype in _ARRAY_FIELDS.items():
    out[key] = np.asarray(raw[key], dtype).reshape(-1)
  out["pair_box"] = np.asarray(raw["pair_box"], np.float32).reshape(-1, 4)
  # Fields newer than some shards: absent reads as "none" (an empty raw caption, no JSON size).
  out["raw_caption"] = _to_str(raw.get("raw_caption", ""))
  norm = raw.get("pair_norm_size")
  out["pair_norm_size"] = (np.zeros((len(out["pair_sentence"]), 2), np.float32) if norm is None
                           else np.asarray(norm, np.float32).reshape(-1, 2))
  out["pair_hard_negatives"] = [_to_str(t) for t in raw.get("pair_hard_negatives", ())]
  count = raw.get("pair_hard_negative_count")  # absent: no pair has hard negatives
  out["pair_hard_negative_count"] = (np.zeros(len(out["pair_sentence"]), np.int32) if count is None
                                     else np.asarray(count, np.int32).reshape(-1))
  return {key: out[key] for key in records.FIELDS}


def _to_str(value) -> str:
  return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)
