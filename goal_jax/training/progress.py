"""Step time, throughput and ETA (`Chrono`), and a tqdm bar for the terminal.

JAX dispatch is asynchronous, so wall time means something only where the host waits for results:
call `Chrono.tick` at log steps, after the metrics fetch. The first interval (compilation) and
paused time (evaluation, checkpoint saves) are left out of the rates.
"""
import contextlib
import sys
import time
from typing import Callable

import tqdm


class Chrono:
  """Measures step time and examples/s between ticks; estimates time to the end."""

  def __init__(self, total_steps: int, examples_per_step: int,
               clock: Callable[[], float] = time.perf_counter):
    self.total_steps = total_steps
    self.examples_per_step = examples_per_step
    self._clock = clock
    self._mark = None  # (step, time) of the last tick
    self._paused = 0.0
    self._run_time = 0.0  # measured seconds (excludes the first interval and pauses)
    self._run_steps = 0

  def tick(self, step: int) -> dict[str, float]:
    """Rates since the previous tick; empty on the first tick (it includes compilation)."""
    now = self._clock()
    mark, self._mark = self._mark, (step, now)
    paused, self._paused = self._paused, 0.0
    if mark is None or step <= mark[0]:
      return {}
    seconds = now - mark[1] - paused
    self._run_time += seconds
    self._run_steps += step - mark[0]
    step_time = seconds / (step - mark[0])
    mean_step_time = self._run_time / self._run_steps
    return {
        "step_time_s": step_time,
        "examples_per_s": self.examples_per_step / step_time,
        "eta_s": max(self.total_steps - step, 0) * mean_step_time,
    }

  @contextlib.contextmanager
  def paused(self):
    """Leaves the time spent inside (evaluation, checkpointing) out of the rates."""
    start = self._clock()
    try:
      yield
    finally:
      self._paused += self._clock() - start


class ProgressBar:
  """A tqdm bar over optimizer steps that starts at the resumed step (process 0 only)."""

  def __init__(self, total_steps: int, initial_step: int = 0, *, enabled: bool = True,
               file=None):
    self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, disable=not enabled,
                          unit="step", dynamic_ncols=True, file=file or sys.stderr)
    self._step = initial_step

  def update(self, step: int, **postfix: float) -> None:
    """Moves the bar to `step`; `postfix` (e.g. loss) is shown beside it."""
    if postfix:
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
    self._bar.update(step - self._step)
    self._step = step

  def write(self, text: str) -> None:
    """Prints `text` on stdout above the bar (which is redrawn below it), not glued to it."""
    self._bar.write(text, file=sys.stdout)
    sys.stdout.flush()

  def close(self) -> None:
    self._bar.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
