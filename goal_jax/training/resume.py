"""What a resumed run may change, and a record of the config each start ran with.

A rerun in a workdir with checkpoints resumes. That is meaningless if the rerun changed what is
being trained (method, model, init, data, batch, loss, optimizer, seed): the restored state
would go on under another recipe and its curves would join two experiments without a mark.
Those changes are refused, naming each field; the ones that only change how long the run goes
or what it logs, saves and evaluates are allowed and logged. `config.json` is the config in
force; `config_start_<step>.json` keeps the one each start (fresh or resumed at <step>) ran with.
"""
from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import ml_collections

from goal_jax import files

CONFIG_FILE = "config.json"

# Dotted field names (a prefix covers its sub-fields) that a resumed run may change.
RESUMABLE = (
    "total_steps", "total_epochs",  # extending (or shortening) a run; the schedule follows
    "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard", "progress_bar",
    "eval_every", "evals",
    "input.data_dir",  # the same prepared data, moved
    "input.num_workers", "input.read_threads", "input.prefetch_buffer_size",
    "input.normalize_on",  # bit-identical model inputs either way
    "model.attention", "model.remat",  # the same maths, computed another way
    "mesh", "sharding",  # the state is restored onto the new layout
)


# Fields added since runs were first saved, at the value that does what the code did before them:
# a saved config without the field resumes under that value as unchanged.
ADDED = {
    "input.short_text_packing": 0,
    "input.short_text_rows": 1,
    "input.local_context": 0,
}


class ResumeConfigError(ValueError):
  """A resumed run changed a field that defines what is trained."""


def as_plain(config: Any) -> dict:
  """The config as JSON would store it (tuples become lists), for comparing with the saved one."""
  as_dict = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  return json.loads(json.dumps(as_dict, default=repr))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def defining_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`{dotted field: value}` of the fields that define what is trained (all but `RESUMABLE`;
  a cache of a trained model adds its length, `total_steps`, as the demo's pretrained start)."""
  return {name: value for name, value in _flatten(as_plain(config)).items()
          if not _resumable(name)}


def config_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """`{dotted field: (saved value, current value)}` for every field that differs."""
  old, new = _flatten(saved), _flatten(current)
  old = {**{k: v for k, v in ADDED.items() if k in new}, **old}
  missing = object()
  return {name: (old.get(name), new.get(name)) for name in sorted(set(old) | set(new))
          if old.get(name, missing) != new.get(name, missing)}


def _resumable(name: str) -> bool:
  return any(name == field or name.startswith(field + ".") for field in RESUMABLE)


def check_and_record(workdir: str, config: ml_collections.ConfigDict, start_step: int,
                     *, write: bool = True) -> dict[str, tuple[Any, Any]]:
  """Refuses a resume whose config changed what is trained; records this start's config.

  Args:
    workdir: the run's directory (holds `config.json` from the previous start).
    config: this start's config.
    start_step: the restored step (0: a fresh start, where any config goes).
    write: write the files (process 0 only).

  Returns:
    The allowed changes against the previous start, `{field: (old, new)}` (logged).

  Raises:
    ResumeConfigError: naming every refused field with both values.
  """
  current = as_plain(config)
  path = os.path.join(workdir, CONFIG_FILE)
  changes = {}
  if start_step > 0 and os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      changes = config_changes(json.load(f), current)
    refused = {k: v for k, v in changes.items() if not _resumable(k)}
    if refused:
      listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
      raise ResumeConfigError(
          f"{workdir} holds a run at step {start_step} trained with another config ({listed}). "
          f"Resuming would mix two recipes: rerun with the saved values (see {path}) or use a "
          f"new --workdir")
    for name, (old, new) in changes.items():
      logging.warning("Resuming at step %d with %s changed: %r -> %r", start_step, name, old, new)
  if write:
    for name in (CONFIG_FILE, f"config_start_{start_step}.json"):
      files.write_json(os.path.join(workdir, name), current, sort_keys=True)
  return changes
