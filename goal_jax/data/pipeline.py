"""Grain input pipeline: shard records -> fixed-shape numpy batches (DESIGN.md "Batch contract").

    source -> MapDataset.source -> seed/shuffle/repeat (train) -> this process's slice
           -> map(process) -> to_iter_dataset -> mp_prefetch (optional) -> batch(B_local)

`process` is a pure function of one decoded record and the config, so every batch is a function of
(seed, step) alone: the iterator's Grain state (`get_state`/`set_state`, or Orbax through
`grain.checkpoint`) resumes exactly. Every output shape depends only on the config, so jitted steps
never retrace. Evaluation mode reads each record once in order and pads the last batch with copies
marked `valid=False` (the same number of batches on every process).

Field groups (`config.fields`: groups joined by ',', or `all`) skip work a method does not use:
`global` (image, text), `summary`, `sentences` (sentences, sentence_valid, span_mask,
patch_mask), `local` (GOAL's local pair). Each method names its groups (`Method.fields`); the
trainer sets them. `record_index` and `valid` are always present.

Reproduction (`config.compat`, README "Where we differ from the official GOAL code"): the
defaults are the corrected behaviours; `compat=goal` sets every field that reproduces GOAL's
released code at once (`COMPAT`): `span_mode`, `text_norm`, `box_mode`, `box_grid_patch`,
`box_norm`, `geometry`; `make_dataset` then refuses shards not split with GOAL's rule.
"""
import math
from typing import Any, Callable, Mapping, Sequence

from absl import flags
import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from goal_jax.data import builder
from goal_jax.data import detail
from goal_jax.data import geometry
from goal_jax.data import images
from goal_jax.text import sentences as text_sentences
from goal_jax.text import spans as text_spans
from goal_jax.text import tokenizer as text_tokenizer
from goal_jax.training import paths

# OpenAI CLIP's normalisation constants (RGB).
MEAN_RGB = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD_RGB = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
_SCALE = (1.0 / (255.0 * STD_RGB)).astype(np.float32)  # (x / 255 - mean) / std = x * scale - shift
_SHIFT = (MEAN_RGB / STD_RGB).astype(np.float32)

FIELD_GROUPS = ("global", "summary", "sentences", "local")
TEXT_NORMS = ("clip", "hf")
BOX_NORMS = ("image", "json")
# Reproduction switches: each value sets these fields (https://github.com/PerceptualAI-Lab/GOAL).
# `goal`: the released `goal_loss_finetuning.py` (HEAD 2db3d4a); `goal_fixed`: the authors' later
# `goal.py` (4c04bc8, Aug 2025), which divides boxes by the true image size instead. Both need
# shards split with GOAL's rule (`prepare --splitter=goal`), which `check_source` verifies.
COMPAT = {
    "goal": dict(span_mode="goal", text_norm="hf", box_mode="goal", box_grid_patch=16,
                 box_norm="json", geometry="center_crop"),
    "goal_fixed": dict(span_mode="goal", text_norm="hf", box_mode="goal", box_grid_patch=16,
                       box_norm="image", geometry="center_crop"),
}
COMPAT_SPLITTER = "goal"


def default_config() -> ml_collections.ConfigDict:
  """Pipeline defaults: ViT-B/16 at 224 px, 248-token captions, CLIP's centre crop."""
  config = ml_collections.ConfigDict()
  config.dataset = "synthetic"
  config.split = "train"
  config.batch_size = 32  # global batch; each process gets batch_size / process_count
  config.image_size = 224
  config.patch_size = 16  # from the model config: the patch grid is image_size / patch_size
  config.text_context = 248
  config.sentence_context = 77
  config.max_sentences = 8
  config.caption_sentences = 0  # > 0: `text` is the caption's first N sentences (short captions)
  config.geometry = "center_crop"  # or "squash"
  config.span_mode = "exact"  # or "goal": GOAL's span rule (+1 shift, truncation fallback)
  config.box_mode = "exact"  # or "goal": GOAL's naive stretch of boxes onto the grid
  config.text_norm = "clip"  # or "hf": the caption normalised as GOAL's HF tokenizer does
  config.box_grid_patch = 0  # box_mode=goal: patch side boxes are cut with (0: the model's)
  config.box_norm = "image"  # box_mode=goal: divide boxes by the image size, or "json" (crop)
  config.compat = ""  # "goal": every behaviour of GOAL's released code; "goal_fixed": (COMPAT)
  config.fields = "all"  # groups joined by "," (global, summary, sentences, local), or all
  config.num_workers = 0  # > 0: Grain multiprocessing prefetch
  config.read_threads = 2
  config.prefetch_buffer_size = 8
  config.seed = 0
  return config


