"""GOAL's reproduction switches: the pipeline behaviours that reproduce the official GOAL code.

README "Where we differ from the official GOAL code": the defaults are the corrected behaviours;
`config.compat=goal` sets every field that reproduces GOAL's released code at once (`COMPAT`):
`span_mode`, `text_norm`, `box_mode`, `box_grid_patch`, `box_norm`, `geometry`. Some of them read
what only some preparations store (GOAL's sentence pieces, the raw caption, the JSON box sizes), so
`check_source` refuses other data at start-up, with the `prepare` command that makes such data.
"""
import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from goal_jax import constants
from goal_jax.data import builder
from goal_jax.data import geometry
from goal_jax.data import records
from goal_jax.text import sentences as text_sentences
from goal_jax.text import spans as text_spans
from goal_jax.text import tokenizer as text_tokenizer

TEXT_NORMS = ("clip", "hf")
BOX_NORMS = ("image", "json")
# What each `compat` value sets (`goal`: GOAL's released code; `goal_fixed`: the authors' later
# fix of its boxes); written in `goal_jax.constants`, which the recipes read.
COMPAT = constants.COMPAT
COMPAT_SPLITTER = "goal"  # both need shards split with GOAL's rule (`prepare --splitter=goal`)


def resolve_compat(config: Mapping[str, Any]) -> dict[str, Any]:
  """The behaviour fields in force: the config's, with those `config.compat` sets (`COMPAT`).

  A field left at its default takes the compat value; a field set to a third value conflicts
  and is an error (for an ablation of one behaviour, leave compat empty and set the fields).
  """
  defaults = constants.INPUT
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


@dataclasses.dataclass(frozen=True)
class Switches:
  """The behaviour fields in force (`resolve`), and what they need of a record."""
  compat: str
  geometry: str
  span_mode: str
  box_mode: str
  text_norm: str
  box_grid_patch: int
  box_norm: str

  @property
  def reads_reproduction_fields(self) -> bool:
    """Whether records need what only some preparations give (`check_source`)."""
    return bool(self.compat or self.text_norm == "hf" or self.box_norm == "json")

  @property
  def pad_id(self) -> int:
    return text_tokenizer.EOT_ID if self.text_norm == "hf" else 0  # HF pads with EOT

  def norm_hw(self, record: Mapping[str, Any], pair: int):
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

  def problem(self, record: Mapping[str, Any]) -> str | None:
    """Why these switches cannot reproduce GOAL on this record's data (None: they can)."""
    if self.compat and record["splitter"].partition("@")[0] != COMPAT_SPLITTER:
      return (f"config.compat={self.compat} reproduces GOAL's spans, which are defined on GOAL's "
              f"sentence pieces, but these records were split with {record['splitter']!r}")
    if self.text_norm == "hf" and not record.get("raw_caption"):
      return ("config.text_norm=hf (compat) needs the caption as read, which records prepared "
              "before it was stored lack")
    return None

  def view(self, record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record as the switches see it: with `text_norm=hf`, the caption in HF's normal form
    and its sentences re-split by the record's splitter (same count, so the local pairs'
    sentence indices still hold). The summary and extra captions keep the stored form."""
    problem = self.problem(record)
    if problem:
      dataset = str(record.get("id", "")).partition("/")[0] or "DATASET"
      raise ValueError(f"{problem}. Prepare it again:\n  "
                       f"{prepare_command(dataset, '<split>', '<data_dir>')}")
    if self.text_norm != "hf":
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


def resolve(config: Mapping[str, Any]) -> Switches:
  """The validated switches of a pipeline config (`resolve_compat`, then each field's range)."""
  behaviour = resolve_compat(config)
  switches = Switches(**{**behaviour, "box_grid_patch": int(behaviour["box_grid_patch"])})
  if switches.geometry not in geometry.GEOMETRIES:
    raise ValueError(f"config.geometry={switches.geometry!r}: expected one of "
                     f"{geometry.GEOMETRIES}")
  if switches.span_mode not in text_spans.MODES:
    raise ValueError(f"config.span_mode={switches.span_mode!r}: expected one of "
                     f"{text_spans.MODES}")
  if switches.box_mode not in geometry.BOX_MODES:
    raise ValueError(f"config.box_mode={switches.box_mode!r}: expected one of "
                     f"{geometry.BOX_MODES}")
  if switches.text_norm not in TEXT_NORMS:
    raise ValueError(f"config.text_norm={switches.text_norm!r}: expected one of {TEXT_NORMS}")
  if switches.box_norm not in BOX_NORMS:
    raise ValueError(f"config.box_norm={switches.box_norm!r}: expected one of {BOX_NORMS}")
  if switches.box_mode != "goal" and (switches.box_grid_patch or switches.box_norm != "image"):
    raise ValueError("config.box_grid_patch and config.box_norm=json are parts of GOAL's box "
                     "rule: they need config.box_mode=goal")
  if switches.box_grid_patch < 0:
    raise ValueError(f"config.box_grid_patch={switches.box_grid_patch}: expected 0 (the model's "
                     "patch size) or a patch side in pixels")
  return switches


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

  Args:
    config: the pipeline config, or its `Switches` (`resolve`).
  """
  switches = config if isinstance(config, Switches) else resolve(config)
  if not switches.reads_reproduction_fields or not len(source):
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
    problem = switches.problem(record)
    if problem:
      raise ValueError(f"{where}: {problem}. Prepare it again:\n  {command}")
    best = records.best_pair(record)
    if best is not None:
      try:
        switches.norm_hw(record, best)
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
