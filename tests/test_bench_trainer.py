"""`bench --trainer` (the trainer's path beside its step), the pipeline's CPU split by stage, and
the lease script's trainer row, on a CPU with the tiny model and a few records."""
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from _cli import run_command
from goal_jax.bench import __main__ as bench_command
from goal_jax.bench import input as input_bench
from goal_jax.bench import report, timing, trainer
from goal_jax.data import builder, images, pipeline, synthetic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER_FIELDS = ("step_s", "trainer_s", "first_s", "same_batch_s", "pipeline_batch_s",
                  "pipeline_cpu_ms", "step_pairs_per_s", "trainer_pairs_per_s",
                  "trainer_vs_step", "pipeline_records_per_s", "records_per_s_per_worker",
                  "records_per_s_per_core")


def _check_trainer_rows(result, batch, methods=("global", "goal")):
  rows = {r["method"]: r for r in result["trainer"]}
  assert sorted(rows) == sorted(methods)
  assert [(r["impl"], r["method"], r["batch"]) for r in result["rows"]] == [
      ("goal_jax", m, batch) for m in methods]
  for method, t in rows.items():
    assert t["error"] is None, t["error"]
    assert set(TRAINER_FIELDS) <= set(t)
    assert (t["variant"], t["batch"], t["data"]) == ("tiny/8", batch, "synthetic/train")
    for name in ("step_pairs_per_s", "trainer_pairs_per_s", "pipeline_records_per_s",
                 "records_per_s_per_worker", "records_per_s_per_core"):
      assert t[name] > 0, (method, name)
    step = next(r for r in result["rows"] if r["method"] == method)
    np.testing.assert_allclose(t["step_pairs_per_s"], step["pairs_per_s"])
    np.testing.assert_allclose(t["trainer_vs_step"],
                               t["trainer_pairs_per_s"] / t["step_pairs_per_s"])
    np.testing.assert_allclose(t["records_per_s_per_worker"],
                               t["pipeline_records_per_s"] / max(t["num_workers"], 1))
  checks = {(c["target"], c["method"]): c for c in result["targets"] if "method" in c}
  for method in methods:  # synthetic's 128 px images have no detail copy: no pipeline target
    check = checks[("trainer_vs_step", method)]
    np.testing.assert_allclose(check["value"], rows[method]["trainer_vs_step"])
    assert check["threshold"] == 0.9
  assert not any(target == "pipeline_per_core" for target, _ in checks)
  return rows


