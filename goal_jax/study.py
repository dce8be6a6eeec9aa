r"""Does aligning caption details with image regions help? Methods and ablations over seeds.

GOAL and MulCLIP add local objectives (sentence <-> region, word <-> patch) to global contrastive
fine-tuning and claim better long-caption retrieval. One run of one seed cannot say whether that
holds: a gap of a few points may be the seed. This command fine-tunes every method
and ablation from the same pretrained start on the embedded `synthetic` data, over N training
seeds, and reports each metric as mean (min–max) over seeds, and each run's difference to
`global` with a 95 % interval over seeds and test groups. The benchmark that decides is
`test_hard`'s within-group accuracy: four captions that differ in one detail of one shape (colour,
shape, size, texture, or which colour goes with which shape), where a model that keeps only the
gist is at chance (25 %); its 2AFC accuracy per edited attribute says which details a method
learned.

  python -m goal_jax.study --workdir=/tmp/study                     # every run x 3 seeds
  python -m goal_jax.study --workdir=/tmp/study --seeds=5           # adds seeds 3 and 4
  python -m goal_jax.study --workdir=/tmp/study --runs=global,goal --data_seed=1 --steps=300
  python -m goal_jax.study --workdir=/tmp/study --report_only       # outputs from what finished
  python -m goal_jax.study --workdir=/tmp/study_ci --tiny           # CI: 2 runs, 4 steps
  python -m goal_jax.study --workdir=/tmp/study_siglip --backbone=siglip --runs=global,goal,mulclip
  python -m goal_jax.study --workdir=/tmp/study_dup_negative \
      --overrides=--config.loss.duplicates=negative                  # a config change, every run

Each run is one `python -m goal_jax.train` subprocess on
`configs/<method>.py:demo,data_seed=D,data_version=V,backbone=B` (V: the synthetic generator's
version, 3 by default, whose transfer splits hold colour–shape pairs no training scene holds;
B: the tiny CLIP start or the tiny SigLIP one)
into `<workdir>/<run>/seed<K>` (its output in `train.log` there); `RUNS` below lists them.
`--overrides` (config overrides separated by commas or spaces, each `--config.<field>=<value>`)
are appended to every run's command, after the run's own: the way to measure one config change
for every method, each change into its own study workdir. They must name a field of every run's
config with a value of its type (checked before any run trains), and not one the study sets
itself (seed, eval_every, total_steps, pretraining steps: use the study's flags).
A run whose workdir holds `model/` and its final step's `eval_<step>.json` is done and skipped;
an unfinished one is rerun and the trainer resumes from its checkpoints. `study_config.json` keeps
the options that change results (backbone, data seed and version, steps, eval cadence,
pretraining steps, overrides): a rerun into the same directory must repeat them, but may add
seeds or runs (a study config from before an option holds its old value, `OLDER_STUDIES`: no
overrides, data version 2).

Outputs, rebuilt from every finished run's `eval_<step>.json` files:
- `study.json`: per run and seed the curve (step -> benchmark -> metric -> value) and, per run,
  the aggregate over seeds at the final step (benchmark -> metric -> mean, min, max, n) and, for
  every run but the reference (`global`), `differences`: benchmark -> {difference, low, high,
  seeds, groups}, its within-group mean minus the reference's with a 95 % interval (below);
- `study.md`, three tables, one row per run: in-domain (test R@1, within-group accuracy, 2AFC
  per attribute), transfer (the same on the colour–shape pairs training never showed: `Synthetic
  transfer` and `Synthetic transfer hard: within group`), each cell `mean (min–max)` over seeds;
  then the differences to `global`, each cell `+3.9 [+1.2, +6.5]` (`–`: not reported, e.g. the
  transfer benchmarks on data from before version 3);
- `study.png`: within-group accuracy against step (mean over seeds, min–max shaded) and test R@1
  (mean of T2I and I2T).

The difference to `global` is the question the study asks, and the seeds' min–max cannot answer
it: seed s of a run and of `global` share the training seed and the test groups, so the study
pairs them (seeds both finished) and bootstraps over seeds and test groups
(`evaluation/bootstrap.py`, 10,000 replicates, fixed generator seed) from the per-group
outcomes in each run's final `eval_<step>.json` (`per_group`, written by the `hard_groups` task).
Eval files written before those outcomes existed still give the mean difference over the paired
seeds, with `–` for the interval (`+3.9 [–]`); `--report_only` rebuilds such a study as before.

Cost on 2 CPU cores (measured, 300 steps, evaluation every 50, version 3 with its transfer
splits): a run takes 1-2.5 min; 12 ablation runs (4 runs x 3 seeds) took 19 min, with other jobs
sharing the machine part of the time. The first
run of a data seed also prepares the data and pretrains the start (about 1 min, cached in
`$GOAL_JAX_CACHE` for every later run). `--tiny` took 1 m 48 s from an empty cache.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import time

from absl import flags
from matplotlib import ticker
from ml_collections import config_flags
import numpy as np

from goal_jax import cli
from goal_jax.data import synthetic
from goal_jax import config_utils
from goal_jax import figures
from goal_jax import files
from goal_jax import methods
from goal_jax.evaluation import bootstrap
from goal_jax.evaluation import report

# ------------------------------------------------------------------------------------------------
# What is compared: one recipe per run, read as "config file + the overrides that make it".


@dataclasses.dataclass(frozen=True)
class Recipe:
  config_file: str            # under configs/
  overrides: tuple[str, ...] = ()


# Every method's runs, as it declares them (`Method.study_runs`), in the registry's order.
RUNS = {run: Recipe(method.recipe, tuple(overrides))
        for method in methods.REGISTRY.values() for run, overrides in method.study_runs.items()}

# ------------------------------------------------------------------------------------------------
# Where the numbers are in an eval JSON (goal_jax/evaluation/report.py), named once.

TEST_BENCHMARK = "Synthetic test"
WITHIN_GROUP_BENCHMARK = "Synthetic hard: within group"
TWO_AFC_BENCHMARK = WITHIN_GROUP_BENCHMARK
# Colour–shape pairs training never shows (synthetic data version 3 on); older runs lack them.
TRANSFER_TEST_BENCHMARK = "Synthetic transfer"
TRANSFER_WITHIN_GROUP_BENCHMARK = "Synthetic transfer hard: within group"
T2I_R1, I2T_R1 = "t2i_R@1", "i2t_R@1"
GROUP_T2I, GROUP_I2T, GROUP_MEAN = "group_t2i_acc", "group_i2t_acc", "group_acc"
TWO_AFC_ATTRIBUTES = ("colour", "shape", "size", "texture", "binding")
HEADLINE = (WITHIN_GROUP_BENCHMARK, GROUP_MEAN)
HEADLINE_CHANCE = 25.0  # one caption of a group of 4: what a gist-only model scores


@dataclasses.dataclass(frozen=True)
class Column:
  label: str
  benchmark: str
  metric: str


TABLE_COLUMNS = (
    Column("test R@1 T2I", TEST_BENCHMARK, T2I_R1),
    Column("test R@1 I2T", TEST_BENCHMARK, I2T_R1),
    Column("within-group T2I", WITHIN_GROUP_BENCHMARK, GROUP_T2I),
    Column("within-group I2T", WITHIN_GROUP_BENCHMARK, GROUP_I2T),
    Column("within-group mean", WITHIN_GROUP_BENCHMARK, GROUP_MEAN),
    *(Column(f"2AFC {a}", TWO_AFC_BENCHMARK, f"2afc_{a}") for a in TWO_AFC_ATTRIBUTES),
)
TRANSFER_COLUMNS = (
    Column("transfer R@1 T2I", TRANSFER_TEST_BENCHMARK, T2I_R1),
    Column("transfer R@1 I2T", TRANSFER_TEST_BENCHMARK, I2T_R1),
    Column("transfer within-group mean", TRANSFER_WITHIN_GROUP_BENCHMARK, GROUP_MEAN),
    *(Column(f"transfer 2AFC {a}", TRANSFER_WITHIN_GROUP_BENCHMARK, f"2afc_{a}")
      for a in TWO_AFC_ATTRIBUTES),
)
MISSING = "–"

# What the differences compare: each run's headline against the reference run's, per benchmark.
REFERENCE_RUN = "global"
DIFFERENCE_BENCHMARKS = {WITHIN_GROUP_BENCHMARK: "within-group",
                         TRANSFER_WITHIN_GROUP_BENCHMARK: "transfer within-group"}
BOOTSTRAP = dict(level=bootstrap.LEVEL, resamples=bootstrap.RESAMPLES, seed=0)

# ------------------------------------------------------------------------------------------------
# Options.

STUDY_CONFIG = "study_config.json"
RESULT_OPTIONS = ("backbone", "data_seed", "data_version", "steps", "eval_every",
                  "pretrain_steps", "overrides")  # change the numbers
# What a study config from before an option holds (before `data_version`: the data's version 2).
OLDER_STUDIES = {"backbone": "clip", "overrides": [], "data_version": 2}
# Config fields the study sets in every command: an override would silently fight its flag.
STUDY_FIELDS = {"seed": "--seeds", "eval_every": "--eval_every", "total_steps": "--steps",
                "demo_data.pretrain_steps": "--pretrain_steps"}
TINY = dict(seeds=1, runs=("global", "goal"), steps=4, eval_every=2, pretrain_steps=4)


class StudyError(RuntimeError):
  """The study cannot go on; the message says why (printed as a one-line `error:`)."""


@dataclasses.dataclass(frozen=True)
class StudyOptions:
  workdir: str
  seeds: int = 3
  runs: tuple[str, ...] = tuple(RUNS)
  backbone: str = "clip"   # the demo start's family: "clip" or "siglip"
  data_seed: int = 0
  data_version: int = synthetic.LATEST_VERSION  # the synthetic generator's version
  steps: int = 0           # 0: each config's own
  eval_every: int = 50
  pretrain_steps: int = 0  # 0: the demo's default
  overrides: tuple[str, ...] = ()  # appended to every run's command (`parse_overrides`)
  report_only: bool = False

  def result_options(self) -> dict:
    values = {k: getattr(self, k) for k in RESULT_OPTIONS}
    return {**values, "overrides": list(self.overrides)}  # as JSON keeps it


def check_runs(names) -> tuple[str, ...]:
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    raise StudyError(f"unknown run {unknown[0]!r}; have {', '.join(RUNS)}")
  return tuple(n for n in RUNS if n in names)  # table order


_OVERRIDE = re.compile(r"--config\.([A-Za-z_][\w.]*)=.*", re.DOTALL)


def parse_overrides(text: str) -> tuple[str, ...]:
  """`--overrides`' value -> the overrides in order, e.g. `--config.a=1,--config.b=x` or
  `--config.a=1 --config.b=x`; a comma inside a value (`--config.ks=1,5`) stays in it."""
  overrides = tuple(o for o in re.split(r"[\s,]+(?=--)", text.strip()) if o)
  for override in overrides:
    match = _OVERRIDE.fullmatch(override)
    if not match:
      raise StudyError(f"override {override!r} is not --config.<field>=<value>")
    if match.group(1) in STUDY_FIELDS:
      raise StudyError(f"override {override!r} sets a field the study sets itself; use "
                       f"{STUDY_FIELDS[match.group(1)]}")
  return overrides


def check_overrides(config: dict, runs) -> None:
  """Parses every run's config with the study's overrides as the trainer will (`config_flags`):
  a field no run has, or a value of the wrong type, would otherwise fail only when that run's
  turn comes, after the others trained."""
  if not config.get("overrides"):
    return
  for run in runs:
    config_file = RUNS[run].config_file
    argv = ["study", f"--config={config_utils.recipe_path(config_file)}:{config_arg(config)}",
            *RUNS[run].overrides, *config["overrides"]]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    try:
      flag_values(argv)
    except (flags.Error, AttributeError, KeyError, ValueError) as e:  # what config_flags raises
      reason = " ".join(str(e).split())
      raise StudyError(f"--overrides do not fit configs/{config_file}:{config_arg(config)} "
                       f"(run {run}): {reason}") from e


def merged_study_config(stored: dict | None, options: StudyOptions) -> dict:
  """The study config after this invocation; refuses options that would mix different results.

  Seeds and runs accumulate (adding them is what a longer study does); the result options must
  match, or the aggregates would average runs of different experiments.
  """
  requested = options.result_options()
  if stored is None:
    return {**requested, "seeds": list(range(options.seeds)), "runs": list(options.runs)}
  stored = {**OLDER_STUDIES, **stored}
  changed = [k for k in RESULT_OPTIONS if stored.get(k) != requested[k]]
  if changed:
    was = ", ".join(f"{k}={stored.get(k)}" for k in changed)
    now = ", ".join(f"{k}={requested[k]}" for k in changed)
    raise StudyError(
        f"{options.workdir} holds a study made with {was} ({STUDY_CONFIG}); this command asks for "
        f"{now}. Repeat its options (adding --seeds or --runs is fine) or use another --workdir.")
  seeds = sorted(set(stored["seeds"]) | set(range(options.seeds)))
  runs = check_runs(set(stored["runs"]) | set(options.runs))
  return {**requested, "seeds": seeds, "runs": list(runs)}


def read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_study_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, STUDY_CONFIG)
  return read_json(path) if os.path.exists(path) else None


# ------------------------------------------------------------------------------------------------
# Commands.


def run_dir(workdir: str, run: str, seed: int) -> str:
  return os.path.join(workdir, run, f"seed{seed}")


def config_arg(config: dict) -> str:
  """The `:arg` every run's config file gets: the demo data, its seed, the backbone."""
  version = config.get("data_version", OLDER_STUDIES["data_version"])
  return (f"demo,data_seed={config['data_seed']},data_version={version},"
          f"backbone={config.get('backbone', 'clip')}")


