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
patch_mask), `local` (GOAL's local pair), `regions` (FG-CLIP's boxes, their captions and hard
negatives). Each method names its groups (`Method.fields`); the trainer sets them. With
`config.short_text_packing` (a width), a batch also carries its short captions (summary,
sentences, region captions, hard negatives) packed in `short_text_rows` rows per pair
(`goal_jax.text.packing.FIELDS`).
`record_index` and `valid` are always present.

The behaviours that reproduce GOAL's released code (`config.compat`, ...) are
`goal_jax.data.reproduction`'s; `make_dataset` refuses shards they cannot reproduce GOAL on. Model
inputs are `images.model_image`; batches go onto devices with `goal_jax.sharding`.
"""
from typing import Any, Callable, Mapping, Sequence

from absl import flags
import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from goal_jax import constants
from goal_jax.data import builder
from goal_jax.data import detail
from goal_jax.data import geometry
from goal_jax.data import images
from goal_jax.data import records
from goal_jax.data import reproduction
from goal_jax.text import packing as text_packing
from goal_jax.text import spans as text_spans
from goal_jax.text import tokenizer as text_tokenizer

FIELD_GROUPS = ("global", "summary", "sentences", "local", "regions")


def default_config() -> ml_collections.ConfigDict:
  """Pipeline defaults (`constants.INPUT`): ViT-B/16 at 224 px, 248-token captions, CLIP's centre
  crop, the corrected behaviours (`reproduction`)."""
  return ml_collections.ConfigDict(constants.INPUT)


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

  def __init__(self, config: Mapping[str, Any] | ml_collections.ConfigDict, tokenizer=None,
               image_norm: tuple[Any, Any] | None = None):
    self.image_size = int(config["image_size"])
    self.patch_size = int(config["patch_size"])
    self.grid = geometry.grid_size(self.image_size, self.patch_size)
    self.text_context = int(config["text_context"])
    self.sentence_context = int(config["sentence_context"])
    self.groups = field_groups(config["fields"])
    self.max_sentences = int(config["max_sentences"])
    self.max_regions = int(config.get("max_regions", constants.INPUT["max_regions"]))
    self.region_context = int(config.get("region_context", constants.INPUT["region_context"]))
    self.hard_negatives = int(config.get("hard_negatives", constants.INPUT["hard_negatives"]))
    self.local_context = int(config.get("local_context", 0)) or self.text_context
    if not 2 <= self.local_context <= self.text_context:
      raise ValueError(f"config.local_context={self.local_context}: expected 0 (the text "
                       f"context) or 2 to {self.text_context}")
    self.short_text_packing = int(config.get("short_text_packing", 0))
    self.short_text_rows = int(config.get("short_text_rows", 1))
    self.short_captions = text_packing.captions_of(self.groups)
    if self.short_text_packing and len(self.short_captions) < 2:
      raise ValueError(f"config.short_text_packing={self.short_text_packing} packs the summary "
                       f"with the sentences or the region captions, and fields="
                       f"{config['fields']!r} has not both: set it to 0")
    if 0 < self.short_text_packing < self.sentence_context or self.short_text_rows < 1:
      raise ValueError(f"config.short_text_packing={self.short_text_packing} rows (of "
                       f"{self.short_text_rows}) must hold a summary of the sentence context "
                       f"{self.sentence_context}: use at least {self.sentence_context}, and "
                       "short_text_rows >= 1")
    self.caption_sentences = int(config.get("caption_sentences", 0))
    if self.caption_sentences and self.groups & {"sentences", "local"}:
      raise ValueError("config.caption_sentences shortens `text`; it cannot be combined with "
                       "span-based fields (sentences, local), whose spans index the whole caption")
    self.switches = reproduction.resolve(config)
    normalize_on = config.get("normalize_on", "host")
    if normalize_on not in ("host", "device"):
      raise ValueError(f"config.normalize_on={normalize_on!r}: expected 'host' or 'device'")
    # "device": image fields are the resized uint8 pixels (a quarter of the bytes, and no
    # normalisation here); the train step normalises them (`images.normalize_batch_on_device`).
    self.image_dtype = np.uint8 if normalize_on == "device" else np.float32
    self._tokenizer = tokenizer  # None: the shared one, looked up per process (picklable)
    self.image_norm = image_norm or (None, None)  # a backbone family's (mean, std); None: CLIP's

  @property
  def tokenizer(self):
    return self._tokenizer if self._tokenizer is not None else text_tokenizer.get_tokenizer()

  def tokens(self, texts: Sequence[str], context: int) -> np.ndarray:
    # Stored text is already in normal form; normalising again could move tokens off the offsets.
    return self.tokenizer(list(texts), context_length=context, normalize=False,
                          pad_id=self.switches.pad_id).ids

  def patch_mask(self, box, original_hw, stored_hw, norm_hw=None) -> np.ndarray:
    """The box's patches; `norm_hw`: what GOAL's rule divides it by (`Switches.norm_hw`)."""
    return geometry.box_to_patch_mask(box, original_hw, self.image_size, self.patch_size,
                                      self.switches.geometry, self.switches.box_mode,
                                      stored_hw=stored_hw, goal_patch=self.switches.box_grid_patch,
                                      goal_norm_hw=norm_hw)

  def model_image(self, image: Image.Image) -> np.ndarray:
    if self.image_dtype == np.uint8:
      return geometry.resize_image(image, self.image_size, self.switches.geometry)
    return images.model_image(image, self.image_size, self.switches.geometry, *self.image_norm)


def _local_fields(record, ctx: ProcessContext, image, span_masks, original_hw, stored_hw):
  """GOAL's local pair: the best non-full-image pair's crop, sentence, span and patches."""
  s, lc, g2 = ctx.image_size, ctx.text_context, ctx.grid * ctx.grid
  best = records.best_pair(record)
  if best is None:
    return _local_text(ctx, "", {"local_image": np.zeros((s, s, 3), ctx.image_dtype),
                                 "local_span_mask": np.zeros((lc,), bool),
                                 "local_patch_mask": np.zeros((g2,), bool),
                                 "local_valid": np.array(False)})
  box = np.asarray(record["pair_box"][best], np.float64)
  sentence = int(record["pair_sentence"][best])
  start, end = int(record["sentence_starts"][sentence]), int(record["sentence_ends"][sentence])
  # From the full-resolution detail copy when the record has one, as GOAL crops the original.
  crop = detail.local_crop(record, box, image, min_short_side=ctx.image_size)
  return _local_text(ctx, record["caption"][start:end], {
      "local_image": ctx.model_image(crop),
      "local_span_mask": span_masks[sentence],
      "local_patch_mask": ctx.patch_mask(box, original_hw, stored_hw,
                                         ctx.switches.norm_hw(record, best)),
      "local_valid": np.array(True)})


def _local_text(ctx: ProcessContext, sentence: str, fields: dict) -> dict:
  """`fields` with the local sentence's tokens: at the text context, or cut to
  `config.local_context` with `local_text_truncated` saying whether that lost tokens."""
  ids = ctx.tokens([sentence], ctx.text_context)[0]
  if ctx.local_context == ctx.text_context:
    return {**fields, "local_text": ids}
  ids, truncated = text_tokenizer.shorten(ids, ctx.local_context)
  return {**fields, "local_text": ids, "local_text_truncated": np.asarray(truncated)}


def sentence_texts(record, max_sentences: int) -> list[str]:
  """The caption's first `max_sentences` sentences (of the record as the switches view it)."""
  caption = record["caption"]
  return [caption[int(a):int(b)] for a, b in zip(record["sentence_starts"][:max_sentences],
                                                 record["sentence_ends"][:max_sentences])]


