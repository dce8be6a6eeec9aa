"""One Orbax CheckpointManager for the train state and the Grain iterator position.

Saving both together makes resume exact: the restored run sees the same next batch it would have
seen without the interruption. Orbax writes each step to a temporary directory and renames it
when complete, so a crash mid-save leaves the previous checkpoint as the latest one.

Layout: `<workdir>/checkpoints/<step>/{state, data_iter}`; `step` counts optimizer steps done.
Save after a step and before drawing the next batch, so the iterator state matches the state.

On another process count the state restores onto the new mesh as usual, but Grain's iterator
state is one file per process (`data_iter/process_<i>-of-<n>.json`), which a job of another size
cannot use. Such a job instead moves its fresh iterators `step` batches ahead: one batch per step,
each process drawing its share of the global batch. That is the saved data position when the
global batch is unchanged, because `data.pipeline` puts the same records in global batch k for
every process count (processes read interleaved positions of one shuffled stream).

Orbax's rename proves a step was written completely, not that it still reads back the same: a
disk, copy or sync tool can flip, cut or drop files afterwards. So once a step is finalised,
process 0 writes `<step>/checksums.json` (size and sha256 of every file; it lives and dies with the
step). `restore_or_init` checks it on every process and, if it disagrees or Orbax cannot read the
step, warns, moves the step aside to `<step>.corrupt` (kept for the user; the run can save that
step number again) and resumes from the newest older step that is intact.
"""
import hashlib
import json
import os
import traceback
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from goal_jax import files

STATE = "state"
DATA_ITER = "data_iter"
MANIFEST = "checksums.json"
CORRUPT_SUFFIX = ".corrupt"
_JSON_NAMES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding")
_NO_DATA_ITER = "no data iterator state"


class CheckpointError(RuntimeError):
  """No usable checkpoint; the message names the directory, the steps and what is wrong."""


