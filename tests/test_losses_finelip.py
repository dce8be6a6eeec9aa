"""FineLIP: CLIM, the ranking loss and the fused score against PyTorch ports of the released code
(https://github.com/tiiuae/FineLIP), the full objective's value and gradients, ablations and
sharding. The ATRM port itself is checked in test_losses_mulclip (its `torch_calibrate`)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from goal_jax.losses import clim, contrastive, finelip, pairwise
from goal_jax.models import token_aggregation
from test_losses_contrastive import (assert_close, assert_trees_close, check_ablations, make_mesh,
                                     shard_batch, to_torch, torch_infonce, unit)
from test_losses_mulclip import torch_calibrate

B, N, L, E, K = 8, 9, 7, 10, 4  # batch, patches, text length, width, aggregated tokens N'
AGGREGATION = token_aggregation.TokenAggregation(num_tokens=K)
IMAGE_IDS = np.array([0, 1, 2, 1, 3, 4, 4, 5], np.int32)  # duplicates within and across shards


# --- PyTorch ports of the released code -----------------------------------------------------

def torch_one_text(image_tokens, text_tokens, negative_slope=0.1):
  """One caption `[Lt, E]` against every image `[Bv, Lv, E]` (unit tokens): `[Bv]`."""
  sims = torch.bmm(text_tokens.unsqueeze(0).repeat(image_tokens.shape[0], 1, 1),
                   image_tokens.transpose(1, 2))
  sims = F.leaky_relu(sims, negative_slope=negative_slope)
  return sims.max(dim=2)[0].mean(dim=1) + sims.max(dim=1)[0].mean(dim=1)


def torch_clim(image_full, text_full, lengths, params, negative_slope=0.1):
  """The released aggregated late interaction, caption by caption: `[images, texts]`.

  `lengths` counts SOT..EOT; the text ATRM sees the first `length - 1` tokens and the EOT is
  appended; the image ATRM sees the patches and the CLS is prepended.
  """
  aggregated = torch.stack([torch_calibrate(params["image"], x[1:]) for x in image_full])
  images = F.normalize(torch.cat([image_full[:, :1], aggregated], dim=1), dim=-1)
  columns = []
  for i, length in enumerate(lengths):
    n_word = int(length) - 1
    words = torch_calibrate(params["text"], text_full[i, :n_word])
    text = F.normalize(torch.cat([words, text_full[i, n_word:n_word + 1]], dim=0), dim=-1)
    columns.append(torch_one_text(images, text, negative_slope))
  return torch.stack(columns, dim=1)


def torch_ranking(scores, img_ids, margin=0.2, max_violation=False):
  """The released hinge loss, duplicates masked by image id."""
  diagonal = scores.diag().view(-1, 1)
  cost_s = (margin + scores - diagonal.expand_as(scores)).clamp(min=0)
  cost_im = (margin + scores - diagonal.t().expand_as(scores)).clamp(min=0)
  mask = img_ids.unsqueeze(1) == img_ids.unsqueeze(0)
  cost_s, cost_im = cost_s.masked_fill(mask, 0), cost_im.masked_fill(mask, 0)
  if max_violation:
    cost_s, cost_im = cost_s.max(1)[0], cost_im.max(0)[0]
  return cost_s.sum() + cost_im.sum()


# --- inputs and the JAX objective ----------------------------------------------------------

def init_aggregation(seed):
  params = AGGREGATION.init(jax.random.key(seed), jnp.zeros((1, N, E)))["params"]
  return jax.tree.map(np.asarray, {**params, "scale": jnp.asarray(1.3)})


def make_inputs(seed=0):
  """Float encoder outputs, integer inputs (EOT positions, image ids), ATRM parameters."""
  rng = np.random.default_rng(seed)
  outs = {
      "image": {"tokens_projected": rng.normal(size=(B, 1 + N, E)).astype(np.float32)},
      "text": {"embedding": unit(seed + 2, B, E),
               "tokens_projected": rng.normal(size=(B, L, E)).astype(np.float32)},
  }
  ints = {"eot_index": rng.integers(1, L, size=B).astype(np.int32), "image_ids": IMAGE_IDS}
  params = {"image": init_aggregation(seed), "text": init_aggregation(seed + 1)}
  return outs, ints, params


def aggregators(params):
  return token_aggregation.PerModality(
      image=lambda x, m: AGGREGATION.apply({"params": params["image"]}, x, m),
      text=lambda x, m: AGGREGATION.apply({"params": params["text"]}, x, m))


def clip_image_out(image):
  """A CLIP vision tower's outputs from its projected tokens `[B, 1+N, E]`: the embedding is the
  unit CLS, the patches follow it."""
  tokens = image["tokens_projected"]
  return {"embedding": contrastive.l2_normalize(tokens[:, 0]),
          "patch_tokens_projected": tokens[:, 1:]}


def clip_text_out(text, eot_index):
  """A CLIP text tower's outputs: its words end at the EOT, which it pools."""
  return {**text, "eot_index": eot_index, "text_end": eot_index}


