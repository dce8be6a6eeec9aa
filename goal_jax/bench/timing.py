"""One timed step (`Row`) and how it is timed."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Row:
  """One timed step: what ran, how fast, and its analytic FLOPs."""
  impl: str  # "goal_jax" or a PyTorch reference ("hf_sdpa", "hf_sdpa_compile", "official_goal")
  method: str
  variant: str
  batch: int
  step_s: float | None = None
  compile_s: float | None = None  # lowering excluded; the persistent cache makes it small
  setup_s: float | None = None  # params, optimizer state, batch on the device, lowering
  first_step_s: float | None = None
  train_flops: int | None = None
  counted_flops: float | None = None  # XLA's count of the lowered step (goal_jax rows only)
  saved_bytes: int | None = None  # activations kept for the backward (--analyze_only rows)
  mfu: float | None = None
  error: str | None = None
  profile: dict[str, Any] | None = None  # `profile.summarise` of a traced few steps

  @property
  def pairs_per_s(self) -> float | None:
    return None if self.step_s is None else self.batch / self.step_s

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["steps_per_s"] = None if self.step_s is None else 1.0 / self.step_s
    out["pairs_per_s"] = self.pairs_per_s
    return out


def time_loop(step: Callable[[], Any], steps: int, warmup: int,
              block: Callable[[Any], Any]) -> tuple[float, float]:
  """(seconds of the first call: compile + run, mean seconds per step after `warmup` calls)."""
  start = time.perf_counter()
  block(step())
  first = time.perf_counter() - start
  for _ in range(max(warmup - 1, 0)):
    block(step())
  start = time.perf_counter()
  out = None
  for _ in range(steps):
    out = step()
  block(out)
  return first, (time.perf_counter() - start) / steps


def time_row(row: Row, make_step: Callable[[], Callable[[], Any]], *, steps: int, warmup: int,
             block: Callable[[Any], Any], peak: float | None, may_fail: bool = False) -> Row:
  """Times a PyTorch reference's step into `row` (MFU against `peak`). Running out of memory,
  or any failure of a step that `may_fail` (`torch.compile`'s), is reported in the row, so the
  benchmark goes on; other failures raise."""
  try:
    row.compile_s, row.step_s = time_loop(make_step(), steps, warmup, block)
  except Exception as e:  # noqa: BLE001 - report the row, keep benchmarking
    if not is_out_of_memory(e) and not may_fail:
      raise
    row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
  if row.step_s is not None and peak:
    row.mfu = row.train_flops / row.step_s / (peak * 1e12)
  return row


def is_out_of_memory(e: Exception) -> bool:
  text = f"{type(e).__name__}: {e}"
  return any(k in text for k in ("RESOURCE_EXHAUSTED", "OutOfMemory", "out of memory"))
