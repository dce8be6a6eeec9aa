"""The LISM job: prepared shards -> region-sentence matches -> a `<name>_lism` dataset.

    shard record -> decode -> segment (detail copy) -> candidates (original pixels, full image
    first) -> crops of the detail copy + sentence tokens  [host threads]
                -> packed steps -> embed, score, per-sentence argmax  [devices, `scoring`]
                -> chunk files (every `chunk_images` images)  [work folder]
    all chunks -> selection -> records with new local pairs -> `<data_dir>/<out>/`  [TFDS]

What is stored is the expensive part, the MATCHES (each sentence's best candidate, its score, the
candidate boxes), not the pairs: the selection (`max`, `topk`, `all`, with or without full-image
matches) is applied when the output is written, so changing it re-mines nothing.

Work folder: `<data_dir>/<out>/lism_work/<split>/` holds `config.json` (everything the matches
depend on: dataset, records, segmenter and options, candidate rule, scorer, crop geometry, text
context, chunk size), `chunk_NNNNNN.npz` (written atomically: a temporary file, then a rename) and
`selection.json`. A killed job re-run with the same settings skips the chunks on disk; chunks never
share a device step, so the resumed output equals a one-shot run. Different settings are refused
(`restart=True` discards the folder). The step sizes are not part of the config: changing them on
resume can move scores by float rounding only. The source is recorded relative to `data_dir`
(`<dataset>/<version>`), so a data folder moved or mounted elsewhere resumes. One run at a time
writes `<out>` (`builder.DatasetLock`, held by `run`).

Output: the dataset `<out>` (default `<dataset>_lism`) under the same `data_dir`, one split per
mined split (every split whose work folder is complete is rewritten together, each with its own
selection). Records are the source's, byte for byte (same JPEG, caption, offsets), with
`pair_sentence`, `pair_box` (original pixels), `pair_score` and `pair_is_full_image` replaced. The
trainer reads it with the normal pipeline: `--config.input.dataset=<out>`.

Images: the segmenter sees, and candidates are cut from, the record's detail copy (the original
pixels by default, `goal_jax.data.detail`), as GOAL segments and crops the original; a segmenter
may segment a smaller copy of it (`felzenszwalb` and `slic` do, `short_side`) and maps its boxes
back. Records prepared without a detail copy fall back to the stored copy (short side 256): the
job logs how many of a sample have none, and the work config records the source's image options.

Differences from GOAL's scripts (GOAL's `LISM/`, https://github.com/PerceptualAI-Lab/GOAL): a
sentence over 77 tokens is truncated and counted, where GOAL skips the whole image; boxes are the
segments' own, with no template matching; sentences are the stored splitter's
(`--splitter=goal` at preparation gives GOAL's period-free pieces). One process only: the steps
use all its local devices.
"""
import dataclasses
import functools
import io
import json
import math
import os
import pathlib
import re
import shutil
import time
from typing import Any, Iterator

from absl import logging
import jax
import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from goal_jax import files
from goal_jax.data import builder
from goal_jax.data import detail
from goal_jax.data import images
from goal_jax.data import records
from goal_jax.lism import scoring
from goal_jax.lism import segmenters
from goal_jax.lism import selection
from goal_jax.text import tokenizer

WORK_FOLDER = "lism_work"
CONFIG_FILE = "config.json"
SELECTION_FILE = "selection.json"
_CHUNK = re.compile(r"chunk_(\d{6})\.npz")


