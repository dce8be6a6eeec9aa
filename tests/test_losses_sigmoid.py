"""SigLIP's sigmoid loss: a hand example, the paper's pseudocode in PyTorch, and the ring and
gather forms on 4 devices equal to the dense loss in value and gradients."""
import functools
import math

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from goal_jax.losses import contrastive, sigmoid
from test_losses_contrastive import assert_close, assert_trees_close, make_mesh, shard_batch, unit


def test_hand_example():
  """Two pairs, cosines [[1, 0], [0, 1]], t = e^0 = 1, b = 0: each positive -log σ(1), each
  negative -log σ(-0) = log 2; the loss sums the 4 pairs over |B| = 2."""
  image = np.eye(2, dtype=np.float32)
  want = (2 * math.log1p(math.exp(-1.0)) + 2 * math.log(2.0)) / 2
  assert_close(sigmoid.sigmoid_loss(image, image, 0.0, 0.0), want)


def test_matches_the_paper_s_pseudocode_in_torch():
  """The SigLIP paper's Algorithm 1: logits = t·x·yᵀ + b, labels 2·I − 1,
  loss = −Σ log_sigmoid(labels · logits) / n."""
  image, text = unit(0, 12, 8), unit(1, 12, 8)
  t, b = math.log(10.0), -10.0
  logits = math.exp(t) * torch.tensor(image) @ torch.tensor(text).T + b
  labels = 2 * torch.eye(12) - 1
  want = -F.logsigmoid(labels * logits).sum() / 12
  assert_close(sigmoid.sigmoid_loss(image, text, t, b), want.numpy())


def dense_and_sharded(form, image, text, valid, logit_scale, logit_bias):
  """(value, gradients) of the dense loss and of the sharded one on a 4-device mesh."""
  mesh = make_mesh()

  def dense(i, t, s, b):
    return sigmoid.sigmoid_loss(i, t, s, b, valid=valid)

  def sharded(i, t, s, b):
    def objective(i, t, v, axis_name):
      return sigmoid.sigmoid_loss(i, t, s, b, valid=v, axis_name=axis_name, form=form)
    return contrastive.data_parallel(objective, mesh)(i, t, valid)

  grad = lambda fn: jax.value_and_grad(fn, argnums=(0, 1, 2, 3))
  expected = grad(dense)(image, text, logit_scale, logit_bias)
  image_s, text_s = shard_batch((image, text), mesh)
  with jax.set_mesh(mesh):
    actual = jax.jit(grad(sharded))(image_s, text_s, logit_scale, logit_bias)
  return expected, actual


@pytest.mark.parametrize("form", sigmoid.FORMS)
def test_sharded_equals_dense_values_and_gradients(form):
  valid = np.ones(16, bool)
  valid[[2, 11]] = False
  expected, actual = dense_and_sharded(form, unit(2, 16, 8), unit(3, 16, 8), valid, 1.7, -3.0)
  assert_trees_close(actual, expected)


@pytest.mark.parametrize("form", sigmoid.FORMS)
def test_uneven_final_chunk_and_duplicate_captions(form):
  """A last device holding one real row and three padding rows, and captions repeated across
  devices (each copy a negative of the other images, as the dense loss counts it): the ring and
  the gather form still equal the dense loss in value and gradients."""
  image, text = unit(6, 16, 8), unit(7, 16, 8)
  text[9] = text[1]  # the same caption on devices 0 and 2
  text[5] = text[4]  # ... and twice on device 1
  valid = np.arange(16) < 13  # device 3 holds rows 12..15: only row 12 is real
  expected, actual = dense_and_sharded(form, image, text, valid, 2.1, -4.0)
  # The dense reference itself, by the paper's formula over the 13 real rows.
  logits = math.exp(2.1) * image[:13].astype(np.float64) @ text[:13].astype(np.float64).T - 4.0
  labels = 2 * np.eye(13) - 1
  assert_close(expected[0], np.sum(np.log1p(np.exp(-labels * logits))) / 13)
  assert_trees_close(actual, expected)
  assert not np.any(actual[1][0][13:]) and not np.any(actual[1][1][13:])  # padding: no gradient


def test_ring_never_holds_the_global_logits():
  """The ring's compiled program has no [B, B] or [n, B] array: only [n, n] blocks."""
  mesh = make_mesh()
  image, text = shard_batch((unit(4, 64, 8), unit(5, 64, 8)), mesh)

  def loss(form, i, t):
    def objective(i, t, axis_name):
      return sigmoid.sigmoid_loss(i, t, 1.0, -1.0, axis_name=axis_name, form=form)
    return contrastive.data_parallel(objective, mesh)(i, t)

  with jax.set_mesh(mesh):
    texts = {form: jax.jit(jax.grad(functools.partial(loss, form), argnums=(0, 1))).lower(
        image, text).compile().as_text() for form in sigmoid.FORMS}
  assert "f32[16,16]" in texts["ring"] and "f32[16,64]" not in texts["ring"]
  assert "f32[16,64]" in texts["gather"]


def test_unknown_form():
  with pytest.raises(ValueError, match="ring"):
    sigmoid.sigmoid_loss(unit(0, 2, 4), unit(1, 2, 4), 0.0, 0.0, axis_name=None, form="dense")


def test_ring_takes_less_memory_than_gathering():
  """The bench's measurement on this machine's 4 CPU devices: the ring's compiled step keeps
  less temporary memory per device than the gathering one (its logits are n × n, not n × B)."""
  from goal_jax.bench import sigmoid_loss  # pylint: disable=g-import-not-at-top
  result = sigmoid_loss.measure(batch=512, dim=16, steps=1)
  assert set(result) == set(sigmoid.FORMS)
  assert 0 < result["ring"]["temp_bytes"] < result["gather"]["temp_bytes"]
  assert all(r["seconds"] > 0 for r in result.values())
