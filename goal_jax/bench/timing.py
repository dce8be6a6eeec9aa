"""One timed step (`Row`), the trainer's path beside it (`TrainerRow`), and how they are timed."""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Row:
  """One timed step: what ran, how fast, and its analytic FLOPs."""
  # "goal_jax", "goal_jax+<candidate>" (`candidates`) or a PyTorch reference ("hf_sdpa",
  # "hf_sdpa_compile", "official_goal", "official_goal_released")
  impl: str
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
  first_loss: float | None = None  # goal_jax rows: the first step's (initial params, one batch)
  remat: str | None = None  # goal_jax rows: the rematerialisation it ran with ("" none)

  @property
  def pairs_per_s(self) -> float | None:
    return None if self.step_s is None else self.batch / self.step_s

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["steps_per_s"] = None if self.step_s is None else 1.0 / self.step_s
    out["pairs_per_s"] = self.pairs_per_s
    return out


@dataclasses.dataclass
class TrainerRow:
  """The trainer's path for one method beside its step, and its input pipeline alone
  (`bench.trainer`): seconds per step or batch, CPU per record."""
  method: str
  variant: str
  batch: int
  data: str  # "<dataset>/<split>"
  detail_share: float  # of a sample of its records, those holding a detail copy
  read_threads: int  # Grain read threads per process
  num_workers: int  # Grain worker processes; 0: the pipeline runs in the trainer's process
  step_s: float | None = None  # the bench's step (`Row.step_s`): one random batch on the device
  trainer_s: float | None = None  # the trainer's path: next batch, onto the mesh, step, guard
  first_s: float | None = None  # its first step: compilation, the pipeline's start
  same_batch_s: float | None = None  # the trainer's jitted step on one of its batches, on device
  pipeline_batch_s: float | None = None  # a batch of the pipeline alone (no step)
  pipeline_cpu_ms: float | None = None  # CPU per record of it: this process and its workers
  stages: dict[str, Any] | None = None  # `bench.input.stage_profile` of some of its records
  error: str | None = None

  @property
  def step_pairs_per_s(self) -> float | None:
    return None if self.step_s is None else self.batch / self.step_s

  @property
  def trainer_pairs_per_s(self) -> float | None:
    return None if self.trainer_s is None else self.batch / self.trainer_s

  @property
  def trainer_vs_step(self) -> float | None:
    """Trainer pairs/s over the step's (the project's target: >= 0.9)."""
    if self.step_s is None or self.trainer_s is None:
      return None
    return self.trainer_pairs_per_s / self.step_pairs_per_s

  @property
  def pipeline_records_per_s(self) -> float | None:
    return None if self.pipeline_batch_s is None else self.batch / self.pipeline_batch_s

  @property
  def records_per_s_per_worker(self) -> float | None:
    """Per worker process (or per the one process, with no workers)."""
    rate = self.pipeline_records_per_s
    return None if rate is None else rate / max(self.num_workers, 1)

  @property
  def records_per_s_per_core(self) -> float | None:
    """Records per CPU-second of the pipeline (the project's target for GOAL: >= 250)."""
    return None if not self.pipeline_cpu_ms else 1e3 / self.pipeline_cpu_ms

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    for name in ("step_pairs_per_s", "trainer_pairs_per_s", "trainer_vs_step",
                 "pipeline_records_per_s", "records_per_s_per_worker", "records_per_s_per_core"):
      out[name] = getattr(self, name)
    return out


def process_tree_cpu_s() -> float:
  """CPU seconds (user + system) used so far by this process and its live descendants (Grain's
  worker processes). Descendants are read from /proc (Linux; elsewhere this process alone) at
  its 10 ms resolution: difference two calls over a window of seconds."""
  seconds = time.process_time()
  tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
  for pid in _descendants(os.getpid()):
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:  # it ended meanwhile
      continue
    seconds += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (stat's 14th, 15th)
  return seconds


def _descendants(pid: int) -> list[int]:
  children = []
  try:
    for task in os.listdir(f"/proc/{pid}/task"):
      with open(f"/proc/{pid}/task/{task}/children") as f:
        children += [int(child) for child in f.read().split()]
  except OSError:
    return []
  return children + [d for child in children for d in _descendants(child)]


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
