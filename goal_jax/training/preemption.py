"""Turns SIGTERM (TPU/cloud preemption notice) into "save at the next step boundary and exit 0";
the train command does the same with a first Ctrl-C (SIGINT), and a second one stops at once.

The handler only sets a flag: saving inside a signal handler would interrupt a step halfway. The
loop asks `should_stop(step)` after each step, saves with `force=True`, waits for the write and
returns normally, so the job scheduler sees a clean exit and the rerun resumes from that step.
"""
import signal
from typing import Sequence

import jax
from absl import logging
from jax.experimental import multihost_utils


_received: int | None = None  # the signal, shared by nested guards (the command's and a run's)
_depth = 0


class PreemptionGuard:
  """Context manager that records termination signals instead of dying on them.

  Guards nest: the command holds one over its whole life (so a signal during start-up or data
  preparation is kept, not fatal) and each training run holds its own; a signal seen by any of
  them stops the run. The outermost guard starts with a clean slate.

  On several processes every host must stop at the same step, so the decision comes from JAX's
  distributed preemption sync point (`jax.distributed.initialize` installs its own SIGTERM
  notifier, which a Python handler would replace); then no Python handler is installed.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
    self.signals = tuple(signals)
    self._previous = {}

  @property
  def received(self) -> int | None:
    return _received

  def __enter__(self):
    global _depth, _received
    if _depth == 0:
      _received = None
    _depth += 1
    if jax.process_count() == 1:
      for sig in self.signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    global _depth
    _depth -= 1
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  @staticmethod
  def _handle(signum, frame):
    global _received
    del frame
    if signum == signal.SIGINT and _received is not None:
      raise KeyboardInterrupt  # a second Ctrl-C: the person wants out now
    if _received is None:
      hint = " (Ctrl-C again to stop now, unsaved)" if signum == signal.SIGINT else ""
      logging.warning("Received %s: will save and exit after the current step%s.",
                      signal.Signals(signum).name, hint)
      if signum == signal.SIGINT:
        print(f"\nCtrl-C: saving at the end of this step, then exiting{hint}.", flush=True)
    _received = signum

  def should_stop(self, step: int) -> bool:
    """True once a termination signal arrived; all processes agree on the step."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return _received is not None
