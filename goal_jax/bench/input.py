r"""Input pipeline throughput (images/s) against the number of Grain worker processes.

    python -m goal_jax.bench.input                        # prepares `synthetic` test into a tmp dir
    python -m goal_jax.bench.input --data_dir=DIR --dataset=docci --split=train --workers=0,2,4
    python -m goal_jax.bench.input --detail_photos=20     # the detail copy's costs (below)

Reads train-mode batches (shuffle, repeat, every field group by default), skips the first batches
(start-up: worker spawn, tokenizer cache), and prints images/s over the next `--batches`. A
measurement tool, not a test: numbers depend on the machine and on what else runs on it.

`--detail_photos=N` measures what the detail copy (`goal_jax.data.detail`) costs, on N generated
DOCCI-sized photos (1,600 x 2,000 JPEGs of ~0.6 MB with pixel-scale texture; DOCCI's average
0.5 MB) with one local pair each, its box side drawn as LISM's (median 0.2 of the short side,
p10 0.1): per record stored bytes, preparation time and GOAL/MulCLIP pipeline records/s without
a detail copy, at short side 1,024 and at the original pixels; and the local crop's own time
against two other storages: one whole JPEG of the original, and the crop stored at 224 px.
"""
import io
import os
import pathlib
import tempfile
import time

from absl import flags
import numpy as np
from PIL import Image
from scipy import ndimage

from goal_jax import cli
from goal_jax import methods
from goal_jax.data import builder
from goal_jax.data import detail
from goal_jax.data import geometry
from goal_jax.data import images
from goal_jax.data import photos
from goal_jax.data import pipeline
from goal_jax.data import prepare
from goal_jax.data import raw
from goal_jax.data import records

FLAGS = flags.FLAGS
EXPECTED = (ValueError, FileNotFoundError)  # bad flags, a missing dataset: one `error:` line


def define_flags() -> None:
  """The command's flags, defined when it runs: commands share flag names, absl's are global."""
  cli.define_bench_data_flags()
  flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker process counts to compare")
  flags.DEFINE_integer("batch_size", 32, "batch size")
  flags.DEFINE_integer("image_size", 224, "model input side")
  flags.DEFINE_integer("patch_size", 16, "ViT patch side")
  flags.DEFINE_string("fields", "all", "field groups joined by ',' (pipeline.FIELD_GROUPS), "
                      "'all', or a method's name")
  flags.DEFINE_string("geometry", "center_crop", "squash or center_crop")
  flags.DEFINE_integer("threads", 2, "Grain read threads per process")
  flags.DEFINE_integer("warmup", 3, "batches skipped before timing")
  flags.DEFINE_integer("batches", 20, "batches timed")
  flags.DEFINE_integer("detail_photos", 0, "> 0: measure the detail copy's costs on this many "
                       "generated 1,600 x 2,000 photos")


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
  print(f"preparing {FLAGS.dataset}/{FLAGS.split} into {tmp} ...", flush=True)
  prepare.prepare(FLAGS.dataset, tmp, splits=(FLAGS.split,))
  return tmp


def _texture_photo(index: int, height: int = 2000, width: int = 1600) -> np.ndarray:
  """A real photo (the `photos` fixture) upscaled, plus band-limited noise a pixel or two wide:
  fine detail a 256 px copy cannot hold, and JPEG sizes like DOCCI's."""
  rng = np.random.default_rng(index)
  base = Image.fromarray(photos.load_rgb(photos.PHOTOS[index % len(photos.PHOTOS)]))
  pixels = np.asarray(base.convert("RGB").resize((width, height), Image.Resampling.BICUBIC),
                      np.float32)
  noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (height, width)).astype(np.float32), 1.2)
  pixels += (20.0 * noise)[..., None]
  return np.clip(pixels, 0, 255).astype(np.uint8)


def _lism_like_box(rng, height: int, width: int) -> tuple[float, float, float, float]:
  """A box whose side is lognormal around 0.2 of the short side (p10 0.1), aspect 0.6..1.6."""
  side = float(np.clip(0.2 * np.exp(0.53 * rng.normal()), 0.05, 0.9)) * min(height, width)
  aspect = rng.uniform(0.6, 1.6)
  w, h = min(side * np.sqrt(aspect), width), min(side / np.sqrt(aspect), height)
  x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
  return (round(x1), round(y1), round(x1 + w), round(y1 + h))


def _write_detail_fixture(root: pathlib.Path, count: int):
  """`count` photos as JPEG files (quality 90: ~0.6 MB, near DOCCI's 0.5 MB average) and their
  raw examples."""
  rng = np.random.default_rng(0)
  root.mkdir(parents=True, exist_ok=True)
  examples = []
  for index in range(count):
    path = root / f"photo_{index:03d}.jpg"
    Image.fromarray(_texture_photo(index)).save(path, quality=90)
    box = _lism_like_box(rng, 2000, 1600)
    examples.append(records.RawExample(
        id=f"photo_{index:03d}", image=str(path), source=path.name,
        caption="A textured photograph. One region of it is described here.",
        local_pairs=(records.LocalPair(box, 1, 30.0),)))
  return examples


def _shard_bytes(data_dir: pathlib.Path, name: str) -> int:
  return sum(p.stat().st_size for p in data_dir.glob(f"{name}/*/{name}-train.array_record-*"))


def _cpu_ms_per_record(config, data_dir: str, batches: int) -> float:
  """CPU milliseconds (this process, all threads) per record of `batches` train batches, after
  two: unlike wall time, this does not move when other processes load the machine."""
  it = iter(pipeline.make_dataset(config, data_dir, split="train", train=True,
                                  process_index=0, process_count=1))
  for _ in range(2):
    next(it)
  start = time.process_time()
  for _ in range(batches):
    next(it)
  return (time.process_time() - start) / (batches * config.batch_size) * 1e3