def field_groups(fields: str) -> frozenset[str]:
  """Parses `config.fields` into the set of field groups."""
  if fields == "all":
    return frozenset(FIELD_GROUPS)
  groups = frozenset(g.strip() for g in fields.split(",") if g.strip())
  unknown = groups - set(FIELD_GROUPS)
  if not groups or unknown:
    raise ValueError(f"config.fields={fields!r}: unknown {sorted(unknown)}; use 'all' or "
                     f"groups from {FIELD_GROUPS} joined by ','")
  return groups | {"global"}


def resolve_compat(config: Mapping[str, Any]) -> dict[str, Any]:
  """The behaviour fields in force: the config's, with those `config.compat` sets (`COMPAT`).

  A field left at its default takes the compat value; a field set to a third value conflicts
  and is an error (for an ablation of one behaviour, leave compat empty and set the fields).
  """
  defaults = default_config()
  compat = config.get("compat", "") or ""
  fields = {k: config.get(k, defaults[k]) for k in COMPAT["goal"]}
  if not compat:
    return {"compat": "", **fields}
  if compat not in COMPAT:
    raise ValueError(f"config.compat={compat!r}: expected '' or one of {sorted(COMPAT)}")
  for key, value in COMPAT[compat].items():
    if fields[key] not in (value, defaults[key]):
      raise ValueError(f"config.compat={compat} sets {key}={value!r}, but config.{key}="
                       f"{fields[key]!r}: drop one (to change one behaviour, leave compat empty "
                       f"and set the fields one by one: {COMPAT[compat]})")
    fields[key] = value
  return {"compat": compat, **fields}


def normalize_image(pixels: np.ndarray) -> np.ndarray:
  """uint8 `[..., 3]` -> float32, OpenAI mean/std (in place on one float copy: 2x faster)."""
  out = pixels.astype(np.float32)
  out *= _SCALE
  out -= _SHIFT
  return out


def model_image(image: Image.Image, image_size: int, geometry_name: str) -> np.ndarray:
  """An RGB image -> the model's float32 `[S, S, 3]` input: `geometry`, then `normalize_image`.

  Training, evaluation and the commands all make model inputs here; only the geometry differs
  (`visualize` defaults to `squash`, to show the whole image).
  """
  return normalize_image(geometry.resize_image(image, image_size, geometry_name))


def _best_pair(record: Mapping[str, Any], sentence: int | None = None) -> int | None:
  """Index of the highest-score non-full-image pair (of `sentence`, if given); first on ties."""
  scores = np.asarray(record["pair_score"], np.float32)
  usable = ~np.asarray(record["pair_is_full_image"], bool)
  if sentence is not None:
    usable &= np.asarray(record["pair_sentence"]) == sentence
  if not usable.any():
    return None
  return int(np.argmax(np.where(usable, scores, -np.inf)))


