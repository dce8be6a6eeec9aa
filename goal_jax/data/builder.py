"""TFDS builders writing pre-segmented ArrayRecord shards, and the reading side for Grain.

One small generic builder class, parameterised by a `DatasetReader` and the dataset name, writes
`<data_dir>/<name>/<version>/<name>-<split>.array_record-*` with `file_format="array_record"`.
Records keep the reader's order (`disable_shuffling`, integer keys): Grain shuffles at read time.
Everything here works without TensorFlow (TFDS falls back to its numpy shim).

Reading: `load_source(name, split, data_dir)` -> TFDS `ArrayRecordDataSource` (len, random access,
picklable) for `grain.MapDataset.source(...)`; items are dicts of numpy values with str fields as
`bytes`. `decode_record(item)` turns one into plain Python/numpy types (str as `str`).
"""
import collections
import concurrent.futures
import dataclasses
import functools
import os
import pathlib
import tempfile
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from goal_jax.data import records
from goal_jax.data.raw import DatasetReader

VERSION = "1.0.0"
RELEASE_NOTES = {"1.0.0": "Pre-segmented long-caption records (DESIGN.md shard record schema).",
                 "2.0.0": "Same records; the embedded `synthetic` generator's version 2."}
_EXAMPLES_PER_REASON = 5  # ids listed per skip reason in the summary
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


class SplitReport:
  """Counts for one split: written records, skips by reason, caption statistics."""

  def __init__(self):
    self.written = 0
    self.skipped = collections.Counter()
    self.skipped_examples = collections.defaultdict(list)
    self.sentences, self.tokens = [], []

  def add(self, stats: records.CaptionStats):
    self.written += 1
    self.sentences.append(stats.num_sentences)
    self.tokens.append(stats.num_tokens)

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
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
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
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    report = self.reports.setdefault(split, SplitReport())
    options = self._options
    tasks = _tasks(self.name, self._reader.read(self._manual_dir, split, **options.generator),
                   options)
    with tqdm(desc=f"{self.name}/{split}", unit=" records") as progress:
      for future in ordered_map(tasks, options.num_workers):
        progress.update(1)
        try:
          record, stats = future.result()
        except records.BadRecordError as e:
          if not options.skip_bad:
            raise
          report.skip(e)
          continue
        yield report.written, record
        report.add(stats)
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
      jpeg_quality=options.jpeg_quality)
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
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.core.registered.skip_registration():
    return type(f"{name}_{suffix}", (body, tfds.core.GeneratorBasedBuilder), {
        "name": name, "VERSION": tfds.core.Version(version), "RELEASE_NOTES": RELEASE_NOTES,
        "__module__": body.__module__,
        # No checksums file or code folder: without this TFDS probes the package with
        # `importlib_resources`, which is not installed.
        "code_path": None})


@functools.lru_cache(maxsize=None)
def builder_class(name: str, version: str = VERSION):
  """The TFDS builder class of dataset `name` (not put in TFDS's global registry)."""
  return unregistered_builder_class(name, RecordBuilder, "records", version)


def dataset_version(options: PrepareOptions) -> str:
  """The TFDS version written: the generator's major version for embedded data, else VERSION."""
  version = options.generator.get("version")
  return VERSION if version is None else f"{int(version)}.0.0"


def build(name: str, reader: DatasetReader, data_dir, *, manual_dir=None, splits,
          options: PrepareOptions = PrepareOptions()) -> dict[str, SplitReport]:
  """Writes the shards of `splits` (replacing any earlier preparation); returns split reports."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()  # ours counts records, skips included
  builder = builder_class(name, dataset_version(options))(
      reader=reader, manual_dir=manual_dir, splits=splits, options=options,
      data_dir=os.fspath(data_dir))
  with tempfile.TemporaryDirectory() as downloads:
    builder.download_and_prepare(
        download_dir=downloads,
        download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
  return builder.reports


def dataset_dir(name: str, data_dir) -> pathlib.Path:
  """`<data_dir>/<name>/<version>` of the newest prepared version."""
  root = pathlib.Path(data_dir) / name
  versions = sorted((p for p in root.glob("*") if (p / "dataset_info.json").is_file()),
                    key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))
  if not versions:
    raise FileNotFoundError(f"no prepared dataset {name!r} under {data_dir}: run "
                            f"`python -m goal_jax.data.prepare {name} --data_dir={data_dir}`")
  return versions[-1]


def load_source(name: str, split: str, data_dir):
  """Random-access source of a prepared split (len, `[i]` -> dict; str fields as `bytes`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(os.fspath(dataset_dir(name, data_dir)))
  if split not in builder.info.splits:
    raise ValueError(f"{name} has no prepared split {split!r} in {builder.data_dir}; "
                     f"prepared: {sorted(builder.info.splits)}")
  return builder.as_data_source(split=split)


def prepared_metadata(name: str, data_dir) -> dict[str, Any]:
  """The options and per-split reports stored with a prepared dataset."""
  import json  # pylint: disable=g-import-not-at-top
  path = dataset_dir(name, data_dir) / "metadata.json"
  return json.loads(path.read_text()) if path.is_file() else {}


def decode_record(raw: dict[str, Any]) -> dict[str, Any]:
  """A shard item (or a `make_record` output) as plain types: str, bytes, numpy arrays."""
  out = {key: _to_str(raw[key]) for key in _STRING_FIELDS}
  out["image"] = bytes(raw["image"])
  out["extra_captions"] = [_to_str(c) for c in raw["extra_captions"]]
  for key, dtype in _ARRAY_FIELDS.items():
    out[key] = np.asarray(raw[key], dtype).reshape(-1)
  out["pair_box"] = np.asarray(raw["pair_box"], np.float32).reshape(-1, 4)
  return {key: out[key] for key in records.FIELDS}


def _to_str(value) -> str:
  return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)