class Checkpointer:
  """Saves every `save_every` steps (or when forced), keeps the last `keep`, resumes the latest.

  Saves are asynchronous: the arrays are copied off the device before `save` returns (so donating
  the state to the next step is safe) and written in the background. Call `close()` (or use it as
  a context manager) before exiting so the last write completes. The checksums of a step it saved
  are written once that step is final: at the next `save`, `wait_until_finished` or `close`
  (reading the step back once on process 0; steps found on disk are never checksummed, as they
  may already be damaged).
  """

  def __init__(self, directory: str, *, save_every: int, keep: int = 3, async_save: bool = True):
    if save_every < 1 or keep < 1:
      raise ValueError(f"save_every and keep must be >= 1, got {save_every}, {keep}")
    self.directory = os.path.abspath(directory)
    # Only the interval: Orbax's default policy would also save a fresh run's first step, and
    # the trainer saves on preemption and at the end itself.
    policy = ocp.checkpoint_managers.FixedIntervalPolicy(save_every)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            save_decision_policy=policy),
        item_names=(STATE, DATA_ITER),
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       DATA_ITER: grain.checkpoint.CheckpointHandler()})
    self._async = async_save
    self._unsealed = set()  # steps this object saved that have no checksums.json yet

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  @property
  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Whether `step` is due: a multiple of `save_every` after the latest saved step."""
    return self._manager.should_save(step)

  def save(self, step: int, state: Any, data_iter: Any = None, *, force: bool = False) -> bool:
    """Saves if `should_save(step)` or `force`; returns whether it saved."""
    if not (force or self.should_save(step)):
      return False
    if step in self._manager.all_steps():
      return False  # e.g. a forced save right after a scheduled one
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    # Orbax's save waits for the previous one anyway; waiting first lets us checksum that step
    # while no background thread writes or garbage-collects.
    self.wait_until_finished()
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    if saved:
      self._unsealed.add(step)
      if not self._async:
        self._seal()
    return saved

  def restore(self, abstract_state: Any, data_iter: Any = None, step: int | None = None) -> Any:
    """Restores the state into `abstract_state`'s shapes, dtypes and shardings.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings (`sharding.sharded_init`),
        or of arrays whose shardings to copy.
      data_iter: a fresh Grain iterator over the same pipeline; its position is set in place
        (from its Grain state, or `step` batches ahead if another process count saved it).
      step: which step; the latest when None.

    Returns:
      The restored state.

    Raises:
      CheckpointError: the step's files disagree with its checksums.json, or Orbax cannot read it.
    """
    step = self.latest_step if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    problem = self._verify(step)
    if problem:
      raise CheckpointError(f"checkpoint {self.step_dir(step)} is corrupt: {problem}")
    try:
      return self._restore_step(abstract_state, data_iter, step)
    except Exception as e:  # Orbax, TensorStore and json raise many types; all mean "unreadable".
      if isinstance(e, ValueError) and _NO_DATA_ITER in str(e):
        raise
      raise CheckpointError(f"cannot restore {self.step_dir(step)}: {_one_line(e)}") from e

  def _restore_step(self, abstract_state: Any, data_iter: Any, step: int) -> Any:
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    other_topology = False
    if data_iter is not None:
      saved = os.path.join(self.directory, str(step), DATA_ITER)
      if not os.path.isdir(saved):
        raise ValueError(f"checkpoint {self.directory}/{step} has {_NO_DATA_ITER} "
                         f"({DATA_ITER}/ is missing: saved without one, or deleted)")
      own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
      other_topology = not os.path.isfile(os.path.join(saved, own))
      if not other_topology:
        items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    state = self._manager.restore(step, args=ocp.args.Composite(**items))[STATE]
    if other_topology:
      logging.warning("Checkpoint %s/%d has no data iterator state for %d processes (another "
                      "process count wrote it): moving the data %d batches ahead", self.directory,
                      step, jax.process_count(), step)
      skip_batches(data_iter, step)
    return state

  def restore_or_init(self, abstract_state: Any, init_fn: Callable[[], Any],
                      data_iter: Any = None) -> Any:
    """Resumes from the newest intact checkpoint if there is one, else returns `init_fn()`.

    A step whose files disagree with its checksums.json, or that Orbax cannot read, is skipped
    with a warning and moved to `<step>.corrupt` once an older step restored, so the resumed run
    can save that step number again. If no step is intact, nothing is moved and CheckpointError
    lists every step and why it failed.
    """
    steps = sorted(self.all_steps, reverse=True)
    if not steps:
      return init_fn()
    failed = []  # (step, reason), newest first
    for step in steps:
      logging.info("Resuming from %s", self.step_dir(step))
      problem = self._verify(step)
      state = None
      if not problem:
        try:
          state = self._restore_step(abstract_state, data_iter, step)
        except Exception as e:  # pylint: disable=broad-except  # any failure: try an older step
          problem = _one_line(e)
          logging.debug("Restoring %s failed:\n%s", self.step_dir(step), traceback.format_exc())
      if not _all_processes(not problem):
        problem = problem or "another process could not restore it"
      if not problem:
        self._set_aside(failed, step)
        return state
      failed.append((step, problem))
    tried = "; ".join(f"step {s}: {why}" for s, why in failed)
    raise CheckpointError(
        f"no intact checkpoint in {self.directory} (tried {tried}). If they are damaged, delete "
        "these step directories (or move them away) to start from scratch here, or use a new "
        "workdir; if this run's config differs from the one that wrote them, use that config"
    ) from None

  def _set_aside(self, failed: list[tuple[int, str]], good_step: int) -> None:
    """Renames bad steps newer than `good_step` to `<step>.corrupt` and warns about each."""
    for step, problem in failed:
      target = _free_name(self.step_dir(step) + CORRUPT_SUFFIX)
      if jax.process_index() == 0:
        try:
          os.rename(self.step_dir(step), target)
          kept = f"moved it to {target} (kept for inspection; delete it when not needed)"
        except OSError as e:
          kept = f"could not move it aside ({_one_line(e)}), so step {step} will not be saved again"
      else:
        kept = f"process 0 moves it to {target}"
      logging.warning("Checkpoint %s is unusable (%s): %s; resuming from step %d",
                      self.step_dir(step), problem, kept, good_step)
    if failed:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("goal_jax_checkpoint_set_aside")
      self._manager.reload()

  def _verify(self, step: int) -> str | None:
    """What is wrong with `step`'s files (None: nothing found), agreed by all processes."""
    step_dir = self.step_dir(step)
    try:
      if os.path.isfile(os.path.join(step_dir, MANIFEST)):
        problem = verify_manifest(step_dir)
      else:
        logging.info("Checkpoint %s has no %s (saved by an older version, or stopped before its "
                     "checksums were written): checking only that its JSON files parse",
                     step_dir, MANIFEST)
        problem = _check_json_files(step_dir)
    except OSError as e:  # e.g. an I/O error on a bad sector
      problem = f"cannot read its files ({_one_line(e)})"
    if not _all_processes(not problem):
      problem = problem or "another process found it corrupt"
    return problem

  def _seal(self) -> None:
    """Writes checksums.json for finalised steps this object saved; no save may be in flight."""
    steps, self._unsealed = sorted(self._unsealed), set()
    if jax.process_index() != 0:
      return
    for step in steps:
      step_dir = self.step_dir(step)
      if not os.path.isdir(step_dir):  # garbage-collected by max_to_keep already
        continue
      try:
        write_manifest(step_dir)
      except OSError as e:
        logging.warning("Could not write %s/%s: %s; the step restores unverified", step_dir,
                        MANIFEST, _one_line(e))

  def wait_until_finished(self) -> None:
    """Waits for the pending save, then writes the checksums of the finalised steps."""
    self._manager.wait_until_finished()
    self._seal()

  def close(self) -> None:
    """Waits for pending writes (and their checksums) and releases the manager."""
    self.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def skip_batches(data_iter: Any, count: int) -> None:
  """Moves a fresh Grain iterator `count` batches ahead.

  Jumps where Grain can (`set_next_index`: an index computation, no records read); iterators that
  cannot jump (multiprocess prefetch) draw and drop the batches, which costs their input time.
  """
  try:
    grain.experimental.set_next_index(data_iter, count)
  except NotImplementedError:
    for _ in range(count):
      next(data_iter)