def _check_record(record: Mapping[str, Any]) -> None:
  """Structural checks whose failure would otherwise surface as a shape error deep in `process`."""
  starts, ends = np.asarray(record["sentence_starts"]), np.asarray(record["sentence_ends"])
  num_pairs = len(record["pair_sentence"])
  if starts.shape != ends.shape or np.any(starts > ends) or np.any(ends > len(record["caption"])):
    raise ValueError(f"bad sentence offsets starts={starts.tolist()} ends={ends.tolist()} "
                     f"for a caption of {len(record['caption'])} characters")
  boxes = np.asarray(record["pair_box"])
  if boxes.size == 0 and num_pairs == 0:
    return
  for key, shape in (("pair_box", (num_pairs, 4)), ("pair_score", (num_pairs,)),
                     ("pair_is_full_image", (num_pairs,))):
    if np.shape(record[key]) != shape:
      raise ValueError(f"{key} has shape {np.shape(record[key])}, expected {shape}")
  sentences = np.asarray(record["pair_sentence"])
  if num_pairs and (sentences.min() < 0 or sentences.max() >= len(starts)):
    raise ValueError(f"pair_sentence {sentences.tolist()} out of range for {len(starts)} sentences")


class ProcessContext:
  """What `process` needs besides the record: the validated config values and the tokenizer."""

  def __init__(self, config: Mapping[str, Any] | ml_collections.ConfigDict, tokenizer=None):
    self.image_size = int(config["image_size"])
    self.patch_size = int(config["patch_size"])
    self.grid = geometry.grid_size(self.image_size, self.patch_size)
    self.text_context = int(config["text_context"])
    self.sentence_context = int(config["sentence_context"])
    self.groups = field_groups(config["fields"])
    self.max_sentences = int(config["max_sentences"])
    self.caption_sentences = int(config.get("caption_sentences", 0))
    if self.caption_sentences and self.groups & {"sentences", "local"}:
      raise ValueError("config.caption_sentences shortens `text`; it cannot be combined with "
                       "span-based fields (sentences, local), whose spans index the whole caption")
    behaviour = resolve_compat(config)
    self.compat = behaviour["compat"]
    self.geometry = behaviour["geometry"]
    self.span_mode = behaviour["span_mode"]
    self.box_mode = behaviour["box_mode"]
    self.text_norm = behaviour["text_norm"]
    self.box_grid_patch = int(behaviour["box_grid_patch"])
    self.box_norm = behaviour["box_norm"]
    if self.geometry not in geometry.GEOMETRIES:
      raise ValueError(f"config.geometry={self.geometry!r}: expected one of {geometry.GEOMETRIES}")
    if self.span_mode not in text_spans.MODES:
      raise ValueError(f"config.span_mode={self.span_mode!r}: expected one of "
                       f"{text_spans.MODES}")
    if self.box_mode not in geometry.BOX_MODES:
      raise ValueError(f"config.box_mode={self.box_mode!r}: expected one of {geometry.BOX_MODES}")
    if self.text_norm not in TEXT_NORMS:
      raise ValueError(f"config.text_norm={self.text_norm!r}: expected one of {TEXT_NORMS}")
    if self.box_norm not in BOX_NORMS:
      raise ValueError(f"config.box_norm={self.box_norm!r}: expected one of {BOX_NORMS}")
    if self.box_mode != "goal" and (self.box_grid_patch or self.box_norm != "image"):
      raise ValueError("config.box_grid_patch and config.box_norm=json are parts of GOAL's box "
                       "rule: they need config.box_mode=goal")
    if self.box_grid_patch < 0:
      raise ValueError(f"config.box_grid_patch={self.box_grid_patch}: expected 0 (the model's "
                       "patch size) or a patch side in pixels")
    self.pad_id = text_tokenizer.EOT_ID if self.text_norm == "hf" else 0  # HF pads with EOT
    self._tokenizer = tokenizer  # None: the shared one, looked up per process (picklable)

  @property
  def reads_reproduction_fields(self) -> bool:
    """Whether records need what only some preparations give (`check_source`)."""
    return bool(self.compat or self.text_norm == "hf" or self.box_norm == "json")

  @property
  def tokenizer(self):
    return self._tokenizer if self._tokenizer is not None else text_tokenizer.get_tokenizer()

  def tokens(self, texts: Sequence[str], context: int) -> np.ndarray:
    # Stored text is already in normal form; normalising again could move tokens off the offsets.
    return self.tokenizer(list(texts), context_length=context, normalize=False,
                          pad_id=self.pad_id).ids

  def patch_mask(self, box, original_hw, stored_hw, norm_hw=None) -> np.ndarray:
    """The box's patches; `norm_hw`: what GOAL's rule divides it by (`pair_norm_hw`)."""
    return geometry.box_to_patch_mask(box, original_hw, self.image_size, self.patch_size,
                                      self.geometry, self.box_mode, stored_hw=stored_hw,
                                      goal_patch=self.box_grid_patch, goal_norm_hw=norm_hw)

  def pair_norm_hw(self, record: Mapping[str, Any], pair: int):
    """None (the true image size), or with `box_norm=json` the pair's JSON (height, width)."""
    if self.box_norm != "json":
      return None
    sizes = np.asarray(record.get("pair_norm_size", np.zeros((0, 2))), np.float32).reshape(-1, 2)
    if len(sizes) != len(record["pair_sentence"]) or not np.all(sizes[pair] > 0):
      raise ValueError(
          "config.box_norm=json (compat=goal) divides boxes by the width/height of GOAL's released "
          "training JSON, and this record's local pair has none: only `goal_json` dci_train / "
          "docci_train prepared by this version store it. Use config.input.compat=goal_fixed "
          "(true image size, the authors' later fix) for other local pairs")
    return tuple(float(v) for v in sizes[pair])

  def model_image(self, image: Image.Image) -> np.ndarray:
    return model_image(image, self.image_size, self.geometry)


