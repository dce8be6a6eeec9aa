"""Scalar metrics to `metrics.jsonl` (and TensorBoard), one line per log step.

Device values are fetched only when a log step is due, in one explicit `jax.device_get`, so the
host never stalls the step pipeline in between and the code runs under
`jax.transfer_guard("disallow")`.
"""
import json
import os
import sys
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np

from goal_jax import files


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch whenever it is installed (seconds and gigabytes, for tensor inputs we
  never pass); hiding it during the import makes tensorboardX fall back to numpy.
  """
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # `import torch` now raises ImportError
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top; torch hidden
  finally:
    if hide_torch:
      del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Appends `{"step": s, name: value, ...}` lines to `<workdir>/metrics.jsonl`.

  Only process 0 writes; other processes still fetch (the same global values) so every host
  takes the same path. Appending keeps the history of a preempted-and-resumed run in one file;
  a run resumed at `resume_step` first drops the lines of later steps, which the interrupted run
  wrote after its last checkpoint and the resumed run writes again.
  """

  def __init__(self, workdir: str, *, log_every: int = 50, tensorboard: bool = False,
               is_main: bool | None = None, resume_step: int | None = None):
    self.log_every = log_every
    self.is_main = jax.process_index() == 0 if is_main is None else is_main
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = None
    self._tb = None
    if self.is_main:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None:
        dropped = drop_steps_after(self.path, resume_step)
        if dropped:
          logging.warning("Resuming at step %d: dropped %d lines of %s written after that "
                          "checkpoint (they are trained again)", resume_step, dropped, self.path)
      self._file = open(self.path, "a", encoding="utf-8")
      if tensorboard:
        self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))

  def due(self, step: int, total_steps: int | None = None) -> bool:
    """Whether `step` is a log step: every `log_every` steps, the first and the last."""
    return step == 1 or step % self.log_every == 0 or step == total_steps

  def write(self, step: int, scalars: Mapping[str, Any]) -> dict[str, float]:
    """Fetches `scalars` (device or host values) and writes them; returns them as floats."""
    host = {name: float(np.asarray(value)) for name, value in jax.device_get(dict(scalars)).items()}
    if self._file is not None:
      self._file.write(json.dumps({"step": int(step), **host}) + "\n")
      self._file.flush()
    if self._tb is not None:
      for name, value in host.items():
        self._tb.add_scalar(name, value, int(step))
      self._tb.flush()
    return host

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def drop_steps_after(path: str, step: int) -> int:
  """Rewrites `metrics.jsonl` without the lines of steps after `step`; returns how many went.

  The rewrite is atomic (`files.write_atomic`), so a crash keeps either file whole. A line that
  does not parse (cut by a crash mid-write) is dropped too.
  """
  if not os.path.isfile(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError, TypeError):
      pass
  if len(kept) != len(lines):
    files.write_atomic(path, "".join(kept))
  return len(lines) - len(kept)


def read_metrics(path: str) -> list[dict[str, float]]:
  """Parses a `metrics.jsonl` back into a list of dicts (for notebooks and tests)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
