"""FG-CLIP's region terms: a hard-negative case worked out by hand, references in numpy, padding
that leaves the mean, and the sharded terms on 4 devices equal to the dense ones."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax.losses import contrastive, fgclip, pairwise
from test_losses_contrastive import assert_close, assert_trees_close, make_mesh, shard_batch, unit


def test_hard_negative_loss_by_hand():
  """Two regions of one image, K = 2, scale 2.
  Region 0 = (1, 0): caption (0.6, 0.8) -> cosine 0.6; negatives (1, 0), (0, 1) -> 1, 0.
    logits (1.2, 2.0, 0.0): loss = log(e^1.2 + e^2 + e^0) - 1.2.
  Region 1 = (0, 1): caption (0, 1) -> 1; negative (0.8, 0.6) -> 0.6; the second is invalid.
    logits (2.0, 1.2): loss = log(e^2 + e^1.2) - 2.
  Mean of the two."""
  region = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
  positive = np.array([[[0.6, 0.8], [0.0, 1.0]]], np.float32)
  negative = np.array([[[[1.0, 0.0], [0.0, 1.0]], [[0.8, 0.6], [1.0, 0.0]]]], np.float32)
  negative_valid = np.array([[[True, True], [True, False]]])
  loss0 = math.log(math.exp(1.2) + math.exp(2.0) + 1.0) - 1.2
  loss1 = math.log(math.exp(2.0) + math.exp(1.2)) - 2.0
  got = fgclip.hard_negative_loss(region, positive, negative, np.ones((1, 2), bool),
                                  negative_valid, 2.0)
  assert_close(got, (loss0 + loss1) / 2)


def _hard_case(seed, n=8, regions=3, k=4, width=6):
  rng = np.random.default_rng(seed)
  valid = rng.random((n, regions)) < 0.7
  negative_valid = rng.random((n, regions, k)) < 0.6
  negative_valid[0, 0] = False  # a valid region without negatives: not counted
  valid[0, 0] = True
  return (unit(seed, n, regions, width), unit(seed + 1, n, regions, width),
          unit(seed + 2, n, regions, k, width), valid, negative_valid)


def _numpy_hard_negative(region, positive, negative, valid, negative_valid, scale):
  """Loop over regions: log-sum-exp over the caption and the valid negatives, minus the caption."""
  losses = []
  for i, r in np.argwhere(valid):
    if not negative_valid[i, r].any():
      continue
    logits = [scale * region[i, r] @ positive[i, r]]
    logits += [scale * region[i, r] @ negative[i, r, j]
               for j in np.flatnonzero(negative_valid[i, r])]
    logits = np.asarray(logits, np.float64)
    losses.append(np.log(np.exp(logits).sum()) - logits[0])
  return np.mean(losses)


def test_hard_negative_loss_matches_numpy_and_ignores_padding():
  region, positive, negative, valid, negative_valid = _hard_case(0)
  want = _numpy_hard_negative(region, positive, negative, valid, negative_valid, 3.0)
  assert_close(fgclip.hard_negative_loss(region, positive, negative, valid, negative_valid, 3.0),
               want)
  # Garbage in padded regions and negatives changes nothing.
  garbage = lambda x, mask: np.where(mask[..., None], x, 7.0).astype(np.float32)
  got = fgclip.hard_negative_loss(garbage(region, valid), garbage(positive, valid),
                                  garbage(negative, negative_valid & valid[..., None]), valid,
                                  negative_valid, 3.0)
  assert_close(got, want)
  none = np.zeros_like(valid)
  assert_close(fgclip.hard_negative_loss(region, positive, negative, none, negative_valid, 3.0), 0)


def test_hard_negative_sharded_equals_dense_values_and_gradients():
  mesh = make_mesh()
  region, positive, negative, valid, negative_valid = _hard_case(10)

  def dense(r, p, n, s):
    return fgclip.hard_negative_loss(r, p, n, valid, negative_valid, jnp.exp(s))

  def sharded(r, p, n, s):
    def objective(r, p, n, v, nv, axis_name):
      return fgclip.hard_negative_loss(r, p, n, v, nv, jnp.exp(s), axis_name=axis_name)
    return contrastive.data_parallel(objective, mesh)(r, p, n, valid, negative_valid)

  expected = jax.value_and_grad(dense, argnums=(0, 1, 2, 3))(region, positive, negative, 1.1)
  inputs = shard_batch((region, positive, negative), mesh)
  with jax.set_mesh(mesh):
    actual = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))(*inputs, 1.1)
  assert_trees_close(actual, expected)


def _numpy_region_infonce(region, text, valid, scale):
  """Symmetric InfoNCE over the valid regions only, as the release selects them first."""
  image, caption = region[valid].astype(np.float64), text[valid].astype(np.float64)
  logits = scale * image @ caption.T
  log_softmax = lambda x: x - np.log(np.exp(x).sum(axis=1, keepdims=True))
  diagonal = np.arange(len(image))
  return -(log_softmax(logits)[diagonal, diagonal].mean()
           + log_softmax(logits.T)[diagonal, diagonal].mean()) / 2


def test_region_text_loss_is_infonce_over_the_valid_regions():
  region, text = unit(20, 4, 3, 8), unit(21, 4, 3, 8)
  valid = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], bool)
  got = fgclip.region_text_loss(region, text, valid, pair_loss=pairwise.infonce(math.log(5.0)))
  assert_close(got, _numpy_region_infonce(region, text, valid, 5.0))


@pytest.mark.parametrize("form", ["softmax", "sigmoid"])
def test_region_text_sharded_equals_dense_values_and_gradients(form):
  mesh = make_mesh()
  region, text = unit(30, 8, 4, 6), unit(31, 8, 4, 6)
  valid = np.random.default_rng(32).random((8, 4)) < 0.6

  def pair_loss(scale):
    return pairwise.PairLoss(form, scale, logit_bias=jnp.float32(-2.0) if form == "sigmoid"
                             else None)

  def dense(r, t, s):
    return fgclip.region_text_loss(r, t, valid, pair_loss=pair_loss(s))

  def sharded(r, t, s):
    def objective(r, t, v, axis_name):
      return fgclip.region_text_loss(r, t, v, pair_loss=pair_loss(s), axis_name=axis_name)
    return contrastive.data_parallel(objective, mesh)(r, t, valid)

  expected = jax.value_and_grad(dense, argnums=(0, 1, 2))(region, text, 1.3)
  inputs = shard_batch((region, text), mesh)
  with jax.set_mesh(mesh):
    actual = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2)))(*inputs, 1.3)
  assert_trees_close(actual, expected)
  if form == "softmax":
    assert_close(expected[0], _numpy_region_infonce(region, text, valid, math.exp(1.3)))