def _local_fields(record, ctx: ProcessContext, image, span_masks, original_hw, stored_hw):
  """GOAL's local pair: the best non-full-image pair's crop, sentence, span and patches."""
  s, lc, g2 = ctx.image_size, ctx.text_context, ctx.grid * ctx.grid
  best = _best_pair(record)
  if best is None:
    return {"local_image": np.zeros((s, s, 3), np.float32),
            "local_text": ctx.tokens([""], lc)[0],
            "local_span_mask": np.zeros((lc,), bool),
            "local_patch_mask": np.zeros((g2,), bool),
            "local_valid": np.array(False)}
  box = np.asarray(record["pair_box"][best], np.float64)
  sentence = int(record["pair_sentence"][best])
  start, end = int(record["sentence_starts"][sentence]), int(record["sentence_ends"][sentence])
  # From the full-resolution detail copy when the record has one, as GOAL crops the original.
  crop = detail.local_crop(record, box, image, min_short_side=ctx.image_size)
  return {"local_image": ctx.model_image(crop),
          "local_text": ctx.tokens([record["caption"][start:end]], lc)[0],
          "local_span_mask": span_masks[sentence],
          "local_patch_mask": ctx.patch_mask(box, original_hw, stored_hw,
                                             ctx.pair_norm_hw(record, best)),
          "local_valid": np.array(True)}


def _sentence_fields(record, ctx: ProcessContext, span_masks, original_hw, stored_hw):
  """First M sentences: tokens, validity, span in the caption, patches of each one's best pair."""
  m, ls, lc, g2 = ctx.max_sentences, ctx.sentence_context, ctx.text_context, ctx.grid * ctx.grid
  n = min(len(record["sentence_starts"]), m)
  caption = record["caption"]
  texts = [caption[int(a):int(b)] for a, b in
           zip(record["sentence_starts"][:n], record["sentence_ends"][:n])]
  span_mask = np.zeros((m, lc), bool)
  span_mask[:n] = span_masks[:n]
  patch_mask = np.zeros((m, g2), bool)
  for k in range(n):
    best = _best_pair(record, k)
    if best is not None:
      patch_mask[k] = ctx.patch_mask(record["pair_box"][best], original_hw, stored_hw,
                                     ctx.pair_norm_hw(record, best))
  return {"sentences": ctx.tokens(texts + [""] * (m - n), ls),
          "sentence_valid": np.arange(m) < n,
          "span_mask": span_mask,
          "patch_mask": patch_mask}


def _caption_text(record: Mapping[str, Any], num_sentences: int) -> str:
  """The caption, or its first `num_sentences` sentences (a short caption, for pretraining)."""
  ends = record["sentence_ends"]
  if not num_sentences or len(ends) <= num_sentences:
    return record["caption"]
  return record["caption"][:int(ends[num_sentences - 1])]


