"""The method registry: every method's recipe loads and names it, its loss runs the same dense
and sharded; FineLIP's loss is its objective on the towers' outputs and it trains; MulCLIP's
"WPR replaced by batch-wise CLIM" is one config override."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax import config_utils
from goal_jax import methods
from goal_jax.bench import batches
from goal_jax.data import pipeline
from goal_jax.losses import clim, finelip, pairwise
from goal_jax.models import clip, token_aggregation
from goal_jax.training import loop
from test_losses_contrastive import make_mesh, shard_batch
from test_train import losses_of, prepare_synthetic

MODEL = clip.get_model_config("tiny/8", context_length=64)
BATCH = 8


def tiny_config(method, overrides=(), **args):
  arg = ",".join(f"{k}={v}" for k, v in {"variant": "tiny/8", "batch": BATCH, "steps": 6,
                                            "init": "random", **args}.items())
  config = config_utils.load_config(config_utils.recipe_path(methods.get(method).recipe), arg)
  config.model.update(dtype="float32", text_context=64)
  config.input.update(sentence_context=16, max_sentences=3)
  config.optim.update(schedule="constant", lr=1e-3, warmup_steps=0, weight_decay=0.0,
                      grad_accum_steps=1, param_groups=())
  config.loss.update({"calibration_tokens": 4, "aggregation_tokens": 4, **dict(overrides)})
  config.reset_logit_scale = None
  return config


def params_and_batch(method, config, seed=0):
  rng = jax.random.key(seed)
  params = {"clip": clip.init_params(MODEL, rng),
            **methods.get(method).init_extra_params(config.loss, MODEL, jax.random.fold_in(rng, 1))}
  batch = batches.synthetic_batch(MODEL, BATCH, sentence_context=16, max_sentences=3, seed=seed)
  return params, {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_recipe_names_its_method_and_valid_fields(name):
  method = methods.get(name)
  config = config_utils.load_config(config_utils.recipe_path(method.recipe))
  assert config.method == name
  assert config.optim.lr > 0  # the recipe writes its learning rate
  assert "global" in pipeline.field_groups(method.input_fields)
  with pytest.raises(ValueError, match="unknown method 'nope'"):
    methods.get("nope")


@pytest.mark.parametrize("name", ["finelip", "mulclip"])
def test_sharded_loss_equals_dense(name):
  """The loss under a 4-device mesh equals the single-device one (its terms all-gather)."""
  method = methods.get(name)
  config = tiny_config(name)
  params, batch = params_and_batch(name, config)
  dense = jax.jit(method.make_loss_fn(MODEL, config.loss))(params, batch)
  mesh = make_mesh()
  with jax.set_mesh(mesh):
    sharded = jax.jit(method.make_loss_fn(MODEL, config.loss, mesh))(params,
                                                                    shard_batch(batch, mesh))
  np.testing.assert_allclose(sharded[0], dense[0], rtol=2e-5)
  for key in dense[1]:
    np.testing.assert_allclose(sharded[1][key], dense[1][key], rtol=2e-5, err_msg=key)


def _encoded(params, batch):
  model = clip.CLIP(MODEL)
  image_out = model.apply({"params": params["clip"]}, batch["image"], method=clip.CLIP.encode_image)
  text_out = model.apply({"params": params["clip"]}, batch["text"], method=clip.CLIP.encode_text)
  return image_out, text_out


def test_finelip_loss_is_its_objective_on_the_towers_outputs():
  config = tiny_config("finelip", [("weights", {"global_long": 1.0, "clim": 1.0})])
  params, batch = params_and_batch("finelip", config)
  loss, terms = methods.get("finelip").make_loss_fn(MODEL, config.loss)(params, batch)
  image_out, text_out = _encoded(params, batch)
  aggregators = token_aggregation.per_modality(4, params["aggregation"])
  want, want_terms = finelip.finelip_objective(
      image_out, text_out, aggregators=aggregators,
      pair_loss=pairwise.infonce(params["clip"]["logit_scale"], label_smoothing=0.1),
      weights={"global_long": 1.0, "clim": 1.0})
  assert set(terms) == {"global_long", "clim"}
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(terms["clim"], want_terms["clim"], rtol=1e-5)
  # As released: the ranking loss alone, every caption its own image.
  config = tiny_config("finelip")
  loss, terms = methods.get("finelip").make_loss_fn(MODEL, config.loss)(params, batch)
  assert set(terms) == {"clim"}
  np.testing.assert_allclose(loss, want_terms["clim"], rtol=1e-5)


def test_mulclip_clim_ablation_is_one_override():
  """`--config.loss.token_alignment=clim`: WPR's two terms give way to FineLIP's ranking loss on
  the same calibrated tokens; the global and SAP terms keep their values."""
  config = tiny_config("mulclip")
  ablated = tiny_config("mulclip", [("token_alignment", "clim")])
  params, batch = params_and_batch("mulclip", config)
  method = methods.get("mulclip")
  _, terms = method.make_loss_fn(MODEL, config.loss)(params, batch)
  loss, clim_terms = method.make_loss_fn(MODEL, ablated.loss)(params, batch)
  assert set(terms) == {"global_long", "global_summary", "wpr_image", "wpr_text", "sap"}
  assert set(clim_terms) == {"global_long", "global_summary", "sap", "clim"}
  for key in ("global_long", "global_summary", "sap"):
    np.testing.assert_allclose(clim_terms[key], terms[key], rtol=1e-5, err_msg=key)
  image_out, text_out = _encoded(params, batch)
  image_tokens, text_tokens = clim.refined_tokens(
      image_out, text_out, token_aggregation.per_modality(4, params["calibration"]))
  want = clim.ranking_loss(clim.late_interaction(image_tokens, text_tokens))
  np.testing.assert_allclose(clim_terms["clim"], want, rtol=1e-5)
  weights = ablated.loss.weights
  np.testing.assert_allclose(
      loss, weights.global_long * terms["global_long"] + weights.global_summary
      * terms["global_summary"] + weights.sap * terms["sap"] + weights.wpr_image * want,
      rtol=1e-5)


def test_finelip_trains(tmp_path):
  data_dir = prepare_synthetic(str(tmp_path / "tfds"), BATCH)
  config = tiny_config("finelip", dataset="synthetic", data_dir=data_dir)
  config.log_every, config.checkpoint_every = 1, 1000
  config.progress_bar = config.tensorboard = False
  out = loop.run(config, str(tmp_path / "run"))
  losses = losses_of(str(tmp_path / "run"))
  assert out["step"] == 6 and len(losses) == 6 and all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.05, losses
