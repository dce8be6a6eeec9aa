r"""Train-step throughput and MFU of each method on synthetic batches (no data pipeline).

  python -m goal_jax.bench --variant=B/16,L/14 --batch=16,64,256 --methods=global,goal,mulclip
  python -m goal_jax.bench --variant=B/16 --batch=16,64 --reference   # against PyTorch, same device
  python -m goal_jax.bench --variant=tiny/8 --batch=8 --steps=2 --reference   # CI smoke run
  python -m goal_jax.bench --variant=B/16,L/14 --batch=16 --analyze_only --remat=dots   # any machine
  python -m goal_jax.bench --trainer --variant=tiny/8 --batch=16 --methods=global,goal --steps=20
  python -m goal_jax.bench --variant=B/16 --batch=64 --methods=global --candidates=all

Each row times the trainer's own step for a method (`steps`). `--reference` also times, in the
same process and on the same device, PyTorch baselines of the same model and batch
(`torch_reference`: HF CLIP with SDPA, eager and `torch.compile`d, and a GOAL step written the
way the official code does it). The run ends with the project's speed targets next to the
ratios (`report`).

MFU uses each method's analytic FLOPs (`Method.forward_flops_per_pair`, from the tower counts in
`goal_jax.models.flops`); a training step counts 3× forward (backward = 2×) and remat's
recomputation is not counted (model FLOPs); peak = the device's dense bf16 peak
(`--peak_tflops` overrides; none on CPU). The column XLA/ours divides XLA's count of the
lowered, unoptimised step by the analytic count: ~1.003 at B/16, so no step runs a tower pass
it does not need. `--analyze_only` gives it for any variant on a CPU, with the activations the
backward keeps per pair (JAX's saved residuals, about twice what XLA plans on a GPU);
`--remat=auto` decides from XLA's plan of the compiled step on the device (`remat`).

`--trainer` asks whether training runs as fast as its step (`trainer`): beside each step row,
the trainer's own path fed by the Grain pipeline over prepared shards, the pipeline alone
(records/s, per worker process, per CPU core) and its CPU per record by stage.

`--candidates` times each method's step also compiled or computed another way (XLA options,
another form of the same layer), in the same process on the same params and batch, with its
speed-up and first loss against the step as built (`candidates`).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from absl import flags
import jax

from goal_jax import cli
from goal_jax import files
from goal_jax import methods
from goal_jax.bench import candidates
from goal_jax.bench import exit_watchdog
from goal_jax.bench import report
from goal_jax.bench import steps as steps_lib
from goal_jax.bench import trainer
from goal_jax.models import families
from goal_jax.training import loop


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs: commands share flag names, absl's are global."""
  flags.DEFINE_list("variant", ["B/16"], "E.g. B/16,L/14 or tiny/8.")
  flags.DEFINE_list("batch", ["64"], "Global batch sizes, e.g. 16,64,256.")
  flags.DEFINE_list("methods", ["global", "goal", "mulclip"], f"Of {sorted(methods.REGISTRY)}.")
  flags.DEFINE_integer("steps", 10, "Timed steps.", lower_bound=1)
  flags.DEFINE_integer("warmup", 2, "Untimed steps (the first compiles).", lower_bound=0)
  flags.DEFINE_enum("attention", None, ("xla", "cudnn", "pallas_tpu"),
                    "Default: cudnn on GPUs, else xla.")
  flags.DEFINE_string("dtype", None,
                      "Compute dtype; default bfloat16 (float32 when timing on a CPU).")
  flags.DEFINE_enum("remat", "", ("", "full", "dots", "auto"),
                    "Activation rematerialisation; auto: the least that fits the device's memory "
                    "(bench/remat.py).")
  flags.DEFINE_bool("scan", False, "nn.scan over layers.")
  flags.DEFINE_bool("analyze_only", False, "Count FLOPs (analytic, XLA's) and saved activations "
                    "without running; any variant, also on a CPU.")
  flags.DEFINE_bool("reference", False, "Also time PyTorch: HF SDPA (+torch.compile) and an "
                    "official-style GOAL.")
  flags.DEFINE_bool("no_compile", False, "Skip the torch.compile reference.")
  flags.DEFINE_string("goal_repo", None, "--reference: also time GOAL's released training loop, "
                      "read from this checkout of github.com/PerceptualAI-Lab/GOAL "
                      "(bench/official_goal.py).")
  flags.DEFINE_float("peak_tflops", None,
                     "Per-device peak for MFU (default: from the device kind).")
  flags.DEFINE_string("json_out", None, "Write rows and targets as JSON here (after every row, "
                      "so a killed run keeps what it measured).")
  flags.DEFINE_string("profile_dir", None, "Trace a few steps of every row into "
                      "<dir>/<method>_<variant>_b<batch>/ and summarise them (summary.json/.md).")
  flags.DEFINE_list("candidates", [], "Also time each method's step compiled another way, "
                    "beside the step as built (same params and batch): names of "
                    f"{sorted(candidates.BY_NAME)} or {candidates.ALL} (bench/candidates.py).")
  flags.DEFINE_integer("profile_steps", 3, "Steps traced per row with --profile_dir.",
                       lower_bound=1)
  flags.DEFINE_bool("trainer", False, "Also run the trainer's path fed by the Grain pipeline "
                    "over prepared shards, and the pipeline alone (bench/trainer.py).")
  flags.DEFINE_enum("trainer_data", "synthetic", trainer.DATA_KINDS,
                    "--trainer without --data_dir: the embedded synthetic train split, or "
                    "generated 1600 x 2000 photos with the detail copy, prepared into a "
                    "temporary folder.")
  flags.DEFINE_integer("records", 0, "--trainer_data records to generate (0: synthetic's train "
                       f"split, or {trainer.DEFAULT_PHOTOS} photos).", lower_bound=0)
  flags.DEFINE_integer("image_short_side", 256, "--trainer_data=photos: the stored copies' "
                       "short side (prepare --image_short_side; 224, a B/16's input, makes the "
                       "global resize a copy).", lower_bound=1)
  cli.define_data_dir_flag(None, "--trainer: read --dataset/--split there instead of "
                           "generating --trainer_data.")
  flags.DEFINE_string("dataset", "synthetic", "--trainer with --data_dir: the prepared dataset.")
  flags.DEFINE_string("split", "train", "--trainer with --data_dir: its split.")
  flags.DEFINE_integer("workers", None, "--trainer: Grain worker processes "
                       "(config.input.num_workers; default the config's, 0).", lower_bound=0)
  flags.DEFINE_integer("threads", None, "--trainer: Grain read threads per process "
                       "(config.input.read_threads; default the config's, 2).", lower_bound=1)
  flags.DEFINE_integer("stage_records", 64, "--trainer: records whose pipeline CPU is split by "
                       "stage, per method (0: none).", lower_bound=0)