def _reproduction_problem(record: Mapping[str, Any], ctx: ProcessContext) -> str | None:
  """Why `ctx` cannot reproduce GOAL on this record's data (None: it can)."""
  if ctx.compat and record["splitter"].partition("@")[0] != COMPAT_SPLITTER:
    return (f"config.compat={ctx.compat} reproduces GOAL's spans, which are defined on GOAL's "
            f"sentence pieces, but these records were split with {record['splitter']!r}")
  if ctx.text_norm == "hf" and not record.get("raw_caption"):
    return ("config.text_norm=hf (compat) needs the caption as read, which records prepared "
            "before it was stored lack")
  return None


def _reproduction_view(record: Mapping[str, Any], ctx: ProcessContext) -> Mapping[str, Any]:
  """The record as the reproduction switches see it: with `text_norm=hf`, the caption in HF's
  normal form and its sentences re-split by the record's splitter (same count, so the local
  pairs' sentence indices still hold). The summary and extra captions keep the stored form."""
  problem = _reproduction_problem(record, ctx)
  if problem:
    dataset = str(record.get("id", "")).partition("/")[0] or "DATASET"
    raise ValueError(f"{problem}. Prepare it again:\n  "
                     f"{prepare_command(dataset, '<split>', '<data_dir>')}")
  if ctx.text_norm != "hf":
    return record
  caption = text_tokenizer.normalize_text_hf(record["raw_caption"])
  if caption == record["caption"]:
    return record
  offsets = text_sentences.split_sentences(caption, record["splitter"])
  if len(offsets) != len(record["sentence_starts"]):
    raise ValueError(f"config.text_norm=hf: the caption in HF's form splits into {len(offsets)} "
                     f"sentences, the stored one into {len(record['sentence_starts'])}, so the "
                     f"local pairs' sentence indices would not hold: {caption[:80]!r}")
  return {**record, "caption": caption,
          "sentence_starts": np.asarray([s for s, _ in offsets], np.int32),
          "sentence_ends": np.asarray([e for _, e in offsets], np.int32)}


def prepare_command(dataset: str, split: str, data_dir, manual_dir: str = "") -> str:
  """The `prepare` command whose shards `compat` accepts (GOAL's splitter; LISM again if mined)."""
  base = dataset[:-len("_lism")] if dataset.endswith("_lism") else dataset
  command = (f"python -m goal_jax.prepare --dataset={base} "
             f"--manual_dir={manual_dir or '/path/to/raw'} --data_dir={data_dir} --split={split} "
             f"--splitter={COMPAT_SPLITTER}")
  if base != dataset:
    command += (f"\n  python -m goal_jax.lism --data_dir={data_dir} --dataset={base} "
                f"--split={split} --checkpoint=/path/to/converted_clip")
  return command


