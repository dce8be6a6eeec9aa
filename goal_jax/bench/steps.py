"""The trainer's own step for one method, built as the trainer builds it, timed or analysed.

Each row runs the real configured step (the method's config at the paper's 248 tokens, the
trainer's `make_train_step` on a data-parallel mesh of every device) on one random batch of the
batch contract's shapes, after `warmup` steps (the first compiles). MFU uses the method's
analytic FLOPs (XLA's compiled cost analysis under-reports on GPU); XLA's count of the lowered,
unoptimised step is kept beside it as a check (platform independent, so it works on a CPU).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax
from jax._src import ad_checkpoint  # public only as print_saved_residuals
import numpy as np

from goal_jax import config_utils
from goal_jax import methods
from goal_jax import sharding
from goal_jax.bench import batches
from goal_jax.bench import candidates
from goal_jax.bench import profile
from goal_jax.bench import remat as remat_lib
from goal_jax.bench.timing import Row, is_out_of_memory, time_loop
from goal_jax.models import families
from goal_jax.models import param_tree
from goal_jax.text import packing as text_packing
from goal_jax.training import loop


def method_config(method: str, variant: str, batch: int, *, attention: str, dtype: str,
                  remat: str = "", scan: bool = False):
  """The method's training config (`configs/<recipe>`) at `variant` and `batch`."""
  config = config_utils.load_config(config_utils.recipe_path(methods.get(method).recipe),
                                    f"variant={variant},batch={batch}")
  config.model.update(attention=attention, dtype=dtype, remat=remat, scan=scan)
  return config


@dataclasses.dataclass
class TrainStep:
  """The trainer's own step for one method (`loop.build_training`), with a batch to run it on.

  The abstract state and batch are shapes only (counting, no device memory); a step made with
  real params (`materialise`) also builds the real sharded state (`training.init_state()`).
  """
  training: loop.Training
  mesh: jax.sharding.Mesh
  host_batch: dict[str, np.ndarray]

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    sharding_ = sharding.batch_sharding(self.mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding_)
            for k, v in self.host_batch.items()}


def _host_device() -> jax.Device:
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:  # JAX_PLATFORMS leaves out the CPU: the default device then
    return jax.local_devices()[0]


def make_train_step(method: str, config, c, batch: int, *,
                    extra_steps: int, materialise: bool) -> TrainStep:
  """`method`'s training step, as the trainer builds it, on a data-parallel mesh of every device.

  `materialise`: from real params (to time it), else from their shapes only (to analyse it).
  """
  mesh = sharding.make_mesh(tuple(map(tuple, config.mesh)))
  if batch % mesh.size:
    raise ValueError(f"--batch={batch} must be a multiple of the {mesh.size} devices")
  method_ = methods.get(method)
  if materialise:
    # On the host, op by op: on an H200 the jitted init compiled for 3 min and the eager one on
    # the GPU compiles every op (a minute before the first row); the state is sharded after.
    with jax.default_device(_host_device()):
      params = method_.init_params(config, c, jax.random.key(0))
  else:
    params = param_tree.merge(families.of(c).abstract_params(c),
                              method_.abstract_extra_params(config.loss, c))
  # The schedule must outlast the config's warmup (Long-CLIP warms up for 200 steps).
  training = loop.build_training(config, c, params, mesh,
                                 config.optim.warmup_steps + extra_steps + 1)
  return TrainStep(training, mesh, host_batch_for(config, c, batch))


def host_batch_for(config, c, batch: int) -> dict[str, np.ndarray]:
  """A random batch of what the trainer's pipeline hands over for `config`."""
  return batches.synthetic_batch(
      c, batch, sentence_context=loop.sentence_context_of(config, families.of(c)),
      max_sentences=config.input.max_sentences, max_regions=config.input.max_regions,
      region_context=config.input.region_context, hard_negatives=config.input.hard_negatives,
      pixels=config.input.normalize_on == "device",
      short_text_packing=config.input.short_text_packing,
      short_text_rows=config.input.short_text_rows,
      packed_captions=text_packing.captions_of(methods.get(config.method).fields),
      local_context=config.input.local_context)


def lower_step(step: TrainStep) -> jax.stages.Lowered:
  """The step lowered for the state and batch shapes (no device memory needed)."""
  with jax.set_mesh(step.mesh):
    return step.training.step_fn.lower(step.training.abstract_state, step.abstract_batch())


def counted_train_flops(lowered: jax.stages.Lowered) -> float | None:
  """FLOPs of one step as XLA's HLO cost analysis counts them in the lowered (global) program.

  An independent check of the analytic count: a redundant tower pass or a wrong formula shows
  as a ratio away from 1 (elementwise ops add ~0.3 % at B/16). It needs no device memory. With
  `nn.scan` layers the loop body is counted once, so count unrolled models only.
  """
  cost = lowered.cost_analysis()
  return None if not cost or "flops" not in cost else float(cost["flops"])


def saved_activation_bytes(step: TrainStep) -> int:
  """Bytes of the forward's results that the backward keeps (the step's activation memory).

  JAX's own list of saved residuals, before XLA: platform independent, so the effect of
  `--remat` on memory can be read on a CPU. XLA may fuse some of it away; the xla attention's
  f32 softmax (cuDNN keeps none) is included.
  """
  params = step.training.abstract_state["params"]
  with jax.set_mesh(step.mesh):
    residuals = ad_checkpoint.saved_residuals(lambda p, b: step.training.loss_fn(p, b)[0], params,
                                              step.abstract_batch())
  return sum(math.prod(aval.shape) * aval.dtype.itemsize for aval, source in residuals
             if "from the argument" not in source)