def train_command(run: str, seed: int, workdir: str, config: dict) -> list[str]:
  """The `goal_jax.train` argv of one run and seed; 0-valued steps options keep the defaults.
  The study's `overrides` come last, after the run's own."""
  recipe = RUNS[run]
  command = [
      sys.executable, "-m", "goal_jax.train",
      f"--config={config_utils.recipe_path(recipe.config_file)}:{config_arg(config)}",
      f"--workdir={run_dir(workdir, run, seed)}",
      f"--config.seed={seed}",
      f"--config.eval_every={config['eval_every']}",
  ]
  if config["steps"]:
    command.append(f"--config.total_steps={config['steps']}")
    warmup = own_config(recipe.config_file).optim.warmup_steps
    command += short_run_overrides(config["steps"], warmup)
  if config["pretrain_steps"]:
    command.append(f"--config.demo_data.pretrain_steps={config['pretrain_steps']}")
  return command + list(recipe.overrides) + list(config.get("overrides", ()))


def short_run_overrides(steps: int, warmup_steps: int) -> list[str]:
  """A run shorter than the config's warmup (`--tiny`) would never leave it: the cosine schedule
  refuses that, so the warmup shrinks to a quarter of the run, as the demo's pretraining does."""
  return [f"--config.optim.warmup_steps={steps // 4}"] if steps <= warmup_steps else []


