r"""LISM mining speed (images/s): batched jitted steps against a one-image-at-a-time loop.

    python -m goal_jax.lism.bench                                # synthetic, tiny/8, random init
    python -m goal_jax.lism.bench --model=L/14-336 --images=256   # GOAL's matcher size, random init
    python -m goal_jax.lism.bench --data_dir=DIR --dataset=docci --split=train --checkpoint=CKPT

Three measurements over the same images with the same segmenter, after a warm-up pass each (so
compilation is left out):
- `host`: decode, segment, crop, tokenise on the host threads only (the batched run's ceiling);
- `batched`: what `python -m goal_jax.lism` does (host threads + packed fixed-size device steps);
- `one-by-one`: GOAL's loop: each image prepared, then its crops and sentences encoded as their
  own batch (shapes rounded up to a multiple of 8, compiled in the warm-up) and waited for.
The ratio batched / one-by-one is printed. A measurement tool, not a test.
"""
import dataclasses
import math
import os
import tempfile
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from goal_jax import cli
from goal_jax.lism import mine
from goal_jax.lism import scoring
from goal_jax.lism import segmenters
from goal_jax.lism import selection

_DATA_DIR = flags.DEFINE_string("data_dir", None, "prepared shards (default: synthetic, tmp)")
_DATASET = flags.DEFINE_string("dataset", "synthetic", "dataset under data_dir")
_SPLIT = flags.DEFINE_string("split", "test", "split to read")
_IMAGES = flags.DEFINE_integer("images", 64, "images per measurement")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "scorer checkpoint (default: random init)")
_MODEL = flags.DEFINE_string("model", "tiny/8", "variant for a random-init scorer")
_DTYPE = flags.DEFINE_string("dtype", None, "compute dtype override")
_SEGMENTER = flags.DEFINE_string("segmenter", "felzenszwalb", "segmenter (fixed for all modes)")
_SEGMENTER_OPTIONS = flags.DEFINE_string("segmenter_options", "", "its key=value options")
_MAX_CANDIDATES = flags.DEFINE_integer("max_candidates", 63, "segments per image")
_CROP_BATCH = flags.DEFINE_integer("crop_batch", 256, "crops per batched step")
_TEXT_BATCH = flags.DEFINE_integer("text_batch", 256, "sentences per batched step")
_THREADS = flags.DEFINE_integer("threads", 0, "host threads of the batched run (0: up to 8)")


def _scorer() -> scoring.Scorer:
  if _CHECKPOINT.value:
    return scoring.load_scorer(_CHECKPOINT.value, _DTYPE.value)
  from goal_jax.models import clip  # pylint: disable=g-import-not-at-top
  overrides = {"dtype": _DTYPE.value} if _DTYPE.value else {}
  config = clip.get_model_config(_MODEL.value, **overrides)
  return scoring.clip_scorer(clip.init_params(config, jax.random.key(0)), config)


def _source(data_dir: str):
  from goal_jax.data import builder  # pylint: disable=g-import-not-at-top
  if _DATA_DIR.value is None:
    from goal_jax.data import prepare, synthetic  # pylint: disable=g-import-not-at-top
    synthetic.SPLIT_SIZES[_SPLIT.value] = _IMAGES.value
    prepare.prepare("synthetic", data_dir, splits=(_SPLIT.value,), verbose=False)
  source = builder.load_source(_DATASET.value, _SPLIT.value, data_dir)
  if len(source) < _IMAGES.value:
    raise ValueError(f"{_DATASET.value}/{_SPLIT.value} has {len(source)} records, fewer than "
                     f"--images={_IMAGES.value}")
  return source


class OneByOne:
  """GOAL's loop: per image, embed its own crops and sentences, score, argmax, wait."""

  def __init__(self, scorer: scoring.Scorer):
    self.scorer = scorer
    self._params = jax.device_put(scorer.params)

    def match(params, crops, ids):
      from goal_jax.data import pipeline  # pylint: disable=g-import-not-at-top
      images = (crops.astype(jnp.float32) / 255.0 - pipeline.MEAN_RGB) / pipeline.STD_RGB
      scores = jnp.exp(scorer.logit_scale(params)) * (
          scorer.encode_texts(params, ids) @ scorer.encode_images(params, images).T)
      return scores

    self._match = jax.jit(match)

  def __call__(self, work: scoring.ImageWork):
    k, m = len(work.crops), len(work.ids)
    pad = lambda x, n: np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])
    crops = pad(work.crops, 8 * math.ceil(k / 8))
    ids = pad(work.ids, 8 * math.ceil(m / 8))
    scores = np.asarray(self._match(self._params, crops, ids))[:m, :k]
    return scores.argmax(axis=1), scores.max(axis=1)


def _time(fn) -> float:
  fn()  # warm-up: compilation, tokenizer cache, page cache
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main(argv):
  cli.check_args(argv)
  scorer = _scorer()
  options = mine.MineOptions(
      segmenter=_SEGMENTER.value,
      segmenter_options=segmenters.parse_options(_SEGMENTER.value, _SEGMENTER_OPTIONS.value),
      candidates=selection.CandidateOptions(max_candidates=_MAX_CANDIDATES.value),
      crop_batch=_CROP_BATCH.value, text_batch=_TEXT_BATCH.value, num_workers=_THREADS.value)
  with tempfile.TemporaryDirectory() as tmp:
    source = _source(os.path.expanduser(_DATA_DIR.value) if _DATA_DIR.value else tmp)
    indices = range(_IMAGES.value)
    works = lambda workers: mine.prepare_works(
        source, indices, dataclasses.replace(options, num_workers=workers), scorer.image_size)
    matcher = scoring.Matcher(scorer, options.crop_batch, options.text_batch)
    one_by_one = OneByOne(scorer)
    counts = []

    def host():
      counts[:] = [(len(w.crops), len(w.ids)) for w in works(options.num_workers)]

    def batched():
      for _ in matcher.match(works(options.num_workers)):
        pass

    def sequential():
      for work in works(1):
        one_by_one(work)

    seconds = {"host": _time(host), "batched": _time(batched), "one-by-one": _time(sequential)}
  n = _IMAGES.value
  crops, sentences = np.mean(counts, axis=0)
  print(f"{n} images, {crops:.1f} candidates and {sentences:.1f} sentences per image; scorer "
        f"{_CHECKPOINT.value or _MODEL.value} at {scorer.image_size} px; segmenter "
        f"{options.segmenter}; {jax.device_count()} x {jax.devices()[0].device_kind}")
  for name, s in seconds.items():
    print(f"  {name:>10}: {n / s:8.1f} images/s ({s:.2f} s)")
  print(f"  batched / one-by-one: {seconds['one-by-one'] / seconds['batched']:.1f}x")


if __name__ == "__main__":
  cli.run(main, expected=(ValueError, FileNotFoundError))
