"""MulCLIP's SAP open choices (`MulCLIPOptions.sap_*`), each against a numpy hand computation:
softmax / top-k / straight-through argmax weights, raw vs calibrated patches, shared / own /
fixed temperature (and where each sends its gradient), the sentence stop-gradient; then the
method's loss with every non-default choice, dense equal to sharded on 4 devices."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax import methods
from goal_jax.losses import mulclip, pairwise
from goal_jax.methods import mulclip as mulclip_method
from goal_jax.models import clip, token_aggregation
from test_losses_contrastive import assert_close, assert_trees_close, make_mesh, shard_batch, unit
from test_methods import MODEL, params_and_batch, tiny_config

B, M, N, E = 3, 2, 4, 3
TAU = 0.3  # the aggregation softmax's temperature
SAP_ONLY = {"global_long": 0.0, "global_summary": 0.0, "wpr_image": 0.0, "wpr_text": 0.0}
VALID = np.array([[True, True], [True, False], [True, True]])  # one absent sentence


def inputs(seed=0):
  return unit(seed, B, M, E), unit(seed + 1, B, N, E)


def np_weights(sentences, patches, top_k=None, hard=False):
  scores = np.einsum("bme,bne->bmn", sentences, patches).astype(np.float64) / TAU
  if top_k is not None:
    kth = np.sort(scores, axis=-1)[..., -top_k][..., None]
    scores = np.where(scores >= kth, scores, -np.inf)
  if hard:
    return np.eye(scores.shape[-1])[np.argmax(scores, axis=-1)]
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  return weights / weights.sum(-1, keepdims=True)


def np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_infonce(image, text, scale):
  """Symmetric InfoNCE, mean over rows, by hand."""
  logits = scale * image @ text.T
  i2t = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  t2i = logits - np.log(np.exp(logits).sum(0, keepdims=True))
  return -0.5 * (np.mean(np.diag(i2t)) + np.mean(np.diag(t2i)))


def np_sap(sentences, patches, scale, valid=VALID, **weight_options):
  aggregates = np_normalize(np.einsum("bmn,bne->bme",
                                      np_weights(sentences, patches, **weight_options), patches))
  return np.mean([np_infonce(aggregates[valid[:, i], i], sentences[valid[:, i], i], scale)
                  for i in range(sentences.shape[1])])


def sap(sentences, patches, logit_scale, **options):
  return mulclip.subcaption_patch_alignment(sentences, patches, VALID,
                                            pairwise.infonce(logit_scale), temperature=TAU,
                                            **options)


@pytest.mark.parametrize("top_k,hard", [(None, False), (2, False), (None, True)],
                         ids=["softmax", "top_k", "argmax"])
def test_weights_aggregates_and_loss_by_hand(top_k, hard):
  sentences, patches = inputs()
  weights = mulclip.patch_weights(sentences, patches, temperature=TAU, top_k=top_k, hard=hard)
  expected = np_weights(sentences, patches, top_k=top_k, hard=hard)
  assert_close(weights, expected, tol=1e-6)
  aggregates = mulclip.aggregate_patches(sentences, patches, temperature=TAU, top_k=top_k,
                                         hard=hard)
  assert_close(aggregates, np_normalize(np.einsum("bmn,bne->bme", expected, patches)), tol=1e-6)
  assert_close(sap(sentences, patches, 1.5, top_k=top_k, hard=hard),
               np_sap(sentences, patches, math.exp(1.5), top_k=top_k, hard=hard))


def test_top_k_keeps_only_k_patches():
  sentences, patches = inputs(1)
  weights = np.asarray(mulclip.patch_weights(sentences, patches, temperature=TAU, top_k=2))
  assert ((weights > 0).sum(-1) == 2).all()
  scores = np.einsum("bme,bne->bmn", sentences, patches)
  kept = np.argsort(scores, axis=-1)[..., -2:]
  assert_close(np.take_along_axis(weights, kept, -1).sum(-1), 1.0, tol=1e-6)


def test_argmax_forward_is_the_best_patch_and_backward_the_softmax():
  sentences, patches = inputs(2)
  best = np.argmax(np.einsum("bme,bne->bmn", sentences, patches), axis=-1)
  aggregates = mulclip.aggregate_patches(sentences, patches, temperature=TAU, hard=True)
  assert_close(aggregates, np.take_along_axis(patches, best[..., None], axis=1), tol=1e-6)
  cotangent = unit(9, B, M, N)  # any downstream use of the weights

  def through(hard):
    return jax.grad(lambda s, p: jnp.sum(cotangent * mulclip.patch_weights(
        s, p, temperature=TAU, hard=hard)), argnums=(0, 1))(sentences, patches)

  straight_through, soft = through(True), through(False)
  assert_trees_close(straight_through, soft, tol=1e-7)
  assert np.abs(soft[0]).max() > 1e-3  # a real gradient, not two zeros


def test_options_check_and_map_the_choices():
  assert mulclip.MulCLIPOptions(sap_top_k=4).sap_aggregation == "top_k"  # as before the field
  assert (mulclip.MulCLIPOptions(sap_top_k=4)
          == mulclip.MulCLIPOptions(sap_aggregation="top_k", sap_top_k=4))
  with pytest.raises(ValueError, match="needs sap_top_k"):
    mulclip.MulCLIPOptions(sap_aggregation="top_k")
  with pytest.raises(ValueError, match="not 'argmax'"):
    mulclip.MulCLIPOptions(sap_aggregation="argmax", sap_top_k=2)
  for field in ("sap_patches", "sap_aggregation", "sap_logit_scale", "sap_stop_gradient"):
    with pytest.raises(ValueError, match=field):
      mulclip.MulCLIPOptions(**{field: "nope"})


def sap_objective(sentences, patches, logit_scale, own=None, calibrators=None, **options):
  """The objective with SAP alone (the other terms weighted 0), on `patches` as the patch tokens."""
  image_out = {"embedding": patches[:, 0], "patch_tokens_projected": patches}
  total, terms = mulclip.mulclip_objective(
      image_out, {}, None, sentences, {"sentence_valid": VALID}, calibrators=calibrators,
      pair_loss=pairwise.infonce(logit_scale), weights=SAP_ONLY,
      options=mulclip.MulCLIPOptions(sap_temperature=TAU, **options), sap_logit_scale=own)
  assert list(terms) == ["sap"]
  return total


@pytest.mark.parametrize("choice", ["calibrated", "raw"])
def test_sap_patches_calibrated_or_raw(choice):
  sentences = unit(3, B, M, E)
  raw = 2.0 * unit(4, B, N, E)  # not unit: "raw" normalises them

  def calibrate(x, mask):  # a stand-in calibration: mixes the patches into N' = 3 tokens
    del mask
    return jnp.stack([x[:, 0] + x[:, 1], x[:, 2] - x[:, 0], x[:, 3]], axis=1)

  calibrators = token_aggregation.PerModality(image=calibrate, text=None)
  value = sap_objective(sentences, raw, 0.7, calibrators=calibrators, sap_patches=choice)
  patches = raw if choice == "raw" else np.asarray(calibrate(raw, None))
  assert_close(value, np_sap(sentences, np_normalize(patches), math.exp(0.7)))


@pytest.mark.parametrize("choice", ["shared", "own", "fixed"])
def test_logit_scale_choices_and_their_gradients(choice):
  """shared: exp(backbone's); own: exp(SAP's), its gradient there alone; fixed: 1/0.07, none."""
  sentences, patches = inputs(5)
  grad_fn = jax.value_and_grad(
      lambda backbone, own: sap_objective(sentences, patches, backbone, own,
                                          sap_patches="raw", sap_logit_scale=choice),
      argnums=(0, 1))
  value, (backbone_grad, own_grad) = grad_fn(jnp.float32(1.2), jnp.float32(2.0))
  scale = {"shared": math.exp(1.2), "own": math.exp(2.0), "fixed": 1 / 0.07}[choice]
  assert_close(value, np_sap(sentences, patches, scale))
  assert (backbone_grad != 0) == (choice == "shared")
  assert (own_grad != 0) == (choice == "own")


def test_own_scale_without_its_param_is_refused():
  options = mulclip.MulCLIPOptions(sap_logit_scale="own")
  with pytest.raises(ValueError, match="params\\['sap_logit_scale'\\]"):
    mulclip.sap_pair_loss(pairwise.infonce(1.0), options)


@pytest.mark.parametrize("choice", ["own", "fixed"])
def test_sigmoid_form_keeps_its_bias_at_sap_scale(choice):
  """SigLIP: SAP's term stays the sigmoid with the backbone's bias, at SAP's scale."""
  sentences, patches = inputs(6)
  backbone = pairwise.PairLoss("sigmoid", jnp.float32(1.2), jnp.float32(-3.0))
  options = mulclip.MulCLIPOptions(sap_logit_scale=choice)
  own = jnp.float32(2.0)
  sap_loss = mulclip.sap_pair_loss(backbone, options, own)
  want_scale = {"own": 2.0, "fixed": math.log(1 / 0.07)}[choice]
  reference = pairwise.PairLoss("sigmoid", jnp.float32(want_scale), jnp.float32(-3.0))
  assert_close(sap_loss.parts(patches[:, 0], sentences[:, 0]),
               reference.parts(patches[:, 0], sentences[:, 0]))


