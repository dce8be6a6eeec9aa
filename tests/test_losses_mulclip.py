"""MulCLIP: token calibration vs a PyTorch port of FineLIP's ATRM, WPR/SAP by hand and against loop
references, the full objective against PyTorch, masking, ablations and sharding."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from goal_jax.losses import contrastive, mulclip, pairwise
from goal_jax.models import token_aggregation
from test_losses_contrastive import (assert_close, assert_trees_close, check_ablations, make_mesh,
                                     shard_batch, to_torch, torch_infonce, unit)

B, N, L, M, E, K = 8, 9, 7, 3, 10, 4  # batch, patches, text length, sentences, width, N'
CALIBRATION = token_aggregation.TokenAggregation(num_tokens=K)
OPTIONS = mulclip.MulCLIPOptions(wpr_attention_temperature=0.2, wpr_temperature=0.5,
                                 sap_temperature=0.3)


def init_calibration(seed):
  x = jnp.zeros((1, N, E))
  params = CALIBRATION.init(jax.random.key(seed), x, jnp.ones((1, N), bool))["params"]
  # A non-trivial learnable scale, so the test sees it.
  return jax.tree.map(np.asarray, {**params, "scale": jnp.asarray(1.3)})


def torch_calibrate(params, tokens):
  """FineLIP's TokenAggregation.forward, in PyTorch, on one sequence of valid tokens `[n, C]`."""
  x = F.layer_norm(tokens, tokens.shape[-1:], params["norm"]["scale"], params["norm"]["bias"],
                   eps=1e-5)
  x = F.gelu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  weight = (x @ params["scores"]["kernel"] + params["scores"]["bias"]).T * params["scale"]
  return torch.softmax(weight, dim=1) @ tokens


def torch_wpr(visual, textual, attention_temperature, temperature):
  """Per-sample loop: reconstruct each side from the other, symmetric InfoNCE within the sample."""
  image_terms, text_terms = [], []

  def nce(tokens, recon):
    logits = tokens @ F.normalize(recon, dim=-1).T / temperature
    labels = torch.arange(tokens.shape[0])
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

  for v, t in zip(visual, textual):
    affinity = v @ t.T / attention_temperature
    image_terms.append(nce(v, torch.softmax(affinity, dim=1) @ t))
    text_terms.append(nce(t, torch.softmax(affinity, dim=0).T @ v))
  return torch.stack(image_terms).mean(), torch.stack(text_terms).mean()


def torch_sap(sentences, patches, sentence_valid, logit_scale, temperature, detach=False):
  """Per index: aggregate each image's patches under its own sentence, InfoNCE over valid rows;
  `detach`: the sentences as constants (`sap_stop_gradient="sentence"`)."""
  if detach:
    sentences = sentences.detach()
  per_index = []
  for i in range(sentences.shape[1]):
    rows = np.flatnonzero(sentence_valid[:, i])
    if not len(rows):
      continue
    aggregates = torch.stack([
        F.normalize(torch.softmax(patches[b] @ sentences[b, i] / temperature, 0) @ patches[b],
                    dim=0)
        for b in rows])
    per_index.append(torch_infonce(aggregates, sentences[rows, i], logit_scale))
  return torch.stack(per_index).mean()


def make_inputs(seed=0):
  rng = np.random.default_rng(seed)
  eot_index = rng.integers(2, L, size=B)
  sentence_valid = np.ones((B, M), bool)
  sentence_valid[1, 2] = sentence_valid[4, 1:] = False
  sentence_valid[:, 2] = False  # an index nobody has leaves the mean
  sentence_valid[0, 2] = True  # ...unless one sample has it
  outs = {
      "image": {"embedding": unit(seed + 1, B, E),
                "tokens_projected": rng.normal(size=(B, 1 + N, E)).astype(np.float32)},
      "text": {"embedding": unit(seed + 2, B, E),
               "tokens_projected": rng.normal(size=(B, L, E)).astype(np.float32),
               "eot_index": eot_index.astype(np.int32)},
      "summary": unit(seed + 3, B, E),
      "sentences": unit(seed + 4, B, M, E),
  }
  batch = {"sentence_valid": sentence_valid}
  params = {"image": init_calibration(seed), "text": init_calibration(seed + 1)}
  return outs, batch, params


def objective(outs, batch, params, logit_scale, weights=None, options=OPTIONS, axis_name=None):
  calibrators = token_aggregation.PerModality(
      image=lambda x, m: CALIBRATION.apply({"params": params["image"]}, x, m),
      text=lambda x, m: CALIBRATION.apply({"params": params["text"]}, x, m))
  image = {**outs["image"], "patch_tokens_projected": outs["image"]["tokens_projected"][:, 1:]}
  text = {**outs["text"], "text_end": outs["text"]["eot_index"]}  # CLIP: words end at the EOT
  return mulclip.mulclip_objective(image, text, outs["summary"], outs["sentences"], batch,
                                   calibrators=calibrators, pair_loss=pairwise.infonce(logit_scale),
                                   weights=weights, options=options, axis_name=axis_name)