def choose_remat(method: str, variant: str, batch: int, *, attention: str, dtype: str,
                 scan: bool = False, model_overrides: dict[str, Any] | None = None,
                 device_bytes: int | None = None, extra_steps: int = 1) -> str:
  """`--remat=auto` for this row (`remat.choose`): each option's step compiled, least
  recomputation first, until XLA's plan for it fits this device's memory (or `device_bytes`).
  `extra_steps` as the timing run's, so that the chosen step's compilation is the one it reads
  from the persistent cache."""
  def plan_of(option: str) -> int:
    config = method_config(method, variant, batch, attention=attention, dtype=dtype,
                           remat=option, scan=scan)
    c = dataclasses.replace(loop.model_config_from(config, None), **(model_overrides or {}))
    step = make_train_step(method, config, c, batch, extra_steps=extra_steps, materialise=False)
    return remat_lib.planned_bytes(lower_step(step).compile())

  device_bytes = device_bytes if device_bytes is not None else remat_lib.device_memory()
  choice, plans = remat_lib.choose(plan_of, device_bytes)
  gib = 2 ** 30
  print(f"--remat=auto for {method} {variant} batch {batch}: "
        + (", ".join(f"XLA plans {o or 'none'} at {b / gib:.2f} GiB" for o, b in plans.items())
           + f" per device, of {device_bytes / gib:.0f} GiB" if plans else
           "device memory unknown") + f" -> {choice or 'none'}", flush=True)
  return choice


def bench_method(method: str, variant: str, batch: int, *, steps: int, warmup: int,
                 attention: str, dtype: str, remat: str = "", scan: bool = False,
                 peak: float | None = None, time_it: bool = True,
                 model_overrides: dict[str, Any] | None = None,
                 profile_dir: str | None = None, profile_steps: int = 3,
                 candidate: candidates.Candidate | None = None) -> Row:
  """Counts FLOPs (unless `scan`) of the trainer's step for `method`, then times it (`time_it`)
  or counts its saved activations.

  `model_overrides` replace `CLIPConfig` fields of the variant (tests count B/16-wide towers
  with fewer layers this way). `profile_dir`: also trace `profile_steps` steps into
  `<profile_dir>/<method>_<variant>_b<batch>[_<candidate>]/` and summarise them (`profile`).
  `candidate`: the step compiled with its options and model fields (`candidates`), a row of its
  own (`impl` `goal_jax+<name>`) on the same params and batch as the step as built.
  """
  if remat == "auto":
    remat = choose_remat(method, variant, batch, attention=attention, dtype=dtype, scan=scan,
                         model_overrides=model_overrides, extra_steps=steps + warmup)
  config = method_config(method, variant, batch, attention=attention, dtype=dtype, remat=remat,
                         scan=scan)
  overrides = {**(model_overrides or {}), **(candidate.model_overrides if candidate else {})}
  c = loop.model_config_from(config, None)
  missing = sorted(set(overrides) - {f.name for f in dataclasses.fields(c)})
  if candidate is not None and missing:  # e.g. a CLIP-only field on a SigLIP variant
    return Row(candidates.impl_name(candidate), method, variant, batch,
               error=f"not for this model: {type(c).__name__} has no {', '.join(missing)}")
  if candidate is not None and not candidate.applies_to(method):
    return Row(candidates.impl_name(candidate), method, variant, batch,
               error=f"not for this method: only {', '.join(candidate.methods)}")
  if candidate is not None and candidate.input_overrides and not families.of(c).causal_text:
    return Row(candidates.impl_name(candidate), method, variant, batch,
               error=f"not for this model: {type(c).__name__}'s text tower is not causal")
  if candidate is not None:
    config.input.update(candidate.input_overrides)
  c = dataclasses.replace(c, **overrides)
  row = Row(candidates.impl_name(candidate), method, variant, batch, remat=remat,
            train_flops=methods.get(method).train_flops_per_step(c, loop.input_config(config, c),
                                                                 batch))
  started = time.perf_counter()
  train_step = make_train_step(method, config, c, batch, extra_steps=steps + warmup,
                               materialise=time_it)
  lowered = lower_step(train_step)
  if not scan:
    row.counted_flops = counted_train_flops(lowered)
  if not time_it:
    row.saved_bytes = saved_activation_bytes(train_step)
    return row
  mesh = train_step.mesh
  batch_arrays = sharding.make_global_batch(train_step.host_batch, mesh)
  holder = {"state": train_step.training.init_state()}
  row.setup_s = time.perf_counter() - started

  try:
    started = time.perf_counter()
    compiled = lowered.compile(
        compiler_options=dict(candidate.compiler_options) if candidate else None)
    row.compile_s = time.perf_counter() - started

    def step():
      holder["state"], scalars = compiled(holder["state"], batch_arrays)
      holder.setdefault("first_loss", scalars["loss"])  # of the initial params: comparable
      return scalars

    with jax.set_mesh(mesh):
      row.first_step_s, row.step_s = time_loop(step, steps, warmup, jax.block_until_ready)
      row.first_loss = float(holder["first_loss"])
      if profile_dir:
        name = f"{method}_{variant.replace('/', '')}_b{batch}" + (
            f"_{candidate.name}" if candidate else "")
        row.profile = profile.summarise_dir(
            profile.capture(step, compiled.as_text(), os.path.join(profile_dir, name),
                            steps=profile_steps),
            f"{method}{'+' + candidate.name if candidate else ''}, {variant}, batch {batch}",
            steps=profile_steps)
  except Exception as e:  # noqa: BLE001 - an out-of-memory row is a result, not a crash
    if is_out_of_memory(e):
      row.error = "out of memory"
    elif candidate is not None:  # e.g. an option this XLA does not know: the others still run
      row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    else:
      raise
  if row.step_s is not None and peak:
    row.mfu = row.train_flops / row.step_s / (peak * 1e12 * mesh.size)
  return row