@dataclasses.dataclass(frozen=True)
class MineOptions:
  """How matches are made (all but the step sizes and workers are recorded in the work folder).

  Attributes:
    segmenter: a `segmenters` registry name.
    segmenter_options: its keyword options.
    candidates: area range and cap (`selection.CandidateOptions`).
    crop_geometry: how a crop becomes the scorer's square input (`center_crop` as GOAL's HF
      processor, or `squash`).
    text_context: tokens per sentence (GOAL: 77); longer sentences are truncated and counted.
    chunk_images: images per chunk file (the resume granularity).
    crop_batch, text_batch: crops and sentences per device step.
    num_workers: host threads decoding, segmenting and cropping (0: min(8, CPUs)).
  """
  segmenter: str = "felzenszwalb"
  segmenter_options: dict[str, Any] = dataclasses.field(default_factory=dict)
  candidates: selection.CandidateOptions = selection.CandidateOptions()
  crop_geometry: str = "center_crop"
  text_context: int = 77
  chunk_images: int = 256
  crop_batch: int = 256
  text_batch: int = 256
  num_workers: int = 0

  def __post_init__(self):
    if self.chunk_images < 1:
      raise ValueError(f"chunk_images must be >= 1, got {self.chunk_images}")
    if self.candidates.max_candidates + 1 > self.crop_batch:
      raise ValueError(f"crop_batch={self.crop_batch} cannot hold one image's "
                       f"{self.candidates.max_candidates} + 1 candidates")


def default_output_name(dataset: str) -> str:
  return f"{dataset}_lism"


def work_root(data_dir, out: str) -> pathlib.Path:
  return pathlib.Path(data_dir) / out / WORK_FOLDER


# --- host side: one record -> one ImageWork ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ImageInfo:
  """What an image's result needs besides the matches (travels as `ImageWork.payload`)."""
  record_index: int
  record_id: str
  boxes: np.ndarray  # float32 [K, 4] original pixels, candidate 0 = full image
  truncated: np.ndarray  # bool [M]
  num_segments: int
  capped: int


def _prepare_image(index: int, raw: dict, *, segment, options: MineOptions, image_size: int,
                   where: str, text_tokenizer=None) -> scoring.ImageWork:
  """Decodes, segments, crops and tokenises one record (runs in a host thread)."""
  record_id = "?"
  try:
    record = builder.decode_record(raw)
    record_id = record["id"]
    image = detail.full_image(record, images.open_rgb(record["image"]))
    pixels = np.asarray(image)
    original_hw = tuple(int(v) for v in record["original_size"])
    segmentation = segment(pixels, record)
    boxes, capped = selection.candidate_boxes(segmentation, pixels.shape[:2], original_hw,
                                              options.candidates)
    crops = scoring.crop_candidates(image, boxes, original_hw, image_size, options.crop_geometry)
    caption = record["caption"]
    texts = [caption[int(s):int(e)]
             for s, e in zip(record["sentence_starts"], record["sentence_ends"])]
    tokens = (text_tokenizer or tokenizer.get_tokenizer())(
        texts, context_length=options.text_context, normalize=False)
  except Exception as e:  # name the record, keep the cause
    raise ValueError(f"{where} record {index} (id {record_id!r}): {e}") from e
  if len(texts) > options.text_batch:
    raise ValueError(f"{where} record {index} (id {record_id!r}) has {len(texts)} sentences, "
                     f"more than text_batch={options.text_batch}: raise --text_batch")
  info = _ImageInfo(index, record_id, boxes, np.asarray(tokens.truncated, bool),
                    len(segmentation.boxes), capped)
  return scoring.ImageWork(crops, tokens.ids, info)


def prepare_works(source, indices, options: MineOptions, image_size: int, *,
                  where: str = "source", text_tokenizer=None) -> Iterator[scoring.ImageWork]:
  """`ImageWork`s of `source[i]` for `i` in `indices`, in order, made on host threads
  (`text_tokenizer`: the scorer's; None: CLIP's).

  A bounded window of images is in flight (`builder.ordered_map`), so the threads keep working
  while the caller waits on the device, across chunk boundaries too.
  """
  segment = segmenters.get_segmenter(options.segmenter, **options.segmenter_options)
  prepare = functools.partial(_prepare_image, segment=segment, options=options,
                              image_size=image_size, where=where, text_tokenizer=text_tokenizer)
  tasks = (functools.partial(prepare, i, source[i]) for i in indices)
  for future in builder.ordered_map(tasks, options.num_workers):
    yield future.result()


