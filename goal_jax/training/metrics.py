"""Scalar metrics to `metrics.jsonl` (and TensorBoard), and guards against non-finite values.

Device values are fetched only when a log step is due, in one explicit `jax.device_get`, so the
host never stalls the step pipeline in between and the code runs under
`jax.transfer_guard("disallow")`.
"""
import json
import math
import os
import sys
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from goal_jax.training import paths


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch whenever it is installed (seconds and gigabytes, for tensor inputs we
  never pass); hiding it during the import makes tensorboardX fall back to numpy.
  """
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # `import torch` now raises ImportError
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415 - optional, only when asked for
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

  The rewrite goes to a temporary file renamed over the old one, so a crash keeps either file
  whole. A line that does not parse (cut by a crash mid-write) is dropped too.
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
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, path)
  return len(lines) - len(kept)


def read_metrics(path: str) -> list[dict[str, float]]:
  """Parses a `metrics.jsonl` back into a list of dicts (for notebooks and tests)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


class NonFiniteError(FloatingPointError):
  """A training metric became NaN or infinite."""


def assert_finite(step: int, values: Mapping[str, float], record_ids: Sequence[Any] = ()) -> None:
  """Raises `NonFiniteError` naming the step, the bad values and the batch's record ids."""
  bad = {name: value for name, value in values.items() if not math.isfinite(value)}
  if bad:
    ids = [x.item() if hasattr(x, "item") else x for x in np.asarray(record_ids).ravel()]
    raise NonFiniteError(f"step {step}: non-finite {bad}; batch record ids: {ids}")


@jax.jit
def _finite_leaves(tree: Any) -> list[jax.Array]:
  return [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.inexact)]


def assert_state_finite(step: int, state: Any) -> None:
  """Raises `NonFiniteError` if any float leaf of the train state holds a NaN or an infinity.

  A step's loss is computed from the params *before* its update, so a finite loss does not
  prove the updated state finite (an overflowing learning rate breaks the params while the loss
  looks fine); a checkpoint of such a state would fail every restart. Called before each save.
  """
  names = [paths.path_str(p) for p, x in jax.tree_util.tree_leaves_with_path(state)
           if jnp.issubdtype(x.dtype, jnp.inexact)]
  finite = np.asarray(jax.device_get(_finite_leaves(state)), bool)
  if not finite.all():
    bad = [name for name, ok in zip(names, finite) if not ok]
    raise NonFiniteError(
        f"step {step}: the updated train state has non-finite values in {len(bad)} of "
        f"{len(names)} leaves (e.g. {', '.join(bad[:3])}) although the loss was finite; not "
        "checkpointed, so the last checkpoint stays the newest. Lower the learning rate or set "
        "--config.optim.grad_clip_norm")


class NonFiniteGuard:
  """Checks every step's loss, one step late.

  Checking step t right after dispatching it would block the host until t finishes and leave the
  device idle while the next batch is prepared; step t-1 has (nearly always) finished by then.
  Keep the host batch's `record_index` for the ids: it costs no device transfer.
  """

  def __init__(self, keys: Sequence[str] = ("loss",)):
    self.keys = tuple(keys)
    self._pending = None

  def __call__(self, step: int, metrics: Mapping[str, Any], record_ids: Sequence[Any] = ()) -> None:
    """Queues step `step`'s metrics and checks the previously queued step."""
    previous, self._pending = self._pending, (step, {k: metrics[k] for k in self.keys}, record_ids)
    if previous is not None:
      self._check(*previous)

  def flush(self) -> None:
    """Checks the last queued step (call before saving a checkpoint and at the end)."""
    previous, self._pending = self._pending, None
    if previous is not None:
      self._check(*previous)

  @staticmethod
  def _check(step, values, record_ids):
    fetched = jax.device_get(values)
    assert_finite(step, {k: float(np.asarray(v)) for k, v in fetched.items()}, record_ids)