def test_trainer_mode_on_the_embedded_data(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(synthetic.SPLIT_SIZES, "train", 16)
  out = tmp_path / "trainer.json"
  assert run_command(bench_command, "--trainer", "--variant=tiny/8", "--batch=8",
                     "--methods=global,goal", "--steps=2", "--warmup=1", "--stage_records=8",
                     f"--json_out={out}") == 0
  result = json.loads(out.read_text())
  assert result["data"]["dataset"] == "synthetic" and result["data"]["detail_share"] == 0
  rows = _check_trainer_rows(result, 8)
  assert (rows["goal"]["read_threads"], rows["goal"]["num_workers"]) == (2, 0)  # the config's
  stages = rows["goal"]["stages"]
  assert stages["records"] == 8 and stages["fields"] == "global,local"
  assert {"read shard", "decode image", "resize", "tokenize", "span masks",
          "local: detail crop", "batch (stack)"} <= set(stages["stages_ms"])
  assert "local: detail crop" not in rows["global"]["stages"]["stages_ms"]
  printed = capsys.readouterr().out
  for text in ("trainer/step", "rec/s/core", "CPU ms per record by stage",
               "trainer_vs_step           tiny/8   batch 8    goal", "pipeline_per_core         not "
               "measured"):
    assert text in printed, text


def test_trainer_mode_refuses_flags_it_does_not_take():
  assert run_command(bench_command, "--trainer", "--variant=tiny/8", "--reference") == 2


def _trainer_row(method, detail_share, **times):
  return timing.TrainerRow(method, "B/16", 64, "docci/train", detail_share, 2, 12, **times)


def test_trainer_targets():
  rows = [_trainer_row("global", 1.0, step_s=0.034, trainer_s=0.040, pipeline_cpu_ms=3.0),
          _trainer_row("goal", 1.0, step_s=0.062, trainer_s=0.064, pipeline_cpu_ms=10.0,
                       pipeline_batch_s=0.05),
          _trainer_row("goal", 0.0, step_s=0.062, trainer_s=0.064, pipeline_cpu_ms=2.0),
          _trainer_row("mulclip", 1.0, step_s=0.074, trainer_s=0.2, pipeline_cpu_ms=3.0)]
  checks = sorted((c["target"], c["method"], round(c["value"], 6), c["met"])
                  for c in report.target_checks([], rows))
  # No MulCLIP target; the pipeline's only for GOAL on data with detail copies.
  assert checks == sorted([("trainer_vs_step", "global", round(0.034 / 0.040, 6), False),
                           ("trainer_vs_step", "goal", round(0.062 / 0.064, 6), True),
                           ("trainer_vs_step", "goal", round(0.062 / 0.064, 6), True),
                           ("pipeline_per_core", "goal", 100.0, False)])
  assert rows[1].pipeline_records_per_s == pytest.approx(64 / 0.05)
  assert rows[1].records_per_s_per_worker == pytest.approx(64 / 0.05 / 12)
  printed = report.format_targets(report.target_checks([], rows), "1 x H200")
  assert "pipeline_per_core         B/16     batch 64   goal    target >= 250/s  measured 100/s" \
         in printed and "MISSED (0.40x of it)" in printed
  assert "trainer_vs_step           B/16     batch 64   global  target >= 90%    measured 85.0%" \
         in printed
  table = report.format_trainer_rows(rows).splitlines()
  assert len(table) == 2 + len(rows) and "trainer/step" in table[0]
  assert table[3].split()[:3] == ["goal", "B/16", "64"] and "96.9%" in table[3]


def test_stage_profile_adds_up_to_the_path_on_photos_with_the_detail_copy(tmp_path):
  """On generated DOCCI-sized photos with the detail copy, GOAL's stages (the detail crop among
  them) add up to the path timed without the split."""
  data_dir = input_bench.prepare_photos(str(tmp_path), 3)
  data = trainer.open_data(data_dir, input_bench.PHOTOS_DATASET, "train")
  assert data.detail_share == 1.0 and data.image_short_side == 256
  small = trainer.prepare_data("photos", str(tmp_path / "small"), records=1, image_short_side=224)
  assert (small.image_short_side, small.detail_share) == (224, 1.0)
  record = builder.decode_record(builder.load_source(small.dataset, "train", small.data_dir)[0])
  assert min(images.open_rgb(record["image"]).size) == 224
  config = pipeline.default_config()
  config.update(dict(dataset=input_bench.PHOTOS_DATASET, batch_size=3, fields="global,local"))
  profile = input_bench.stage_profile(
      config, builder.load_source(input_bench.PHOTOS_DATASET, "train", data_dir), 3, passes=3)
  stages = profile["stages_ms"]
  assert {"read shard", "decode record", "decode image", "resize", "normalise", "tokenize",
          "span masks", "local: detail crop", "local: resize", "local: normalise",
          "local: tokenize", "local: patch mask", "other", "batch (stack)"} <= set(stages)
  assert min(stages.values()) >= 0 and stages["local: detail crop"] > 0.1
  np.testing.assert_allclose(profile["sum_ms"], sum(stages.values()))
  assert abs(profile["sum_ms"] / profile["total_ms"] - 1) < 0.25, profile
  table = input_bench.format_stages(profile, "photos")
  assert "local: detail crop" in table and "the path, not split" in table


def test_process_tree_cpu_counts_worker_processes():
  """A child process's CPU (as Grain's workers') is in `process_tree_cpu_s`."""
  burn = ("import sys, time\nstart = time.process_time()\n"
          "while time.process_time() - start < 0.5: pass\nprint('done', flush=True)\n"
          "sys.stdin.read()\n")
  child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
  try:
    before = timing.process_tree_cpu_s()
    assert child.stdout.readline().strip() == "done"
    assert timing.process_tree_cpu_s() - before >= 0.4
  finally:
    child.communicate("", timeout=30)


def test_gpu_bench_script_trainer_row_in_smoke_mode(tmp_path):
  """launch/gpu_bench.sh's trainer row on this CPU with the tiny model: its JSON comes back in
  the archive with the trainer, step and pipeline rates of global and GOAL at batch 64."""
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": REPO_ROOT,
         "GOAL_JAX_CACHE": str(tmp_path / "cache")}
  out = tmp_path / "out"
  proc = subprocess.run(["bash", os.path.join(REPO_ROOT, "launch", "gpu_bench.sh"),
                         f"--out={out}", "--variant=tiny/8", "--rows=trainer_64"],
                        capture_output=True, text=True, timeout=900, env=env, cwd=REPO_ROOT)
  assert proc.returncode == 0, proc.stderr
  with tarfile.open(out / "results.tar.gz") as archive:
    result = json.load(archive.extractfile("rows/trainer_64.json"))
  _check_trainer_rows(result, 64)
  assert "== trainer_64: exit 0" in proc.stdout