def objective(outs, ints, params, logit_scale, weights=None, options=finelip.FineLIPOptions(),
              axis_name=None):
  return finelip.finelip_objective(
      clip_image_out(outs["image"]), clip_text_out(outs["text"], ints["eot_index"]),
      ints["image_ids"], aggregators=aggregators(params),
      pair_loss=pairwise.infonce(logit_scale, label_smoothing=0.1), weights=weights,
      options=options, axis_name=axis_name)


WITH_GLOBAL = {"global_long": 1.0, "clim": 1.0}


def objective_with_global(outs, ints, params, logit_scale, weights=None, **kwargs):
  return objective(outs, ints, params, logit_scale, weights={**WITH_GLOBAL, **(weights or {})},
                   **kwargs)


@functools.cache
def dense_value_and_grad(max_violation):
  outs, ints, params = make_inputs()
  options = finelip.FineLIPOptions(max_violation=max_violation)
  grad_fn = jax.value_and_grad(functools.partial(objective_with_global, options=options),
                               argnums=(0, 2), has_aux=True)
  return jax.jit(grad_fn)(outs, ints, params, 2.0)


def torch_objective(outs, ints, params, logit_scale, max_violation):
  t_outs, t_params = jax.tree.map(to_torch, (outs, params))
  lengths = ints["eot_index"] + 1
  scores = torch_clim(t_outs["image"]["tokens_projected"], t_outs["text"]["tokens_projected"],
                      lengths, t_params)
  terms = {
      "global_long": torch_infonce(F.normalize(t_outs["image"]["tokens_projected"][:, 0], dim=-1),
                                   t_outs["text"]["embedding"],
                                   torch.tensor(logit_scale, dtype=torch.float64),
                                   label_smoothing=0.1),
      "clim": torch_ranking(scores, torch.tensor(ints["image_ids"]), max_violation=max_violation),
  }
  total = terms["global_long"] + terms["clim"]
  total.backward()
  grads = jax.tree.map(lambda x: x.grad.numpy(), (t_outs, t_params))
  return total.item(), {k: v.item() for k, v in terms.items()}, grads


def refined(outs, ints, params):
  return clim.refined_tokens(clip_image_out(outs["image"]),
                            clip_text_out(outs["text"], ints["eot_index"]), aggregators(params))


# --- CLIM ------------------------------------------------------------------------------------

def test_late_interaction_by_hand():
  image = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
  text = np.array([[[1.0, 0.0]], [[-1.0, 0.0]]], np.float32)
  # Text 0 matches image token 0: t→i = 1, i→t = mean(1, 0) = 0.5. Text 1: cosines (-1, 0) after
  # the leaky ReLU are (-0.1, 0): t→i = 0, i→t = mean(-0.1, 0).
  actual = clim.late_interaction(image, text)
  assert_close(actual, [[1.5, -0.05]])
  assert_close(clim.late_interaction(image, text, negative_slope=0.5), [[1.5, -0.25]])