@functools.cache
def dense_value_and_grad():
  """Value, terms and gradients (outputs, params, logit scale) on `make_inputs()`, computed once."""
  outs, batch, params = make_inputs()
  grad_fn = jax.value_and_grad(objective, argnums=(0, 2, 3), has_aux=True, allow_int=True)
  return jax.jit(grad_fn)(outs, batch, params, 2.0)


def without_eot_index(grads):
  """Drops the float0 "gradient" of the integer `eot_index` input."""
  outs_grads, *rest = grads
  text = {k: v for k, v in outs_grads["text"].items() if k != "eot_index"}
  return ({**outs_grads, "text": text}, *rest)


@functools.cache
def jitted_objective(**kwargs):
  return jax.jit(functools.partial(objective, **kwargs))


def evaluate(outs, batch, params, **kwargs):
  """The objective at logit scale 2, jitted once per option set (not op-by-op dispatch)."""
  return jitted_objective(**kwargs)(outs, batch, params, 2.0)


def torch_mulclip(outs, batch, params, logit_scale, options=OPTIONS):
  eot_index = outs["text"]["eot_index"]
  t_outs, t_params, t_scale = jax.tree.map(
      to_torch, ({**outs, "text": {k: v for k, v in outs["text"].items() if k != "eot_index"}},
                 params, logit_scale))
  visual = F.normalize(torch.stack([
      torch_calibrate(t_params["image"], x[1:]) for x in t_outs["image"]["tokens_projected"]]),
      dim=-1)
  textual = F.normalize(torch.stack([
      torch_calibrate(t_params["text"], x[:e]) for x, e in
      zip(t_outs["text"]["tokens_projected"], eot_index)]), dim=-1)
  wpr_image, wpr_text = torch_wpr(visual, textual, options.wpr_attention_temperature,
                                  options.wpr_temperature)
  terms = {
      "global_long": torch_infonce(t_outs["image"]["embedding"], t_outs["text"]["embedding"],
                                   t_scale),
      "global_summary": torch_infonce(t_outs["image"]["embedding"], t_outs["summary"], t_scale),
      "wpr_image": wpr_image, "wpr_text": wpr_text,
      "sap": torch_sap(t_outs["sentences"], visual, batch["sentence_valid"], t_scale,
                       options.sap_temperature, detach=options.sap_stop_gradient == "sentence"),
  }
  total = sum(mulclip.MULCLIP_WEIGHTS[k] * v for k, v in terms.items())
  total.backward()
  # A leaf no term reaches (the sentences, when SAP stops their gradient) has no torch grad: 0.
  grads = jax.tree.map(lambda x: np.zeros(x.shape, np.float32) if x.grad is None
                       else x.grad.numpy(), (t_outs, t_params, t_scale))
  return total.item(), {k: v.item() for k, v in terms.items()}, grads


def test_token_calibration_matches_finelip_port():
  params = init_calibration(0)
  tokens = np.random.default_rng(0).normal(size=(2, N, E)).astype(np.float32)
  mask = np.ones((2, N), bool)
  mask[1, 5:] = False  # FineLIP slices a caption to its valid tokens
  actual = CALIBRATION.apply({"params": params}, tokens, mask)
  t_params = jax.tree.map(lambda x: torch.tensor(np.asarray(x, np.float64)), params)
  for b, n in enumerate([N, 5]):
    expected = torch_calibrate(t_params, torch.tensor(tokens[b, :n], dtype=torch.float64))
    assert_close(actual[b], expected.numpy())
  assert actual.shape == (2, K, E)


def test_wpr_by_hand():
  tokens = np.eye(2, dtype=np.float32)[None]
  # tau_r -> 0 reconstructs each token exactly; logits are then I / tau, every row's CE is
  # log(1 + e^{-1/tau}), in both directions.
  image_term, text_term = mulclip.word_patch_reconstruction(
      tokens, tokens, attention_temperature=0.01, temperature=1.0)
  assert_close(image_term, math.log1p(math.exp(-1.0)))
  assert_close(text_term, math.log1p(math.exp(-1.0)))


def test_wpr_matches_torch_loop():
  visual, textual = unit(0, 3, 5, E), unit(1, 3, 4, E)
  actual = mulclip.word_patch_reconstruction(visual, textual, attention_temperature=0.2,
                                             temperature=0.5)
  expected = torch_wpr(torch.tensor(visual, dtype=torch.float64),
                       torch.tensor(textual, dtype=torch.float64), 0.2, 0.5)
  assert_trees_close(actual, tuple(x.item() for x in expected))


