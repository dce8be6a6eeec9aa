"""The training loop behind `python -m goal_jax.train`: one method, one config, one workdir.

The loop is big_vision's: params born sharded (`eval_shape` -> `jit(init, out_shardings)`), one
jitted step with the state donated, metrics fetched only on log steps, one Orbax manager for the
state and the Grain iterator (exact resume), SIGTERM saves and exits 0, a non-finite loss stops
the run naming the step and the batch's records.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from goal_jax import cli
from goal_jax import methods
from goal_jax import sharding
from goal_jax.methods import base
from goal_jax.data import builder as data_builder
from goal_jax.data import images
from goal_jax.data import pipeline
from goal_jax.data import reproduction
from goal_jax.data import unprepared
from goal_jax.evaluation import benchmark_spec
from goal_jax.evaluation import report
from goal_jax.evaluation import runner
from goal_jax.evaluation import scoring
from goal_jax.models import checkpoint as model_checkpoint
from goal_jax.models import families
from goal_jax.models import param_tree
from goal_jax.models import positions
from goal_jax.training import checkpointing
from goal_jax.training import finite
from goal_jax.training import metric_log
from goal_jax.training import optimizer as optimizer_lib
from goal_jax.training import preemption
from goal_jax.training import progress
from goal_jax.training import resume
from goal_jax.training import workdir_lock


RANDOM_INIT = "random"  # `config.model_init` value asking for random weights


class SetupError(RuntimeError):
  """The run cannot start: a missing dataset or checkpoint; the message says how to make it."""


# ------------------------------------------------------------------------------------------------
# Start-up: model, data, optimizer.


def text_context_of(config: ml_collections.ConfigDict, family: families.Family) -> int:
  """`config.model.text_context`, or (0) the family's long context (CLIP 248, SigLIP 196)."""
  return config.model.text_context or family.long_context


def sentence_context_of(config: ml_collections.ConfigDict, family: families.Family) -> int:
  """`config.input.sentence_context`, or (0) the family's pretrained context (CLIP 77,
  SigLIP 64): summaries and sentences are short captions."""
  return config.input.sentence_context or family.short_context


def model_config_from(config: ml_collections.ConfigDict, init_config=None):
  """The init checkpoint's architecture (or the named variant, of either family) with this
  run's compute knobs."""
  m = config.model
  base = init_config or families.get_variant(m.variant)
  context = text_context_of(config, families.of(base))
  knobs = dict(context_length=context, dtype=m.dtype, attention=m.attention,
               remat=m.remat or None, scan=m.scan)
  fields = {f.name for f in dataclasses.fields(base)}
  if m.scan and "scan" not in fields:
    raise SetupError(f"config.model.scan: a {families.of(base).name} model has no scanned layout")
  return dataclasses.replace(base, **{k: v for k, v in knobs.items() if k in fields})


def tokenizer_of(config: ml_collections.ConfigDict, model_config):
  """The tokenizer the towers read: CLIP's BPE, or the SentencePiece model of a SigLIP's init
  checkpoint (`config.model.tokenizer`, a `.model` file or a folder, takes precedence: a SigLIP
  trained from random weights has no checkpoint to carry one)."""
  family = families.of(model_config)
  source = config.model.get("tokenizer") or config.model_init
  if family.name == "clip":
    return family.tokenizer(source)
  if not source or source == RANDOM_INIT:
    raise SetupError(f"a {family.name} model trained from random weights needs a tokenizer: "
                     "pass --config.model.tokenizer=<SentencePiece .model file or folder>")
  try:
    return family.tokenizer(source)
  except (FileNotFoundError, ValueError) as e:
    raise SetupError(f"no tokenizer for the {family.name} model: {e}") from None


