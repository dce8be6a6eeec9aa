"""GOAL objective: masked mean, TSL by hand, a PyTorch loop reference, masks, ablations and
sharding."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from goal_jax.losses import contrastive, goal, pairwise
from test_losses_contrastive import (assert_close, assert_trees_close, check_ablations, make_mesh,
                                     shard_batch, to_torch, torch_infonce, unit)

B, N, L, DV, DT, E = 8, 9, 7, 12, 10, 6  # batch, patches (3x3 grid), text length, widths
# GOAL's global fine-tuning baseline (Table 1) as weight overrides.
GLOBAL_FINETUNE_WEIGHTS = {"global": 1.0, "local": 0.0, "tsl_image": 0.0, "tsl_text": 0.0}
IDENTITY_POOL = goal.mean_then_head(lambda x: x)  # TSL's pooling with an identity head


def head(params, x):
  """Stand-in for CLIP.image_head/text_head: LayerNorm (eps 1e-5) then a bias-free projection."""
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  normed = (x - mean) * jax.lax.rsqrt(var + 1e-5) * params["scale"] + params["bias"]
  return normed @ params["proj"]


def torch_head(params, x):
  ln = F.layer_norm(x, x.shape[-1:], params["scale"], params["bias"], eps=1e-5)
  return ln @ params["proj"]


def head_params(seed, width):
  rng = np.random.default_rng(seed)
  return {"scale": (1 + 0.1 * rng.normal(size=width)).astype(np.float32),
          "bias": (0.1 * rng.normal(size=width)).astype(np.float32),
          "proj": rng.normal(size=(width, E)).astype(np.float32) / np.sqrt(width)}


def make_inputs(seed=0):
  rng = np.random.default_rng(seed)
  outs = {
      "image": {"embedding": unit(seed + 1, B, E),
                "tokens": rng.normal(size=(B, 1 + N, DV)).astype(np.float32)},
      "text": {"embedding": unit(seed + 2, B, E),
               "tokens": rng.normal(size=(B, L, DT)).astype(np.float32)},
      "local_image": {"embedding": unit(seed + 3, B, E)},
      "local_text": {"embedding": unit(seed + 4, B, E)},
  }
  patch_mask = rng.random((B, N)) < 0.4
  patch_mask[0] = False  # an empty box: guarded, and left out of the TSL mean
  span_mask = np.zeros((B, L), bool)
  for b in range(B):
    start = rng.integers(1, L - 2)
    span_mask[b, start:start + rng.integers(1, 3)] = True
  local_valid = np.ones(B, bool)
  local_valid[5] = False
  batch = {"local_patch_mask": patch_mask, "local_span_mask": span_mask, "local_valid": local_valid}
  params = {"image": head_params(seed + 5, DV), "text": head_params(seed + 6, DT)}
  return outs, batch, params


def objective(outs, batch, params, logit_scale, weights=None, axis_name=None):
  poolers = goal.Poolers(goal.mean_then_head(functools.partial(head, params["image"])),
                         goal.mean_then_head(functools.partial(head, params["text"])))
  image = {**outs["image"], "patch_tokens": outs["image"]["tokens"][:, 1:]}  # CLIP: CLS first
  return goal.goal_objective(image, outs["text"], outs["local_image"], outs["local_text"],
                             batch, poolers=poolers, pair_loss=pairwise.infonce(logit_scale),
                             weights=weights, axis_name=axis_name)


@functools.cache
def dense_value_and_grad():
  """Value, terms and gradients (outputs, params, logit scale) on `make_inputs()`, computed once."""
  outs, batch, params = make_inputs()
  grad_fn = jax.value_and_grad(objective, argnums=(0, 2, 3), has_aux=True)
  return jax.jit(grad_fn)(outs, batch, params, 2.0)


@functools.cache
def jitted_objective(**kwargs):
  return jax.jit(functools.partial(objective, **kwargs))


def evaluate(outs, batch, params, **kwargs):
  """The objective at logit scale 2, jitted once per option set (not op-by-op dispatch)."""
  return jitted_objective(**kwargs)(outs, batch, params, 2.0)


def torch_tsl(tokens, masks, params, targets, valid):
  """Loop reference: pool the masked pre-LN tokens, head, normalise, (cos - 1)^2, mean."""
  losses = []
  for b in range(tokens.shape[0]):
    mask = torch.as_tensor(masks[b])
    if not valid[b] or not mask.any():
      continue
    pooled = torch_head(params, tokens[b][mask].mean(0))
    losses.append((pooled / pooled.norm() @ targets[b] - 1) ** 2)
  return torch.stack(losses).mean()


def torch_goal(outs, batch, params, logit_scale):
  t = jax.tree.map(to_torch, (outs, params, logit_scale))
  (t_outs, t_params, t_scale), valid = t, batch["local_valid"]
  terms = {
      "global": torch_infonce(t_outs["image"]["embedding"], t_outs["text"]["embedding"], t_scale),
      "local": torch_infonce(t_outs["local_image"]["embedding"][valid],
                             t_outs["local_text"]["embedding"][valid], t_scale),
      "tsl_image": torch_tsl(t_outs["image"]["tokens"][:, 1:], batch["local_patch_mask"],
                             t_params["image"], t_outs["local_image"]["embedding"], valid),
      "tsl_text": torch_tsl(t_outs["text"]["tokens"], batch["local_span_mask"], t_params["text"],
                            t_outs["local_text"]["embedding"], valid),
  }
  total = terms["global"] + 0.5 * terms["local"] + terms["tsl_image"] + terms["tsl_text"]
  total.backward()
  grads = jax.tree.map(lambda x: x.grad.numpy(), (t_outs, t_params, t_scale))
  return total.item(), {k: v.item() for k, v in terms.items()}, grads


def test_masked_mean_and_empty_guard():
  tokens = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
  mask = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
  pooled = goal.masked_mean(tokens, mask)
  assert_close(pooled[0], tokens[0, [0, 2]].mean(0))
  assert_close(pooled[1], np.zeros(4))
  assert_close(pooled[2], tokens[2].mean(0))
  grad = jax.grad(lambda x: jnp.sum(goal.masked_mean(x, mask)))(tokens)
  assert_close(grad[0, 0], np.full(4, 0.5))
  assert not np.any(grad[1])


def test_tsl_by_hand():
  tokens = np.array([[[3.0, 4.0], [0.0, 0.0], [5.0, 0.0]]], np.float32)
  mask = np.array([[True, False, True]])
  target = np.array([[1.0, 0.0]], np.float32)
  # mean of kept tokens (4, 2) -> unit (2, 1)/sqrt(5); cosine with (1, 0) is 2/sqrt(5).
  value = goal.token_similarity(tokens, mask, IDENTITY_POOL, target)
  assert_close(value, (2 / math.sqrt(5) - 1) ** 2)


def test_tsl_empty_mask_is_guarded():
  tokens = np.random.default_rng(1).normal(size=(3, 4, 2)).astype(np.float32)
  target = unit(2, 3, 2)
  mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]], bool)
  loss = lambda x, t: goal.token_similarity(x, mask, IDENTITY_POOL, t)
  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(tokens, target)
  kept = [0, 2]
  assert_close(value, goal.token_similarity(tokens[kept], mask[kept], IDENTITY_POOL, target[kept]))
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert not np.any(grads[0][1]) and not np.any(grads[1][1])
  all_empty = goal.token_similarity(tokens, np.zeros_like(mask), IDENTITY_POOL, target)
  assert float(all_empty) == 0.0


def test_objective_matches_torch_reference():
  (total, terms), grads = dense_value_and_grad()
  expected_total, expected_terms, expected_grads = torch_goal(*make_inputs(), 2.0)
  assert_close(total, expected_total)
  assert_trees_close(terms, expected_terms)
  assert_trees_close(grads, expected_grads, tol=1e-4)


def test_padding_outside_masks_does_not_change_value():
  outs, batch, params = make_inputs(1)
  total, terms = evaluate(outs, batch, params)
  noisy = jax.tree.map(np.copy, outs)
  noisy["image"]["tokens"][:, 1:][~batch["local_patch_mask"]] = 1e3
  noisy["image"]["tokens"][:, 0] = -1e3  # CLS never enters TSL
  noisy["text"]["tokens"][~batch["local_span_mask"]] = 1e3
  invalid = ~batch["local_valid"]
  noisy["local_image"]["embedding"][invalid] = unit(9, int(invalid.sum()), E)
  noisy["local_text"]["embedding"][invalid] = unit(10, int(invalid.sum()), E)
  noisy_total, noisy_terms = evaluate(noisy, batch, params)
  assert_close(noisy_total, total)
  assert_trees_close(noisy_terms, terms)


def test_zeroing_a_weight_removes_exactly_that_term():
  outs, batch, params = make_inputs(2)
  check_ablations(objective, goal.GOAL_WEIGHTS, outs, batch, params, 2.0)


def test_global_finetuning_needs_no_local_outputs():
  outs, batch, params = make_inputs(3)
  total, terms = goal.goal_objective(outs["image"], outs["text"], None, None, batch, poolers=None,
                                     pair_loss=pairwise.infonce(2.0),
                                     weights=GLOBAL_FINETUNE_WEIGHTS)
  assert list(terms) == ["global"]
  image, text = to_torch(outs["image"]["embedding"]), to_torch(outs["text"]["embedding"])
  expected = torch_infonce(image, text, to_torch(2.0))
  assert_close(total, expected.item())


def test_split_halves():
  out = {"embedding": np.arange(8).reshape(4, 2)}
  first, second = goal.split_halves(out, 2)
  assert_close(first["embedding"], [[0, 1], [2, 3]])
  assert_close(second["embedding"], [[4, 5], [6, 7]])


def test_sharded_objective_equals_dense():
  """Jitted on 4 devices with batch-sharded inputs; gradients include the heads' parameters."""
  mesh = make_mesh()
  outs, batch, params = make_inputs()

  def loss(outs, batch, params, logit_scale):
    run = contrastive.data_parallel(
        lambda o, b, axis_name: objective(o, b, params, logit_scale, axis_name=axis_name), mesh)
    return run(outs, batch)

  grad_fn = jax.value_and_grad(loss, argnums=(0, 2, 3), has_aux=True)
  with jax.set_mesh(mesh):
    actual = jax.jit(grad_fn)(*shard_batch((outs, batch), mesh), params, 2.0)
  assert_trees_close(actual, dense_value_and_grad())