# --- work folder -------------------------------------------------------------------------------


def _chunk_path(folder: pathlib.Path, chunk: int) -> pathlib.Path:
  return folder / f"chunk_{chunk:06d}.npz"


def _chunks_on_disk(folder: pathlib.Path) -> set[int]:
  return {int(m.group(1)) for p in folder.glob("chunk_*.npz") if (m := _CHUNK.fullmatch(p.name))}


def _chunk_arrays(matches: list[scoring.Match]) -> dict[str, np.ndarray]:
  infos = [m.work.payload for m in matches]
  return {
      "record_index": np.array([i.record_index for i in infos], np.int64),
      "record_id": np.array([i.record_id for i in infos], dtype=str),
      "num_sentences": np.array([len(m.best_candidate) for m in matches], np.int32),
      "num_candidates": np.array([len(i.boxes) for i in infos], np.int32),
      "num_segments": np.array([i.num_segments for i in infos], np.int32),
      "capped": np.array([i.capped for i in infos], np.int32),
      "candidate_box": np.concatenate([i.boxes for i in infos]).astype(np.float32),
      "best_candidate": np.concatenate([m.best_candidate for m in matches]).astype(np.int32),
      "best_score": np.concatenate([m.best_score for m in matches]).astype(np.float32),
      "truncated": np.concatenate([i.truncated for i in infos]).astype(bool),
  }


def _write_chunk(folder: pathlib.Path, chunk: int, matches: list[scoring.Match]) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **_chunk_arrays(matches))
  files.write_atomic(_chunk_path(folder, chunk), buffer.getvalue())


def matching_config(data_dir, dataset: str, split: str, num_records: int, options: MineOptions,
                    scorer_id: str) -> dict[str, Any]:
  """Everything the matches depend on; a resume must agree on all of it."""
  return {
      "dataset": dataset, "split": split, "num_records": num_records,
      "source_dir": _relative_source(builder.dataset_dir(dataset, data_dir), data_dir),
      "segmenter": options.segmenter, "segmenter_options": dict(options.segmenter_options),
      "candidates": dataclasses.asdict(options.candidates),
      "crop_geometry": options.crop_geometry, "text_context": options.text_context,
      "chunk_images": options.chunk_images, "scorer": scorer_id,
      "source_images": source_image_options(data_dir, dataset, split),
  }


def _relative_source(version_dir: pathlib.Path, data_dir) -> str:
  """`<dataset>/<version>`: where the source is inside `data_dir`, wherever that is mounted."""
  return version_dir.relative_to(pathlib.Path(data_dir)).as_posix()


# How versions before 2026-12-05 named the command's scorer: its checkpoint's absolute path.
_PATH_SCORER = re.compile(r"^(/.*) dtype=(\S+)$")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
  """A work config as compared on resume, in today's form. What older versions recorded as an
  absolute path is taken by what it names: a `source_dir` by its last two parts
  (`<dataset>/<version>`), a scorer by the weights its checkpoint holds (`scoring.scorer_id`;
  one no longer there compares unequal)."""
  source = config.get("source_dir")
  if isinstance(source, str) and os.path.isabs(source):
    config = {**config, "source_dir": "/".join(pathlib.PurePath(source).parts[-2:])}
  legacy = _PATH_SCORER.match(str(config.get("scorer", "")))
  if legacy and os.path.isdir(legacy.group(1)):
    dtype = None if legacy.group(2) == "checkpoint" else legacy.group(2)
    config = {**config, "scorer": scoring.checkpoint_scorer_id(legacy.group(1), dtype)}
  return config


def source_image_options(data_dir, dataset: str, split: str) -> dict[str, Any]:
  """The preparation options of the source split that fix the pixels LISM segments and crops."""
  metadata = builder.prepared_metadata(dataset, data_dir)
  options = metadata.get("split_options", {}).get(split, metadata).get("options") or {}
  return {key: options.get(key)
          for key in ("image_short_side", "jpeg_quality", "detail", "detail_short_side")}


