r"""Input pipeline throughput (images/s) against the number of Grain worker processes.

    python -m goal_jax.bench.input                        # prepares `synthetic` test into a tmp dir
    python -m goal_jax.bench.input --data_dir=DIR --dataset=docci --split=train --workers=0,2,4
    python -m goal_jax.bench.input --detail_photos=20     # the detail copy's costs (below)
    python -m goal_jax.bench.input --detail_photos=32 --stage_records=32 --fields=goal  # by stage

Reads train-mode batches (shuffle, repeat, every field group by default), skips the first batches
(start-up: worker spawn, tokenizer cache), and prints images/s over the next `--batches`. A
measurement tool, not a test: numbers depend on the machine and on what else runs on it.

`--detail_photos=N` measures what the detail copy (`goal_jax.data.detail`) costs, on N generated
DOCCI-sized photos (1,600 x 2,000 JPEGs of ~0.6 MB with pixel-scale texture; DOCCI's average
0.5 MB) with one local pair each, its box side drawn as LISM's (median 0.2 of the short side,
p10 0.1): per record stored bytes, preparation time and GOAL/MulCLIP pipeline records/s without
a detail copy, at short side 1,024 and at the original pixels; and the local crop's own time
against two other storages: one whole JPEG of the original, and the crop stored at 224 px.

`--stage_records=N` splits a record's CPU time in the pipeline by stage (`stage_profile`: read,
decode, resize, normalise, tokenize, masks, the detail crop, batching) on N records of
`--detail_photos` photos (prepared with the detail copy) or of the prepared split, for `--fields`,
and prints it beside the whole path timed without the split and Grain's own run of it.
"""
import collections
from concurrent import futures
import contextlib
import io
import os
import pathlib
import tempfile
import time
from typing import Any

from absl import flags
import numpy as np
from PIL import Image
from scipy import ndimage

from goal_jax import cli
from goal_jax import files
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
from goal_jax.text import spans as text_spans

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
  flags.DEFINE_integer("image_short_side", 256, "--detail_photos: the stored copy's short side "
                       "(prepare --image_short_side; the model's input side makes the global "
                       "resize a copy)", lower_bound=1)
  flags.DEFINE_enum("normalize_on", "device", ("host", "device"), "where images are normalised "
                    "(config.input.normalize_on; the training recipes': device)")
  flags.DEFINE_integer("threads", 2, "Grain read threads per process")
  flags.DEFINE_integer("warmup", 3, "batches skipped before timing")
  flags.DEFINE_integer("batches", 20, "batches timed")
  flags.DEFINE_integer("detail_photos", 0, "> 0: measure the detail copy's costs on this many "
                       "generated 1,600 x 2,000 photos")
  flags.DEFINE_integer("stage_records", 0, "> 0: CPU per record by stage, on this many records "
                       "of the --detail_photos photos (with the detail copy) or of the split")
  flags.DEFINE_string("json_out", None, "--stage_records: write the profile as JSON here")


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


def _write_detail_fixture(root: pathlib.Path, count: int, threads: int = 1):
  """`count` photos as JPEG files (quality 90: ~0.6 MB, near DOCCI's 0.5 MB average) and their
  raw examples; `threads` write photos at once (their boxes are drawn in order, so the same)."""
  rng = np.random.default_rng(0)
  root.mkdir(parents=True, exist_ok=True)
  paths = [root / f"photo_{index:03d}.jpg" for index in range(count)]
  boxes = [_lism_like_box(rng, 2000, 1600) for _ in range(count)]

  def write(index: int) -> None:
    Image.fromarray(_texture_photo(index)).save(paths[index], quality=90)

  with futures.ThreadPoolExecutor(max(threads, 1)) as pool:
    list(pool.map(write, range(count)))
  return [records.RawExample(
      id=path.stem, image=str(path), source=path.name,
      caption="A textured photograph. One region of it is described here.",
      local_pairs=(records.LocalPair(box, 1, 30.0),)) for path, box in zip(paths, boxes)]


PHOTOS_DATASET = "detail_bench"  # the name `prepare_photos` writes the generated photos under


def _build_photos(examples, data_dir: pathlib.Path, **options) -> None:
  reader = raw.DatasetReader(("train",), lambda _, split: iter(examples),
                             needs_manual_dir=False)
  builder.build(PHOTOS_DATASET, reader, data_dir, splits=["train"],
                options=builder.PrepareOptions(num_workers=1, **options))


def prepare_photos(root: str, count: int, threads: int = 1, **options) -> str:
  """`count` generated DOCCI-sized photos (`_write_detail_fixture`) prepared as the `train` split
  of `PHOTOS_DATASET` with the default detail copy (original pixels) under `<root>/prepared`;
  returns that data_dir. The local crops of GOAL records then decode detail tiles, as on DOCCI.
  `options`: other `builder.PrepareOptions` (`image_short_side=224`)."""
  root_path = pathlib.Path(root)
  examples = _write_detail_fixture(root_path / "raw", count, threads)
  _build_photos(examples, root_path / "prepared", **options)
  return str(root_path / "prepared")