def _batches(values: Sequence[str]) -> list[int]:
  try:
    batches = [int(v) for v in values]
  except ValueError:
    cli.fail(f"--batch takes integers joined by ',', got {','.join(values)}", code=2)
  if not batches or min(batches) < 1:
    cli.fail(f"--batch takes positive integers, got {','.join(values)}", code=2)
  return batches


def main(argv) -> None:
  cli.check_args(argv)
  unknown = sorted(set(FLAGS.methods) - set(methods.REGISTRY))
  if unknown:
    cli.fail(f"--methods: unknown {unknown}; known: {sorted(methods.REGISTRY)}", code=2)
  if FLAGS.goal_repo:
    if not FLAGS.reference:
      cli.fail("--goal_repo times GOAL's released loop beside the PyTorch references: add "
               "--reference", code=2)
    from goal_jax.bench import official_goal  # pylint: disable=g-import-not-at-top
    official_goal.load(FLAGS.goal_repo)  # a wrong folder stops here, not after the rows
  try:
    chosen = candidates.parse(FLAGS.candidates) if FLAGS.candidates else []
  except ValueError as e:
    cli.fail(str(e), code=2)
  if chosen and FLAGS.analyze_only:
    cli.fail("--candidates are timed; --analyze_only times nothing", code=2)
  if FLAGS.trainer:
    others = [f"--{name}" for name in ("analyze_only", "reference", "profile_dir", "candidates")
              if FLAGS[name].value]
    if others:
      cli.fail(f"--trainer times the trainer's path; it does not take {', '.join(others)}",
               code=2)
    _, header = settings(FLAGS.attention, FLAGS.dtype, FLAGS.peak_tflops)
    trainer.run_trainer_bench(
        FLAGS.variant, _batches(FLAGS.batch), FLAGS.methods, header, steps=FLAGS.steps,
        warmup=FLAGS.warmup, remat=FLAGS.remat, scan=FLAGS.scan, trainer_data=FLAGS.trainer_data,
        records=FLAGS.records, data_dir=FLAGS.data_dir, dataset=FLAGS.dataset, split=FLAGS.split,
        read_threads=FLAGS.threads, num_workers=FLAGS.workers,
        stage_records=FLAGS.stage_records, json_out=FLAGS.json_out,
        image_short_side=FLAGS.image_short_side)
    return
  run_bench(FLAGS.variant, _batches(FLAGS.batch), FLAGS.methods, steps=FLAGS.steps,
            warmup=FLAGS.warmup, attention=FLAGS.attention, dtype=FLAGS.dtype,
            remat=FLAGS.remat, scan=FLAGS.scan, analyze_only=FLAGS.analyze_only,
            reference=FLAGS.reference, compile_reference=not FLAGS.no_compile,
            peak=FLAGS.peak_tflops, json_out=FLAGS.json_out, profile_dir=FLAGS.profile_dir,
            profile_steps=FLAGS.profile_steps, goal_repo=FLAGS.goal_repo, candidates_=chosen)