_OWN_CONFIGS = {}


def own_config(config_file: str):
  """The method's demo config, read from the file the subprocess will read."""
  if config_file not in _OWN_CONFIGS:
    _OWN_CONFIGS[config_file] = config_utils.load_config(config_utils.recipe_path(config_file),
                                                         "demo")
  return _OWN_CONFIGS[config_file]


def final_step(run: str, config: dict) -> int:
  """The step a finished run ends at: `--steps`, else the config's own `total_steps`."""
  if config["steps"]:
    return config["steps"]
  steps = int(own_config(RUNS[run].config_file).total_steps)
  if steps <= 0:
    raise StudyError(f"configs/{RUNS[run].config_file}:demo sets no total_steps; pass --steps")
  return steps


def launch_training(command: list[str], log_path: str) -> int:
  """Runs one training to completion, its output into `log_path`; returns the exit code."""
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def log_tail(path: str, lines: int = 40) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError:
    return "(no log)\n"


# ------------------------------------------------------------------------------------------------
# Reading finished runs (pure: files in, dicts out).

_EVAL_FILE = re.compile(r"eval_(\d+)\.json$")
MODEL_CONFIG_FILE = "model_config.json"  # goal_jax.models.checkpoint.CONFIG_FILE (no JAX import)


def read_curve(directory: str) -> dict[int, dict]:
  """step -> benchmark -> metric -> value, from every `eval_<step>.json` of one run."""
  curve = {}
  for path in glob.glob(os.path.join(directory, "eval_*.json")):
    match = _EVAL_FILE.search(os.path.basename(path))
    if match:
      document = report.read_results(path)
      curve[int(match.group(1))] = {name: dict(entry["metrics"])
                                    for name, entry in document["results"].items()}
  return dict(sorted(curve.items()))