def _cpu_ms(function, items, repeats: int = 3) -> float:
  """Mean over `items` of the least CPU milliseconds of `repeats` calls of `function(item)`."""
  best = []
  for item in items:
    times = []
    for _ in range(repeats):
      start = time.process_time()
      function(item)
      times.append(time.process_time() - start)
    best.append(min(times))
  return float(np.mean(best)) * 1e3


def detail_report(count: int, tmp: str, batches: int) -> None:
  """Prints the detail copy's costs (module docstring) on `count` generated photos.

  Times are CPU time of this process (robust to other load on a shared machine); records/s on
  one core is 1000 / (ms per record).
  """
  root = pathlib.Path(tmp)
  print(f"writing {count} photos of 1600 x 2000 ...", flush=True)
  examples = _write_detail_fixture(root / "raw", count)
  originals = sum(pathlib.Path(e.image).stat().st_size for e in examples) / count
  print(f"original JPEGs (quality 90): {originals / 1e3:.0f} kB per photo")
  reader = raw.DatasetReader(("train",), lambda _, split: iter(examples),
                             needs_manual_dir=False)
  variants = {"no detail copy": dict(detail=False), "detail 1024": dict(detail_short_side=1024),
              "detail original": {}}
  print(f"{'CPU ms per record':18} {'kB/record':>10} {'prepare':>8} {'goal':>7} "
        f"{'mulclip':>8} {'crop':>6}")
  for label, options in variants.items():
    data_dir = root / label.replace(" ", "_")
    start = time.process_time()
    builder.build("detail_bench", reader, data_dir, splits=["train"],
                  options=builder.PrepareOptions(num_workers=1, **options))
    prepare_ms = (time.process_time() - start) / count * 1e3
    per_record = {}
    for method in ("goal", "mulclip"):
      config = pipeline.default_config()
      config.update(dict(dataset="detail_bench", batch_size=min(16, count),
                         fields=methods.get(method).input_fields))
      per_record[method] = _cpu_ms_per_record(config, str(data_dir), batches)
    source = builder.load_source("detail_bench", "train", str(data_dir))
    decoded = [builder.decode_record(source[i]) for i in range(count)]
    stored = [images.open_rgb(record["image"]) for record in decoded]
    crop_ms = _cpu_ms(lambda i: detail.local_crop(decoded[i], decoded[i]["pair_box"][0],
                                                  stored[i], min_short_side=224), range(count))
    print(f"{label:18} {_shard_bytes(data_dir, 'detail_bench') / count / 1e3:10.0f} "
          f"{prepare_ms:8.0f} {per_record['goal']:7.1f} {per_record['mulclip']:8.1f} "
          f"{crop_ms:6.2f}", flush=True)
  _alternatives(examples)


def _alternatives(examples) -> None:
  """Per record: one whole JPEG of the original (crop = decode all, cut), and the crop stored at
  224 px (decode only it); same photos and boxes, CPU time."""
  wholes, crops, boxes = [], [], []
  for example in examples:
    pixels = Image.open(example.image).convert("RGB")
    box = tuple(int(v) for v in example.local_pairs[0].box)
    for image, out in ((pixels, wholes),
                       (Image.fromarray(geometry.resize_image(pixels.crop(box), 224,
                                                              "center_crop")), crops)):
      buffer = io.BytesIO()
      image.save(buffer, format="JPEG", quality=90)
      out.append(buffer.getvalue())
    boxes.append(box)

  def decode(data, box=None):
    with Image.open(io.BytesIO(data)) as opened:
      rgb = opened.convert("RGB")
    return rgb.crop(box) if box else rgb

  n = len(examples)
  whole_ms = _cpu_ms(lambda i: decode(wholes[i], boxes[i]), range(n))
  crop_ms = _cpu_ms(lambda i: decode(crops[i]), range(n))
  print(f"alternative: one whole JPEG of the original: {sum(map(len, wholes)) / n / 1e3:.0f} kB, "
        f"crop {whole_ms:.2f} ms; crop stored at 224 px: {sum(map(len, crops)) / n / 1e3:.0f} kB "
        f"per pair, {crop_ms:.2f} ms", flush=True)


def _fields() -> str:
  """`--fields`, a method's name read as that method's field groups."""
  name = FLAGS.fields
  return methods.get(name).input_fields if name in methods.REGISTRY else name


def main(argv):
  cli.check_args(argv)
  if FLAGS.detail_photos:
    with tempfile.TemporaryDirectory() as tmp:
      detail_report(FLAGS.detail_photos, tmp, FLAGS.batches)
    return
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = (os.path.expanduser(FLAGS.data_dir) if FLAGS.data_dir
                else _prepare_default(tmp))
    config = pipeline.default_config()
    config.update(dict(dataset=FLAGS.dataset, batch_size=FLAGS.batch_size,
                       image_size=FLAGS.image_size, patch_size=FLAGS.patch_size, fields=_fields(),
                       geometry=FLAGS.geometry, read_threads=FLAGS.threads))
    print(f"{FLAGS.dataset}/{FLAGS.split}: batch {config.batch_size}, {config.image_size} px, "
          f"fields={config.fields}, read_threads={config.read_threads}")
    for workers in (int(w) for w in FLAGS.workers):
      config.num_workers = workers
      rate = measure(config, data_dir, FLAGS.split, FLAGS.warmup, FLAGS.batches)
      print(f"workers={workers}: {rate:8.1f} img/s", flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