def _open_work_folder(folder: pathlib.Path, config: dict[str, Any], restart: bool) -> None:
  """Creates the folder, or checks that its chunks were made with `config`."""
  if restart and folder.exists():
    shutil.rmtree(folder)
  folder.mkdir(parents=True, exist_ok=True)
  for stale in folder.glob(files.TEMPORARY_GLOB):  # a write killed half-way
    stale.unlink()
  path = folder / CONFIG_FILE
  saved = None
  if path.is_file():
    saved = json.loads(path.read_text())
    stored = _comparable(saved)
    diff = {k: (stored.get(k), config.get(k)) for k in set(stored) | set(config)
            if stored.get(k) != config.get(k)}
    if diff:
      raise ValueError(f"work folder {folder} holds matches made with other settings "
                       f"(stored, now): {diff}; re-run with restart=True (--restart) to discard "
                       "them, or use another --out_dataset")
  if saved != config:  # new, or an older form of the same settings: today's form
    files.write_json(path, config, sort_keys=True)


# --- mining ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MineResult:
  """What one `mine_split` call did."""
  folder: pathlib.Path
  num_chunks: int
  chunks_before: int  # already on disk when the call started
  chunks_mined: int
  images_mined: int
  seconds: float

  @property
  def complete(self) -> bool:
    return self.chunks_before + self.chunks_mined == self.num_chunks


def mine_split(data_dir, dataset: str, split: str, scorer: scoring.Scorer, scorer_id: str,
               options: MineOptions = MineOptions(), *, out: str | None = None,
               restart: bool = False, max_chunks: int | None = None, mesh=None,
               progress: bool = True) -> MineResult:
  """Mines the chunks of `dataset/split` that are not on disk yet.

  Args:
    data_dir: where the prepared shards are (`python -m goal_jax.prepare`).
    dataset, split: the source.
    scorer: the matching model (`scoring.load_scorer`, or any `scoring.Scorer`).
    scorer_id: names the scorer in the work config (the CLI's: `scoring.scorer_id`, a digest of
      its weights and the dtype).
    options: how to mine.
    out: output dataset name (default `<dataset>_lism`); the work folder lives under it.
    restart: discard the split's work folder first.
    max_chunks: mine at most this many chunks in this call (a time-boxed slice of a long job).
    mesh: devices for the steps (default: all local devices, data parallel).
    progress: show a tqdm bar over images.
  """
  if jax.process_count() > 1:
    raise NotImplementedError("LISM mining runs in one process (it uses all local devices)")
  out = out or default_output_name(dataset)
  if out == dataset:
    raise ValueError(f"the output dataset must differ from the source {dataset!r}")
  if options.text_context > scorer.context_length:
    raise ValueError(f"text_context {options.text_context} exceeds the scorer's context "
                     f"{scorer.context_length}")
  source = builder.load_source(dataset, split, data_dir)
  found = detail.survey(source, max_records=128)
  if found.small_copy:
    logging.warning(
        "%s/%s: %d of %d records read have no detail copy: LISM segments and crops their small "
        "stored copy, not the original pixels. Prepare the dataset again (the detail copy is on "
        "by default) to mine as GOAL does.", dataset, split, found.small_copy, found.seen)
  folder = work_root(data_dir, out) / split
  _open_work_folder(folder, matching_config(data_dir, dataset, split, len(source), options,
                                            scorer_id), restart)
  num_chunks = math.ceil(len(source) / options.chunk_images)
  done = _chunks_on_disk(folder)
  todo = [k for k in range(num_chunks) if k not in done]
  if max_chunks is not None:
    todo = todo[:max_chunks]
  chunk_range = lambda k: range(k * options.chunk_images,
                                 min((k + 1) * options.chunk_images, len(source)))
  ranges = [chunk_range(k) for k in todo]
  start = time.perf_counter()
  if todo:
    matcher = scoring.Matcher(scorer, options.crop_batch, options.text_batch, mesh=mesh)
    works = prepare_works(source, (i for r in ranges for i in r), options, scorer.image_size,
                          where=f"{dataset}/{split}", text_tokenizer=scorer.tokenizer)
    matched = sum(len(chunk_range(k)) for k in done)
    bar = None  # made after the first image, which also compiles the scorer: its ETA is honest
    try:
      for chunk, indices in zip(todo, ranges):
        matches = []
        # Steps never span two chunks, so a resumed chunk repeats the one-shot run's steps.
        for match in matcher.match(next(works) for _ in indices):
          matches.append(match)
          matched += 1
          if bar is None:
            if progress:
              print(f"LISM {dataset}/{split}: first image matched in "
                    f"{time.perf_counter() - start:.1f} s (it compiles the scorer)", flush=True)
            bar = tqdm(total=len(source), initial=matched, unit=" img", disable=not progress,
                       desc=f"LISM {dataset}/{split}")
          else:
            bar.update(1)
        _write_chunk(folder, chunk, matches)
    finally:
      if bar is not None:
        bar.close()
  return MineResult(folder, num_chunks, len(done & set(range(num_chunks))), len(todo),
                    sum(map(len, ranges)), time.perf_counter() - start)