def read_per_group(directory: str, step: int) -> dict[str, dict[str, list]]:
  """benchmark -> metric -> one value per test group, from the run's `eval_<step>.json`
  (report.py's `per_group`; absent from files written before it)."""
  document = report.read_results(os.path.join(directory, f"eval_{step}.json"))
  return {name: entry["per_group"] for name, entry in document["results"].items()
          if entry.get("per_group")}


def is_done(directory: str, last_step: int) -> bool:
  """Finished: the final model is saved and the final step was evaluated."""
  return (os.path.isfile(os.path.join(directory, "model", MODEL_CONFIG_FILE))
          and os.path.isfile(os.path.join(directory, f"eval_{last_step}.json")))


def finished_seeds(workdir: str, run: str, last_step: int) -> list[int]:
  """Seeds of `run` that finished, including ones an earlier, larger `--seeds` added."""
  seeds = []
  for path in glob.glob(os.path.join(workdir, run, "seed*")):
    name = os.path.basename(path)
    if name[4:].isdigit() and is_done(path, last_step):
      seeds.append(int(name[4:]))
  return sorted(seeds)


def metric(point: dict, benchmark: str, name: str) -> float | None:
  return point.get(benchmark, {}).get(name)


def mean_test_r1(point: dict) -> float | None:
  """Mean of test T2I and I2T R@1: the second panel's one number for test retrieval."""
  t2i, i2t = metric(point, TEST_BENCHMARK, T2I_R1), metric(point, TEST_BENCHMARK, I2T_R1)
  return None if t2i is None or i2t is None else (t2i + i2t) / 2