# --- Checksums.


def _files(step_dir: str) -> dict[str, str]:
  """Relative path ('/'-separated) -> absolute path of every file of a step but the manifest."""
  out = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir).replace(os.sep, "/")
      if rel != MANIFEST and not rel.startswith(MANIFEST + ".tmp"):  # it, or a write cut short
        out[rel] = path
  return out


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def write_manifest(step_dir: str) -> None:
  """Writes `<step_dir>/checksums.json`: size and sha256 of every file, atomically."""
  entries = {rel: {"size": os.path.getsize(path), "sha256": _sha256(path)}
             for rel, path in sorted(_files(step_dir).items())}
  files.write_json(os.path.join(step_dir, MANIFEST), {"format": 1, "files": entries}, indent=1)


def verify_manifest(step_dir: str) -> str | None:
  """What disagrees with `<step_dir>/checksums.json` (None: all files match).

  Files the manifest does not list are ignored: only missing, resized or changed ones count.
  """
  try:
    with open(os.path.join(step_dir, MANIFEST)) as f:
      expected = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"{MANIFEST} is unreadable ({_one_line(e)})"
  present, problems = _files(step_dir), []
  for rel, want in sorted(expected.items()):
    if rel not in present:
      problems.append(f"{rel} is missing")
      continue
    size = os.path.getsize(present[rel])
    if size != want["size"]:
      problems.append(f"{rel} has {size} bytes, {MANIFEST} says {want['size']}")
    elif _sha256(present[rel]) != want["sha256"]:
      problems.append(f"{rel} has changed (sha256 differs from {MANIFEST})")
  if not problems:
    return None
  more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
  return ", ".join(problems[:3]) + more


def _check_json_files(step_dir: str) -> str | None:
  """The first JSON file of a step (without checksums) that does not parse, if any."""
  for rel, path in sorted(_files(step_dir).items()):
    name = rel.rsplit("/", 1)[-1]
    if name in _JSON_NAMES or name.endswith(".json") or "/array_metadatas/" in f"/{rel}":
      try:
        with open(path) as f:
          json.load(f)
      except (OSError, ValueError) as e:
        return f"{rel} is not valid JSON ({_one_line(e)})"
  return None


def _one_line(error: BaseException, limit: int = 400) -> str:
  """The error's root cause on one line: TensorStore wraps the useful message in a long spec."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = " ".join(f"{type(error).__name__}: {error}".split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _free_name(path: str) -> str:
  """`path`, or `path.1`, `path.2`, ... whichever does not exist yet."""
  candidate, n = path, 0
  while os.path.exists(candidate):
    n += 1
    candidate = f"{path}.{n}"
  return candidate


def _all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process, so all take the same branch."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))
