"""Evaluation runs: a benchmark spec -> each benchmark's data -> its task -> `report` entries.

One function serves the trainer's periodic evaluation and the `evaluate` command:
`evaluate_benchmarks(params, model_config, benchmarks, data_dir)`. The spec is resolved by
`benchmark_spec`, every benchmark's data is opened before any embedding is spent (`sources`, or
the user's zero-shot folder), then each runs its task from the `tasks.TASKS` registry. The towers
run in one jitted, batch-sharded step per batch (`embedding.Embedder`), compiled once per model
config and mesh. Given a method's scorer (`scoring.MethodScoring`), the tasks that rank a gallery
rank by it and their entries say so (`"scoring": "method:<name>"`); the others keep embeddings.
"""
import dataclasses

from absl import logging

from goal_jax.evaluation import benchmark_spec
from goal_jax.evaluation import embedding
from goal_jax.evaluation import sources
from goal_jax.evaluation import tasks
from goal_jax.models import param_tree


def _benchmark_data(benchmark, data_dir, zeroshot_folders):
  """The decoded records of the benchmark's split, or for a folder task the user's folder."""
  if benchmark.task not in tasks.TASKS:
    raise ValueError(f"benchmark {benchmark.name!r} has unknown task {benchmark.task!r}")
  if benchmark.task not in tasks.FOLDER_TASKS:
    return sources.open_split(benchmark.dataset, benchmark.split, data_dir)
  folders = zeroshot_folders or {}
  if benchmark.zeroshot_set not in folders:
    raise ValueError(f"zero-shot benchmark {benchmark.name!r} needs an image folder "
                     f"(--zeroshot_folder with --zeroshot_classes={benchmark.zeroshot_set})")
  return folders[benchmark.zeroshot_set]


def _ad_hoc_note(benchmark, data) -> str | None:
  """Why a split of another size than the paper's is not its protocol (None: it is, or no size).

  Such a split still runs (a 10-image smoke test, a subset), but its result says so.
  """
  if benchmark.task in tasks.FOLDER_TASKS or benchmark.num_images in (None, len(data)):
    return None
  return (f"{len(data)} images in {benchmark.dataset}:{benchmark.split}; the paper's protocol "
          f"uses {benchmark.num_images}, so this is not comparable to it")


def evaluate_benchmarks(params, model_config, benchmarks, data_dir, *, batch_size=64, mesh=None,
                        tokenizer=None, geometry=None, zeroshot_folders=None,
                        scoring=None, embedder=None, verbose=False) -> dict[str, dict]:
  """Evaluates `params` on benchmarks; returns {benchmark name: report.benchmark_result}.

  Args:
    params: CLIP params (host arrays, or device arrays on a mesh: used where they are); with
      `scoring`, the method's whole tree `{"clip": ..., **its params}`.
    model_config: their `CLIPConfig`.
    benchmarks: a spec for `benchmark_spec.resolve_benchmarks` (profile, names, `dataset:split`).
    data_dir: where `python -m goal_jax.prepare` wrote the shards.
    batch_size: global rows per device step (rounded up to a multiple of the device count).
    mesh: devices to shard over; default the params' mesh, else all devices.
    tokenizer: default the shared CLIP tokenizer.
    geometry: `center_crop` (CLIP, GOAL) or `squash`.
    zeroshot_folders: {zero-shot benchmark name: ImageFolder root} for `zeroshot` benchmarks.
    scoring: a `scoring.MethodScoring` that the tasks in `tasks.SCORED_TASKS` rank by; None: all
      rank by the embeddings' cosine.
    embedder: an `embedding.Embedder` (or an object with its methods) to use instead.
    verbose: print each benchmark's metrics as it finishes.
  """
  _, chosen = benchmark_spec.resolve_benchmarks(benchmarks)
  data = {b.name: _benchmark_data(b, data_dir, zeroshot_folders)  # fail before any long run
          for b in chosen}
  ad_hoc = {b.name: note for b in chosen if (note := _ad_hoc_note(b, data[b.name]))}
  for name, note in ad_hoc.items():
    logging.warning("Benchmark %s: %s", name, note)
  clip_params = params if scoring is None else param_tree.clip_of(params)
  embedder = embedder or embedding.Embedder.for_params(clip_params, model_config, mesh,
                                                       batch_size)
  clip_params = embedder.place(clip_params)
  if scoring is not None:  # the CLIP params placed once, for both embedders
    scored = embedding.Embedder(model_config, embedder.mesh, batch_size, features=scoring)
    params = scored.place(param_tree.merge(clip_params, param_tree.extras_of(params)))
  results = {}
  for benchmark in chosen:
    if benchmark.name in ad_hoc:  # the size check is done: the entry carries the note instead
      benchmark = dataclasses.replace(benchmark, num_images=None)
    task = tasks.TASKS[benchmark.task]
    if scoring is not None and benchmark.task in tasks.SCORED_TASKS:
      result = task(scored, params, data[benchmark.name], benchmark, geometry=geometry,
                    tokenizer=tokenizer, scoring=scoring)
      result["scoring"] = scoring.label
    else:
      result = task(embedder, clip_params, data[benchmark.name], benchmark, geometry=geometry,
                    tokenizer=tokenizer)
    if benchmark.name in ad_hoc:
      result["ad_hoc"] = ad_hoc[benchmark.name]
    results[benchmark.name] = result
    if verbose:
      shown = ", ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items())
      print(f"{benchmark.name}: {shown}", flush=True)
  return results