def stats(values: list[float]) -> dict:
  return {"mean": sum(values) / len(values), "min": min(values), "max": max(values),
          "n": len(values)}


def aggregate_points(points: list[dict]) -> dict:
  """benchmark -> metric -> stats over the points (one per seed) that report the metric."""
  values = {}
  for point in points:
    for benchmark, metrics in point.items():
      for name, value in metrics.items():
        values.setdefault(benchmark, {}).setdefault(name, []).append(value)
  return {benchmark: {name: stats(v) for name, v in metrics.items()}
          for benchmark, metrics in values.items()}


def band(curves: list[dict], value_of) -> dict:
  """step -> stats of `value_of(point)` over the seeds' curves, on the steps every seed has."""
  steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
  out = {}
  for step in steps:
    values = [v for c in curves if (v := value_of(c[step])) is not None]
    if len(values) == len(curves):
      out[step] = stats(values)
  return out


@dataclasses.dataclass(frozen=True)
class SeedResult:
  """One finished seed at its run's final step: its metrics and its per-group outcomes."""
  point: dict      # benchmark -> metric -> value
  per_group: dict  # benchmark -> metric -> [one value per test group]


def paired_difference(run: dict[int, SeedResult], reference: dict[int, SeedResult],
                      benchmark: str) -> dict | None:
  """The run's within-group mean minus the reference's on `benchmark`, paired by training seed.

  Over the seeds both report it: with both runs' per-group outcomes for every such seed (as many
  groups each), the bootstrap's difference and interval over seeds and groups; without, the mean
  of the paired differences, with `low`, `high` and `groups` None. None: no seed to pair.
  """
  seeds = [s for s in sorted(run) if s in reference
           and metric(run[s].point, benchmark, GROUP_MEAN) is not None
           and metric(reference[s].point, benchmark, GROUP_MEAN) is not None]
  if not seeds:
    return None
  lists = [side[s].per_group.get(benchmark, {}).get(GROUP_MEAN)
           for s in seeds for side in (run, reference)]
  if all(lists) and len({len(values) for values in lists}) == 1:
    method = np.array(lists[0::2], np.float64)
    return bootstrap.paired_difference(method, np.array(lists[1::2], np.float64),
                                       **BOOTSTRAP).as_dict()
  differences = [metric(run[s].point, benchmark, GROUP_MEAN)
                 - metric(reference[s].point, benchmark, GROUP_MEAN) for s in seeds]
  return {"difference": sum(differences) / len(differences), "low": None, "high": None,
          "seeds": len(seeds), "groups": None}


