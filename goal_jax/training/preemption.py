"""Turns SIGTERM (TPU/cloud preemption notice) into "save at the next step boundary and exit 0".

The handler only sets a flag: saving inside a signal handler would interrupt a step halfway. The
loop asks `should_stop(step)` after each step, saves with `force=True`, waits for the write and
returns normally, so the job scheduler sees a clean exit and the rerun resumes from that step.
"""
import signal
from typing import Sequence

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionGuard:
  """Context manager that records termination signals instead of dying on them.

  On several processes every host must stop at the same step, so the decision comes from JAX's
  distributed preemption sync point (`jax.distributed.initialize` installs its own SIGTERM
  notifier, which a Python handler would replace); then no Python handler is installed.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
    self.signals = tuple(signals)
    self.received: int | None = None
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1:
      for sig in self.signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.received is None:
      logging.warning("Received %s: will save and exit after the current step.",
                      signal.Signals(signum).name)
    self.received = signum

  def should_stop(self, step: int) -> bool:
    """True once a termination signal arrived; all processes agree on the step."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received is not None