def test_tsl_matrix_form_by_hand():
  """Eq. 14 read literally: MSE of the 2x2 similarity matrix against the identity.

  Pooled regions (identity head): sample 0 -> (4, 2)/|.| = (2, 1)/sqrt(5); sample 1 -> (0, 1).
  Targets: (1, 0) and (0, 1). Similarities: [[2/sqrt5, 1/sqrt5], [0, 1]].
  """
  tokens = np.array([[[3.0, 4.0], [5.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]]], np.float32)
  mask = np.array([[True, True], [True, False]])
  target = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  a, b = 2 / math.sqrt(5), 1 / math.sqrt(5)
  expected = ((a - 1) ** 2 + b ** 2 + 0.0 + 0.0) / 4
  assert_close(goal.token_similarity(tokens, mask, IDENTITY_POOL, target, form="matrix"), expected)
  assert_close(goal.token_similarity(tokens, mask, IDENTITY_POOL, target),  # the diagonal
               ((a - 1) ** 2 + 0.0) / 2)
  # An invalid sample leaves its row and its column: only sample 0's own cell is left.
  assert_close(goal.token_similarity(tokens, mask, IDENTITY_POOL, target,
                                     valid=np.array([True, False]), form="matrix"), (a - 1) ** 2)


def test_tsl_matrix_form_sharded_equals_dense():
  """Rows sharded over 4 devices, columns gathered: value and gradients as on one device."""
  mesh = make_mesh()
  outs, batch, params = make_inputs()
  tokens, target = outs["image"]["tokens"][:, 1:], outs["local_image"]["embedding"]
  mask, valid = batch["local_patch_mask"], batch["local_valid"]
  image_pool = goal.mean_then_head(functools.partial(head, params["image"]))

  def dense(tokens, target):
    return goal.token_similarity(tokens, mask, image_pool, target, valid, form="matrix")

  def sharded(tokens, target, mask, valid):
    run = contrastive.data_parallel(
        lambda t, g, m, v, axis_name: goal.token_similarity(t, m, image_pool, g, v, axis_name,
                                                            form="matrix"), mesh)
    return run(tokens, target, mask, valid)

  want = jax.jit(jax.value_and_grad(dense, argnums=(0, 1)))(tokens, target)
  with jax.set_mesh(mesh):
    got = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(
        *shard_batch((tokens, target, mask, valid), mesh))
  assert_trees_close(got, want)
  diagonal = goal.token_similarity(tokens, mask, image_pool, target, valid)
  assert not np.allclose(want[0], diagonal)  # the off-diagonal cells count
