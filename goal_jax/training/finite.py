"""Guards against non-finite values: a step's loss and metrics, and the whole train state.

A non-finite step stops the run naming the step and the batch's records; a state with a
non-finite float leaf is never checkpointed (`assert_state_finite` runs before every save).
"""
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from goal_jax import tree_paths as paths


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
