"""Batched jitted matching against a per-image dense reference; crops, packing, ties, one trace."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from goal_jax.lism import scoring
from goal_jax.models import clip

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def test_crop_candidates_cut_the_stored_image_and_resize():
  # Stored 40 x 60 (h x w) copy of an 80 x 120 original: a box in original pixels halves.
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
  image = Image.fromarray(pixels)
  boxes = np.array([(0, 0, 120, 80), (20, 10, 60, 50), (21, 11, 59, 49)], np.float32)
  crops = scoring.crop_candidates(image, boxes, (80, 120), 16, "squash")
  bicubic = Image.Resampling.BICUBIC
  np.testing.assert_array_equal(crops[0], np.asarray(image.resize((16, 16), bicubic)))
  # (20, 10, 60, 50) / 2 = (10, 5, 30, 25); (21, 11, 59, 49) / 2 widens to the same pixels.
  window = np.asarray(Image.fromarray(pixels[5:25, 10:30]).resize((16, 16), bicubic))
  np.testing.assert_array_equal(crops[1], window)
  np.testing.assert_array_equal(crops[2], window)
  # center_crop: a 20 x 40 (h x w) crop -> short side 16 (16 x 32) -> the middle 16 columns.
  wide = scoring.crop_candidates(image, np.array([(0, 0, 80, 40)], np.float32), (80, 120), 16)
  resized = np.asarray(Image.fromarray(pixels[0:20, 0:40]).resize((32, 16), bicubic))
  np.testing.assert_array_equal(wide[0], resized[:, 8:24])


def _work(k, m, tag):
  return scoring.ImageWork(np.zeros((k, 4, 4, 3), np.uint8), np.zeros((m, 5), np.int32), tag)


def test_pack_keeps_images_whole_and_in_order():
  works = [_work(3, 2, "a"), _work(5, 1, "b"), _work(2, 4, "c"), _work(6, 3, "d")]
  steps = [[w.payload for w in step] for step in scoring.pack(works, 8, 5)]
  assert steps == [["a", "b"], ["c"], ["d"]]
  with pytest.raises(ValueError, match="9 candidates and 1 sentences"):
    list(scoring.pack([_work(9, 1, "x")], 8, 5))


def _images_and_sentences(rng, config, counts):
  """Random crops (uint8) and token ids (SOT, words, EOT) for images with (K, M) counts."""
  works = []
  for k, m in counts:
    crops = rng.integers(0, 256, (k, config.image_size, config.image_size, 3), dtype=np.uint8)
    ids = np.zeros((m, 12), np.int32)
    for row in range(m):
      n = int(rng.integers(1, 10))
      ids[row, 0], ids[row, 1:n + 1], ids[row, n + 1] = 49406, rng.integers(1, 49000, n), 49407
    works.append(scoring.ImageWork(crops, ids, len(works)))
  return works


def test_batched_matching_equals_a_per_image_dense_reference():
  config = clip.get_model_config("tiny/8")
  params = clip.init_params(config, jax.random.key(1))
  params = {**params, "logit_scale": jnp.asarray(math.log(100.0))}
  model = clip.CLIP(config)
  works = _images_and_sentences(np.random.default_rng(0), config,
                                [(4, 3), (7, 2), (1, 1), (5, 4), (8, 2), (3, 5), (2, 1)])
  matcher = scoring.Matcher(scoring.model_scorer(params, config), crop_batch=12, text_batch=8)
  matches = list(matcher.match(iter(works)))
  assert [m.work.payload for m in matches] == list(range(len(works)))
  assert matcher.traces == 1  # several steps (4 here), one compilation
  # Reference: every crop and sentence embedded in one plain batch each (no packing, no mask),
  # then each image's dense [M, K] score matrix in float64.
  crops = np.concatenate([w.crops for w in works])
  images = ((crops / 255.0 - MEAN) / STD).astype(np.float32)
  image_emb = np.asarray(jax.jit(lambda x: model.apply(
      {"params": params}, x, method=clip.CLIP.encode_image)["embedding"])(images), np.float64)
  text_emb = np.asarray(jax.jit(lambda x: model.apply(
      {"params": params}, x, method=clip.CLIP.encode_text)["embedding"])(
          np.concatenate([w.ids for w in works])), np.float64)
  c = s = 0
  for work, match in zip(works, matches):
    k, m = len(work.crops), len(work.ids)
    scores = 100.0 * text_emb[s:s + m] @ image_emb[c:c + k].T
    np.testing.assert_array_equal(match.best_candidate, scores.argmax(axis=1))
    np.testing.assert_allclose(match.best_score, scores.max(axis=1), rtol=1e-4, atol=1e-4)
    c, s = c + k, s + m


def _constant_scorer(image_size=8):
  """Every crop and sentence embeds to the same vector: every score ties."""
  unit = lambda n: jnp.ones((n, 4)) / 2.0
  return scoring.Scorer(params={"logit_scale": jnp.zeros(())}, image_size=image_size,
                        context_length=77, encode_images=lambda p, x: unit(x.shape[0]),
                        encode_texts=lambda p, ids: unit(ids.shape[0]),
                        logit_scale=lambda p: p["logit_scale"])


def test_ties_go_to_the_full_image_and_padding_never_matches():
  works = [scoring.ImageWork(np.zeros((k, 8, 8, 3), np.uint8), np.zeros((m, 6), np.int32), i)
           for i, (k, m) in enumerate([(3, 2), (2, 3)])]
  matches = list(scoring.Matcher(_constant_scorer(), crop_batch=16, text_batch=16).match(works))
  for match, m in zip(matches, (2, 3)):
    np.testing.assert_array_equal(match.best_candidate, np.zeros(m))  # index 0 of ITS image
    np.testing.assert_allclose(match.best_score, np.ones(m))  # exp(0) * cos 1