def summarize(workdir: str, config: dict) -> dict:
  """The `study.json` document: curves, final-step aggregates and differences to the reference
  of every finished run."""
  runs, finals = {}, {}
  for run in config["runs"]:
    last = final_step(run, config)
    curves = {seed: read_curve(run_dir(workdir, run, seed))
              for seed in finished_seeds(workdir, run, last)}
    finals[run] = {seed: SeedResult(curve[last], read_per_group(run_dir(workdir, run, seed), last))
                   for seed, curve in curves.items()}
    runs[run] = {
        "config_file": RUNS[run].config_file, "overrides": list(RUNS[run].overrides),
        "final_step": last,
        "seeds": {str(seed): {"curve": curve} for seed, curve in curves.items()},
        "final": aggregate_points([curve[last] for curve in curves.values()]),
    }
  for run in runs:
    if run != REFERENCE_RUN:
      differences = {b: paired_difference(finals[run], finals.get(REFERENCE_RUN, {}), b)
                     for b in DIFFERENCE_BENCHMARKS}
      runs[run]["differences"] = {b: d for b, d in differences.items() if d is not None}
  return {"schema": "goal_jax.study/1", "options": config, "reference": REFERENCE_RUN,
          "bootstrap": BOOTSTRAP, "runs": runs}


def seed_curves(summary: dict, run: str) -> list[dict]:
  """The run's curves with int steps (JSON keeps them as strings once written)."""
  return [{int(step): point for step, point in s["curve"].items()}
          for s in summary["runs"][run]["seeds"].values()]


# ------------------------------------------------------------------------------------------------
# Outputs.


def format_cell(cell: dict | None) -> str:
  if not cell:
    return MISSING
  return f"{cell['mean']:.1f} ({cell['min']:.1f}–{cell['max']:.1f})"


def format_difference(entry: dict | None) -> str:
  """`+3.9 [+1.2, +6.5]`; `+3.9 [–]` without an interval; `–` without a difference."""
  if not entry:
    return MISSING
  if entry["low"] is None:
    return f"{entry['difference']:+.1f} [{MISSING}]"
  return f"{entry['difference']:+.1f} [{entry['low']:+.1f}, {entry['high']:+.1f}]"


def format_sizes(entry: dict | None) -> str:
  if not entry:
    return MISSING
  return f"{entry['seeds']} × {MISSING if entry['groups'] is None else entry['groups']}"