# --- reading the matches back ------------------------------------------------------------------


def load_matches(folder: pathlib.Path) -> dict[str, np.ndarray]:
  """All chunks of a complete work folder, concatenated, with per-image offsets added."""
  config = json.loads((folder / CONFIG_FILE).read_text())
  num_chunks = math.ceil(config["num_records"] / config["chunk_images"])
  missing = sorted(set(range(num_chunks)) - _chunks_on_disk(folder))
  if missing:
    raise FileNotFoundError(f"work folder {folder} lacks chunks {missing[:5]}: mining is not "
                            "finished (re-run the same command to continue)")
  parts = []
  for k in range(num_chunks):
    with np.load(_chunk_path(folder, k)) as data:
      parts.append({key: data[key] for key in data.files})
  merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
  if not np.array_equal(merged["record_index"], np.arange(config["num_records"])):
    raise ValueError(f"work folder {folder}: chunks do not cover records 0..{config['num_records']}"
                     " in order")
  merged["sentence_offsets"] = np.concatenate([[0], np.cumsum(merged["num_sentences"])])
  merged["candidate_offsets"] = np.concatenate([[0], np.cumsum(merged["num_candidates"])])
  return merged


def image_pairs(matches: dict[str, np.ndarray], index: int,
                rule: selection.SelectionOptions) -> dict[str, np.ndarray]:
  """The local-pair fields of image `index` under `rule`."""
  s0, s1 = matches["sentence_offsets"][index:index + 2]
  c0, c1 = matches["candidate_offsets"][index:index + 2]
  return selection.pairs(matches["best_candidate"][s0:s1], matches["best_score"][s0:s1],
                         matches["candidate_box"][c0:c1], rule)


def _distribution(values: np.ndarray) -> dict[str, float]:
  if not len(values):
    return {}
  q = np.percentile(values, [0, 5, 25, 50, 75, 95, 100])
  return {"min": float(q[0]), "p5": float(q[1]), "p25": float(q[2]), "median": float(q[3]),
          "p75": float(q[4]), "p95": float(q[5]), "max": float(q[6]),
          "mean": float(np.mean(values))}