def check_source(config, source, *, dataset: str = "", split: str = "", data_dir=None,
                 decode: Callable[[Any], dict] | None = None, max_records: int = 16) -> None:
  """Refuses, at start-up, data the reproduction switches cannot reproduce GOAL on.

  Reads up to `max_records` records spread through `source`: with `compat` they must have been
  split by GOAL's rule, with `text_norm=hf` store the raw caption, and with `box_norm=json` carry
  the JSON box size on their best local pair. The error gives the command that makes such data.
  """
  ctx = config if isinstance(config, ProcessContext) else ProcessContext(config)
  if not ctx.reads_reproduction_fields or not len(source):
    return
  indices = np.unique(np.linspace(0, len(source) - 1, min(len(source), max_records)).astype(int))
  manual_dir = ""
  if data_dir is not None:
    try:
      manual_dir = builder.prepared_metadata(dataset, data_dir).get("manual_dir", "")
    except Exception:  # noqa: BLE001 - the command just keeps a placeholder
      pass
  dataset = dataset or (config.get("dataset", "") if hasattr(config, "get") else "")
  command = prepare_command(dataset or "DATASET", split or "SPLIT", data_dir or "/path/to/shards",
                            manual_dir)
  for index in indices:
    record = decode(source[int(index)]) if decode is not None else source[int(index)]
    where = f"{dataset or 'source'}/{split or '?'} record {record.get('id', index)!r}"
    problem = _reproduction_problem(record, ctx)
    if problem:
      raise ValueError(f"{where}: {problem}. Prepare it again:\n  {command}")
    best = _best_pair(record)
    if best is not None:
      try:
        ctx.pair_norm_hw(record, best)
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def process(record: Mapping[str, Any], config, tokenizer=None) -> dict[str, np.ndarray]:
  """One decoded shard record -> one example of the batch contract (without `record_index`).

  Args:
    record: a decoded record (`builder.decode_record`): str fields as str, arrays as numpy.
    config: the pipeline config (or a `ProcessContext` made from it, to skip re-validation).
    tokenizer: default the shared `goal_jax.text` tokenizer.
  """
  ctx = config if isinstance(config, ProcessContext) else ProcessContext(config, tokenizer)
  _check_record(record)
  record = _reproduction_view(record, ctx)
  image = images.open_rgb(record["image"])
  stored_hw = (image.height, image.width)
  original_hw = tuple(int(v) for v in record["original_size"])
  out = {"image": ctx.model_image(image),
         "text": ctx.tokens([_caption_text(record, ctx.caption_sentences)], ctx.text_context)[0]}
  if "summary" in ctx.groups:
    out["summary"] = ctx.tokens([record["summary"]], ctx.sentence_context)[0]
  if ctx.groups & {"sentences", "local"}:
    offsets = list(zip(np.asarray(record["sentence_starts"]).tolist(),
                       np.asarray(record["sentence_ends"]).tolist()))
    span_masks = np.asarray(text_spans.caption_span_masks(
        record["caption"], offsets, ctx.text_context, mode=ctx.span_mode,
        tokenizer=ctx.tokenizer), bool)
    if "sentences" in ctx.groups:
      out.update(_sentence_fields(record, ctx, span_masks, original_hw, stored_hw))
    if "local" in ctx.groups:
      out.update(_local_fields(record, ctx, image, span_masks, original_hw, stored_hw))
  return out


class _IndexedSource:
  """Random access to `(record_index, raw record, valid)`.

  With `length > len(source)` (evaluation padding) the indices past the end repeat record 0 and are
  marked invalid, so every process gets the same number of full batches.
  """

  def __init__(self, source, length: int | None = None):
    self._source = source
    self._size = len(source)
    self._length = self._size if length is None else length
    if self._size == 0:
      raise ValueError("the data source is empty")

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int):
    valid = index < self._size
    record_index = index if valid else 0
    return record_index, self._source[record_index], valid


class ProcessRecord:
  """The map transform: decode (if given a decoder) and `process`, naming the record on failure.

  A top-level class so `mp_prefetch` can pickle it to worker processes.
  """

  def __init__(self, config, tokenizer=None, decode: Callable[[Any], dict] | None = None,
               where: str = ""):
    self._ctx = ProcessContext(config, tokenizer)  # validates the config now, not in a worker
    self._decode = decode
    self._where = where

  def __call__(self, item) -> dict[str, np.ndarray]:
    record_index, raw, valid = item
    record_id = "?"
    try:
      record = self._decode(raw) if self._decode is not None else raw
      record_id = record.get("id", "?")
      out = process(record, self._ctx)
    except Exception as e:  # name the bad record, keep the cause
      raise ValueError(f"{self._where or 'source'} record {record_index} (id {record_id!r}): "
                       f"{e}") from e
    out["record_index"] = np.array(record_index, np.int32)
    out["valid"] = np.array(valid)
    return out


def _local_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
  return batch_size // process_count