def _metric_table(summary: dict, columns) -> list[str]:
  lines = ["| run | seeds | " + " | ".join(c.label for c in columns) + " |",
           "|---|---|" + "---|" * len(columns)]
  for run, entry in summary["runs"].items():
    cells = [format_cell(entry["final"].get(c.benchmark, {}).get(c.metric)) for c in columns]
    lines.append(f"| {run} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
  return lines


def _difference_table(summary: dict) -> list[str]:
  reference = summary.get("reference", REFERENCE_RUN)
  level = round(100 * summary.get("bootstrap", BOOTSTRAP)["level"])
  header = [f"Δ {label} vs {reference} [{level} % CI] | seeds × groups"
            for label in DIFFERENCE_BENCHMARKS.values()]
  lines = ["| run | " + " | ".join(header) + " |",
           "|---|" + "---|" * 2 * len(DIFFERENCE_BENCHMARKS)]
  for run, entry in summary["runs"].items():
    if run == reference:
      continue
    differences = entry.get("differences", {})
    cells = [f"{format_difference(differences.get(b))} | {format_sizes(differences.get(b))}"
             for b in DIFFERENCE_BENCHMARKS]
    lines.append(f"| {run} | " + " | ".join(cells) + " |")
  return lines


def markdown_table(summary: dict) -> str:
  """Three tables, one row per run: in-domain and transfer cells `mean (min–max)` over seeds at
  the run's final step, then the differences to the reference run with their intervals."""
  options = summary["options"]
  reference = summary.get("reference", REFERENCE_RUN)
  resamples = summary.get("bootstrap", BOOTSTRAP)["resamples"]
  overrides = " ".join(options.get("overrides", ())) or "none"
  return "\n".join([
      "# Study: local alignment on the synthetic benchmark", "",
      f"Backbone {options.get('backbone', 'clip')}, data seed {options['data_seed']} (version "
      f"{options.get('data_version', OLDER_STUDIES['data_version'])}), "
      f"steps {options['steps'] or 'per config'}, "
      f"pretraining steps {options['pretrain_steps'] or 'demo default'}, overrides {overrides}. "
      f"Cells: mean (min–max) over seeds at the final step, in %; {MISSING}: not reported.", "",
      "## In domain (`test`, `test_hard`)", "", *_metric_table(summary, TABLE_COLUMNS), "",
      "## Transfer: colour–shape pairs training never showed (`test_transfer`, "
      "`test_transfer_hard`)", "", *_metric_table(summary, TRANSFER_COLUMNS), "",
      f"## Difference to `{reference}`", "",
      f"Within-group mean minus `{reference}`'s, in points, paired by training seed over the "
      f"seeds both finished; in brackets the bootstrap interval over seeds and test groups "
      f"({resamples} replicates; [{MISSING}]: eval files without per-group outcomes, mean "
      f"difference only).", "", *_difference_table(summary),
  ]) + "\n"


def plot_study(summary: dict, path: str) -> None:
  """Within-group accuracy and test R@1 against step: seeds' mean, min–max shaded, per run."""
  panels = (("within-group accuracy (%)", lambda p: metric(p, *HEADLINE), HEADLINE_CHANCE),
            ("test R@1, mean of T2I and I2T (%)", mean_test_r1, None))
  fig, axes = figures.new_figure(1, len(panels), (6 * len(panels), 4.2))
  for ax, (title, value_of, chance) in zip(axes[0], panels):
    for run in summary["runs"]:
      curves = seed_curves(summary, run)
      curve = band(curves, value_of)
      if not curve:
        continue
      steps = list(curve)
      line, = ax.plot(steps, [curve[s]["mean"] for s in steps], marker=".",
                      label=f"{run} ({len(curves)} seed{'s' * (len(curves) > 1)})")
      ax.fill_between(steps, [curve[s]["min"] for s in steps], [curve[s]["max"] for s in steps],
                      color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.has_data():
      if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
      ax.legend(fontsize=8)
    else:
      ax.text(0.5, 0.5, "no finished run reports it", ha="center", va="center",
              transform=ax.transAxes)
  figures.save_figure(fig, path)


def write_outputs(workdir: str, config: dict) -> dict:
  summary = summarize(workdir, config)
  files.write_json(os.path.join(workdir, "study.json"), summary, ensure_ascii=False)
  with open(os.path.join(workdir, "study.md"), "w", encoding="utf-8") as f:
    f.write(markdown_table(summary))
  plot_study(summary, os.path.join(workdir, "study.png"))
  print(f"\n{markdown_table(summary)}\nwrote study.json, study.md, study.png in {workdir}",
        flush=True)
  return summary


# ------------------------------------------------------------------------------------------------
# The study.


def duration(seconds: float) -> str:
  """'42s', '1m42s', '1h03m': what a progress line needs, no more."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def headline_text(directory: str, last_step: int) -> str:
  value = metric(read_curve(directory).get(last_step, {}), *HEADLINE)
  return f"within-group {MISSING if value is None else f'{value:.1f} %'}"


def time_left(durations: list[float], remaining: int) -> str:
  if not remaining:
    return "done"
  if not durations:
    return "time left: known after the first run"
  return f"about {duration(sum(durations) / len(durations) * remaining)} left"


def run_study(options: StudyOptions, launcher=None) -> dict:
  """Runs what is not finished (seed by seed, so early seeds compare all runs), then reports."""
  launcher = launcher or launch_training
  stored = read_study_config(options.workdir)
  if options.report_only:  # the stored options and runs, whatever the flags say
    if stored is None:
      raise StudyError(f"{options.workdir} holds no {STUDY_CONFIG}: no study to report")
    return write_outputs(options.workdir, {**OLDER_STUDIES, **stored})
  config = merged_study_config(stored, options)
  check_overrides(config, options.runs)
  files.write_json(os.path.join(options.workdir, STUDY_CONFIG), config, ensure_ascii=False)
  jobs = [(run, seed) for seed in range(options.seeds) for run in options.runs]
  pending = sum(not is_done(run_dir(options.workdir, r, s), final_step(r, config))
                for r, s in jobs)
  print(f"study in {options.workdir}: {len(jobs)} trainings ({len(options.runs)} runs x "
        f"{options.seeds} seeds), {len(jobs) - pending} finished already", flush=True)
  start, durations = time.monotonic(), []
  for index, (run, seed) in enumerate(jobs, 1):
    directory, last = run_dir(options.workdir, run, seed), final_step(run, config)
    print(f"[{index}/{len(jobs)}] {run} seed {seed} ... ", end="", flush=True)
    if is_done(directory, last):
      print(f"done already, skipped ({headline_text(directory, last)})", flush=True)
      continue
    command = train_command(run, seed, options.workdir, config)
    log_path = os.path.join(directory, "train.log")
    os.makedirs(directory, exist_ok=True)
    began = time.monotonic()
    code = launcher(command, log_path)
    if code != 0 or not is_done(directory, last):
      print(f"failed\n--- {log_path} (last lines) ---\n{log_tail(log_path)}--- command ---\n"
            f"{' '.join(command)}", flush=True)
      reason = f"exit code {code}" if code else f"no model/ or eval_{last}.json"
      raise StudyError(f"{run} seed {seed} failed ({reason}); log: {log_path}")
    durations.append(time.monotonic() - began)
    pending -= 1
    print(f"{duration(durations[-1])}, {headline_text(directory, last)} | elapsed "
          f"{duration(time.monotonic() - start)}, {time_left(durations, pending)}", flush=True)
  return write_outputs(options.workdir, config)


# ------------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs: commands share flag names, absl's are global."""
  flags.DEFINE_string("workdir", None, "Study directory: one subdirectory per run.")
  flags.DEFINE_integer("seeds", 3, "Number of training seeds: 0..N-1.", lower_bound=1)
  flags.DEFINE_list("runs", list(RUNS), f"Runs to train, of: {', '.join(RUNS)}.")
  flags.DEFINE_integer("data_seed", 0, "Generator seed of the synthetic dataset.")
  flags.DEFINE_integer("data_version", synthetic.LATEST_VERSION, "Version of the synthetic dataset "
                       "(3: with transfer splits; 2 reproduces the earlier studies).")
  flags.DEFINE_enum("backbone", "clip", ["clip", "siglip"],
                    "The demo start every run fine-tunes: the tiny CLIP or the tiny SigLIP.")
  flags.DEFINE_integer("steps", 0, "Fine-tuning steps; 0: each config's own.", lower_bound=0)
  flags.DEFINE_integer("eval_every", 50, "Evaluate every this many steps.", lower_bound=1)
  flags.DEFINE_integer("pretrain_steps", 0,
                       "Steps of the demo's pretrained start; 0: its default.", lower_bound=0)
  flags.DEFINE_bool("tiny", False, "CI setting: 1 seed, global and goal, 4 steps, eval every "
                    "2, 4 pretraining steps (flags given explicitly still win).")
  flags.DEFINE_string("overrides", "", "Config overrides appended to every run's command, "
                      "separated by commas or spaces, e.g. --config.loss.duplicates=negative; "
                      "a result option (kept in study_config.json).")
  flags.DEFINE_bool("report_only", False, "Rebuild the outputs from finished runs; train nothing.")


def with_tiny_defaults(values: dict, given: set[str]) -> dict:
  """`--tiny`'s settings for the options in `values` that were not given explicitly."""
  return {**values, **{k: v for k, v in TINY.items() if k not in given}}


def options_from_flags() -> StudyOptions:
  """The flags, with `--tiny`'s values where a flag was not given explicitly."""
  values = {name: FLAGS[name].value for name in TINY}
  if FLAGS.tiny:
    values = with_tiny_defaults(values, {name for name in TINY if FLAGS[name].present})
  return StudyOptions(workdir=FLAGS.workdir, data_seed=FLAGS.data_seed,
                      data_version=FLAGS.data_version, backbone=FLAGS.backbone,
                      overrides=parse_overrides(FLAGS.overrides), report_only=FLAGS.report_only,
                      **{**values, "runs": check_runs(values["runs"])})


def main(argv):
  cli.check_args(argv)
  if FLAGS.workdir is None:
    cli.fail("--workdir is required: the study's directory (rerunning there resumes)", code=2)
  run_study(options_from_flags())


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=(StudyError,))
