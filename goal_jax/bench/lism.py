r"""LISM mining speed (images/s): batched jitted steps against a one-image-at-a-time loop.

    python -m goal_jax.bench.lism                                # synthetic, tiny/8, random init
    python -m goal_jax.bench.lism --model=L/14-336 --images=256   # GOAL's matcher size, random init
    python -m goal_jax.bench.lism --data_dir=DIR --dataset=docci --split=train --checkpoint=CKPT

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
from goal_jax.data import builder
from goal_jax.data import images
from goal_jax.data import prepare
from goal_jax.data import synthetic
from goal_jax.lism import mine
from goal_jax.lism import scoring
from goal_jax.lism import segmenters
from goal_jax.lism import selection
from goal_jax.models import clip

FLAGS = flags.FLAGS
EXPECTED = (ValueError, FileNotFoundError)  # bad flags, a missing dataset: one `error:` line


def define_flags() -> None:
  """The command's flags, defined when it runs: commands share flag names, absl's are global."""
  cli.define_bench_data_flags()
  flags.DEFINE_integer("images", 64, "images per measurement")
  cli.define_checkpoint_flag("The scorer; default: a random-init --model.")
  flags.DEFINE_string("model", "tiny/8", "variant for a random-init scorer")
  flags.DEFINE_string("dtype", None, "compute dtype override")
  flags.DEFINE_string("segmenter", "felzenszwalb", "segmenter (fixed for all modes)")
  flags.DEFINE_string("segmenter_options", "", "its key=value options")
  flags.DEFINE_integer("max_candidates", 63, "segments per image")
  flags.DEFINE_integer("crop_batch", 256, "crops per batched step")
  flags.DEFINE_integer("text_batch", 256, "sentences per batched step")
  flags.DEFINE_integer("threads", 0, "host threads of the batched run (0: up to 8)")


def _scorer() -> scoring.Scorer:
  if FLAGS.checkpoint:
    return scoring.load_scorer(FLAGS.checkpoint, FLAGS.dtype)
  overrides = {"dtype": FLAGS.dtype} if FLAGS.dtype else {}
  config = clip.get_model_config(FLAGS.model, **overrides)
  return scoring.model_scorer(clip.init_params(config, jax.random.key(0)), config)


def _source(data_dir: str):
  if FLAGS.data_dir is None:
    synthetic.SPLIT_SIZES[FLAGS.split] = FLAGS.images
    prepare.prepare("synthetic", data_dir, splits=(FLAGS.split,), verbose=False)
  source = builder.load_source(FLAGS.dataset, FLAGS.split, data_dir)
  if len(source) < FLAGS.images:
    raise ValueError(f"{FLAGS.dataset}/{FLAGS.split} has {len(source)} records, fewer than "
                     f"--images={FLAGS.images}")
  return source


class OneByOne:
  """GOAL's loop: per image, embed its own crops and sentences, score, argmax, wait."""

  def __init__(self, scorer: scoring.Scorer):
    self.scorer = scorer
    self._params = jax.device_put(scorer.params)

    def match(params, crops, ids):
      pixels = images.normalize_image_on_device(crops)
      scores = jnp.exp(scorer.logit_scale(params)) * (
          scorer.encode_texts(params, ids) @ scorer.encode_images(params, pixels).T)
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
      segmenter=FLAGS.segmenter,
      segmenter_options=segmenters.parse_options(FLAGS.segmenter, FLAGS.segmenter_options),
      candidates=selection.CandidateOptions(max_candidates=FLAGS.max_candidates),
      crop_batch=FLAGS.crop_batch, text_batch=FLAGS.text_batch, num_workers=FLAGS.threads)
  with tempfile.TemporaryDirectory() as tmp:
    source = _source(os.path.expanduser(FLAGS.data_dir) if FLAGS.data_dir else tmp)
    indices = range(FLAGS.images)
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
  n = FLAGS.images
  crops, sentences = np.mean(counts, axis=0)
  print(f"{n} images, {crops:.1f} candidates and {sentences:.1f} sentences per image; scorer "
        f"{FLAGS.checkpoint or FLAGS.model} at {scorer.image_size} px; segmenter "
        f"{options.segmenter}; {jax.device_count()} x {jax.devices()[0].device_kind}")
  for name, s in seconds.items():
    print(f"  {name:>10}: {n / s:8.1f} images/s ({s:.2f} s)")
  print(f"  batched / one-by-one: {seconds['one-by-one'] / seconds['batched']:.1f}x")


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
