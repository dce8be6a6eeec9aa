r"""Does training run as fast as its step? The trainer's path, fed by the real Grain pipeline.

  python -m goal_jax.bench --trainer --variant=tiny/8 --batch=16 --methods=global,goal --steps=20
  python -m goal_jax.bench --trainer --variant=B/16 --batch=64 --methods=global,goal \
      --trainer_data=photos --records=128 --workers=12 --threads=2 --steps=50 --warmup=5
  python -m goal_jax.bench --trainer --data_dir=~/tensorflow_datasets --dataset=docci_lism

Per method, in one process, at the same variant, batch, dtype and attention:
  step      the bench's row (`steps.bench_method`): the jitted step on one random batch that
            stays on the device;
  trainer   what `loop.run` does for a step, in its order, with checkpoints, metrics and
            evaluation off: `next` on the iterator of `pipeline.make_dataset` (as the loop calls
            it) over prepared shards, `sharding.make_global_batch`, the jitted step of
            `loop.build_training`, `finite.NonFiniteGuard`; then the same jitted step on one of
            its batches kept on the device (`same batch`: the input path's cost is the gap);
  pipeline  the same dataset iterated alone: records/s, per worker process, and the CPU it
            takes per record in this process and its workers (records/s per core = 1000 / ms);
  stages    that CPU split by stage on a few records (`bench.input.stage_profile`).
Data: the embedded `synthetic` train split prepared into a temporary folder (default; its
128 px images have no detail copy), `--trainer_data=photos`: generated DOCCI-sized photos with
the detail copy (`bench.input`), whose GOAL crops decode full-resolution tiles as on DOCCI, or a
prepared `--dataset` in `--data_dir`. The trainer's first steps (untimed, `--warmup`) compile
and fill the pipeline's buffers; batches buffered while it compiled still flatter the first
timed steps, so time many (`--steps`) when the input is the bound.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from goal_jax import files
from goal_jax.bench import input as input_bench
from goal_jax.bench import report
from goal_jax.bench import steps as steps_lib
from goal_jax.bench.timing import Row, TrainerRow, is_out_of_memory, process_tree_cpu_s
from goal_jax.bench.timing import time_loop
from goal_jax.data import builder
from goal_jax.data import detail
from goal_jax.data import prepare
from goal_jax.data import synthetic
from goal_jax.models import families
from goal_jax.training import finite
from goal_jax.training import loop

DATA_KINDS = ("synthetic", "photos")
DEFAULT_PHOTOS = 128


@dataclasses.dataclass(frozen=True)
class Data:
  """A prepared split the trainer reads, the share of its records with a detail copy, and the
  short side its stored copies were prepared at (`prepare --image_short_side`; None: unknown)."""
  data_dir: str
  dataset: str
  split: str
  detail_share: float
  image_short_side: int | None = None

  @property
  def label(self) -> str:
    return f"{self.dataset}/{self.split}"


def open_data(data_dir: str, dataset: str, split: str, sample: int = 64) -> Data:
  """The split, with the share of up to `sample` of its records (spread through it) that hold
  a detail copy (`detail.has_tiles`)."""
  source = builder.load_source(dataset, split, data_dir)
  indices = np.unique(np.linspace(0, len(source) - 1, min(sample, len(source))).astype(int))
  share = float(np.mean([detail.has_tiles(source[int(i)]) for i in indices]))
  metadata = builder.prepared_metadata(dataset, data_dir)
  options = metadata.get("split_options", {}).get(split, metadata).get("options") or {}
  return Data(data_dir, dataset, split, share, options.get("image_short_side"))


def prepare_data(kind: str, root: str, records: int = 0, image_short_side: int = 256) -> Data:
  """`kind` prepared under `root`: `synthetic`'s train split (`records` > 0: that many, else
  `synthetic.SPLIT_SIZES`'s) or `records` (default 128) generated photos with the detail copy,
  their stored copies at `image_short_side` (224, a B/16's input: the global resize is a copy)."""
  if kind == "photos":
    count = records or DEFAULT_PHOTOS
    print(f"writing and preparing {count} photos of 1600 x 2000 (stored short side "
          f"{image_short_side}) ...", flush=True)
    data_dir = input_bench.prepare_photos(root, count, threads=os.cpu_count() or 1,
                                          image_short_side=image_short_side)
    return open_data(data_dir, input_bench.PHOTOS_DATASET, "train")
  if kind != "synthetic":
    raise ValueError(f"--trainer_data={kind!r}: expected one of {DATA_KINDS}")
  sizes, before = synthetic.SPLIT_SIZES, synthetic.SPLIT_SIZES["train"]
  sizes["train"] = records or before
  try:
    print(f"preparing synthetic/train ({sizes['train']} records) ...", flush=True)
    prepare.prepare("synthetic", root, splits=("train",), verbose=False)
  finally:
    sizes["train"] = before
  return open_data(root, "synthetic", "train")


def time_trainer(train_step: steps_lib.TrainStep, make_iterator, *, steps: int,
                 warmup: int) -> tuple[float, float, float]:
  """(first step s, s per step of the trainer's path, s per step of the same jitted step on one
  of its batches on the device), each mean after `warmup` untimed steps. The trainer's path is
  `loop.run`'s body without checkpoints, metrics and evaluation (see the module docstring)."""
  training, mesh = train_step.training, train_step.mesh
  data_iter = make_iterator()
  guard = finite.NonFiniteGuard()
  numbers = itertools.count(1)
  held = {"state": training.init_state()}

  def trainer_step():  # `loop.run`, one step
    batch, record_ids = loop.next_global_batch(data_iter, mesh)
    held["batch"] = batch
    held["state"], scalars = training.step_fn(held["state"], batch)
    guard(next(numbers), scalars, record_ids)
    return scalars

  def same_batch_step():
    held["state"], scalars = training.step_fn(held["state"], held["batch"])
    return scalars

  try:
    with jax.set_mesh(mesh):
      first_s, trainer_s = time_loop(trainer_step, steps, warmup, jax.block_until_ready)
      guard.flush()
      _, same_s = time_loop(same_batch_step, steps, 1, jax.block_until_ready)
  finally:
    data_iter.close()
  return first_s, trainer_s, same_s


def time_pipeline(make_iterator, batch: int, *, batches: int,
                  warmup: int) -> tuple[float, float]:
  """(s per batch, CPU ms per record of this process and its workers) of the dataset alone,
  over `batches` after `warmup` (at least one: the workers start)."""
  data_iter = make_iterator()
  try:
    for _ in range(max(warmup, 1)):
      next(data_iter)
    cpu_s, start = process_tree_cpu_s(), time.perf_counter()
    for _ in range(batches):
      next(data_iter)
    wall_s = time.perf_counter() - start
    cpu_s = process_tree_cpu_s() - cpu_s
  finally:
    data_iter.close()
  return wall_s / batches, 1e3 * cpu_s / (batches * batch)


def bench_trainer(method: str, variant: str, batch: int, data: Data, *, steps: int, warmup: int,
                  attention: str, dtype: str, remat: str = "", scan: bool = False,
                  peak: float | None = None, read_threads: int | None = None,
                  num_workers: int | None = None,
                  stage_records: int = 0) -> tuple[Row, TrainerRow]:
  """The bench's step row of `method` and its `TrainerRow` (module docstring) on `data`;
  `read_threads`, `num_workers`: the pipeline's (default the method config's)."""
  if remat == "auto":
    remat = steps_lib.choose_remat(method, variant, batch, attention=attention, dtype=dtype,
                                   scan=scan)
  row = steps_lib.bench_method(method, variant, batch, steps=steps, warmup=warmup,
                               attention=attention, dtype=dtype, remat=remat, scan=scan,
                               peak=peak)
  config = steps_lib.method_config(method, variant, batch, attention=attention, dtype=dtype,
                                   remat=remat, scan=scan)
  config.input.update(dataset=data.dataset, split=data.split, data_dir=data.data_dir)
  if read_threads is not None:
    config.input.read_threads = read_threads
  if num_workers is not None:
    config.input.num_workers = num_workers
  c = loop.model_config_from(config, None)
  data_config = loop.input_config(config, c)
  family = families.of(c)
  tokenizer = loop.tokenizer_of(config, c)
  image_norm = (family.image_mean, family.image_std)
  trainer = TrainerRow(method, variant, batch, data.label, data.detail_share,
                       data_config.read_threads, data_config.num_workers, step_s=row.step_s)

  def make_iterator():  # as `loop.run` makes it
    return iter(loop.train_dataset(config, data_config, c, tokenizer))

  if row.error:
    trainer.error = row.error
  else:
    # The schedule must outlast the config's warmup and every step timed here.
    train_step = steps_lib.make_train_step(method, config, c, batch,
                                           extra_steps=2 * steps + warmup + 1, materialise=True)
    try:
      trainer.first_s, trainer.trainer_s, trainer.same_batch_s = time_trainer(
          train_step, make_iterator, steps=steps, warmup=warmup)
    except Exception as e:  # noqa: BLE001 - out of memory is a result, as in `bench_method`
      if not is_out_of_memory(e):
        raise
      trainer.error = "out of memory"
    del train_step
  trainer.pipeline_batch_s, trainer.pipeline_cpu_ms = time_pipeline(
      make_iterator, batch, batches=steps, warmup=warmup)
  if stage_records:
    trainer.stages = input_bench.stage_profile(
        data_config, builder.load_source(data.dataset, data.split, data.data_dir), stage_records,
        tokenizer=tokenizer, image_norm=image_norm)
  return row, trainer


def run_trainer_bench(variants: Sequence[str], batch_sizes: Sequence[int],
                      method_names: Sequence[str], header: dict[str, Any], *, steps: int,
                      warmup: int, remat: str = "", scan: bool = False,
                      trainer_data: str = "synthetic", records: int = 0,
                      data_dir: str | None = None, dataset: str = "synthetic",
                      split: str = "train", read_threads: int | None = None,
                      num_workers: int | None = None, stage_records: int = 64,
                      json_out: str | None = None,
                      image_short_side: int = 256) -> dict[str, Any]:
  """Every variant x batch x method on one prepared split (`data_dir`, else `trainer_data`
  prepared into a temporary folder); prints the tables, returns the JSON (written to `json_out`
  after every method). `header`: the bench's (device, attention, dtype, peak)."""
  rows: list[Row] = []
  trainer_rows: list[TrainerRow] = []

  def result(data: Data) -> dict[str, Any]:
    out = {**header, "data": dataclasses.asdict(data), "rows": [r.to_dict() for r in rows],
           "trainer": [t.to_dict() for t in trainer_rows],
           "targets": report.target_checks(rows, trainer_rows)}
    if json_out:
      files.write_atomic(json_out, json.dumps(out, indent=2))
    return out

  with tempfile.TemporaryDirectory() as tmp:
    data = (open_data(os.path.expanduser(data_dir), dataset, split) if data_dir
            else prepare_data(trainer_data, tmp, records, image_short_side))
    print(f"data: {data.label} in {data.data_dir}, detail copy in "
          f"{100 * data.detail_share:.0f} % of its records", flush=True)
    for variant in variants:
      for batch in batch_sizes:
        for method in method_names:
          row, trainer = bench_trainer(
              method, variant, batch, data, steps=steps, warmup=warmup,
              attention=header["attention"], dtype=header["dtype"], remat=remat, scan=scan,
              peak=header["peak_tflops"], read_threads=read_threads, num_workers=num_workers,
              stage_records=stage_records)
          rows.append(row)
          trainer_rows.append(trainer)
          print(report.format_trainer_rows([trainer]).splitlines()[-1], flush=True)
          result(data)
    out = result(data)
  print()
  print(report.format_rows(rows))
  print()
  print(report.format_trainer_rows(trainer_rows))
  for trainer in trainer_rows:
    if trainer.stages:
      print()
      print(input_bench.format_stages(trainer.stages, f"{trainer.method} on {trainer.data}"))
  print()
  print(report.format_targets(out["targets"],
                              f"{header['device_count']} x {header['device']}"))
  return out
