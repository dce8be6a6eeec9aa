"""Global InfoNCE: hand example, PyTorch reference, masking, and sharded == dense on 4 devices.

The helpers at the top are shared by the other `test_losses_*` files.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from goal_jax.losses import contrastive


def make_mesh():
  return jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def unit(seed, *shape):
  """Random L2-normalised fp32 vectors (numpy, so references see the same numbers)."""
  x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def shard_batch(tree, mesh):
  """Puts every leaf on the mesh, split along its batch axis, as a train step's inputs are."""
  sharding = NamedSharding(mesh, P("data"))
  return jax.tree.map(lambda x: jax.device_put(jnp.asarray(x), sharding), tree)


def data_parallel_infonce(mesh, image, text, logit_scale, valid=None, **kwargs):
  """`infonce` under `data_parallel`, as a method's loss runs it (the temperature closed over)."""
  valid = np.ones(image.shape[:1], bool) if valid is None else valid

  def objective(image, text, valid, axis_name):
    return contrastive.infonce(image, text, logit_scale, valid=valid, axis_name=axis_name, **kwargs)

  return contrastive.data_parallel(objective, mesh)(image, text, valid)


def to_torch(x):
  return torch.tensor(np.asarray(x, np.float64), requires_grad=True)


def torch_infonce(image, text, logit_scale, label_smoothing=0.0, max_scale=None):
  """Independent reference: CLIP's loss as Long-CLIP/GOAL write it in PyTorch."""
  scale = logit_scale.exp()
  if max_scale is not None:
    scale = scale.clamp(max=max_scale)
  logits = scale * image @ text.T
  labels = torch.arange(image.shape[0])
  return 0.5 * (F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
                + F.cross_entropy(logits.T, labels, label_smoothing=label_smoothing))


def assert_close(actual, expected, tol=1e-5):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol)


def assert_trees_close(actual, expected, tol=1e-5):
  jax.tree.map(lambda a, e: assert_close(a, e, tol), actual, expected)


def check_ablations(objective, defaults, *args):
  """Zeroing a weight drops exactly its term; doubling it adds the term once more.

  `objective(*args, weights=...) -> (total, terms)`; every variant runs in one compilation.
  """
  def variants(*args):
    results = {"all": objective(*args)}
    for term, weight in defaults.items():
      results[f"{term}:off"] = objective(*args, weights={term: 0.0})
      results[f"{term}:double"] = objective(*args, weights={term: 2.0 * weight})
    return results

  results = jax.jit(variants)(*args)
  total, terms = results["all"]
  assert set(terms) == set(defaults)
  for term, weight in defaults.items():
    ablated_total, ablated_terms = results[f"{term}:off"]
    assert set(ablated_terms) == set(terms) - {term}
    assert_trees_close(ablated_terms, {k: v for k, v in terms.items() if k != term})
    assert_close(ablated_total, total - weight * terms[term])
    assert_close(results[f"{term}:double"][0], total + weight * terms[term])


def test_two_by_two_by_hand():
  image = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  text = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
  # logits = [[1, .6], [0, .8]] at scale 1; each row's CE is log(1 + e^{other - own}).
  i2t = math.log1p(math.exp(0.6 - 1.0)) + math.log1p(math.exp(0.0 - 0.8))
  t2i = math.log1p(math.exp(0.0 - 1.0)) + math.log1p(math.exp(0.6 - 0.8))
  assert_close(contrastive.infonce(image, text, 0.0), (i2t + t2i) / 4)
  # Scale 2 (log 2) doubles every logit.
  i2t = math.log1p(math.exp(2 * (0.6 - 1.0))) + math.log1p(math.exp(2 * (0.0 - 0.8)))
  t2i = math.log1p(math.exp(2 * (0.0 - 1.0))) + math.log1p(math.exp(2 * (0.6 - 0.8)))
  assert_close(contrastive.infonce(image, text, math.log(2.0)), (i2t + t2i) / 4)


@pytest.mark.parametrize("label_smoothing,max_scale,logit_scale", [
    (0.0, None, math.log(100.0)), (0.1, None, 2.0), (0.1, 50.0, math.log(100.0))])
