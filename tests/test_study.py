"""The study: aggregates over seeds checked by hand, the table's cells and gaps, a real PNG,
differences to `global` with bootstrap intervals from per-group outcomes (and without them, from
older eval files), overrides for every run, finished runs skipped and unfinished ones rerun,
changed options refused, `--tiny` end to end."""
import json
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import numpy as np
import pytest

from goal_jax import config_utils
from goal_jax import study
from goal_jax.evaluation import bootstrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


SPLITS = {study.TEST_BENCHMARK: "test", study.WITHIN_GROUP_BENCHMARK: "test_hard",
          study.TRANSFER_TEST_BENCHMARK: "test_transfer",
          study.TRANSFER_WITHIN_GROUP_BENCHMARK: "test_transfer_hard"}


def write_eval(directory, step, results, per_group=None):
  """An `eval_<step>.json` as the trainer writes it; `results`: benchmark -> metric -> value,
  `per_group`: benchmark -> each group's within-group accuracy (report.py's `per_group`)."""
  per_group = per_group or {}

  def entry(name, metrics):
    task = "hard_groups" if name.endswith("within group") else "retrieval"
    out = {"task": task, "dataset": "synthetic", "split": SPLITS[name], "num_images": None,
           "num_texts": None, "metrics": metrics}
    if name in per_group:
      out["per_group"] = {study.GROUP_MEAN: list(per_group[name])}
    return out

  document = {"schema": "goal_jax.evaluation/1", "profile": "synthetic", "metadata": {"step": step},
              "results": {name: entry(name, metrics) for name, metrics in results.items()}}
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