def reference_rows(variant: str, batch: int, *, steps: int, warmup: int, attention: str,
                   dtype: str, compile_model: bool, peak: float | None,
                   goal_repo: str | None = None) -> list:
  """The PyTorch rows of one (variant, batch): for CLIP, HF `CLIPModel`'s global step (eager and
  compiled), the official GOAL step rebuilt and, from `goal_repo`, as released; for SigLIP, HF
  `SiglipModel`'s global step with its own sigmoid loss (eager and compiled). torch and
  transformers are imported only when asked for."""
  # pylint: disable=g-import-not-at-top
  config = steps_lib.method_config("global", variant, batch, attention=attention, dtype=dtype)
  c = loop.model_config_from(config, None)
  if families.of(c).name == "siglip":
    from goal_jax.bench import torch_siglip
    return torch_siglip.bench_reference(variant, batch, steps=steps, warmup=warmup,
                                        compile_model=compile_model, peak=peak, jax_config=c,
                                        input_config=loop.input_config(config, c))
  from goal_jax.bench import torch_reference
  return torch_reference.bench_reference(variant, batch, steps=steps, warmup=warmup,
                                         compile_model=compile_model, peak=peak, jax_config=c,
                                         goal_repo=goal_repo)


def settings(attention: str | None, dtype: str | None, peak: float | None,
             analyze_only: bool = False) -> tuple[jax.Device, dict[str, Any]]:
  """The first device and the run's header: device, attention, dtype and peak, defaults filled
  in for the device (printed)."""
  device = jax.devices()[0]
  platform = device.platform
  attention = attention or ("cudnn" if platform == "gpu" else "xla")
  # Analysis describes the accelerator run (bf16) even on a CPU, where timing runs in f32.
  dtype = dtype or ("float32" if platform == "cpu" and not analyze_only else "bfloat16")
  peak = peak or report.peak_tflops(device)
  print(f"device: {jax.device_count()} x {device.device_kind} ({platform}); attention {attention}, "
        f"dtype {dtype}, peak {peak or '?'} TFLOP/s per device", flush=True)
  return device, {"device": device.device_kind, "device_count": jax.device_count(),
                  "attention": attention, "dtype": dtype, "peak_tflops": peak}


def run_bench(variants: Sequence[str], batch_sizes: Sequence[int], method_names: Sequence[str], *,
              steps: int = 10, warmup: int = 2, attention: str | None = None,
              dtype: str | None = None, remat: str = "", scan: bool = False,
              analyze_only: bool = False, reference: bool = False,
              compile_reference: bool = True, peak: float | None = None,
              json_out: str | None = None, profile_dir: str | None = None,
              profile_steps: int = 3, goal_repo: str | None = None,
              candidates_: Sequence[candidates.Candidate] = ()) -> dict[str, Any]:
  """Times (or analyses) every variant x batch x method, each method's step also as every one
  of `candidates_`; prints the tables, returns the JSON."""
  device, header = settings(attention, dtype, peak, analyze_only)
  attention, dtype, peak = header["attention"], header["dtype"], header["peak_tflops"]
  rows = []

  def result() -> dict[str, Any]:
    out = {**header, "rows": [r.to_dict() for r in rows], "targets": report.target_checks(rows),
           "candidates": [dataclasses.asdict(c) for c in candidates_]}
    if json_out:
      files.write_atomic(json_out, json.dumps(out, indent=2))
    return out

  for variant in variants:
    for batch in batch_sizes:
      for method in method_names:
        for candidate in (None, *(c for c in candidates_ if c.applies_to(method))):
          rows.append(steps_lib.bench_method(method, variant, batch, steps=steps, warmup=warmup,
                                             attention=attention, dtype=dtype, remat=remat,
                                             scan=scan, peak=peak, time_it=not analyze_only,
                                             profile_dir=profile_dir,
                                             profile_steps=profile_steps, candidate=candidate))
          print(report.format_rows(rows[-1:]).splitlines()[-1], flush=True)
          result()
      if reference and not analyze_only:
        rows += reference_rows(variant, batch, steps=steps, warmup=warmup, attention=attention,
                               dtype=dtype, compile_model=compile_reference, peak=peak,
                               goal_repo=goal_repo)
        result()
  out = result()
  checks = out["targets"]
  print()
  print(report.format_rows(rows))
  print(report.format_flop_ratios(rows))
  if candidates_:
    print()
    print(report.format_candidates(rows, candidates_))
  print()
  print(report.format_targets(checks, f"{jax.device_count()} x {device.device_kind}"))
  if profile_dir:
    print()
    print(report.format_profiles(rows))
  return out


def main_as_a_program(argv) -> None:
  """`main`, then the exit watchdog: as a program, the process ends once its results are out."""
  try:
    main(argv)
  finally:
    exit_watchdog.arm()


if __name__ == "__main__":
  define_flags()
  cli.run(main_as_a_program, expected=(ValueError,))  # an unknown variant, method or batch
