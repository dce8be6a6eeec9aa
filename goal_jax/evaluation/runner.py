"""Evaluation runs: a benchmark spec -> each benchmark's data -> its task -> `report` entries.

One function serves the trainer's periodic evaluation and the `evaluate` command:
`evaluate_benchmarks(params, model_config, benchmarks, data_dir)`. The spec is resolved by
`benchmark_spec`, every benchmark's data is opened before any embedding is spent (`sources`, or
the user's zero-shot folder), then each runs its task from the `tasks.TASKS` registry.
`missing_data` says beforehand which benchmarks have no data yet and what makes it, so a caller
can leave them out (`evaluate`) or refuse to start (the trainer). The towers run in one jitted,
batch-sharded step per batch (`embedding.Embedder`), compiled once per model config and mesh.
Given a method's scorer (`scoring.MethodScoring`), the tasks that rank a gallery rank by it and
their entries say so (`"scoring": "method:<name>"`); the others keep embeddings.
"""
import dataclasses
import time

from absl import logging

from goal_jax.data import builder as data_builder
from goal_jax.data import unprepared
from goal_jax.evaluation import benchmark_spec
from goal_jax.evaluation import embedding
from goal_jax.evaluation import profiles
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


@dataclasses.dataclass(frozen=True)
class NotRun:
  """A benchmark left out because its data is not there yet.

  Attributes:
    reason: "not prepared" (its split is not under the data_dir) or "no image folder" (a
      zero-shot benchmark without `--zeroshot_folder`).
    fix: what makes it runnable: "run `<command>`[, then `<command>`]" or the flags to pass.
    commands: the commands in `fix`, in order (none for a folder).
    message: one line naming the benchmark, what is missing and the fix.
  """
  reason: str
  fix: str
  commands: tuple[str, ...]
  message: str

  def as_dict(self) -> dict:
    """The results JSON's `not_run` entry (`report.results_document`)."""
    return {"reason": self.reason, "fix": self.fix, "commands": list(self.commands)}


def _chosen(benchmarks) -> tuple:
  """Benchmarks already resolved (`profiles.Benchmark`s), or a spec to resolve."""
  if not isinstance(benchmarks, str) and benchmarks and all(
      isinstance(b, profiles.Benchmark) for b in benchmarks):
    return tuple(benchmarks)
  return benchmark_spec.resolve_benchmarks(benchmarks)[1]


def missing_data(benchmarks, data_dir, zeroshot_folders=None, *,
                 data_dir_option: str = "--data_dir") -> dict[str, NotRun]:
  """{name: NotRun} of the benchmarks whose data is not there yet, each with what makes it.

  A split that `prepare` (or `lism`) would make is "not prepared"; a mistake no preparation
  fixes (an unknown dataset or split, a data_dir that does not exist, shards that do not read)
  raises, as `sources.open_split` does. `benchmarks`: a spec or resolved benchmarks.
  """
  missing = {}
  for benchmark in _chosen(benchmarks):
    if benchmark.task in tasks.FOLDER_TASKS:
      if benchmark.zeroshot_set not in (zeroshot_folders or {}):
        fix = (f"pass --zeroshot_folder=<ImageFolder of its test images> "
               f"--zeroshot_classes={benchmark.zeroshot_set}")
        missing[benchmark.name] = NotRun("no image folder", fix, (),
                                         f"{benchmark.name}: not run: no image folder; {fix}")
      continue
    try:
      sources.open_split(benchmark.dataset, benchmark.split, data_dir, data_dir_option)
    except unprepared.NotPreparedError as e:
      missing[benchmark.name] = NotRun("not prepared", f"run {unprepared.quoted(e.commands)}",
                                       e.commands, f"{benchmark.name}: {e}")
  return missing


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
    benchmarks: a spec for `benchmark_spec.resolve_benchmarks` (profile, names, `dataset:split`),
      or benchmarks it resolved (`missing_data` leaves out those not prepared).
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
  chosen = _chosen(benchmarks)
  data = {b.name: _benchmark_data(b, data_dir, zeroshot_folders)  # fail before any long run
          for b in chosen}
  ad_hoc = {b.name: note for b in chosen if (note := _ad_hoc_note(b, data[b.name]))}
  for name, note in ad_hoc.items():
    logging.warning("Benchmark %s: %s", name, note)
  for b in chosen:  # prepared splits; a zero-shot folder is read at its own size
    if b.task not in tasks.FOLDER_TASKS and (note := data_builder.upscaling_note(
        b.dataset, b.split, data_dir, model_config.image_size)):
      logging.warning("Benchmark %s: %s", b.name, note)
  clip_params = params if scoring is None else param_tree.clip_of(params)
  embedder = embedder or embedding.Embedder.for_params(clip_params, model_config, mesh,
                                                       batch_size)
  clip_params = embedder.place(clip_params)
  if scoring is not None:  # the CLIP params placed once, for both embedders
    scored = embedding.Embedder(model_config, embedder.mesh, batch_size, features=scoring)
    params = scored.place(param_tree.merge(clip_params, param_tree.extras_of(params)))
  results = {}
  if verbose and chosen:  # jit compiles inside the first benchmark: a pause, said beforehand
    print(f"{len(chosen)} benchmark(s); the first also compiles the embedding steps", flush=True)
  for benchmark in chosen:
    started = time.perf_counter()
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
      print(f"{benchmark.name}: {shown} ({time.perf_counter() - started:.1f} s)", flush=True)
  return results