def finished_run(workdir, run, seed, final, halfway, per_group=None):
  directory = study.run_dir(str(workdir), run, seed)
  write_eval(directory, STEPS // 2, halfway)
  write_eval(directory, STEPS, final, per_group)
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


def sections(table):
  """The Markdown's tables: heading -> (header line, {run: row})."""
  out = {}
  for section in table.split("\n## ")[1:]:
    heading, *lines = section.splitlines()
    lines = [line for line in lines if line.startswith("| ")]
    out[heading] = (lines[0], {line.split(" | ")[0][2:]: line for line in lines[1:]})
  return out


IN_DOMAIN, TRANSFER, DIFFERENCES = ("In domain (`test`, `test_hard`)",
                                    "Transfer: colour–shape pairs training never showed "
                                    "(`test_transfer`, `test_transfer_hard`)",
                                    "Difference to `global`")


def test_markdown_row_per_run_with_mean_min_max_cells_and_dash_for_missing(two_runs):
  tables = sections(study.markdown_table(study.summarize(str(two_runs), config_of(two_runs))))
  assert list(tables) == [IN_DOMAIN, TRANSFER, DIFFERENCES]
  header, rows = tables[IN_DOMAIN]
  assert rows["goal"] == ("| goal | 2 | 20.0 (10.0–30.0) | 30.0 (20.0–40.0) | 43.0 (38.0–48.0) | "
                          "47.0 (42.0–52.0) | 45.0 (40.0–50.0) | "
                          + " | ".join(["70.0 (60.0–80.0)"] * 5) + " |")
  assert rows["global"] == ("| global | 1 | 12.0 (12.0–12.0) | 14.0 (14.0–14.0) | "
                            + " | ".join([study.MISSING] * 8) + " |")
  assert header.count("|") == len(study.TABLE_COLUMNS) + 3
  # No transfer benchmark in these runs (data before version 3): every transfer cell a dash.
  header, rows = tables[TRANSFER]
  assert header.count("|") == len(study.TRANSFER_COLUMNS) + 3
  assert rows["goal"] == "| goal | 2 | " + " | ".join([study.MISSING] * 8) + " |"
  # global has no within-group result to compare with: dashes, and no row of its own.
  header, rows = tables[DIFFERENCES]
  assert header == ("| run | Δ within-group vs global [95 % CI] | seeds × groups | "
                    "Δ transfer within-group vs global [95 % CI] | seeds × groups |")
  assert rows == {"goal": "| goal | – | – | – | – |"}


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


def hard_result(per_group_acc, transfer=None):
  """A final eval's results and per-group outcomes: the within-group benchmark with these
  per-group accuracies (and the transfer benchmarks with `transfer`'s)."""
  results, per_group = {study.TEST_BENCHMARK: {study.T2I_R1: 50.0, study.I2T_R1: 50.0}}, {}
  benchmarks = [(study.WITHIN_GROUP_BENCHMARK, per_group_acc)]
  if transfer is not None:
    results[study.TRANSFER_TEST_BENCHMARK] = {study.T2I_R1: 40.0, study.I2T_R1: 30.0}
    benchmarks.append((study.TRANSFER_WITHIN_GROUP_BENCHMARK, transfer))
  for name, values in benchmarks:
    values = [float(v) for v in values]
    results[name] = {study.GROUP_MEAN: float(np.mean(values)), "2afc_colour": 60.0}
    per_group[name] = values
  return results, per_group


@pytest.fixture
def paired_runs(tmp_path):
  """global: seeds 0 and 1 finished, 2 half done; goal: seeds 0-2 with per-group outcomes on 20
  test groups, in domain and transfer; goal_no_tsl: seeds 0-1 from older eval files (no
  per-group outcomes, no transfer benchmarks). Returns (workdir, {(run, seed): outcomes})."""
  rng = np.random.default_rng(0)
  outcomes = {}
  for seed in range(3):
    base = rng.integers(0, 9, 20) * 12.5  # groups of 4: 8 decisions each
    transfer = rng.integers(0, 9, 20) * 12.5
    outcomes["global", seed] = (base, transfer)
    outcomes["goal", seed] = (np.clip(base + rng.choice([0, 12.5, 25], 20), 0, 100),
                              np.clip(transfer + rng.choice([-12.5, 0, 12.5], 20), 0, 100))
  for seed in range(3):
    final, per_group = hard_result(*outcomes["goal", seed])
    finished_run(tmp_path, "goal", seed, final, results(1, 1), per_group)
  for seed in range(2):
    final, per_group = hard_result(*outcomes["global", seed])
    finished_run(tmp_path, "global", seed, final, results(1, 1), per_group)
    old, _ = hard_result(outcomes["global", seed][0] + 12.5 * (seed + 1))  # +12.5 and +25
    finished_run(tmp_path, "goal_no_tsl", seed, old, results(1, 1))  # no per_group lists
  final, per_group = hard_result(*outcomes["global", 2])
  write_eval(study.run_dir(str(tmp_path), "global", 2), STEPS, final, per_group)  # no model/
  return tmp_path, outcomes


def test_differences_to_global_bootstrap_over_the_seeds_both_finished(paired_runs):
  workdir, outcomes = paired_runs
  summary = study.summarize(str(workdir), config_of(workdir, seeds=3,
                                                    runs=("global", "goal", "goal_no_tsl")))
  assert "differences" not in summary["runs"]["global"]
  assert summary["reference"] == "global" and summary["bootstrap"] == study.BOOTSTRAP
  goal = summary["runs"]["goal"]["differences"]
  for index, benchmark in enumerate(study.DIFFERENCE_BENCHMARKS):
    # Seed 2 of global is unfinished: goal's seed 2 has no partner and is left out.
    method = np.array([outcomes["goal", s][index] for s in (0, 1)])
    reference = np.array([outcomes["global", s][index] for s in (0, 1)])
    expected = bootstrap.paired_difference(method, reference, **study.BOOTSTRAP).as_dict()
    assert goal[benchmark] == expected
    assert expected["difference"] == pytest.approx(np.mean(method - reference))
    assert (expected["seeds"], expected["groups"]) == (2, 20)
    assert expected["low"] < expected["difference"] < expected["high"]
  assert goal[study.WITHIN_GROUP_BENCHMARK]["low"] > 0  # goal only ever gains in domain
  # Older eval files: the mean of the paired differences (+12.5 and +25), no interval.
  assert summary["runs"]["goal_no_tsl"]["differences"] == {study.WITHIN_GROUP_BENCHMARK: {
      "difference": 18.75, "low": None, "high": None, "seeds": 2, "groups": None}}

  tables = sections(study.markdown_table(summary))
  cells = [f"{d['difference']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] | 2 × 20"
           for d in goal.values()]
  _, rows = tables[DIFFERENCES]
  assert rows == {"goal": f"| goal | {cells[0]} | {cells[1]} |",
                  "goal_no_tsl": "| goal_no_tsl | +18.8 [–] | 2 × – | – | – |"}
  _, rows = tables[TRANSFER]
  transfer_mean = np.mean([np.mean(outcomes["goal", s][1]) for s in range(3)])
  assert rows["goal"].startswith(f"| goal | 3 | 40.0 (40.0–40.0) | 30.0 (30.0–30.0) | "
                                 f"{transfer_mean:.1f} (")
  assert rows["goal"].endswith(" | 60.0 (60.0–60.0) | – | – | – | – |")  # colour only
  assert rows["goal_no_tsl"] == "| goal_no_tsl | 2 | " + " | ".join(["–"] * 8) + " |"

  written = study.write_outputs(str(workdir), config_of(workdir, seeds=3,
                                                         runs=("global", "goal", "goal_no_tsl")))
  on_disk = json.loads((workdir / "study.json").read_text())
  assert on_disk["runs"]["goal"]["differences"] == written["runs"]["goal"]["differences"]
  assert on_disk["runs"]["goal_no_tsl"]["differences"][study.WITHIN_GROUP_BENCHMARK]["low"] is None
  assert f"| goal | {cells[0]} |" in (workdir / "study.md").read_text()


def test_no_reference_run_means_no_differences(paired_runs):
  workdir, _ = paired_runs
  summary = study.summarize(str(workdir), config_of(workdir, runs=("goal",)))
  assert summary["runs"]["goal"]["differences"] == {}
  _, rows = sections(study.markdown_table(summary))[DIFFERENCES]
  assert rows == {"goal": "| goal | – | – | – | – |"}


def test_report_only_rebuilds_an_older_study(tmp_path):
  """A study config from before backbone and overrides, eval files without per-group outcomes
  or transfer benchmarks: reported, with dashes where the new numbers would be."""
  finished_run(tmp_path, "global", 0, results(10, 10, group=40, two_afc=60), results(1, 1))
  finished_run(tmp_path, "goal", 0, results(20, 20, group=45, two_afc=70), results(1, 1))
  stored = {"data_seed": 0, "steps": STEPS, "eval_every": 2, "pretrain_steps": 4, "seeds": [0],
            "runs": ["global", "goal"]}
  (tmp_path / study.STUDY_CONFIG).write_text(json.dumps(stored))
  summary = study.run_study(options(tmp_path, report_only=True), launcher=FakeTrainer())
  assert summary["runs"]["goal"]["differences"] == {study.WITHIN_GROUP_BENCHMARK: {
      "difference": 5.0, "low": None, "high": None, "seeds": 1, "groups": None}}
  tables = sections((tmp_path / "study.md").read_text())
  assert tables[DIFFERENCES][1]["goal"] == "| goal | +5.0 [–] | 1 × – | – | – |"
  assert tables[TRANSFER][1]["goal"] == "| goal | 1 | " + " | ".join(["–"] * 8) + " |"
  assert "overrides none" in (tmp_path / "study.md").read_text()
  # The same older config (data version 2) accepts a rerun on version 2 without overrides, and
  # refuses one with them, or on the latest data.
  study.run_study(options(tmp_path, data_version=2), launcher=FakeTrainer())
  with pytest.raises(study.StudyError, match=r"made with overrides=\[\].*asks for "
                     r"overrides=\['--config.loss.duplicates=negative'\]"):
    study.run_study(options(tmp_path, data_version=2,
                            overrides=("--config.loss.duplicates=negative",)),
                    launcher=FakeTrainer())
  with pytest.raises(study.StudyError, match="made with data_version=2.*asks for data_version=3"):
    study.run_study(options(tmp_path), launcher=FakeTrainer())


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
  assert command[3] == f"--config={config_file}:demo,data_seed=0,data_version=3,backbone=clip"
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


def test_overrides_parsed_checked_appended_to_every_run_and_kept(tmp_path):
  assert study.parse_overrides("") == ()
  assert study.parse_overrides(" --config.loss.duplicates=negative,--config.optim.lr=0.0005") == (
      "--config.loss.duplicates=negative", "--config.optim.lr=0.0005")
  assert study.parse_overrides("--config.a=1,5  --config.b.c=x") == ("--config.a=1,5",
                                                                      "--config.b.c=x")
  with pytest.raises(study.StudyError, match="'loss.duplicates=negative' is not --config"):
    study.parse_overrides("loss.duplicates=negative")
  with pytest.raises(study.StudyError, match="is not --config.<field>=<value>"):
    study.parse_overrides("--config.loss.duplicates")
  with pytest.raises(study.StudyError, match="sets a field the study sets itself; use --steps"):
    study.parse_overrides("--config.total_steps=9")
  with pytest.raises(study.StudyError, match="use --seeds"):
    study.parse_overrides("--config.seed=1")

  trainer = FakeTrainer()
  for bad, reason in (("--config.loss.duplicate=x", 'Did you mean "duplicates"'),
                      ("--config.optim.lr=fast", "could not convert string to float")):
    with pytest.raises(study.StudyError, match="--overrides do not fit configs/global_ft.py:demo,"
                       rf"data_seed=0,data_version=3,backbone=clip \(run global\): .*{reason}"):
      study.run_study(options(tmp_path, overrides=(bad,)), launcher=trainer)
  assert not trainer.commands and not os.listdir(tmp_path)  # refused before anything is written
  overrides = ("--config.loss.duplicates=negative", "--config.optim.lr=0.0005")
  study.run_study(options(tmp_path, overrides=overrides, runs=("global", "goal_no_tsl")),
                  launcher=trainer)
  assert [c[-2:] for c in trainer.commands] == [list(overrides)] * 2
  assert trainer.commands[1][-4:-2] == ["--config.loss.weights.tsl_image=0",  # the run's own first
                                        "--config.loss.weights.tsl_text=0"]
  stored = json.loads((tmp_path / study.STUDY_CONFIG).read_text())
  assert stored["overrides"] == list(overrides)
  with pytest.raises(study.StudyError, match="holds a study made with overrides="):
    study.run_study(options(tmp_path, runs=("global",)), launcher=trainer)
  summary = study.run_study(options(tmp_path, report_only=True), launcher=trainer)
  assert summary["options"]["overrides"] == list(overrides) and len(trainer.commands) == 2
  assert ("overrides --config.loss.duplicates=negative --config.optim.lr=0.0005."
          in (tmp_path / "study.md").read_text())


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
  """Catches a renamed loss weight or option: the override would fail only when that run starts.
  A weight override is an ablation (it zeroes a term); any other parses as the trainer parses it
  (`config_flags`, so a mistyped value fails here) and changes its field."""
  for run, recipe in study.RUNS.items():
    config = study.own_config(recipe.config_file)
    argv = ["study", f"--config={config_utils.recipe_path(recipe.config_file)}:demo",
            *recipe.overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    for override in recipe.overrides:
      path, value = override.removeprefix("--config.").split("=")
      node, parsed = config, flag_values.config
      for key in path.split("."):
        node, parsed = node[key], parsed[key]
      if ".weights." in f".{path}.":
        assert node > 0 and float(value) == 0, (run, override)
      else:
        assert parsed != node and str(parsed) == value, (run, override)


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
