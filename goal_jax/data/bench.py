r"""Input pipeline throughput (images/s) against the number of Grain worker processes.

    python -m goal_jax.data.bench                        # prepares `synthetic` test into a tmp dir
    python -m goal_jax.data.bench --data_dir=DIR --dataset=docci --split=train --workers=0,2,4

Reads train-mode batches (shuffle, repeat, every field group by default), skips the first batches
(start-up: worker spawn, tokenizer cache), and prints images/s over the next `--batches`. A
measurement tool, not a test: numbers depend on the machine and on what else runs on it.
"""
import tempfile
import time

from absl import app
from absl import flags

from goal_jax.data import pipeline

_DATA_DIR = flags.DEFINE_string("data_dir", None, "prepared shards; default: prepare a tmp dir")
_DATASET = flags.DEFINE_string("dataset", "synthetic", "dataset name under data_dir")
_SPLIT = flags.DEFINE_string("split", "test", "split to read")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "worker process counts to compare")
_BATCH = flags.DEFINE_integer("batch_size", 32, "batch size")
_IMAGE = flags.DEFINE_integer("image_size", 224, "model input side")
_PATCH = flags.DEFINE_integer("patch_size", 16, "ViT patch side")
_FIELDS = flags.DEFINE_string("fields", "all", "field groups (pipeline.FIELD_PRESETS or groups)")
_GEOMETRY = flags.DEFINE_string("geometry", "center_crop", "squash or center_crop")
_THREADS = flags.DEFINE_integer("read_threads", 2, "Grain read threads per process")
_WARMUP = flags.DEFINE_integer("warmup", 3, "batches skipped before timing")
_BATCHES = flags.DEFINE_integer("batches", 20, "batches timed")


def measure(config, data_dir: str, split: str, warmup: int, batches: int) -> float:
  """Images/s of `batches` train batches after `warmup` ones."""
  it = iter(pipeline.make_dataset(config, data_dir, split=split, train=True,
                                  process_index=0, process_count=1))
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  elapsed = time.perf_counter() - start
  return batches * config.batch_size / elapsed


def _prepare_default(tmp: str) -> str:
  from goal_jax.data import prepare  # pylint: disable=g-import-not-at-top
  print(f"preparing {_DATASET.value}/{_SPLIT.value} into {tmp} ...", flush=True)
  prepare.prepare(_DATASET.value, tmp, splits=(_SPLIT.value,))
  return tmp


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = _DATA_DIR.value or _prepare_default(tmp)
    config = pipeline.default_config()
    config.update(dict(dataset=_DATASET.value, batch_size=_BATCH.value,
                       image_size=_IMAGE.value, patch_size=_PATCH.value, fields=_FIELDS.value,
                       geometry=_GEOMETRY.value, read_threads=_THREADS.value))
    print(f"{_DATASET.value}/{_SPLIT.value}: batch {config.batch_size}, {config.image_size} px, "
          f"fields={config.fields}, read_threads={config.read_threads}")
    for workers in (int(w) for w in _WORKERS.value):
      config.num_workers = workers
      rate = measure(config, data_dir, _SPLIT.value, _WARMUP.value, _BATCHES.value)
      print(f"workers={workers}: {rate:8.1f} img/s", flush=True)


if __name__ == "__main__":
  app.run(main)