def _shard_bytes(data_dir: pathlib.Path, name: str) -> int:
  return sum(p.stat().st_size for p in data_dir.glob(f"{name}/*/{name}-train.array_record-*"))


def _cpu_ms_per_record(config, data_dir: str, batches: int, split: str = "train") -> float:
  """CPU milliseconds (this process, all threads) per record of `batches` train batches, after
  two: unlike wall time, this does not move when other processes load the machine."""
  it = iter(pipeline.make_dataset(config, data_dir, split=split, train=True,
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


class _StageClock:
  """CPU time of this thread by stage: each stage's own time, less that of the stages it calls.

  A stage called inside a group stage (`_local_fields`: "local") is counted as "<group>: <stage>"
  and the group's own time as "<group>: other", so the local crop's resize is told apart from
  the global image's.
  """

  def __init__(self):
    self.seconds: dict[str, float] = collections.defaultdict(float)
    self._stack: list[list] = []  # [label, group or None, seconds spent in nested stages]

  def wrap(self, name: str, function, group: str | None = None):
    def timed(*args, **kwargs):
      outer = next((frame[1] for frame in reversed(self._stack) if frame[1]), None)
      label = f"{group}: other" if group else (f"{outer}: {name}" if outer else name)
      frame = [label, group, 0.0]
      self._stack.append(frame)
      start = time.thread_time()
      try:
        return function(*args, **kwargs)
      finally:
        spent = time.thread_time() - start
        self._stack.pop()
        self.seconds[label] += spent - frame[2]
        if self._stack:
          self._stack[-1][2] += spent
    return timed


@contextlib.contextmanager
def _timed_stages(clock: _StageClock):
  """The pipeline's stage functions replaced by timed ones where `process` looks them up (a
  group's name is empty: its label is "<group>: other")."""
  replaced = [  # (owner, attribute, stage, group)
      (images, "open_rgb", "decode image", None),
      (geometry, "resize_image", "resize", None),
      (images, "normalize_image", "normalise", None),
      (pipeline.ProcessContext, "tokens", "tokenize", None),
      (text_spans, "caption_span_masks", "span masks", None),
      (pipeline.ProcessContext, "patch_mask", "patch mask", None),
      (detail, "local_crop", "detail crop", None),
      (pipeline, "_local_fields", "", "local"),
      (pipeline, "_sentence_fields", "", "sentences"),
      (pipeline, "_region_fields", "", "regions"),
      (pipeline, "process", "other", None),  # as `ProcessRecord` calls it: the rest of it
  ]
  saved = [(owner, attribute, getattr(owner, attribute)) for owner, attribute, _, _ in replaced]
  try:
    for (owner, attribute, stage, group), (_, _, function) in zip(replaced, saved):
      setattr(owner, attribute, clock.wrap(stage, function, group))
    yield
  finally:
    for owner, attribute, function in saved:
      setattr(owner, attribute, function)


def _stack(examples):
  """Examples into one batch, as Grain's `batch` makes it (`np.stack` of every field)."""
  return {key: np.stack([example[key] for example in examples]) for key in examples[0]}


def stage_profile(config, source, num_records: int, *, tokenizer=None, image_norm=None,
                  passes: int = 2) -> dict[str, Any]:
  """CPU milliseconds per record of the pipeline's path, by stage, on `num_records` of `source`.

  The path is the pipeline's own functions (`builder.decode_record`, `pipeline.ProcessRecord`,
  a batch's `np.stack`) run in this thread on records spread through `source` (raw shard items,
  `builder.load_source`), `passes` times after one pass that warms the caches (the tokenizer's
  words, the page cache). Stages are the functions `_timed_stages` replaces, each without the
  stages it calls, "other" the rest of `process`; `total_ms` is the same path timed without the
  split, so `sum_ms / total_ms - 1` is the split's own overhead plus noise. Grain's threads and
  worker processes, and passing batches between processes, are not in it: compare with the
  CPU per record of the pipeline itself (`_cpu_ms_per_record`). Thread CPU time, so other load
  on the machine moves it less than wall time (caches and clocks still feel it). The stage
  functions are replaced for the whole process meanwhile: no other pipeline may be running.
  """
  count = min(num_records, len(source))
  indices = [int(i) for i in np.unique(np.linspace(0, len(source) - 1, count).astype(int))]
  batch = max(1, min(int(config.batch_size), len(indices)))
  clock = _StageClock()

  def run(read, decode, stack) -> float:
    transform = pipeline.ProcessRecord(config, tokenizer, decode, image_norm=image_norm)
    start = time.thread_time()
    for _ in range(passes):
      done = []
      for index in indices:
        done.append(transform((index, read(index), True)))
        if len(done) == batch:
          stack(done)
          done = []
    return time.thread_time() - start

  run(source.__getitem__, builder.decode_record, _stack)  # warm-up, not counted
  total = run(source.__getitem__, builder.decode_record, _stack)
  with _timed_stages(clock):
    run(clock.wrap("read shard", source.__getitem__),
        clock.wrap("decode record", builder.decode_record), clock.wrap("batch (stack)", _stack))
  per_record = 1e3 / (passes * len(indices))
  stages = {name: seconds * per_record for name, seconds in clock.seconds.items()}
  return {"records": len(indices), "passes": passes, "fields": config.fields,
          "stages_ms": stages, "sum_ms": sum(stages.values()), "total_ms": total * per_record}


def format_stages(profile: dict[str, Any], title: str) -> str:
  """The profile as a table: CPU ms per record of each stage, its share, and the totals."""
  total = profile["total_ms"]
  lines = [f"{title}: CPU ms per record by stage ({profile['records']} records x "
           f"{profile['passes']} passes, fields {profile['fields']})",
           f"  {'stage':<24} {'ms':>7} {'share':>6}"]
  for name, ms in sorted(profile["stages_ms"].items(), key=lambda item: -item[1]):
    lines.append(f"  {name:<24} {ms:7.3f} {100 * ms / total:5.1f}%")
  lines.append(f"  {'sum of the stages':<24} {profile['sum_ms']:7.3f} "
               f"{100 * profile['sum_ms'] / total:5.1f}%")
  lines.append(f"  {'the path, not split':<24} {total:7.3f}  (1,000 / it = "
               f"{1e3 / total:.0f} records/s on one core)")
  if profile.get("pipeline_ms") is not None:
    lines.append(f"  {'Grain pipeline':<24} {profile['pipeline_ms']:7.3f}  (this process, its "
                 f"read threads: {profile['read_threads']})")
  return "\n".join(lines)


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
  variants = {"no detail copy": dict(detail=False), "detail 1024": dict(detail_short_side=1024),
              "detail original": {}}
  print(f"{'CPU ms per record':18} {'kB/record':>10} {'prepare':>8} {'goal':>7} "
        f"{'mulclip':>8} {'crop':>6}")
  for label, options in variants.items():
    data_dir = root / label.replace(" ", "_")
    start = time.process_time()
    _build_photos(examples, data_dir, **options)
    prepare_ms = (time.process_time() - start) / count * 1e3
    per_record = {}
    for method in ("goal", "mulclip"):
      config = pipeline.default_config()
      config.update(dict(dataset=PHOTOS_DATASET, batch_size=min(16, count),
                         fields=methods.get(method).input_fields))
      per_record[method] = _cpu_ms_per_record(config, str(data_dir), batches)
    source = builder.load_source(PHOTOS_DATASET, "train", str(data_dir))
    decoded = [builder.decode_record(source[i]) for i in range(count)]
    stored = [images.open_rgb(record["image"]) for record in decoded]
    crop_ms = _cpu_ms(lambda i: detail.local_crop(decoded[i], decoded[i]["pair_box"][0],
                                                  stored[i], min_short_side=224), range(count))
    print(f"{label:18} {_shard_bytes(data_dir, PHOTOS_DATASET) / count / 1e3:10.0f} "
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


def stage_report(tmp: str) -> dict[str, Any]:
  """`--stage_records`: the stage profile of `--fields` on the photos or the split, printed."""
  if FLAGS.detail_photos:
    print(f"writing and preparing {FLAGS.detail_photos} photos of 1600 x 2000 ...", flush=True)
    data_dir = prepare_photos(tmp, FLAGS.detail_photos, threads=os.cpu_count() or 1,
                              image_short_side=FLAGS.image_short_side)
    dataset, split = PHOTOS_DATASET, "train"
  else:
    data_dir = os.path.expanduser(FLAGS.data_dir) if FLAGS.data_dir else _prepare_default(tmp)
    dataset, split = FLAGS.dataset, FLAGS.split
  config = pipeline.default_config()
  config.update(dict(dataset=dataset, split=split,
                     batch_size=min(FLAGS.batch_size, FLAGS.stage_records),
                     image_size=FLAGS.image_size, patch_size=FLAGS.patch_size, fields=_fields(),
                     geometry=FLAGS.geometry, read_threads=FLAGS.threads,
                     normalize_on=FLAGS.normalize_on))
  profile = stage_profile(config, builder.load_source(dataset, split, data_dir),
                          FLAGS.stage_records)
  profile.update(pipeline_ms=_cpu_ms_per_record(config, data_dir, FLAGS.batches, split),
                 read_threads=config.read_threads)
  print(format_stages(profile, f"{dataset}/{split}"))
  if FLAGS.json_out:
    files.write_json(FLAGS.json_out, profile)
  return profile


def main(argv):
  cli.check_args(argv)
  if FLAGS.stage_records:
    with tempfile.TemporaryDirectory() as tmp:
      stage_report(tmp)
    return
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
                       geometry=FLAGS.geometry, read_threads=FLAGS.threads,
                       normalize_on=FLAGS.normalize_on))
    print(f"{FLAGS.dataset}/{FLAGS.split}: batch {config.batch_size}, {config.image_size} px, "
          f"fields={config.fields}, read_threads={config.read_threads}")
    for workers in (int(w) for w in FLAGS.workers):
      config.num_workers = workers
      rate = measure(config, data_dir, FLAGS.split, FLAGS.warmup, FLAGS.batches)
      print(f"workers={workers}: {rate:8.1f} img/s", flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
