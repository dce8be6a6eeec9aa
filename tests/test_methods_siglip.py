"""Every method on a tiny SigLIP: its contrastive terms are SigLIP's sigmoid (the softmax still
selectable), dense equals sharded on 4 devices, GOAL's TSL pools a box with the pooling head, a
few trainer steps lower the loss, a resumed run is bit-identical, and the finished model keeps
its tokenizer."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax import config_utils
from goal_jax import methods
from goal_jax.bench import batches
from goal_jax.losses import goal as goal_loss
from goal_jax.losses import sigmoid
from goal_jax.models import checkpoint as model_checkpoint
from goal_jax.models import siglip
from goal_jax.text import sentencepiece_tokenizer
from goal_jax.training import loop
from goal_jax.training import preemption
from test_losses_contrastive import make_mesh, shard_batch
from test_train import losses_of, prepare_synthetic

MODEL = siglip.get_model_config("siglip-tiny/4", context_length=32, vocab_size=256)
BATCH = 8


def tiny_config(method, overrides=(), **args):
  arg = ",".join(f"{k}={v}" for k, v in {"backbone": "siglip", "variant": "siglip-tiny/4",
                                            "batch": BATCH, "steps": 6, "init": "random",
                                            **args}.items())
  config = config_utils.load_config(config_utils.recipe_path(methods.get(method).recipe), arg)
  config.model.update(dtype="float32", text_context=32)
  config.input.update(sentence_context=16, max_sentences=3)
  config.optim.update(schedule="constant", lr=1e-3, warmup_steps=0, weight_decay=0.0,
                      grad_accum_steps=1, param_groups=())
  config.loss.update({"calibration_tokens": 4, "aggregation_tokens": 4, "num_components": 4,
                      **dict(overrides)})
  return config


def params_and_batch(method, config, seed=0):
  params = methods.get(method).init_params(config, MODEL, jax.random.key(seed))
  batch = batches.synthetic_batch(MODEL, BATCH, sentence_context=16, max_sentences=3, seed=seed)
  return params, {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_every_method_runs_on_siglip_dense_equals_sharded(name):
  """Value and gradients of the loss on one device equal those on a 4-device mesh, where the
  sigmoid terms run as the ring."""
  method = methods.get(name)
  config = tiny_config(name)
  params, batch = params_and_batch(name, config)
  grad = lambda mesh: jax.value_and_grad(method.make_loss_fn(MODEL, config.loss, mesh),
                                         has_aux=True)
  (dense, terms), dense_grads = jax.jit(grad(None))(params, batch)
  mesh = make_mesh()
  with jax.set_mesh(mesh):
    (sharded, sharded_terms), sharded_grads = jax.jit(grad(mesh))(params, shard_batch(batch, mesh))
  assert np.isfinite(dense) and terms
  np.testing.assert_allclose(sharded, dense, rtol=2e-5)
  for key in terms:
    np.testing.assert_allclose(sharded_terms[key], terms[key], rtol=2e-5, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(sharded_grads), jax.tree.leaves(dense_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
  if name != "finelip":  # as released FineLIP trains its ranking loss alone: no contrastive term
    assert np.abs(dense_grads["clip"]["logit_bias"]) > 0  # the sigmoid's bias is trained


def _towers(params, batch):
  model = siglip.SigLIP(MODEL)
  apply = functools.partial(model.apply, {"params": params["clip"]})
  return (apply(batch["image"], method=siglip.SigLIP.encode_image),
          apply(batch["text"], method=siglip.SigLIP.encode_text), apply)


def test_global_term_is_the_sigmoid_loss_and_softmax_is_selectable():
  config = tiny_config("global")
  params, batch = params_and_batch("global", config)
  image_out, text_out, _ = _towers(params, batch)
  loss, terms = methods.get("global").make_loss_fn(MODEL, config.loss)(params, batch)
  want = sigmoid.sigmoid_loss(image_out["embedding"], text_out["embedding"],
                              params["clip"]["logit_scale"], params["clip"]["logit_bias"])
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  softmax = tiny_config("global", [("contrastive", "softmax")])
  loss, _ = methods.get("global").make_loss_fn(MODEL, softmax.loss)(params, batch)
  scale = np.exp(float(params["clip"]["logit_scale"]))
  logits = scale * np.asarray(image_out["embedding"], np.float64) @ np.asarray(
      text_out["embedding"], np.float64).T
  log_softmax = lambda x: x - np.log(np.exp(x).sum(1, keepdims=True))
  expected = -(np.trace(log_softmax(logits)) + np.trace(log_softmax(logits.T))) / (2 * BATCH)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_goal_tsl_pools_the_box_with_the_pooling_head():
  """SigLIP has no class token: the patch mask covers all N tokens and the box is pooled by the
  pooling head attending to its patches (`SigLIP.pool_region`)."""
  config = tiny_config("goal", [("weights", {"global": 0.0, "local": 0.0, "tsl_image": 1.0,
                                             "tsl_text": 0.0})])
  params, batch = params_and_batch("goal", config)
  image_out, _, apply = _towers(params, batch)
  local = apply(batch["local_image"], method=siglip.SigLIP.encode_image)["embedding"]
  _, terms = methods.get("goal").make_loss_fn(MODEL, config.loss)(params, batch)
  pooled = apply(image_out["tokens"], batch["local_patch_mask"],
                 method=siglip.SigLIP.pool_region)
  cosine = np.sum(np.asarray(pooled) * np.asarray(local), axis=-1)
  assert batch["local_patch_mask"].shape[1] == MODEL.grid_size ** 2
  np.testing.assert_allclose(terms["tsl_image"], np.mean((cosine - 1.0) ** 2), rtol=1e-5)


def test_clip_refuses_the_sigmoid():
  from test_methods import MODEL as CLIP_MODEL, tiny_config as clip_config  # noqa: PLC0415
  from test_methods import params_and_batch as clip_params_and_batch  # noqa: PLC0415
  config = clip_config("global", [("contrastive", "sigmoid")])
  params, batch = clip_params_and_batch("global", config)
  with pytest.raises(ValueError, match="logit bias"):
    methods.get("global").make_loss_fn(CLIP_MODEL, config.loss)(params, batch)


@pytest.fixture(scope="module")
def data_and_tokenizer(tmp_path_factory):
  """One batch of `synthetic` training records and a SentencePiece model of its captions."""
  root = prepare_synthetic(str(tmp_path_factory.mktemp("tfds")), BATCH)
  from goal_jax import demo  # noqa: PLC0415
  return root, demo.ensure_tokenizer(root)


def train_config(method, data_dir, tokenizer, steps):
  config = tiny_config(method, dataset="synthetic", data_dir=data_dir, steps=steps)
  config.model.tokenizer = tokenizer
  config.model.text_context = 64
  config.input.sentence_context = 24
  config.log_every = 1
  config.checkpoint_every = 1000
  config.progress_bar = config.tensorboard = False
  config.evals.benchmarks = ""
  return config


@pytest.mark.parametrize("method", ["global", "goal", "mulclip"])
def test_a_few_steps_lower_the_loss(method, data_and_tokenizer, tmp_path):
  config = train_config(method, *data_and_tokenizer, steps=6)
  config.model.update(variant="siglip-demo")
  out = loop.run(config, str(tmp_path))
  losses = losses_of(str(tmp_path))
  assert out["step"] == 6 and all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.05, losses


def test_resume_on_siglip_is_bit_identical_and_keeps_the_tokenizer(data_and_tokenizer, tmp_path,
                                                                   monkeypatch):
  data_dir, tokenizer_path = data_and_tokenizer
  config = train_config("goal", data_dir, tokenizer_path, steps=4)
  config.model.variant = "siglip-demo"
  loop.run(config, str(tmp_path / "straight"))
  original = preemption.PreemptionGuard.should_stop
  monkeypatch.setattr(preemption.PreemptionGuard, "should_stop",
                      lambda self, step: step == 2 or original(self, step))
  assert loop.run(config, str(tmp_path / "resumed"))["step"] == 2
  monkeypatch.setattr(preemption.PreemptionGuard, "should_stop", original)
  assert loop.run(config, str(tmp_path / "resumed"))["step"] == 4
  assert losses_of(str(tmp_path / "resumed")) == losses_of(str(tmp_path / "straight"))
  model_dir = str(tmp_path / "resumed" / "model")
  a, _ = model_checkpoint.load_model(str(tmp_path / "straight" / "model"))
  b, config_b = model_checkpoint.load_model(model_dir)
  assert isinstance(config_b, siglip.SigLIPConfig) and "logit_bias" in b
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The finished model reads its tokenizer back: the one it was trained with.
  kept = sentencepiece_tokenizer.from_checkpoint(model_dir)
  given = sentencepiece_tokenizer.from_checkpoint(tokenizer_path)
  text = "A small red circle."
  assert kept.encode(text) == given.encode(text) and os.path.isfile(
      os.path.join(model_dir, "text_processing.json"))


def test_the_backbones_the_recipes_name_are_their_families_variants():
  from goal_jax import constants  # noqa: PLC0415
  from goal_jax.models import families  # noqa: PLC0415
  for name in constants.BACKBONES:
    family = families.named(name)
    for variant in (family.default_variant, family.demo_variant):
      assert families.of(families.get_variant(variant)) is family, variant