def test_matches_torch_value_and_gradients(label_smoothing, max_scale, logit_scale):
  image, text = unit(0, 8, 16), unit(1, 8, 16)
  loss_fn = lambda i, t, s: contrastive.infonce(i, t, s, label_smoothing=label_smoothing,
                                                max_scale=max_scale)
  value, grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(image, text, logit_scale)
  ti, tt, ts = to_torch(image), to_torch(text), to_torch(logit_scale)
  expected = torch_infonce(ti, tt, ts, label_smoothing, max_scale)
  expected.backward()
  assert_close(value, expected.item())
  assert_trees_close(grads, (ti.grad, tt.grad, ts.grad.item()))
  if max_scale is not None:  # clamped: the temperature gets no gradient
    assert float(grads[2]) == 0.0


def test_padded_rows_do_not_count():
  image, text = unit(2, 8, 16), unit(3, 8, 16)
  valid = np.array([1, 1, 0, 1, 1, 0, 1, 1], bool)
  garbage_image, garbage_text = image.copy(), text.copy()
  garbage_image[~valid] = 1e3
  garbage_text[~valid] = -1e3
  loss_fn = lambda i, t: contrastive.infonce(i, t, 3.0, valid=valid, label_smoothing=0.1)
  value, (grad_image, grad_text) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
      garbage_image, garbage_text)
  ti, tt = to_torch(image[valid]), to_torch(text[valid])
  expected = torch_infonce(ti, tt, torch.tensor(3.0, dtype=torch.float64), 0.1)
  expected.backward()
  assert_close(value, expected.item())
  assert_close(grad_image[valid], ti.grad)
  assert_close(grad_text[valid], tt.grad)
  assert not np.any(grad_image[~valid]) and not np.any(grad_text[~valid])
  assert float(contrastive.infonce(image, text, 3.0, valid=np.zeros(8, bool))) == 0.0


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_sharded_equals_dense_values_and_gradients(label_smoothing):
  mesh = make_mesh()
  image, text = unit(4, 16, 8), unit(5, 16, 8)
  valid = np.ones(16, bool)
  valid[[3, 9, 10]] = False
  kwargs = dict(valid=valid, label_smoothing=label_smoothing, max_scale=100.0)

  def dense(i, t, s):
    return contrastive.infonce(i, t, s, **kwargs)

  def sharded(i, t, s):
    return data_parallel_infonce(mesh, i, t, s, **kwargs)

  expected = jax.value_and_grad(dense, argnums=(0, 1, 2))(image, text, 2.5)
  image_s, text_s = shard_batch((image, text), mesh)
  with jax.set_mesh(mesh):
    actual = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2)))(image_s, text_s, 2.5)
  assert_trees_close(actual, expected)
  assert actual[1][0].sharding.spec == P("data")  # gradients stay batch-sharded


def test_sharded_gathers_across_devices():
  """A per-device loss (no gather) differs: the sharded one really sees the global batch."""
  mesh = make_mesh()
  image, text = unit(6, 8, 8), unit(7, 8, 8)
  per_device = np.mean([contrastive.infonce(image[k:k + 2], text[k:k + 2], 2.0)
                        for k in range(0, 8, 2)])
  sharded = data_parallel_infonce(mesh, *shard_batch((image, text), mesh), 2.0)
  assert_close(sharded, contrastive.infonce(image, text, 2.0))
  assert abs(float(sharded) - float(per_device)) > 1e-3


def test_data_parallel_runs_dense_without_mesh():
  image, text = unit(8, 8, 8), unit(9, 8, 8)
  ti, tt = to_torch(image), to_torch(text)
  expected = torch_infonce(ti, tt, torch.tensor(1.5, dtype=torch.float64)).item()
  assert_close(data_parallel_infonce(None, image, text, 1.5), expected)
  assert_close(data_parallel_infonce(make_mesh(), image, text, 1.5), expected)


def test_data_parallel_rejects_indivisible_batch():
  with pytest.raises(ValueError, match="multiple of the number of devices"):
    data_parallel_infonce(make_mesh(), unit(0, 6, 4), unit(1, 6, 4), 1.0)


def test_unknown_weight_name_is_an_error():
  with pytest.raises(ValueError, match="unknown loss term 'globl'"):
    contrastive.resolve_weights({"global": 1.0}, {"globl": 0.0})
