"""Long-CLIP: primary component matching by hand and against Long-CLIP's PyTorch SVD code
(values and gradients), the objective against PyTorch, ablations, and sharding (global and
per-device PCA)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from goal_jax.losses import contrastive, longclip, pairwise
from test_losses_contrastive import (assert_close, assert_trees_close, check_ablations, make_mesh,
                                     shard_batch, to_torch, torch_infonce, unit)

B, E = 16, 12


def torch_pca(features, num_components):
  """Long-CLIP's PCA (SVD version): centre, keep the top right singular vectors, add the mean."""
  mean = features.mean(0, keepdim=True)
  centred = features - mean
  _, _, vt = torch.linalg.svd(centred, full_matrices=False)
  components = vt.T[:, :num_components]
  return centred @ components @ components.T + mean


def torch_longclip(image, text, short, logit_scale, num_components, label_smoothing=0.1):
  coarse = F.normalize(torch_pca(image, num_components), dim=-1)
  long_term = torch_infonce(image, text, logit_scale, label_smoothing)
  short_term = torch_infonce(coarse, short, logit_scale, label_smoothing)
  return long_term, short_term


def make_inputs(seed=0):
  outs = {"image": {"embedding": unit(seed, B, E)}, "text": {"embedding": unit(seed + 1, B, E)},
          "short": unit(seed + 2, B, E)}
  return outs


def objective(outs, logit_scale, weights=None, axis_name=None, num_components=3,
              label_smoothing=0.1, max_scale=None, **kwargs):
  pair_options = dict(label_smoothing=label_smoothing, max_scale=max_scale)
  return longclip.longclip_objective(outs["image"], outs["text"], outs["short"],
                                     pair_loss=pairwise.infonce(logit_scale, **pair_options),
                                     weights=weights, num_components=num_components,
                                     axis_name=axis_name, **kwargs)


@functools.cache
def dense_value_and_grad():
  grad_fn = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)
  return jax.jit(grad_fn)(make_inputs(), math.log(100.0))


def test_primary_components_by_hand():
  # Points (1,0), (-1,0), (0,1): mean (0, 1/3); the scatter is diag(2, 2/3), so the top component
  # is the x axis and the reconstruction is (±1, 1/3), (0, 1/3) before normalisation.
  points = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], np.float32)
  assert_close(longclip.primary_components(points, 1), [[1, 1 / 3], [-1, 1 / 3], [0, 1 / 3]])
  root = math.sqrt(10)
  expected = [[3 / root, 1 / root], [-3 / root, 1 / root], [0, 1]]
  assert_close(longclip.primary_component_embedding(points, 1), expected)


@pytest.mark.parametrize("batch,width,k", [(8, 16, 3), (12, 6, 2)])  # Gram and scatter paths
def test_primary_components_match_torch_svd_with_gradients(batch, width, k):
  features = unit(batch, batch, width)
  weights = np.random.default_rng(1).normal(size=(batch, width)).astype(np.float32)
  loss = lambda x: jnp.sum(weights * longclip.primary_components(x, k))
  value, grad = jax.value_and_grad(loss)(features)
  reference = to_torch(features)
  expected = (torch.tensor(weights, dtype=torch.float64) * torch_pca(reference, k)).sum()
  expected.backward()
  assert_close(value, expected.item(), tol=1e-4)
  assert_close(grad, reference.grad, tol=1e-4)
  assert_close(longclip.primary_components(features, k), torch_pca(reference, k).detach(), tol=1e-5)


def test_enough_components_keep_every_row():
  features = unit(3, 8, 16)  # rank of the centred rows <= 7 <= 32
  assert_close(longclip.primary_components(features, 32), features)
  assert_close(longclip.primary_components(features, 7), features, tol=1e-5)


def test_objective_matches_torch_reference():
  (total, terms), grads = dense_value_and_grad()
  outs = make_inputs()
  t_outs = jax.tree.map(to_torch, outs)
  t_scale = to_torch(math.log(100.0))
  long_term, short_term = torch_longclip(t_outs["image"]["embedding"], t_outs["text"]["embedding"],
                                         t_outs["short"], t_scale, 3)
  (long_term + short_term).backward()
  assert_close(total, (long_term + short_term).item())
  assert_trees_close(terms, {"long": long_term.item(), "short": short_term.item()})
  assert_trees_close(grads, jax.tree.map(lambda x: x.grad.numpy(), (t_outs, t_scale)), tol=1e-4)


def test_zeroing_a_weight_removes_exactly_that_term():
  check_ablations(objective, longclip.LONGCLIP_WEIGHTS, make_inputs(1), math.log(100.0))


def sharded_value_and_grad(mesh, **kwargs):
  def loss(outs, logit_scale):
    run = contrastive.data_parallel(
        lambda o, axis_name: objective(o, logit_scale, axis_name=axis_name, **kwargs), mesh)
    return run(outs)

  with jax.set_mesh(mesh):
    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    return grad_fn(shard_batch(make_inputs(), mesh), math.log(100.0))


def test_sharded_objective_equals_dense():
  assert_trees_close(sharded_value_and_grad(make_mesh()), dense_value_and_grad(), tol=2e-5)


def test_local_pca_scope_decomposes_each_device_batch():
  """`pca_scope="local"`: Long-CLIP's DDP behaviour, PCA of each device's 4 rows (top 2 kept)."""
  (_, terms), _ = sharded_value_and_grad(make_mesh(), pca_scope="local", num_components=2)
  outs = jax.tree.map(to_torch, make_inputs())
  image, short, scale = outs["image"]["embedding"], outs["short"], to_torch(math.log(100.0))
  per_device = torch.cat([torch_pca(image[k:k + 4], 2) for k in range(0, B, 4)])
  expected = torch_infonce(F.normalize(per_device, dim=-1), short, scale, 0.1)
  assert_close(terms["short"], expected.item())
  whole_batch = torch_infonce(F.normalize(torch_pca(image, 2), dim=-1), short, scale, 0.1)
  assert abs(expected.item() - whole_batch.item()) > 1e-3
  with pytest.raises(ValueError, match="scope"):
    longclip.primary_component_embedding(make_inputs()["short"], 3, scope="batch")