def test_late_interaction_masks_padding_like_the_released_slicing():
  images, texts = unit(0, 3, 5, E), unit(1, 4, 6, E)
  lengths = np.array([6, 2, 4, 1])
  mask = np.arange(6)[None] < lengths[:, None]
  actual = clim.late_interaction(images, texts, mask, negative_slope=0.1)
  t_images, t_texts = (torch.tensor(x, dtype=torch.float64) for x in (images, texts))
  expected = torch.stack([torch_one_text(t_images, t_texts[j, :n]) for j, n in enumerate(lengths)],
                         dim=1)
  assert_close(actual, expected.numpy())
  assert_close(clim.late_interaction(images, texts[:1]), expected[:, :1].numpy())


def test_clim_matches_released_aggregated_interaction():
  outs, ints, params = make_inputs(1)
  actual = clim.late_interaction(*refined(outs, ints, params))
  t_outs, t_params = jax.tree.map(lambda x: torch.tensor(np.asarray(x, np.float64)),
                                  (outs, params))
  expected = torch_clim(t_outs["image"]["tokens_projected"], t_outs["text"]["tokens_projected"],
                        ints["eot_index"] + 1, t_params)
  assert actual.shape == (B, B)
  assert_close(actual, expected.numpy())


# --- ranking loss ----------------------------------------------------------------------------

def test_ranking_loss_by_hand():
  scores = np.array([[0.5, 0.6], [0.1, 0.9]], np.float32)
  # Only image 0 against text 1 violates the margin: 0.2 + 0.6 - 0.5.
  assert_close(clim.ranking_loss(scores), 0.3)
  # Margin 0.5: image 0 vs text 1 (0.6); text 1 vs image 0 (0.5 + 0.6 - 0.9); text 0 vs image 1
  # (0.5 + 0.1 - 0.5). Hardest negatives: the same, one per query here.
  assert_close(clim.ranking_loss(scores, margin=0.5), 0.6 + 0.2 + 0.1)
  assert_close(clim.ranking_loss(scores, margin=0.5, max_violation=True), 0.6 + 0.2 + 0.1)


@pytest.mark.parametrize("max_violation", [False, True])
@pytest.mark.parametrize("with_ids", [False, True])
def test_ranking_loss_matches_released(max_violation, with_ids):
  scores = np.random.default_rng(2).uniform(-0.2, 2.0, size=(B, B)).astype(np.float32)
  ids = IMAGE_IDS if with_ids else np.arange(B)
  actual = clim.ranking_loss(scores, ids if with_ids else None, max_violation=max_violation)
  expected = torch_ranking(torch.tensor(scores, dtype=torch.float64), torch.tensor(ids),
                           max_violation=max_violation)
  assert_close(actual, expected.item())


@pytest.mark.parametrize("max_violation", [False, True])
def test_pairs_of_the_same_image_are_not_negatives(max_violation):
  scores = np.random.default_rng(3).uniform(-0.2, 2.0, size=(B, B)).astype(np.float32)
  loss = functools.partial(clim.ranking_loss, image_ids=IMAGE_IDS, max_violation=max_violation)
  same = (IMAGE_IDS[:, None] == IMAGE_IDS[None]) & ~np.eye(B, dtype=bool)
  assert same.sum() == 4
  raised = np.where(same, 10.0, scores).astype(np.float32)
  assert_close(loss(raised), loss(scores))
  # Without the ids the raised pairs are violations.
  assert clim.ranking_loss(raised, max_violation=max_violation) > loss(scores) + 1.0


# --- test-time score -------------------------------------------------------------------------

