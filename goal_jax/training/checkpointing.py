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
"""
import os
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

STATE = "state"
DATA_ITER = "data_iter"


class Checkpointer:
  """Saves every `save_every` steps (or when forced), keeps the last `keep`, resumes the latest.

  Saves are asynchronous: the arrays are copied off the device before `save` returns (so donating
  the state to the next step is safe) and written in the background. Call `close()` (or use it as
  a context manager) before exiting so the last write completes.
  """

  def __init__(self, directory: str, *, save_every: int, keep: int = 3, async_save: bool = True):
    if save_every < 1 or keep < 1:
      raise ValueError(f"save_every and keep must be >= 1, got {save_every}, {keep}")
    self.directory = os.path.abspath(directory)
    self.save_every = save_every
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save),
        item_names=(STATE, DATA_ITER),
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       DATA_ITER: grain.checkpoint.CheckpointHandler()})

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  @property
  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iter: Any = None, *, force: bool = False) -> bool:
    """Saves if `step` is a multiple of `save_every` or `force`; returns whether it saved."""
    if not force and step % self.save_every:
      return False
    if step in self._manager.all_steps():
      return False  # e.g. a forced save right after a scheduled one
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: Any, data_iter: Any = None, step: int | None = None) -> Any:
    """Restores the state into `abstract_state`'s shapes, dtypes and shardings.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings (`sharding.abstract_state`
        or `sharding.sharded_init`), or of arrays whose shardings to copy.
      data_iter: a fresh Grain iterator over the same pipeline; its position is set in place
        (from its Grain state, or `step` batches ahead if another process count saved it).
      step: which step; the latest when None.

    Returns:
      The restored state.
    """
    step = self.latest_step if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    other_topology = False
    if data_iter is not None:
      saved = os.path.join(self.directory, str(step), DATA_ITER)
      if not os.path.isdir(saved):
        raise ValueError(f"checkpoint {self.directory}/{step} has no data iterator state; "
                         "it was saved without one")
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
    """Resumes from the latest checkpoint if there is one, else returns `init_fn()`."""
    step = self.latest_step
    if step is None:
      return init_fn()
    logging.info("Resuming from %s/%d", self.directory, step)
    return self.restore(abstract_state, data_iter, step)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self._manager.wait_until_finished()
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