def _sentence_fields(record, ctx: ProcessContext, span_masks, original_hw, stored_hw):
  """First M sentences: tokens, validity, span in the caption, patches of each one's best pair."""
  m, ls, lc, g2 = ctx.max_sentences, ctx.sentence_context, ctx.text_context, ctx.grid * ctx.grid
  texts = sentence_texts(record, m)
  n = len(texts)
  span_mask = np.zeros((m, lc), bool)
  span_mask[:n] = span_masks[:n]
  patch_mask = np.zeros((m, g2), bool)
  for k in range(n):
    best = records.best_pair(record, k)
    if best is not None:
      patch_mask[k] = ctx.patch_mask(record["pair_box"][best], original_hw, stored_hw,
                                     ctx.switches.norm_hw(record, best))
  return {"sentences": ctx.tokens(texts + [""] * (m - n), ls),
          "sentence_valid": np.arange(m) < n,
          "span_mask": span_mask,
          "patch_mask": patch_mask}


def _hard_negatives(record) -> tuple[np.ndarray, list[str]]:
  """(count per pair, all hard negatives); none in shards older than the fields. Checked here,
  where they are read: code that replaces a record's pairs must replace these too (LISM does)."""
  num_pairs = len(record["pair_sentence"])
  counts = record.get("pair_hard_negative_count")
  counts = np.zeros(num_pairs, np.int32) if counts is None else np.asarray(counts)
  stored = list(record.get("pair_hard_negatives", ()))
  if counts.shape != (num_pairs,) or np.any(counts < 0) or counts.sum() != len(stored):
    raise ValueError(f"pair_hard_negative_count {counts.tolist()} does not split the "
                     f"{len(stored)} hard negatives over {num_pairs} pairs")
  return counts, stored


