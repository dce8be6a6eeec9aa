"""Results file (JSON) and Markdown tables in the column order of the profile's paper.

Results JSON, one file per evaluation run:

  {"schema": "goal_jax.evaluation/1",
   "profile": "goal",
   "metadata": {...free-form: checkpoint, model, step...},
   "results": {"DOCCI": {"task": "retrieval", "dataset": "docci", "split": "test+qual_test",
                         "num_images": 5100, "num_texts": 5100,
                         "metrics": {"t2i_R@1": 79.47, ...}}, ...}}

Metric values are percentages in [0, 100]; `results` keeps the profile's benchmark order. An
entry ranked by a method's own test-time score, not the embeddings' cosine, says which
(`"scoring": "method:finelip"`), and its table row is marked †. A within-group entry (task
`hard_groups`) also keeps its per-group outcomes, what a bootstrap over test groups resamples
(`evaluation/bootstrap.py`; files written before them lack the key), beside its metrics:

  "Synthetic hard: within group": {..., "metrics": {"group_acc": 43.75, ...},
                                   "per_group": {"group_acc": [37.5, 50.0, ...]}}

one value per group in ascending group order (`metrics.hard_group_scores`); tables never show them.
Benchmarks of the profile left out because their data is not there (`evaluate` runs what is
prepared) are listed with the command that makes it, and under the tables as "not run":

  "not_run": {"DOCCI": {"reason": "not prepared", "fix": "run `python -m goal_jax.prepare ...`",
                        "commands": ["python -m goal_jax.prepare ..."]}}
"""
import json
import math

from goal_jax import files
from goal_jax.evaluation import profiles as profiles_lib

SCHEMA = "goal_jax.evaluation/1"
MISSING = "–"


def benchmark_result(benchmark, metrics, *, num_images=None, num_texts=None, ad_hoc=None,
                     per_group=None):
  """One `results` entry: the benchmark's identity, its sizes and its metrics.

  `ad_hoc`: why the run is not the paper's protocol (a split of another size), kept in the
  entry and marked in the table; the size check is then the caller's (it was done before).
  `per_group`: {metric: one value per test group}, kept as the entry's `per_group`.
  """
  metrics = {str(k): float(v) for k, v in metrics.items()}
  bad = [k for k, v in metrics.items() if not math.isfinite(v)]
  if bad:
    raise ValueError(f"benchmark {benchmark.name!r}: metric {bad[0]} is not finite")
  per_group = {str(k): [float(x) for x in v] for k, v in (per_group or {}).items()}
  bad = [k for k, v in per_group.items() if not all(math.isfinite(x) for x in v)]
  if bad:
    raise ValueError(f"benchmark {benchmark.name!r}: per-group {bad[0]} has a non-finite value")
  if ad_hoc is None and benchmark.num_images is not None and num_images is not None \
      and num_images != benchmark.num_images:
    raise ValueError(f"benchmark {benchmark.name!r} expects {benchmark.num_images} images "
                     f"({benchmark.dataset}:{benchmark.split}), got {num_images}")
  entry = {"task": benchmark.task, "dataset": benchmark.dataset, "split": benchmark.split,
           "num_images": num_images, "num_texts": num_texts, "metrics": metrics}
  if per_group:
    entry["per_group"] = per_group
  if ad_hoc:
    entry["ad_hoc"] = ad_hoc
  return entry


def results_document(profile, results, metadata=None, not_run=None):
  """The JSON document; `results` maps benchmark name -> benchmark_result, in profile order.

  `profile` is a registered profile's name or any `profiles.Profile` (registered or not).
  `not_run`: {benchmark name: {"reason", "fix", "commands"}} of the profile's benchmarks left out
  (`runner.NotRun.as_dict`: "not prepared" and the command that prepares it), kept as the
  document's `not_run` and listed under the tables.
  """
  profile = profiles_lib.get_profile(profile) if isinstance(profile, str) else profile
  order = [b.name for b in profile.benchmarks]
  unknown = [name for name in [*results, *(not_run or {})] if name not in order]
  if unknown:
    raise ValueError(f"profile {profile.name!r} has no benchmark {unknown[0]!r}; have {order}")
  ordered = {name: results[name] for name in order if name in results}
  document = {"schema": SCHEMA, "profile": profile.name, "metadata": dict(metadata or {}),
              "results": ordered}
  if not_run:
    document["not_run"] = {name: dict(not_run[name]) for name in order if name in not_run}
  return document