def _ensure_absl_flags_parsed() -> None:
  """Grain's multiprocessing reads absl flags; outside `absl.app.run` parse defaults."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_dataset(config: ml_collections.ConfigDict, data_dir: str | None = None, *,
                 split: str | None = None, train: bool = True, tokenizer=None,
                 seed: int | None = None, process_index: int | None = None,
                 process_count: int | None = None, source=None) -> grain.IterDataset:
  """The Grain dataset of host-local batches for this process.

  Args:
    config: pipeline config (`default_config()` fields).
    data_dir: where `prepare` wrote the shards (`<data_dir>/<dataset>/...`).
    split: overrides `config.split`.
    train: shuffle (seeded), repeat forever, drop the last partial batch. Else: one ordered pass,
      the last batch padded with `valid=False` rows.
    tokenizer: a `goal_jax.text` tokenizer; default the shared one (built lazily in workers).
    seed: overrides `config.seed` (shuffle order).
    process_index, process_count: default `jax.process_index()`, `jax.process_count()`.
    source: random-access records already decoded (tests, in-memory data) instead of the shards.

  Returns:
    An IterDataset; `iter(ds)` yields dicts of numpy arrays with leading dim
    `batch_size / process_count`, and supports `get_state`/`set_state`.
  """
  split = split or config.split
  seed = config.seed if seed is None else seed
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_batch = _local_batch_size(config.batch_size, process_count)
  decode, where = None, "in-memory source"
  if source is None:
    source = builder.load_source(config.dataset, split, data_dir)
    decode, where = builder.decode_record, f"{config.dataset}/{split} in {data_dir}"
  transform = ProcessRecord(config, tokenizer, decode, where=where)
  check_source(config, source, dataset=config.dataset, split=split, data_dir=data_dir,
               decode=decode)
  if train:
    if len(source) < config.batch_size:
      raise ValueError(f"split {split!r} has {len(source)} records: fewer than one batch of "
                       f"{config.batch_size}")
    # Slicing the endless shuffled stream (not one epoch) gives process p the stream positions
    # p, p + P, ...: global batch k holds the same records for any process count, so a run can
    # resume on another topology at the same data position (`training.checkpointing`).
    ds = grain.MapDataset.source(_IndexedSource(source)).seed(seed).shuffle().repeat()
    ds = ds[process_index::process_count].map(transform)
  else:
    per_step = local_batch * process_count
    padded = -(-len(source) // per_step) * per_step
    ds = grain.MapDataset.source(_IndexedSource(source, padded))[process_index::process_count]
    ds = ds.map(transform)
  read_options = grain.ReadOptions(num_threads=config.read_threads,
                                   prefetch_buffer_size=config.prefetch_buffer_size)
  it_ds = ds.to_iter_dataset(read_options)
  if config.num_workers > 0:
    # Workers process elements round-robin and the parent batches them, so the data order (and
    # so every batch) is the same for any worker count.
    _ensure_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
  return it_ds.batch(local_batch, drop_remainder=train)


def batch_sharding(mesh: jax.sharding.Mesh, batch_axes: str | Sequence[str] = "data"):
  """Sharding of a batch whose leading dim is split over `batch_axes` of the mesh."""
  axes = batch_axes if isinstance(batch_axes, str) else tuple(batch_axes)
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))


def make_global_batch(batch: Any, mesh: jax.sharding.Mesh,
                      batch_axes: str | Sequence[str] = "data") -> Any:
  """Joins each process's host batch into global `jax.Array`s, rows split over `batch_axes`.

  Every process passes its own rows (numpy); the global batch is their concatenation in process
  order, as `jax.make_array_from_process_local_data` defines it. The trainer, evaluation and LISM
  all place their batches with this.
  """
  sharding = batch_sharding(mesh, batch_axes)
  axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  local_devices = max(math.prod(mesh.shape[a] for a in axes) // jax.process_count(), 1)

  def put(name, x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % local_devices:
      raise ValueError(f"batch[{name!r}] has shape {x.shape}: its leading (batch) dimension must "
                       f"divide evenly over the {local_devices} local devices of mesh axis "
                       f"{batch_axes!r}")
    return jax.make_array_from_process_local_data(sharding, x)

  return paths.map_with_names(put, batch)