def load_init_params(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """Host params from `config.model_init` (a `goal_jax.convert` output), stretched to the context.

  Fine-tuning starts from a pretrained CLIP, so an empty `model_init` is an error rather than a
  silent start from random weights; `model_init="random"` asks for those explicitly (the
  demo's pretraining). A configured but missing checkpoint is an error too.
  """
  if config.model_init == RANDOM_INIT:
    logging.warning("model_init=random: training from randomly initialised weights")
    return None, None
  if not config.model_init:
    raise SetupError(
        "no init checkpoint: fine-tuning starts from a pretrained CLIP. Convert one with\n"
        "  python -m goal_jax.convert --source=/path/to/clip-vit-base-patch16 "
        "--out=/ckpt/clip_b16\n"
        "and pass init=/ckpt/clip_b16 (--config=configs/<method>.py:init=...) or "
        "--config.model_init=...; init=random trains from random weights")
  path = config.model_init
  if not model_checkpoint.is_model(path, steps=False):
    # A Hugging Face folder, a weights file, a training workdir or one of its steps: the message
    # names the `convert` command (into a new folder) or the run's finished `model/`.
    raise SetupError(model_checkpoint.not_a_model(path, label=f"init={path}", option="init",
                                                  steps=False))
  params, init_config = model_checkpoint.load_model(path, scan=config.model.scan)
  params = jax.device_get(params)
  tower, name = positions.text_positions_path(params)
  length = params[tower][name].shape[-2]
  context = text_context_of(config, families.of(init_config))
  if length != context:
    logging.info("Stretching text positions %d -> %d (Long-CLIP KPS)", length, context)
    params = positions.stretch_text_positions(params, context)
  return params, init_config


def input_config(config: ml_collections.ConfigDict, model_config) -> ml_collections.ConfigDict:
  """The pipeline config: `config.input` plus what the model and the method decide (an empty
  `geometry` is the backbone family's: CLIP's centre crop, SigLIP's squash)."""
  c = pipeline.default_config()
  c.update({k: v for k, v in config.input.items() if k in c})
  c.geometry = c.geometry or families.of(model_config).geometry
  c.image_size = model_config.image_size
  c.patch_size = model_config.patch_size
  c.text_context = model_config.context_length
  c.sentence_context = sentence_context_of(config, families.of(model_config))
  c.fields = methods.get(config.method).input_fields
  c.seed = config.seed
  family = families.of(model_config)
  for field in ("short_text_packing", "local_context"):
    if c.get(field) and not family.causal_text:
      raise ValueError(f"config.input.{field}={c[field]} cuts or packs captions, which gives "
                       f"the same embeddings only on a causal text tower pooled at its EOT "
                       f"(CLIP's); {family.name}'s is not: set it to 0")
  return c


def check_data(config: ml_collections.ConfigDict):
  """The training split's source; one that does not open stops the run with what is wrong and
  the fix for that case (`data.unprepared`: a misspelled name, a split the dataset lacks, LISM's
  output, no data_dir, or the `prepare` command)."""
  name, split, data_dir = config.input.dataset, config.input.split, config.input.data_dir
  try:
    return data_builder.load_source(name, split, data_dir)
  except data_builder.CorruptShardError as e:  # it names the shard and the command already
    raise SetupError(str(e)) from e
  except Exception as e:  # noqa: BLE001 - any failure to open: `explain` says which case
    raise SetupError(str(unprepared.explain(
        name, split, data_dir, split_option="--config.input.split={split}",
        data_dir_option="--config.input.data_dir", cause=e))) from e


def check_benchmarks(config: ml_collections.ConfigDict) -> None:
  """A run with `config.evals.benchmarks` evaluates them: a benchmark without data stops it
  before it starts, one `error:` line each with the command that prepares it, rather than after
  training (or, during training, with the evaluation silently skipped)."""
  spec = config.evals.benchmarks
  if not spec:
    return
  data_dir = config.evals.data_dir or config.input.data_dir
  option = "--config.evals.data_dir" if config.evals.data_dir else "--config.input.data_dir"
  try:
    _, chosen = benchmark_spec.resolve_benchmarks(spec)
    missing = runner.missing_data(chosen, data_dir, data_dir_option=option)
  except (ValueError, FileNotFoundError) as e:
    raise SetupError(f"config.evals.benchmarks={spec!r}: {e}") from None
  lines = []
  for name, not_run in missing.items():
    if not_run.commands:
      lines.append(f"config.evals.benchmarks: {not_run.message}")
    else:  # a zero-shot folder: the trainer takes none
      lines.append(f"config.evals.benchmarks: {name} needs an image folder, which training "
                   f"does not take: leave it out and run `python -m goal_jax.evaluate "
                   f"--checkpoint=<workdir>/model --benchmarks=zeroshot/{name} "
                   f"{not_run.fix.removeprefix('pass ')}` after training")
  if lines:
    raise SetupError(cli.error_lines(lines))


def check_sizes(config: ml_collections.ConfigDict, num_records: int) -> None:
  """A split smaller than one batch cannot train: one line naming both, before anything runs."""
  batch = config.input.batch_size
  if num_records < batch:
    raise SetupError(
        f"dataset {config.input.dataset!r} split {config.input.split!r} has {num_records} "
        f"records, fewer than one batch of config.input.batch_size={batch}: pass a smaller "
        f"batch (--config.input.batch_size=... or the batch= config arg)")


def check_schedule(config: ml_collections.ConfigDict, total_steps: int) -> None:
  """The cosine schedule decays after its warmup, so the run must be longer than it."""
  warmup = config.optim.warmup_steps
  if config.optim.schedule == "cosine" and total_steps <= warmup:
    raise SetupError(
        f"the run has {total_steps} optimizer steps but config.optim.warmup_steps={warmup}: "
        f"the cosine schedule decays after the warmup; pass --config.optim.warmup_steps="
        f"{max(total_steps // 4, 0)} (or more steps)")


def total_steps_of(config: ml_collections.ConfigDict, num_records: int) -> int:
  """Optimizer steps: `config.total_steps`, else epochs × batches per epoch (drop_remainder)."""
  if config.get("total_steps"):
    return int(config.total_steps)
  batches = num_records // config.input.batch_size
  if batches < 1:
    raise SetupError(f"{num_records} records cannot fill one batch of {config.input.batch_size}")
  return max(1, int(config.total_epochs * batches) // config.optim.get("grad_accum_steps", 1))


def make_tx(config: ml_collections.ConfigDict, params: Any, total_steps: int):
  optim = ml_collections.ConfigDict(config.optim.to_dict())
  optim.total_steps = total_steps
  extra = positions.optimizer_transforms(config.model.positions, config.model.frozen_prefix)
  return optimizer_lib.make_optimizer(optim, params, extra_transforms=extra)


# ------------------------------------------------------------------------------------------------
# The step.


def make_train_step(loss_fn, tx, schedule, step_metrics=base.no_step_metrics,
                    image_norm=(None, None)):
  """One optimizer update; returns the new state and the step's scalar metrics (on device),
  the method's own (`Method.step_metrics`) among them. uint8 image fields are normalised first
  with `image_norm`, the backbone family's (mean, std) (`config.input.normalize_on="device"`)."""

  def train_step(state, batch):
    batch = images.normalize_batch_on_device(batch, *image_norm)
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    step = state["step"] + 1
    scalars = {"loss": loss, **{f"loss/{k}": v for k, v in terms.items()},
               **backbone_scalars(param_tree.clip_of(params)),
               "lr": schedule(state["step"]),
               "grad_norm": optax.tree.norm(grads), **base.duplicate_metrics(batch),
               **step_metrics(batch)}
    new_state = {"params": params, "opt_state": opt_state, "step": step}
    return new_state, scalars

  return train_step


def backbone_scalars(clip_params) -> dict:
  """The temperature exp(logit_scale) and, where the backbone has one (SigLIP), the bias."""
  scalars = {"logit_scale": jnp.exp(clip_params["logit_scale"])}
  if "logit_bias" in clip_params:
    scalars["logit_bias"] = clip_params["logit_bias"]
  return scalars


@dataclasses.dataclass(frozen=True)
class Training:
  """What a run's steps are made of, built once for the trainer and the benchmark alike.

  `init_state()` makes the state born sharded; `abstract_state` is its shapes and shardings
  (the restore target; enough to lower the step without device memory); `step_fn` is the jitted
  step (state donated) and `loss_fn` the method's loss inside it.
  """
  init_state: Callable[[], Any]
  abstract_state: Any
  loss_fn: Callable[..., Any]
  step_fn: Callable[..., Any]


def build_training(config: ml_collections.ConfigDict, model_config, params: Any,
                   mesh: jax.sharding.Mesh, total_steps: int) -> Training:
  """The optimizer, the sharded state and the jitted step of `config.method` on `mesh`.

  `params` may be arrays or `jax.ShapeDtypeStruct`s (then only the abstract parts are usable).
  """
  tx, schedule = make_tx(config, params, total_steps)
  init_state, abstract = sharding.sharded_init(functools.partial(initial_state, tx=tx), params,
                                               mesh=mesh, strategy=config.sharding)
  method = methods.get(config.method)
  loss_fn = method.make_loss_fn(model_config, config.loss, mesh)
  replicated = sharding.replicated(mesh)
  family = families.of(model_config)
  step_fn = jax.jit(make_train_step(loss_fn, tx, schedule, method.step_metrics,
                                    (family.image_mean, family.image_std)),
                    donate_argnums=(0,),
                    out_shardings=(sharding.shardings_of(abstract), replicated))
  return Training(init_state, abstract, loss_fn, step_fn)


def initial_state(params: Any, *, tx) -> dict:
  """The train state; `sharding.sharded_init` builds it born sharded. No step draws random
  numbers (no dropout), so it holds no key."""
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


# ------------------------------------------------------------------------------------------------
# The run.


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains to `total_steps` (or until preempted); returns the last metrics and evaluation.

  The workdir is locked for the whole run, and SIGTERM is caught from the first line: during
  start-up it ends the run before the first step (exit 0, nothing to save), later it saves.
  """
  os.makedirs(workdir, exist_ok=True)
  with preemption.PreemptionGuard() as preempted, \
      workdir_lock.WorkdirLock(workdir, enabled=jax.process_index() == 0):
    return _run(config, workdir, preempted)


def _run(config, workdir, preempted) -> dict[str, Any]:
  for field in (config.input, config.evals):  # `~/tensorflow_datasets`, as `prepare` reads it
    field.data_dir = os.path.expanduser(field.data_dir) if field.data_dir else field.data_dir
  mesh = sharding.make_mesh(tuple(map(tuple, config.mesh)))
  source = check_data(config)  # the data first: cheap to check, and nothing is loaded yet
  check_benchmarks(config)
  init_params, init_config = load_init_params(config)
  if init_config is not None:  # the init decides the architecture; config.json says which
    config.model.variant = families.variant_of(init_config) or "custom (see model_init)"
  model_config = model_config_from(config, init_config)
  tokenizer = tokenizer_of(config, model_config)
  num_records = len(source)
  method = methods.get(config.method)
  try:
    method.check_data(config, source)
  except ValueError as e:
    raise SetupError(str(e)) from None
  check_sizes(config, num_records)
  total_steps = total_steps_of(config, num_records)
  check_schedule(config, total_steps)
  data_config = input_config(config, model_config)
  check_reproduction(data_config, config.input.data_dir)
  if note := data_builder.upscaling_note(config.input.dataset, config.input.split,
                                         config.input.data_dir, model_config.image_size):
    logging.warning("%s", note)

  params = method.init_params(config, model_config,
                              jax.random.fold_in(jax.random.key(config.seed), 1), init_params)
  training = build_training(config, model_config, params, mesh, total_steps)
  logging.info("parameters per optimizer group: %s",
               optimizer_lib.summarize_groups(params, config.optim.param_groups))

  data_iter = iter(train_dataset(config, data_config, model_config, tokenizer))
  is_main = jax.process_index() == 0
  result = {"metrics": {}, "evaluation": {}, "model_config": model_config, "workdir": workdir,
            "preempted": False}
  # Closed on every exit, so a save in flight completes even when a step raises.
  with checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  save_every=config.checkpoint_every,
                                  keep=config.keep_checkpoints) as checkpointer:
    # The abstract state is the restore target: a resumed run never materialises a fresh one.
    state = checkpointer.restore_or_init(training.abstract_state, training.init_state, data_iter)
    del params, init_params
    start = result["step"] = int(jax.device_get(state["step"]))
    if preempted.should_stop(start):
      logging.warning("Termination signal during start-up: exiting before step %d", start + 1)
      result["preempted"] = True
      return result
    try:
      resume.check_and_record(workdir, config, start, write=is_main)
    except resume.ResumeConfigError as e:
      raise SetupError(str(e)) from None
    if is_main:  # what `load_model(<workdir>/checkpoints/<step>)` reads the architecture from
      model_checkpoint.save_config(workdir, model_config)

    say(f"{config.method} on {config.input.dataset}/{config.input.split} ({num_records} "
        f"records), batch {config.input.batch_size}, {total_steps} steps; model "
        f"{config.model.variant} from {config.model_init}; workdir {workdir}")
    if start:
      say(f"resumed from step {start} ({checkpointer.step_dir(start)})")
    if not config.evals.benchmarks and not config.get("demo"):  # the demo's pretraining has none
      say("no evaluation configured (config.evals.benchmarks is empty): add "
          "--config.evals.benchmarks=<profile or dataset:split> to evaluate during and after "
          "training")

    train_step = training.step_fn
    evaluator = make_evaluator(config, model_config, tokenizer, data_config.geometry)
    guard = finite.NonFiniteGuard()
    chrono = progress.Chrono(total_steps, config.input.batch_size)
    with metric_log.MetricWriter(workdir, log_every=config.log_every,
                                  tensorboard=config.tensorboard,
                                  resume_step=start) as writer:
      with progress.ProgressBar(total_steps, start, enabled=config.progress_bar) as bar, \
          jax.set_mesh(mesh):
        for step in range(start + 1, total_steps + 1):
          position = data_iter.get_state()  # a read failing mid-batch has moved past it
          try:
            batch, record_ids = next_global_batch(data_iter, mesh)
          except data_builder.CorruptShardError as e:
            data_iter.set_state(position)
            raise SetupError(stopped_at_a_corrupt_shard(e, step - 1, start, state, data_iter,
                                                        checkpointer, guard)) from None
          first = step == start + 1 and is_main  # jit compiles on the first call: say so
          if first:
            bar.write("[train] compiling the training step (the first step waits for it)")
            compile_start = time.perf_counter()
          state, scalars = train_step(state, batch)
          if first:
            jax.block_until_ready(scalars["loss"])
            bar.write(f"[train] first step compiled and ran in "
                      f"{time.perf_counter() - compile_start:.1f} s")
          guard(step, scalars, record_ids)  # checks the previous step: no stall
          if writer.due(step, total_steps):
            result["metrics"] = writer.write(step, {**scalars, **chrono.tick(step)})
            bar.update(step, loss=result["metrics"]["loss"])
          if (evaluator and config.eval_every and step % config.eval_every == 0
              and step < total_steps):
            with chrono.paused():
              result["evaluation"] = evaluator(state["params"], step, writer,
                                               echo=bar.write)
          stop = preempted.should_stop(step)
          # The cadence is the checkpointer's; a preempted or finished run saves anyway.
          if stop or step == total_steps or checkpointer.should_save(step):
            # Never save a state that cannot be resumed: the last loss, then every updated leaf.
            guard.flush()
            finite.assert_state_finite(step, state)
            checkpointer.save(step, state, data_iter, force=True)
          if stop:
            logging.warning("Preempted at step %d: saved, exiting", step)
            result["preempted"] = True
            break
      result["step"] = int(jax.device_get(state["step"]))
      if result["step"] == total_steps:
        # The model first: an evaluation that fails must not cost it.
        if save_final_model(workdir, state, model_config, total_steps,
                            method={"name": config.method, "loss": config.loss.to_dict()},
                            extra_files=tokenizer.checkpoint_files()):
          say(f"model of step {total_steps} written to {os.path.join(workdir, 'model')}")
        if evaluator and not result["preempted"]:
          result["evaluation"] = evaluator(state["params"], total_steps, writer,
                                           final=True)
        elif not evaluator and not config.get("demo"):
          say(f"no evaluation: config.evals.benchmarks is empty; evaluate the model with "
              f"python -m goal_jax.evaluate --checkpoint={os.path.join(workdir, 'model')} "
              f"--benchmarks=<profile or dataset:split> --data_dir={config.input.data_dir}")
  return result


def train_dataset(config, data_config, model_config, tokenizer):
  """The training split's Grain dataset, as the loop (and `bench --trainer`) reads it."""
  family = families.of(model_config)
  return pipeline.make_dataset(data_config, config.input.data_dir, train=True,
                               tokenizer=tokenizer,
                               image_norm=(family.image_mean, family.image_std))


def next_global_batch(data_iter, mesh):
  """The next batch on the mesh, and its record ids on the host (the non-finite guard names
  them); the step reads `record_index` too (duplicate images)."""
  host_batch = next(data_iter)
  return sharding.make_global_batch(host_batch, mesh), host_batch["record_index"]


def stopped_at_a_corrupt_shard(error, done: int, start: int, state, data_iter, checkpointer,
                               guard) -> str:
  """Saves the last finished step (unless saved or nothing ran), then the one-line message.

  `data_iter` must be back at the position after the last batch it delivered (a read that fails
  mid-batch has already consumed the batch's earlier records), so the saved step resumes exactly. With several processes only one may meet the bad record, and a save waits for all of
  them: there the last regular checkpoint is what survives.
  """
  saved = ""
  if done > start and jax.process_count() == 1:
    guard.flush()
    finite.assert_state_finite(done, state)
    checkpointer.save(done, state, data_iter, force=True)
    saved = f"; step {done} is saved"
  return (f"{error}. Training stopped after step {done}{saved}: prepare the data again, then "
          f"rerun the same command to resume")


def say(text: str) -> None:
  """A line for the person running the command (process 0 only): what happened, where it went."""
  if jax.process_index() == 0:
    print(f"[train] {text}", flush=True)


def check_reproduction(data_config: ml_collections.ConfigDict, data_dir: str) -> None:
  """The reproduction switches (`config.input.compat`, ...) refuse data they cannot reproduce
  GOAL on (not split with GOAL's rule, no raw captions, no JSON box sizes), with the command
  that makes such data, before any compilation."""
  try:
    ctx = pipeline.ProcessContext(data_config)
    if not ctx.switches.reads_reproduction_fields:
      return
    reproduction.check_source(
        ctx.switches, data_builder.load_source(data_config.dataset, data_config.split, data_dir),
        dataset=data_config.dataset, split=data_config.split, data_dir=data_dir,
        decode=data_builder.decode_record)
  except ValueError as e:
    raise SetupError(str(e)) from None


def save_final_model(workdir: str, state, model_config, total_steps: int,
                     method: dict | None = None,
                     extra_files: dict[str, bytes] | None = None) -> bool:
  """Writes the finished CLIP as a model checkpoint (`evaluate`, `export_hf`, later runs read
  it); returns whether it wrote one (False: not finished, or the model is already current).

  `method` (`{"name", "loss"}`) is kept with the method's own params, so evaluation can rank as
  the method does; `extra_files` (the tokenizer's, for SigLIP) beside them. The model records its step (`model_info.json`) and is replaced when the run
  was extended past it; it is written to a temporary folder renamed into place, so it is whole
  or absent.
  Every process takes part: Orbax's save synchronises all of them (process 0 alone would wait
  forever), and gathering sharded (FSDP) params is a collective too. Process 0 decides whether
  the model is current, so all processes take the same branch. The params are saved as host
  arrays (unsharded), which any topology can read back.
  """
  step = int(jax.device_get(state["step"]))
  if step != total_steps:
    return False
  out = os.path.join(workdir, "model")
  current = model_checkpoint.load_info(out).get("step") == step and os.path.isfile(
      os.path.join(out, model_checkpoint.CONFIG_FILE))
  if multihost_utils.broadcast_one_to_all(np.array(current)):
    return False
  params = multihost_utils.process_allgather(state["params"], tiled=True)
  model_checkpoint.save_model(
      out, param_tree.clip_of(params), model_config, info={"step": step}, method=method,
      method_params=param_tree.extras_of(params), overwrite=True, extra_files=extra_files)
  return True


class EvaluationError(RuntimeError):
  """The evaluation after training failed; the model was saved before it."""


def make_evaluator(config: ml_collections.ConfigDict, model_config, tokenizer=None,
                   geometry: str | None = None):
  """`evaluate(params, step, writer, final=False) -> results` over the benchmarks, or None.

  `params` is the whole trainable tree: the method's scorer, if it has one, ranks the retrieval
  tasks (`evaluation/scoring.py`), else CLIP's embeddings. An evaluation during training that
  fails is logged and training goes on; the one after training raises `EvaluationError` (the
  trainer has saved the model by then).
  """
  benchmarks = config.evals.benchmarks
  if not benchmarks:
    return None
  method_scoring = scoring.of_method(config.method, config.loss)

  def evaluate(params, step, writer, final=False, echo=functools.partial(print, flush=True)):
    try:
      return run_benchmarks(params if method_scoring else param_tree.clip_of(params), step,
                            writer, echo)
    except Exception as e:  # noqa: BLE001 - any failure: reported, never fatal to the model
      if final:
        raise EvaluationError(f"evaluation at step {step} failed: {type(e).__name__}: {e}") from e
      logging.error("Evaluation at step %d failed (training goes on): %s: %s", step,
                    type(e).__name__, e)
      return {}

  def run_benchmarks(params, step, writer, echo):
    results = runner.evaluate_benchmarks(
        params, model_config, benchmarks, config.evals.data_dir or config.input.data_dir,
        batch_size=config.evals.batch_size, scoring=method_scoring, tokenizer=tokenizer,
        geometry=geometry)
    flat = {f"eval/{name}/{metric}": value for name, result in results.items()
            for metric, value in result["metrics"].items()}
    writer.write(step, flat)
    profile, _ = benchmark_spec.resolve_benchmarks(benchmarks)  # the one the results follow
    metadata = {"step": step, "scoring": scoring.label(method_scoring)}
    document = report.results_document(profile, results, metadata)
    if jax.process_index() == 0:
      path = os.path.join(writer_dir(writer), f"eval_{step}.json")
      report.write_results(path, profile, results, metadata)
      echo(f"\n{report.markdown_table(document, profile)}\n[train] evaluation of step {step} "
           f"written to {path}")
    return results

  return evaluate


def writer_dir(writer: metric_log.MetricWriter) -> str:
  return os.path.dirname(writer.path)