def test_sap_by_hand():
  patches = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], np.float32)  # one patch per image
  sentences = np.array([[[1.0, 0.0]], [[0.6, 0.8]]], np.float32)
  value = mulclip.subcaption_patch_alignment(sentences, patches, np.ones((2, 1), bool),
                                             pairwise.infonce(0.0))
  # The aggregate is the single patch: the 2x2 InfoNCE of the contrastive hand example.
  i2t = math.log1p(math.exp(0.6 - 1.0)) + math.log1p(math.exp(0.0 - 0.8))
  t2i = math.log1p(math.exp(0.0 - 1.0)) + math.log1p(math.exp(0.6 - 0.8))
  assert_close(value, (i2t + t2i) / 4)


def test_sap_top_k_one_picks_the_best_patch():
  sentences, patches = unit(2, B, M, E), unit(3, B, N, E)
  aggregates = mulclip.aggregate_patches(sentences, patches, temperature=0.3, top_k=1)
  best = np.argmax(np.einsum("bme,bne->bmn", sentences, patches), axis=-1)
  assert_close(aggregates, np.take_along_axis(patches, best[..., None], axis=1), tol=1e-6)


def test_sap_matches_torch_loop_with_absent_sentences():
  sentences, patches = unit(4, B, M, E), unit(5, B, N, E)
  _, batch, _ = make_inputs()
  actual = mulclip.subcaption_patch_alignment(sentences, patches, batch["sentence_valid"],
                                              pairwise.infonce(2.0),
                                              temperature=0.3)
  expected = torch_sap(torch.tensor(sentences, dtype=torch.float64),
                       torch.tensor(patches, dtype=torch.float64), batch["sentence_valid"],
                       torch.tensor(2.0, dtype=torch.float64), 0.3)
  assert_close(actual, expected.item())


def test_objective_matches_torch_reference():
  (total, terms), grads = dense_value_and_grad()
  expected_total, expected_terms, expected_grads = torch_mulclip(*make_inputs(), 2.0)
  assert_close(total, expected_total)
  assert_trees_close(terms, expected_terms)
  assert_trees_close(without_eot_index(grads), expected_grads, tol=1e-4)


def test_padding_and_absent_sentences_do_not_change_value():
  outs, batch, params = make_inputs(1)
  total, terms = evaluate(outs, batch, params)
  noisy = jax.tree.map(np.copy, outs)
  after_eot = np.arange(L)[None] >= outs["text"]["eot_index"][:, None]
  noisy["text"]["tokens_projected"][after_eot] = 1e3  # EOT and padding are not calibrated
  noisy["sentences"][~batch["sentence_valid"]] = unit(7, int((~batch["sentence_valid"]).sum()), E)
  noisy_total, noisy_terms = evaluate(noisy, batch, params)
  assert_close(noisy_total, total)
  assert_trees_close(noisy_terms, terms)


def test_raw_patch_option_uses_normalised_patch_tokens():
  outs, batch, params = make_inputs(2)
  options = mulclip.MulCLIPOptions(sap_patches="raw", sap_temperature=0.3)
  sap_only = {"global_long": 0.0, "global_summary": 0.0, "wpr_image": 0.0, "wpr_text": 0.0}
  run = jax.jit(functools.partial(objective, options=options, weights=sap_only))
  _, terms = run(outs, batch, params, 2.0)
  assert list(terms) == ["sap"]
  patches = outs["image"]["tokens_projected"][:, 1:]
  patches = patches / np.linalg.norm(patches, axis=-1, keepdims=True)
  expected = torch_sap(torch.tensor(outs["sentences"], dtype=torch.float64),
                       torch.tensor(patches, dtype=torch.float64), batch["sentence_valid"],
                       torch.tensor(2.0, dtype=torch.float64), 0.3)
  assert_close(terms["sap"], expected.item())
  with pytest.raises(ValueError, match="sap_patches"):
    mulclip.MulCLIPOptions(sap_patches="boxes")


def test_zeroing_a_weight_removes_exactly_that_term():
  outs, batch, params = make_inputs(3)
  check_ablations(objective, mulclip.MULCLIP_WEIGHTS, outs, batch, params, 2.0)


def test_sharded_objective_equals_dense():
  """Jitted on 4 devices with batch-sharded inputs; gradients include the calibrators' params."""
  mesh = make_mesh()
  outs, batch, params = make_inputs()

  def loss(outs, batch, params, logit_scale):
    run = contrastive.data_parallel(
        lambda o, b, axis_name: objective(o, b, params, logit_scale, axis_name=axis_name), mesh)
    return run(outs, batch)

  grad_fn = jax.value_and_grad(loss, argnums=(0, 2, 3), has_aux=True, allow_int=True)
  with jax.set_mesh(mesh):
    (total, terms), grads = jax.jit(grad_fn)(*shard_batch((outs, batch), mesh), params, 2.0)
  (expected_total, expected_terms), expected_grads = dense_value_and_grad()
  assert_trees_close((total, terms), (expected_total, expected_terms))
  assert_trees_close(without_eot_index(grads), without_eot_index(expected_grads), tol=2e-5)
