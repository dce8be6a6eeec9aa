"""The study: aggregates over seeds checked by hand, the table's cells and gaps, a real PNG,
finished runs skipped and unfinished ones rerun, changed options refused, `--tiny` end to end."""
import json
import os
import subprocess
import sys

import pytest

from goal_jax import study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def write_eval(directory, step, results):
  """An `eval_<step>.json` as the trainer writes it; `results`: benchmark -> metric -> value."""
  document = {"schema": "goal_jax.evaluation/1", "profile": "synthetic", "metadata": {"step": step},
              "results": {name: {"task": "retrieval", "metrics": metrics}
                          for name, metrics in results.items()}}
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, f"eval_{step}.json"), "w") as f:
    json.dump(document, f)


def write_model(directory):
  os.makedirs(os.path.join(directory, "model"), exist_ok=True)
  with open(os.path.join(directory, "model", study.MODEL_CONFIG_FILE), "w") as f:
    f.write("{}")


def results(t2i, i2t, group=None, two_afc=None):
  out = {study.TEST_BENCHMARK: {study.T2I_R1: t2i, study.I2T_R1: i2t}}
  if group is not None:
    out[study.WITHIN_GROUP_BENCHMARK] = {study.GROUP_T2I: group - 2, study.GROUP_I2T: group + 2,
                                         study.GROUP_MEAN: group}
  if two_afc is not None:
    out[study.WITHIN_GROUP_BENCHMARK].update(
        {f"2afc_{a}": two_afc for a in study.TWO_AFC_ATTRIBUTES})
  return out