def summarize(matches: dict[str, np.ndarray], rule: selection.SelectionOptions) -> dict[str, Any]:
  """Counts and score distributions of a split's matches and the pairs `rule` keeps."""
  chosen = [image_pairs(matches, i, rule) for i in range(len(matches["record_index"]))]
  pair_scores = np.concatenate([p["pair_score"] for p in chosen] + [np.zeros((0,), np.float32)])
  return {
      "images": len(chosen),
      "images_with_pairs": sum(bool(len(p["pair_sentence"])) for p in chosen),
      "pairs": int(len(pair_scores)),
      "pairs_full_image": int(sum(p["pair_is_full_image"].sum() for p in chosen)),
      "sentences": int(len(matches["best_candidate"])),
      "sentences_matching_full_image": int(np.sum(matches["best_candidate"]
                                                  == selection.FULL_IMAGE)),
      "truncated_sentences": int(matches["truncated"].sum()),
      "segments_per_image": float(np.mean(matches["num_segments"])),
      "candidates_per_image": {"mean": float(np.mean(matches["num_candidates"])),
                               "max": int(np.max(matches["num_candidates"]))},
      "images_capped": int(np.sum(matches["capped"] > 0)),
      "pair_score": _distribution(pair_scores),
      "sentence_score": _distribution(matches["best_score"]),
  }


def format_summary(split: str, summary: dict[str, Any]) -> str:
  score = summary["pair_score"]
  lines = [
      f"  {split}: {summary['images']} images, {summary['images_with_pairs']} with pairs, "
      f"{summary['pairs']} pairs ({summary['pairs_full_image']} full-image)",
      f"    sentences {summary['sentences']}: {summary['sentences_matching_full_image']} matched "
      f"the full image, {summary['truncated_sentences']} truncated (kept)",
      f"    segments/image {summary['segments_per_image']:.1f}, candidates/image "
      f"{summary['candidates_per_image']['mean']:.1f} (max "
      f"{summary['candidates_per_image']['max']}), images capped {summary['images_capped']}",
  ]
  if score:
    lines.append(f"    pair score min {score['min']:.2f} p5 {score['p5']:.2f} median "
                 f"{score['median']:.2f} mean {score['mean']:.2f} p95 {score['p95']:.2f} max "
                 f"{score['max']:.2f}")
  return "\n".join(lines)


# --- output dataset ----------------------------------------------------------------------------


class _MinedRecords:
  """Body of the output builder: the source's records with mined pairs (see `write_output`)."""

  def __init__(self, *, splits: dict[str, dict[str, Any]], metadata: dict[str, Any], **kwargs):
    self._splits = splits
    self._metadata = metadata
    super().__init__(file_format="array_record", **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=f"{self.name}: records with LISM-mined local pairs.",
        features=records.features(), disable_shuffling=True,
        metadata=tfds.core.MetadataDict(**self._metadata))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._splits}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    spec = self._splits[split]
    matches, rule = spec["matches"], spec["selection"]
    source = builder.load_source(spec["dataset"], split, spec["data_dir"])
    for i in range(len(source)):
      record = builder.decode_record(source[i])
      if record["id"] != matches["record_id"][i]:
        raise ValueError(f"{spec['folder']}: record {i} is {record['id']!r} in the source but "
                         f"{matches['record_id'][i]!r} in the mined chunks; the source changed "
                         "since mining: re-run with --restart")
      record.update(image_pairs(matches, i, rule))
      yield i, record


@functools.lru_cache(maxsize=None)
def _builder_class(name: str):
  return builder.unregistered_builder_class(name, _MinedRecords, "mined")


def complete_splits(data_dir, out: str) -> dict[str, pathlib.Path]:
  """Work folders under `<out>` whose mining is finished and whose selection is chosen."""
  found = {}
  root = work_root(data_dir, out)
  for folder in sorted(root.glob("*")) if root.is_dir() else []:
    path = folder / CONFIG_FILE
    if not path.is_file() or not (folder / SELECTION_FILE).is_file():
      continue
    config = json.loads(path.read_text())
    needed = math.ceil(config["num_records"] / config["chunk_images"])
    if set(range(needed)) <= _chunks_on_disk(folder):
      found[folder.name] = folder
  return found