def _region_fields(record, ctx: ProcessContext, original_hw, stored_hw):
  """FG-CLIP's regions: the first `max_regions` pairs with a visible box (not matched to the
  full image), in record order as FG-CLIP takes its first boxes; each box as fractions of the
  model input (`geometry.model_box`), its sentence, and its first K hard negatives."""
  r, k, lr = ctx.max_regions, ctx.hard_negatives, ctx.region_context
  boxes, valid = np.zeros((r, 4), np.float32), np.zeros((r,), bool)
  texts, negatives = [""] * r, [""] * (r * k)
  negative_valid = np.zeros((r, k), bool)
  counts, stored = _hard_negatives(record)
  firsts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
  slot = 0
  for pair in range(len(record["pair_sentence"])):
    if slot == r:
      break
    box = None if record["pair_is_full_image"][pair] else geometry.model_box(
        record["pair_box"][pair], original_hw, ctx.image_size, ctx.switches.geometry,
        stored_hw=stored_hw)
    if box is None:
      continue
    sentence = int(record["pair_sentence"][pair])
    start, end = int(record["sentence_starts"][sentence]), int(record["sentence_ends"][sentence])
    boxes[slot], valid[slot], texts[slot] = box, True, record["caption"][start:end]
    own = stored[firsts[pair]:firsts[pair + 1]][:k]
    negatives[slot * k:slot * k + len(own)] = own
    negative_valid[slot, :len(own)] = True
    slot += 1
  tokens = ctx.tokens(texts + negatives, lr)
  return {"region_box": boxes, "region_text": tokens[:r], "region_valid": valid,
          "region_negatives": tokens[r:].reshape(r, k, lr),
          "region_negative_valid": negative_valid}


def _caption_text(record: Mapping[str, Any], num_sentences: int) -> str:
  """The caption, or its first `num_sentences` sentences (a short caption, for pretraining)."""
  ends = record["sentence_ends"]
  if not num_sentences or len(ends) <= num_sentences:
    return record["caption"]
  return record["caption"][:int(ends[num_sentences - 1])]


def process(record: Mapping[str, Any], config, tokenizer=None) -> dict[str, np.ndarray]:
  """One decoded shard record -> one example of the batch contract (without `record_index`).

  Args:
    record: a decoded record (`builder.decode_record`): str fields as str, arrays as numpy.
    config: the pipeline config (or a `ProcessContext` made from it, to skip re-validation).
    tokenizer: default the shared `goal_jax.text` tokenizer.
  """
  ctx = config if isinstance(config, ProcessContext) else ProcessContext(config, tokenizer)
  _check_record(record)
  record = ctx.switches.view(record)
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
        record["caption"], offsets, ctx.text_context, mode=ctx.switches.span_mode,
        tokenizer=ctx.tokenizer), bool)
    if "sentences" in ctx.groups:
      out.update(_sentence_fields(record, ctx, span_masks, original_hw, stored_hw))
    if "local" in ctx.groups:
      out.update(_local_fields(record, ctx, image, span_masks, original_hw, stored_hw))
  if "regions" in ctx.groups:
    out.update(_region_fields(record, ctx, original_hw, stored_hw))
  if ctx.short_text_packing:
    out.update(text_packing.pack_fields(out, ctx.short_captions, ctx.short_text_packing,
                                        ctx.short_text_rows))
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
               where: str = "", image_norm=None):
    # Validates the config now, not in a worker.
    self._ctx = ProcessContext(config, tokenizer, image_norm)
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
                 process_count: int | None = None, source=None,
                 image_norm=None) -> grain.IterDataset:
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
    image_norm: `(mean, std)` of the model's backbone family; default CLIP's.

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
  transform = ProcessRecord(config, tokenizer, decode, where=where, image_norm=image_norm)
  reproduction.check_source(config, source, dataset=config.dataset, split=split,
                            data_dir=data_dir, decode=decode)
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