def finished_run(workdir, run, seed, final, halfway):
  directory = study.run_dir(str(workdir), run, seed)
  write_eval(directory, STEPS // 2, halfway)
  write_eval(directory, STEPS, final)
  write_model(directory)
  return directory


def options(workdir, **kwargs):
  base = dict(workdir=str(workdir), seeds=1, runs=("global", "goal"), steps=STEPS, eval_every=2,
              pretrain_steps=4)
  return study.StudyOptions(**{**base, **kwargs})


def config_of(workdir, **kwargs):
  return study.merged_study_config(None, options(workdir, **kwargs))


@pytest.fixture
def two_runs(tmp_path):
  """goal: two finished seeds and one half-done; global: one seed without the hard benchmark."""
  finished_run(tmp_path, "goal", 0, results(10, 20, group=40, two_afc=60), results(5, 5, group=30))
  finished_run(tmp_path, "goal", 1, results(30, 40, group=50, two_afc=80), results(7, 9, group=36))
  write_eval(study.run_dir(str(tmp_path), "goal", 2), STEPS // 2, results(90, 90, group=90))
  finished_run(tmp_path, "global", 0, results(12, 14), results(6, 8))
  return tmp_path


def test_final_step_aggregate_is_mean_min_max_over_finished_seeds(two_runs):
  summary = study.summarize(str(two_runs), config_of(two_runs, seeds=3))
  goal = summary["runs"]["goal"]
  assert sorted(goal["seeds"]) == ["0", "1"]  # seed 2 has no model: not finished, not counted
  final = goal["final"]
  assert final[study.TEST_BENCHMARK][study.T2I_R1] == {"mean": 20, "min": 10, "max": 30, "n": 2}
  assert final[study.TEST_BENCHMARK][study.I2T_R1] == {"mean": 30, "min": 20, "max": 40, "n": 2}
  assert final[study.WITHIN_GROUP_BENCHMARK][study.GROUP_MEAN] == {"mean": 45, "min": 40,
                                                                    "max": 50, "n": 2}
  assert final[study.WITHIN_GROUP_BENCHMARK]["2afc_binding"] == {"mean": 70, "min": 60,
                                                                  "max": 80, "n": 2}
  assert goal["seeds"]["1"]["curve"][2][study.WITHIN_GROUP_BENCHMARK][study.GROUP_MEAN] == 36
  assert study.WITHIN_GROUP_BENCHMARK not in summary["runs"]["global"]["final"]
  curves = study.seed_curves(summary, "goal")
  headline = study.band(curves, lambda point: study.metric(point, *study.HEADLINE))
  assert headline == {2: {"mean": 33, "min": 30, "max": 36, "n": 2},
                      4: {"mean": 45, "min": 40, "max": 50, "n": 2}}
  test_r1 = study.band(curves, study.mean_test_r1)
  assert test_r1[4] == {"mean": 25, "min": 15, "max": 35, "n": 2}  # (10+20)/2 and (30+40)/2


def test_markdown_row_per_run_with_mean_min_max_cells_and_dash_for_missing(two_runs):
  table = study.markdown_table(study.summarize(str(two_runs), config_of(two_runs)))
  rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| g")}
  assert rows["goal"] == ("| goal | 2 | 20.0 (10.0–30.0) | 30.0 (20.0–40.0) | 43.0 (38.0–48.0) | "
                          "47.0 (42.0–52.0) | 45.0 (40.0–50.0) | "
                          + " | ".join(["70.0 (60.0–80.0)"] * 5) + " |")
  assert rows["global"] == ("| global | 1 | 12.0 (12.0–12.0) | 14.0 (14.0–14.0) | "
                            + " | ".join([study.MISSING] * 8) + " |")
  header = table.splitlines()[4]
  assert header.count("|") == len(study.TABLE_COLUMNS) + 3


def test_outputs_written_png_is_a_real_png(two_runs):
  study.write_outputs(str(two_runs), config_of(two_runs))
  with open(two_runs / "study.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  from PIL import Image  # noqa: PLC0415
  with Image.open(two_runs / "study.png") as image:
    assert image.format == "PNG" and image.width > 500
  written = json.loads((two_runs / "study.json").read_text())
  assert written["runs"]["goal"]["final"][study.TEST_BENCHMARK][study.T2I_R1]["mean"] == 20
  assert written["runs"]["goal"]["seeds"]["0"]["curve"]["4"][study.TEST_BENCHMARK] == {
      study.T2I_R1: 10, study.I2T_R1: 20}
  assert "| goal | 2 |" in (two_runs / "study.md").read_text()


class FakeTrainer:
  """Stands in for the subprocess: records each command and leaves a finished run behind."""

  def __init__(self, exit_code=0):
    self.commands = []
    self.exit_code = exit_code

  def __call__(self, command, log_path):
    self.commands.append(command)
    with open(log_path, "a") as f:
      f.write("training...\nTraceback: something broke\n")
    if self.exit_code:
      return self.exit_code
    workdir = next(a.split("=", 1)[1] for a in command if a.startswith("--workdir="))
    finished_run(os.path.dirname(os.path.dirname(workdir)), os.path.basename(
        os.path.dirname(workdir)), int(workdir[-1]), results(50, 50, group=60), results(1, 1))
    return 0


def trained(trainer):
  """(run, seed) of each launched command, read back from its workdir."""
  return [(c[4].split("=")[1].split(os.sep)[-2], c[4].split(os.sep)[-1]) for c in trainer.commands]


def test_done_run_skipped_half_done_rerun(tmp_path, capsys):
  finished_run(tmp_path, "goal", 0, results(10, 20), results(5, 5))
  half = study.run_dir(str(tmp_path), "global", 0)
  write_eval(half, STEPS // 2, results(3, 3))
  os.makedirs(os.path.join(half, "checkpoints", "2"))
  trainer = FakeTrainer()
  summary = study.run_study(options(tmp_path), launcher=trainer)
  assert trained(trainer) == [("global", "seed0")]
  command = trainer.commands[0]
  assert command[1:3] == ["-m", "goal_jax.train"]
  config_file = os.path.join(REPO, "goal_jax", "configs", "global_ft.py")
  assert command[3] == f"--config={config_file}:demo,data_seed=0,backbone=clip"
  assert command[5:] == ["--config.seed=0", "--config.eval_every=2", "--config.total_steps=4",
                         "--config.optim.warmup_steps=1", "--config.demo_data.pretrain_steps=4"]
  out = capsys.readouterr().out
  assert "[1/2] global seed 0 ... " in out and "within-group 60.0 %" in out
  assert "[2/2] goal seed 0 ... done already, skipped" in out
  assert sorted(summary["runs"]) == ["global", "goal"]
  assert os.path.exists(tmp_path / "study.md") and os.path.exists(tmp_path / "study.png")


def test_changed_options_refused_added_seeds_and_runs_allowed(tmp_path):
  trainer = FakeTrainer()
  study.run_study(options(tmp_path), launcher=trainer)
  for changed in (dict(steps=8), dict(data_seed=1), dict(eval_every=1), dict(pretrain_steps=0)):
    with pytest.raises(study.StudyError, match="holds a study made with .*Repeat its options"):
      study.run_study(options(tmp_path, **changed), launcher=trainer)
  assert len(trainer.commands) == 2
  study.run_study(options(tmp_path, seeds=2, runs=("goal", "goal_no_tsl")), launcher=trainer)
  assert trained(trainer)[2:] == [("goal_no_tsl", "seed0"), ("goal", "seed1"),
                                  ("goal_no_tsl", "seed1")]
  assert trainer.commands[2][-2:] == ["--config.loss.weights.tsl_image=0",
                                      "--config.loss.weights.tsl_text=0"]
  stored = json.loads((tmp_path / study.STUDY_CONFIG).read_text())
  assert stored["seeds"] == [0, 1] and stored["runs"] == ["global", "goal", "goal_no_tsl"]
  summary = study.run_study(options(tmp_path, report_only=True, steps=999), launcher=trainer)
  assert len(trainer.commands) == 5  # report only: nothing trained, the stored options used
  assert [len(summary["runs"][r]["seeds"]) for r in ("global", "goal", "goal_no_tsl")] == [1, 2, 2]


def test_failed_run_prints_log_tail_and_command_then_stops(tmp_path, capsys):
  with pytest.raises(study.StudyError, match="global seed 0 failed \\(exit code 1\\); log: "):
    study.run_study(options(tmp_path), launcher=FakeTrainer(exit_code=1))
  out = capsys.readouterr().out
  assert "Traceback: something broke" in out and "-m goal_jax.train" in out


def test_tiny_fills_in_the_flags_not_given():
  # Pure, not through absl's global FLAGS: other test modules define required flags there.
  defaults = dict(seeds=3, runs=list(study.RUNS), steps=0, eval_every=50, pretrain_steps=0)
  got = study.with_tiny_defaults({**defaults, "seeds": 2}, {"seeds"})
  assert got == dict(seeds=2, runs=("global", "goal"), steps=4, eval_every=2, pretrain_steps=4)
  assert study.with_tiny_defaults(defaults, set(defaults)) == defaults


def test_short_runs_shrink_the_warmup_only_when_it_would_not_end():
  assert study.short_run_overrides(4, 10) == ["--config.optim.warmup_steps=1"]
  assert study.short_run_overrides(10, 10) == ["--config.optim.warmup_steps=2"]
  assert study.short_run_overrides(11, 10) == []


def test_every_override_names_a_field_of_its_config():
  """Catches a renamed loss weight: the override would fail only when that run starts."""
  for run, recipe in study.RUNS.items():
    config = study.own_config(recipe.config_file)
    for override in recipe.overrides:
      path, value = override.removeprefix("--config.").split("=")
      node = config
      for key in path.split("."):
        node = node[key]
      assert node > 0 and float(value) == 0, (run, override)


def _has_demo_interface():
  with open(os.path.join(REPO, "configs", "common.py")) as f:
    text = f.read()
  return "data_seed" in text and "demo_data" in text


@pytest.mark.skipif(not _has_demo_interface(),
                    reason="configs/common.py has no data_seed arg / demo_data.pretrain_steps yet")
def test_tiny_study_end_to_end_then_everything_cached(tmp_path):
  env = dict(os.environ, GOAL_JAX_CACHE=str(tmp_path / "cache"))
  env.pop("XLA_FLAGS", None)  # one CPU device, as on a laptop
  command = [sys.executable, "-m", "goal_jax.study", "--tiny", f"--workdir={tmp_path / 'study'}"]
  first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=1200)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  table = (tmp_path / "study" / "study.md").read_text()
  assert "| global | 1 | " in table and "| goal | 1 | " in table
  summary = json.loads((tmp_path / "study" / "study.json").read_text())
  for run in ("global", "goal"):
    assert sorted(summary["runs"][run]["seeds"]["0"]["curve"]) == ["2", "4"]
    assert summary["runs"][run]["final"][study.TEST_BENCHMARK][study.T2I_R1]["n"] == 1
  with open(tmp_path / "study" / "study.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  log = tmp_path / "study" / "goal" / "seed0" / "train.log"
  logged = log.stat().st_mtime_ns
  second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stdout.count("done already, skipped") == 2
  assert log.stat().st_mtime_ns == logged