def test_fused_score_matches_released_evaluation():
  outs, ints, params = make_inputs(4)
  interaction = clim.late_interaction(*refined(outs, ints, params))
  actual = clim.fused_score(clip_image_out(outs["image"])["embedding"], outs["text"]["embedding"],
                            interaction,
                            global_weight=finelip.FineLIPOptions().global_weight)
  t_outs, t_params = jax.tree.map(lambda x: torch.tensor(np.asarray(x, np.float64)),
                                  (outs, params))
  cosine = F.normalize(t_outs["image"]["tokens_projected"][:, 0], dim=-1) @ t_outs["text"][
      "embedding"].t()
  fine = torch_clim(t_outs["image"]["tokens_projected"], t_outs["text"]["tokens_projected"],
                    ints["eot_index"] + 1, t_params)
  alpha = 0.8
  assert_close(actual, (alpha * cosine + (1 - alpha) * fine).numpy())


# --- the objective ---------------------------------------------------------------------------

def test_released_defaults():
  assert finelip.FineLIPOptions() == finelip.FineLIPOptions(
      margin=0.2, max_violation=False, negative_slope=0.1, global_weight=0.8)
  outs, ints, params = make_inputs()
  total, terms = jax.jit(objective)(outs, ints, params, 2.0)
  assert list(terms) == ["clim"]  # the released run trains the ranking term alone
  assert_close(total, terms["clim"])


@pytest.mark.parametrize("max_violation", [False, True])
def test_objective_matches_torch_reference(max_violation):
  (total, terms), grads = dense_value_and_grad(max_violation)
  expected_total, expected_terms, expected_grads = torch_objective(*make_inputs(), 2.0,
                                                                   max_violation)
  assert_close(total, expected_total)
  assert_trees_close(terms, expected_terms)
  assert_trees_close(grads, expected_grads, tol=1e-4)
  assert np.abs(grads[0]["text"]["tokens_projected"]).sum() > 0


def test_padding_after_eot_does_not_change_value():
  outs, ints, params = make_inputs(5)
  run = jax.jit(objective)
  total, _ = run(outs, ints, params, 2.0)
  noisy = jax.tree.map(np.copy, outs)
  after_eot = np.arange(L)[None] > ints["eot_index"][:, None]
  noisy["text"]["tokens_projected"][after_eot] = 1e3
  assert_close(run(noisy, ints, params, 2.0)[0], total)


def test_zeroing_a_weight_removes_exactly_that_term():
  outs, ints, params = make_inputs(7)
  check_ablations(objective_with_global, WITH_GLOBAL, outs, ints, params, 2.0)
  with pytest.raises(ValueError, match="unknown loss term"):
    objective(outs, ints, params, 2.0, weights={"local": 1.0})


@pytest.mark.parametrize("max_violation", [False, True])
def test_sharded_objective_equals_dense(max_violation):
  """Jitted on 4 devices with batch-sharded inputs (duplicate ids across shards); gradients
  include the ATRM parameters."""
  mesh = make_mesh()
  outs, ints, params = make_inputs()
  options = finelip.FineLIPOptions(max_violation=max_violation)

  def loss(outs, ints, params, logit_scale):
    run = contrastive.data_parallel(
        lambda o, i, axis_name: objective_with_global(o, i, params, logit_scale, options=options,
                                                      axis_name=axis_name), mesh)
    return run(outs, ints)

  grad_fn = jax.value_and_grad(loss, argnums=(0, 2), has_aux=True)
  with jax.set_mesh(mesh):
    sharded_outs, sharded_ints = shard_batch((outs, ints), mesh)
    (total, terms), grads = jax.jit(grad_fn)(sharded_outs, sharded_ints, params, 2.0)
  (expected_total, expected_terms), expected_grads = dense_value_and_grad(max_violation)
  assert_trees_close((total, terms), (expected_total, expected_terms))
  assert_trees_close(grads, expected_grads, tol=2e-5)