def write_output(data_dir, out: str) -> dict[str, dict[str, Any]]:
  """(Re)writes dataset `<out>` from every complete work folder; returns per-split summaries."""
  folders = complete_splits(data_dir, out)
  if not folders:
    raise FileNotFoundError(f"no complete LISM work folder under {work_root(data_dir, out)}")
  splits, lism, datasets = {}, {}, set()
  for split, folder in folders.items():
    config = json.loads((folder / CONFIG_FILE).read_text())
    rule = selection.SelectionOptions(**json.loads((folder / SELECTION_FILE).read_text()))
    matches = load_matches(folder)
    datasets.add(config["dataset"])
    splits[split] = {"matches": matches, "selection": rule, "dataset": config["dataset"],
                     "data_dir": data_dir, "folder": folder}
    lism[split] = {"matching": config, "selection": dataclasses.asdict(rule),
                   "summary": summarize(matches, rule)}
  if len(datasets) != 1:
    raise ValueError(f"work folders under {work_root(data_dir, out)} mix source datasets "
                     f"{sorted(datasets)}")
  dataset = datasets.pop()
  # The source's metadata (preparation options, reports) still describes these records.
  metadata = {**builder.prepared_metadata(dataset, data_dir), "source_dataset": dataset,
              "lism": lism}
  # Staged and swapped in only when complete: a failed write keeps the earlier output.
  with builder.staged_version_dir(out, builder.VERSION, data_dir) as staging:
    builder.generate(_builder_class(out)(splits=splits, metadata=metadata,
                                         data_dir=os.fspath(staging)))
  return {split: info["summary"] for split, info in lism.items()}


def run(data_dir, dataset: str, split: str, scorer: scoring.Scorer, scorer_id: str,
        options: MineOptions = MineOptions(),
        rule: selection.SelectionOptions = selection.SelectionOptions(), *,
        out: str | None = None, restart: bool = False, max_chunks: int | None = None,
        mesh=None, verbose: bool = True) -> dict[str, Any]:
  """Mines a split (resuming), then writes `<out>` with its pairs; the command's body.

  Returns:
    {"out", "mined": MineResult, "summaries": {split: summary}} (no summaries while incomplete).
  """
  out = out or default_output_name(dataset)
  check_output(data_dir, out)
  with builder.DatasetLock(out, data_dir):
    return _run(data_dir, dataset, split, scorer, scorer_id, options, rule, out=out,
                restart=restart, max_chunks=max_chunks, mesh=mesh, verbose=verbose)


def check_output(data_dir, out: str) -> None:
  """Refuses, before any work, an output `<data_dir>/<out>` that cannot be written or that
  another live run is writing (the lock itself is taken by `run`)."""
  builder.check_data_dir(data_dir, out)
  builder.DatasetLock(out, data_dir).check_free()


def _run(data_dir, dataset, split, scorer, scorer_id, options, rule, *, out, restart,
         max_chunks, mesh, verbose) -> dict[str, Any]:
  result = mine_split(data_dir, dataset, split, scorer, scorer_id, options, out=out,
                      restart=restart, max_chunks=max_chunks, mesh=mesh, progress=verbose)
  if verbose and result.chunks_mined:
    print(f"mined {result.images_mined} images ({result.chunks_mined} chunks) in "
          f"{result.seconds:.1f} s: {result.images_mined / result.seconds:.1f} images/s")
  if not result.complete:
    if verbose:
      print(f"{dataset}/{split}: {result.chunks_before + result.chunks_mined} of "
            f"{result.num_chunks} chunks mined; run again to continue")
    return {"out": out, "mined": result, "summaries": {}}
  files.write_json(result.folder / SELECTION_FILE, dataclasses.asdict(rule), sort_keys=True)
  summaries = write_output(data_dir, out)
  if verbose:
    print(f"{dataset} -> {builder.dataset_dir(out, data_dir)} (selection: {rule.mode}"
          f"{f' top_k={rule.top_k}' if rule.mode == 'topk' else ''}"
          f"{', full-image matches kept' if rule.keep_full_image else ''})")
    for name, summary in summaries.items():
      print(format_summary(name, summary))
  return {"out": out, "mined": result, "summaries": summaries}