def test_sentence_stop_gradient_trains_the_image_side_only():
  sentences, patches = inputs(7)

  def grads(stop):
    return jax.value_and_grad(lambda s, p: sap(s, p, 1.5, stop_sentence_gradient=stop),
                              argnums=(0, 1))(sentences, patches)

  value, (sentence_grad, patch_grad) = grads(True)
  free_value, (free_sentence_grad, free_patch_grad) = grads(False)
  assert_close(value, free_value, tol=1e-7)  # the forward is unchanged
  assert not np.asarray(sentence_grad).any()  # exactly zero
  assert np.abs(free_sentence_grad).max() > 1e-3
  # The patches' gradient is the same: the sentences were constants to it in both.
  assert np.abs(patch_grad).max() > 1e-3
  assert_close(patch_grad, free_patch_grad, tol=1e-6)


def test_own_scale_param_exists_only_when_chosen_and_starts_at_the_backbones():
  method = methods.get("mulclip")
  start = jax.device_get(clip.init_params(MODEL, jax.random.key(1)))
  start["logit_scale"] = np.float32(math.log(50.0))
  own = method.init_params(tiny_config("mulclip", [("sap_logit_scale", "own")]), MODEL,
                           jax.random.key(0), start)
  np.testing.assert_allclose(own[mulclip_method.SAP_SCALE], math.log(50.0), rtol=1e-6)
  assert own[mulclip_method.SAP_SCALE].dtype == np.float32 and own["sap_logit_scale"].shape == ()
  for choice in ("shared", "fixed"):
    config = tiny_config("mulclip", [("sap_logit_scale", choice)])
    assert set(method.init_params(config, MODEL, jax.random.key(0), start)) == {"clip",
                                                                               "calibration"}