def write_results(path, profile, results, metadata=None, not_run=None):
  """Writes the results JSON (atomically) and returns the document."""
  document = results_document(profile, results, metadata, not_run)
  files.write_json(path, document)
  return document


def read_results(path):
  """Reads and checks a results JSON written by write_results."""
  with open(path, encoding="utf-8") as f:
    try:
      document = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(document, dict) or document.get("schema") != SCHEMA:
    raise ValueError(f"{path}: not a results file of schema {SCHEMA!r}")
  for key in ("profile", "metadata", "results"):
    if key not in document:
      raise ValueError(f"{path}: missing top-level key {key!r}")
  for name, entry in document["results"].items():
    if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
      raise ValueError(f"{path}: benchmark {name!r} has no 'metrics' object")
    per_group = entry.get("per_group", {})
    if not isinstance(per_group, dict) or not all(isinstance(v, list)
                                                  for v in per_group.values()):
      raise ValueError(f"{path}: benchmark {name!r}: 'per_group' is not an object of lists")
  not_run = document.get("not_run", {})
  if not isinstance(not_run, dict) or not all(isinstance(v, dict) and "reason" in v
                                              for v in not_run.values()):
    raise ValueError(f"{path}: 'not_run' is not an object of {{'reason', 'fix'}} objects")
  return document


_GROUP_LABELS = {"group_t2i_acc": "within-group T2I", "group_i2t_acc": "within-group I2T",
                 "group_acc": "within-group mean"}


def column_label(key):
  """'t2i_R@1' -> 'T2I R@1', 'i2t_mAP@10' -> 'I2T mAP@10', 'top1' -> 'Top-1',
  'group_acc' -> 'within-group mean', '2afc_shape' -> '2AFC shape'."""
  if key.startswith("top") and key[3:].isdigit():
    return f"Top-{key[3:]}"
  if key in _GROUP_LABELS:
    return _GROUP_LABELS[key]
  direction, _, metric = key.partition("_")
  return f"{direction.upper()} {metric}" if metric else key


def _table(rows, columns):
  lines = ["| Benchmark | " + " | ".join(column_label(c) for c in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for name, metrics in rows:
    cells = [f"{metrics[c]:.2f}" if c in metrics else MISSING for c in columns]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def markdown_table(document, profile=None):
  """Markdown for a results document: one row per benchmark in profile order.

  Consecutive benchmarks with the same columns share a table (e.g. the profile's retrieval rows),
  so a profile mixing Recall@K and mAP rows prints one table per kind.

  Args:
    document: a results document (results_document, read_results).
    profile: the `profiles.Profile` it was written under; default the registered profile the
      document names. Pass it for a profile made on the fly (e.g. benchmarks chosen by name).
  """
  if profile is None:
    profile = profiles_lib.get_profile(document["profile"])
  elif profile.name != document["profile"]:
    raise ValueError(f"document was written under profile {document['profile']!r}, "
                     f"not {profile.name!r}")
  tables, rows, columns = [], [], None
  for benchmark in profile.benchmarks:
    if benchmark.name not in document["results"]:
      continue
    if rows and benchmark.columns != columns:
      tables.append(_table(rows, columns))
      rows = []
    columns = benchmark.columns
    entry = document["results"][benchmark.name]
    name = f"{benchmark.name} (ad hoc*)" if entry.get("ad_hoc") else benchmark.name
    rows.append((f"{name} †" if entry.get("scoring") else name, entry["metrics"]))
  if rows:
    tables.append(_table(rows, columns))
  notes = [f"*{name}: {entry['ad_hoc']}" for name, entry in document["results"].items()
           if entry.get("ad_hoc")]
  scorings = sorted({entry["scoring"] for entry in document["results"].values()
                     if entry.get("scoring")})
  notes += [f"†ranked by {s}, the trained method's test-time score, not the embeddings' cosine"
            for s in scorings]
  notes += [f"{name}: not run: {entry['reason']}"
            + (f"; {entry['fix']}" if entry.get("fix") else "")
            for name, entry in document.get("not_run", {}).items()]
  return "\n\n".join(tables + (["\n".join(notes)] if notes else [])) + "\n"
