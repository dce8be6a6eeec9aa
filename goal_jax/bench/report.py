"""The project's speed targets, measured against the rows of one run, and the printed tables."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from goal_jax.bench.profile import CATEGORIES, MEMORY_BOUND
from goal_jax.bench.timing import Row, TrainerRow

# Dense bf16 peak TFLOP/s by `device_kind` substring; the first match wins (specific first).
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0),
               ("L40S", 362.0), ("L4", 121.0), ("TPU v6", 918.0), ("TPU v5 lite", 197.0),
               ("TPU v5e", 197.0), ("TPU v5", 459.0), ("TPU v4", 275.0), ("TPU v3", 123.0))
# The project's speed targets on one H100: (name, comparison, threshold, what is measured); a
# threshold may depend on the batch (the official GOAL step's overhead weighs less at 16).
TARGETS = (
    ("goal_vs_official", ">=", {16: 5.0, 64: 8.0},
     "official-style PyTorch GOAL step time / ours (5x at batch 16, 8x at 64)"),
    ("goal_vs_official_released", ">=", {16: 5.0, 64: 8.0},
     "GOAL's released loop (--goal_repo) step time / ours (5x at batch 16, 8x at 64)"),
    ("global_vs_hf_compile", ">=", 1.2, "HF SDPA + torch.compile global step time / ours"),
    ("mulclip_vs_goal", "<=", 1.25, "MulCLIP time per pair / GOAL time per pair"),
    ("mfu_at_256", ">=", 0.40, "model FLOPs utilisation at batch 256"),
    ("trainer_vs_step", ">=", 0.90, "trainer pairs/s fed by the Grain pipeline / the step's, "
     "global and GOAL (--trainer)"),
    ("pipeline_per_core", ">=", 250.0, "GOAL records/s per CPU core of the pipeline with the "
     "detail copy (--trainer on such data)"),
)
_NAME_WIDTH = max(len(name) for name, *_ in TARGETS)
# Methods whose trainer must keep up with its step (issue #25); the pipeline target is GOAL's.
TRAINER_TARGET_METHODS = ("global", "goal")


def peak_tflops(device: jax.Device) -> float | None:
  kind = getattr(device, "device_kind", "")
  return next((tflops for name, tflops in PEAK_TFLOPS if name in kind), None)


def _find(rows, impl, method, variant, batch):
  return next((r for r in rows if (r.impl, r.method, r.variant, r.batch) == (impl, method, variant,
                                                                             batch)
               and r.step_s is not None), None)


def target_checks(rows: Sequence[Row],
                  trainer_rows: Sequence[TrainerRow] = ()) -> list[dict[str, Any]]:
  """Each target measured on every (variant, batch) that has the rows it needs; the trainer's
  on every trainer row of its methods (the pipeline's only on data with detail copies)."""
  checks = []
  spec = {name: (op, threshold) for name, op, threshold, _ in TARGETS}

  def add(name, variant, batch, value, **where):
    op, threshold = spec[name]
    if isinstance(threshold, dict):  # the nearest batch's
      threshold = threshold[min(threshold, key=lambda b: abs(b - batch))]
    met = value >= threshold if op == ">=" else value <= threshold
    checks.append(dict(target=name, variant=variant, batch=batch, **where, value=value, op=op,
                       threshold=threshold, met=bool(met)))

  for variant, batch in dict.fromkeys((r.variant, r.batch) for r in rows):
    ours = {m: _find(rows, "goal_jax", m, variant, batch)
            for m in dict.fromkeys(r.method for r in rows if r.impl == "goal_jax")}
    official = _find(rows, "official_goal", "goal", variant, batch)
    if ours.get("goal") and official:
      add("goal_vs_official", variant, batch, official.step_s / ours["goal"].step_s)
    released = _find(rows, "official_goal_released", "goal", variant, batch)
    if ours.get("goal") and released:
      add("goal_vs_official_released", variant, batch, released.step_s / ours["goal"].step_s)
    # HF CLIPModel's compiled step for a CLIP variant, SiglipModel's for a SigLIP one.
    compiled = (_find(rows, "hf_sdpa_compile", "global", variant, batch)
                or _find(rows, "hf_siglip_sdpa_compile", "global", variant, batch))
    if ours.get("global") and compiled:
      add("global_vs_hf_compile", variant, batch, compiled.step_s / ours["global"].step_s)
    if ours.get("goal") and ours.get("mulclip"):
      add("mulclip_vs_goal", variant, batch, ours["mulclip"].step_s / ours["goal"].step_s)
    if batch == 256:
      for row in ours.values():
        if row is not None and row.mfu is not None:
          add("mfu_at_256", variant, batch, row.mfu)
  for t in trainer_rows:
    if t.method in TRAINER_TARGET_METHODS and t.trainer_vs_step is not None:
      add("trainer_vs_step", t.variant, t.batch, t.trainer_vs_step, method=t.method)
    if t.method == "goal" and t.detail_share > 0 and t.records_per_s_per_core is not None:
      add("pipeline_per_core", t.variant, t.batch, t.records_per_s_per_core, method=t.method)
  return checks


def _fmt(value, spec: str, suffix: str = "") -> str:
  """`value` formatted by `spec` (width.precision) plus `suffix`, or "-" right-aligned alike."""
  width = int(spec.split(".")[0] or 0) + len(suffix)
  return "-".rjust(width) if value is None else format(value, spec) + suffix


def format_rows(rows: Sequence[Row]) -> str:
  impl = max([16] + [len(r.impl) for r in rows])
  header = (f"{'impl':<{impl}} {'method':<8} {'variant':<8} {'batch':>5} {'step ms':>9} {'steps/s':>8} "
            f"{'pairs/s':>9} {'TFLOP/step':>10} {'XLA/ours':>8} {'MFU':>6} {'compile s':>9} "
            f"{'saved MiB/pair':>14}")
  lines = [header, "-" * len(header)]
  for r in rows:
    step_ms = None if r.step_s is None else 1e3 * r.step_s
    steps_per_s = None if r.step_s is None else 1 / r.step_s
    mfu = None if r.mfu is None else 100 * r.mfu
    counted = None if r.counted_flops is None else r.counted_flops / r.train_flops
    saved = None if r.saved_bytes is None else r.saved_bytes / r.batch / 2**20
    lines.append(f"{r.impl:<{impl}} {r.method:<8} {r.variant:<8} {r.batch:>5} {_fmt(step_ms, '9.2f')} "
                 f"{_fmt(steps_per_s, '8.2f')} {_fmt(r.pairs_per_s, '9.1f')} "
                 f"{_fmt(r.train_flops / 1e12, '10.4f')} {_fmt(counted, '8.3f')} "
                 f"{_fmt(mfu, '5.1f', '%')} "
                 f"{_fmt(r.compile_s, '9.1f')} {_fmt(saved, '14.1f')}"
                 + (f"  {r.error}" if r.error else ""))
  return "\n".join(lines)


def format_trainer_rows(rows: Sequence[TrainerRow]) -> str:
  """The trainer's pairs/s beside its step's, and its pipeline alone, one line per method."""
  header = (f"{'method':<8} {'variant':<8} {'batch':>5} {'data':<20} {'detail':>6} {'procs':>5} "
            f"{'threads':>7} {'step pairs/s':>12} {'trainer':>9} {'trainer/step':>12} "
            f"{'same batch':>10} {'pipeline rec/s':>14} {'per proc':>8} {'CPU ms/rec':>10} "
            f"{'rec/s/core':>10}")
  lines = [header, "-" * len(header)]
  for t in rows:
    ratio = None if t.trainer_vs_step is None else 100 * t.trainer_vs_step
    same = None if t.same_batch_s is None else t.batch / t.same_batch_s
    lines.append(f"{t.method:<8} {t.variant:<8} {t.batch:>5} {t.data:<20} "
                 f"{100 * t.detail_share:>5.0f}% {max(t.num_workers, 1):>5} "
                 f"{t.read_threads:>7} {_fmt(t.step_pairs_per_s, '12.1f')} "
                 f"{_fmt(t.trainer_pairs_per_s, '9.1f')} {_fmt(ratio, '11.1f', '%')} "
                 f"{_fmt(same, '10.1f')} {_fmt(t.pipeline_records_per_s, '14.1f')} "
                 f"{_fmt(t.records_per_s_per_worker, '8.1f')} {_fmt(t.pipeline_cpu_ms, '10.2f')} "
                 f"{_fmt(t.records_per_s_per_core, '10.0f')}"
                 + (f"  {t.error}" if t.error else ""))
  return "\n".join(lines)


def format_flop_ratios(rows: Sequence[Row]) -> str:
  """MulCLIP/GOAL model FLOPs per pair: the time ratio if both steps ran at the same MFU."""
  lines = []
  for variant, batch in dict.fromkeys((r.variant, r.batch) for r in rows):
    flops = {r.method: r.train_flops for r in rows
             if (r.impl, r.variant, r.batch) == ("goal_jax", variant, batch)}
    if "goal" in flops and "mulclip" in flops:
      lines.append(f"MulCLIP/GOAL model FLOPs per pair, {variant} batch {batch}: "
                   f"{flops['mulclip'] / flops['goal']:.3f}")
  return "\n".join(lines)


def format_candidates(rows: Sequence[Row], chosen: Sequence[Any]) -> str:
  """Each candidate's step against the step as built (`bench.candidates`): speed-up (> 1 is
  faster) and the first step's loss of both (they must agree up to rounding)."""
  header = (f"{'candidate':<20} {'method':<8} {'variant':<8} {'batch':>5} {'built ms':>9} "
            f"{'cand. ms':>9} {'speed-up':>8} {'first loss, built':>18} {'cand.':>12} "
            f"{'rel. diff':>9} {'compile s':>9}")
  lines = ["candidates against the step as built (same process, params and batch)", header,
           "-" * len(header)]
  for r in rows:
    if not r.impl.startswith("goal_jax+"):
      continue
    built = _find(rows, "goal_jax", r.method, r.variant, r.batch)
    speedup = diff = None
    if built is not None and r.step_s is not None:
      speedup = built.step_s / r.step_s
      if built.first_loss is not None and r.first_loss is not None:
        diff = abs(r.first_loss - built.first_loss) / max(abs(built.first_loss), 1e-12)
    lines.append(
        f"{r.impl.split('+', 1)[1]:<20} {r.method:<8} {r.variant:<8} {r.batch:>5} "
        f"{_fmt(None if built is None else 1e3 * built.step_s, '9.2f')} "
        f"{_fmt(None if r.step_s is None else 1e3 * r.step_s, '9.2f')} {_fmt(speedup, '8.3f')} "
        f"{_fmt(None if built is None else built.first_loss, '18.6f')} "
        f"{_fmt(r.first_loss, '12.6f')} {_fmt(diff, '9.1e')} {_fmt(r.compile_s, '9.1f')}"
        + (f"  {r.error}" if r.error else ""))
  for c in chosen:
    settings = {**c.compiler_options, **c.model_overrides, **c.input_overrides}
    lines.append(f"  {c.name}: {', '.join(f'{k}={v}' for k, v in settings.items())} ({c.why})")
  return "\n".join(lines)


_PERCENT_TARGETS = ("mfu_at_256", "trainer_vs_step")
_RATE_TARGETS = ("pipeline_per_core",)  # records/s: printed with the share of the target


def _target_value(name: str, value: float, threshold: bool = False) -> str:
  """A measured value (or with `threshold`, a target's) as the table prints it."""
  if name in _PERCENT_TARGETS:
    return f"{100 * value:.0f}%" if threshold else f"{100 * value:.1f}%"
  if name in _RATE_TARGETS:
    return f"{value:.0f}/s"
  return f"{value}x" if threshold else f"{value:.2f}x"


def format_targets(checks: Sequence[dict[str, Any]], device: str) -> str:
  lines = [f"targets (the project's, for one H100; this run: {device})"]
  measured = {c["target"] for c in checks}
  for c in checks:
    value = _target_value(c["target"], c["value"])
    threshold = _target_value(c["target"], c["threshold"], threshold=True)
    where = f"{c['variant']:<8} batch {c['batch']:<4}" + (f" {c['method']:<7}" if "method" in c
                                                           else "")
    share = (f" ({c['value'] / c['threshold']:.2f}x of it)" if c["target"] in _RATE_TARGETS
             else "")
    lines.append(f"  {c['target']:<{_NAME_WIDTH}} {where} target {c['op']} {threshold:<6} measured "
                 f"{value:<8} {'met' if c['met'] else 'MISSED'}{share}")
  for name, _, _, what in TARGETS:
    if name not in measured:
      lines.append(f"  {name:<{_NAME_WIDTH}} not measured in this run ({what})")
  return "\n".join(lines)


def format_profiles(rows: Sequence[Row]) -> str:
  """Device time by category (ms per step) of every profiled row, one line each, and the GB
  its memory-bound kernels move per step with their bandwidth (`profile`)."""
  profiled = [r for r in rows if r.profile]
  if not profiled:
    return ""
  names = _categories_in(profiled)
  method = max([8] + [len(_method_label(r)) for r in profiled])
  header = (f"{'method':<{method}} {'variant':<8} {'batch':>5} {'device ms':>9} "
            + " ".join(f"{n[:12]:>12}" for n in names) + f" {'mem. GB':>8} {'TB/s':>5}")
  lines = ["device time by category, ms per step (--profile_dir has the top ops); the GB the "
           "memory-bound kernels move and their TB/s", header]
  for r in profiled:
    ms = {c["category"]: c["ms_per_step"] for c in r.profile["categories"]}
    gigabytes, seconds = memory_traffic(r.profile)
    lines.append(f"{_method_label(r):<{method}} {r.variant:<8} {r.batch:>5} "
                 f"{r.profile['device_ms_per_step']:>9.2f} "
                 + " ".join(_fmt(ms.get(n), "12.2f") for n in names)
                 + f" {_fmt(gigabytes, '8.2f')} "
                 + _fmt(gigabytes / seconds / 1e3 if seconds else None, "5.2f"))
  return "\n".join(lines)


def memory_traffic(summary: dict[str, Any]) -> tuple[float | None, float]:
  """GB per step the memory-bound categories' named ops move, and those ops' seconds per step
  (None, 0: a summary from before the bytes were counted)."""
  chosen = [c for c in summary["categories"]
            if c["category"] in MEMORY_BOUND and c.get("tb_per_s")]
  if not any("gb_per_step" in c for c in summary["categories"]):
    return None, 0.0
  gigabytes = sum(c["gb_per_step"] for c in chosen)
  return gigabytes, sum(c["gb_per_step"] / c["tb_per_s"] / 1e3 for c in chosen)


def _method_label(row: Row) -> str:
  """The method, and the candidate it was compiled as (`goal+triton_gemm_any`)."""
  return row.method + (row.impl[len("goal_jax"):] if row.impl.startswith("goal_jax+") else "")


def _categories_in(rows: Sequence[Row]) -> list[str]:
  seen = {c["category"] for r in rows for c in r.profile["categories"]}
  return [c for c in CATEGORIES if c in seen]