# Every non-default SAP choice, in two compilations (top_k and argmax exclude each other).
CHOICES = {
    "topk_raw_fixed": [("sap_aggregation", "top_k"), ("sap_top_k", 2), ("sap_patches", "raw"),
                       ("sap_logit_scale", "fixed")],
    "argmax_own_stopgrad": [("sap_aggregation", "argmax"), ("sap_logit_scale", "own"),
                            ("sap_stop_gradient", "sentence")],
}


@pytest.mark.parametrize("name", list(CHOICES))
def test_method_loss_with_non_default_choices_sharded_equals_dense(name):
  """The whole MulCLIP loss trains with them; on a 4-device mesh its value and gradients equal
  the single-device ones; SAP's own temperature, when it has one, gets a gradient."""
  method = methods.get("mulclip")
  config = tiny_config("mulclip", CHOICES[name])
  params, batch = params_and_batch("mulclip", config)
  params = {**params, **method.start_extra_params(
      {k: v for k, v in params.items() if k != "clip"}, params["clip"])}
  grad = lambda mesh: jax.value_and_grad(method.make_loss_fn(MODEL, config.loss, mesh),
                                         has_aux=True)
  (dense, terms), dense_grads = jax.jit(grad(None))(params, batch)
  assert np.isfinite(dense) and set(terms) == set(mulclip.MULCLIP_WEIGHTS)
  mesh = make_mesh()
  with jax.set_mesh(mesh):
    (sharded, sharded_terms), sharded_grads = jax.jit(grad(mesh))(params,
                                                                  shard_batch(batch, mesh))
  assert_close(sharded, dense, tol=2e-5)
  assert_trees_close(sharded_terms, terms, tol=2e-5)
  assert_trees_close(sharded_grads, dense_grads, tol=1e-4)
  if mulclip_method.SAP_SCALE in params:
    assert dense_grads[mulclip_method.SAP_SCALE] != 0
