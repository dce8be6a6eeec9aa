"""FineLIP (Asokan et al., CVPR 2025): CLIM late interaction on ATRM-refined tokens, trained
with a bidirectional hinge ranking loss (https://github.com/tiiuae/FineLIP).

One vision and one 248-token text forward per pair; the two token aggregation modules (ATRM)
train beside CLIP as `aggregation/image` and `aggregation/text`. Retrieval ranks by FineLIP's
fused score, 0.8·global cosine + 0.2·CLIM on the refined tokens (`SCORER`).
"""
from goal_jax.losses import clim
from goal_jax.losses import contrastive
from goal_jax.losses import finelip as finelip_loss
from goal_jax.methods import base
from goal_jax.models import flops
from goal_jax.models import token_aggregation


def options_of(loss_config) -> finelip_loss.FineLIPOptions:
  return base.options_of(finelip_loss.FineLIPOptions, loss_config)


def init_extra_params(loss_config, model_config, rng) -> dict:
  return {"aggregation": token_aggregation.init_per_modality(loss_config.aggregation_tokens,
                                                             model_config, rng)}


def aggregators_of(loss_config, params) -> token_aggregation.PerModality:
  """The two ATRMs bound to `params["aggregation"]` (the trainer's params or the extra ones)."""
  return token_aggregation.per_modality(loss_config.aggregation_tokens, params["aggregation"])


def loss(params, batch, *, model, loss_config, mesh):
  towers = base.towers(model, params["clip"])
  image_out = towers.encode_image(batch["image"])
  text_out = towers.encode_text(batch["text"])
  image_out = {k: image_out[k] for k in clim.IMAGE_KEYS}
  text_out = {k: text_out[k] for k in clim.TEXT_KEYS}
  calibrators = aggregators_of(loss_config, params)
  pair_loss = base.pair_loss(model, params["clip"], loss_config)

  def objective(image_out, text_out, identity, axis_name):
    return finelip_loss.finelip_objective(
        image_out, text_out, aggregators=calibrators, pair_loss=pair_loss,
        weights=base.weights_of(loss_config), options=options_of(loss_config),
        identity=identity, axis_name=axis_name)

  return contrastive.data_parallel(objective, mesh)(image_out, text_out,
                                                    base.identity(batch["text"], batch))


def forward_flops_per_pair(c, input_config) -> int:
  """One image and one long caption; the aggregation and CLIM are < 1 % at B/16."""
  del input_config
  return flops.image_forward_flops(c) + flops.text_forward_flops(c, c.context_length)


def image_features(image_out, extra_params, loss_config) -> dict:
  """The global embedding and the refined tokens `[CLS, ATRM(patches)]`."""
  tokens = clim.refined_image_tokens(image_out, aggregators_of(loss_config, extra_params).image)
  return {"embedding": image_out["embedding"], "tokens": tokens}


def text_features(text_out, extra_params, loss_config) -> dict:
  """The global embedding and the refined tokens `[ATRM(SOT+words), EOT]`."""
  tokens = clim.refined_text_tokens(text_out, aggregators_of(loss_config, extra_params).text)
  return {"embedding": text_out["embedding"], "tokens": tokens}


def score(image_features, text_features, loss_config):
  """FineLIP's retrieval score: global_weight·cosine + (1 − global_weight)·CLIM."""
  options = options_of(loss_config)
  interaction = clim.late_interaction(image_features["tokens"], text_features["tokens"],
                                      negative_slope=options.negative_slope)
  return clim.fused_score(image_features["embedding"], text_features["embedding"], interaction,
                          global_weight=options.global_weight)


# 100 texts per block as FineLIP's evaluation: [Ni, 100, 40, 40] fp32 cosines at B/16, 3.2 GB
# for 5,000 images.
SCORER = base.Scorer(image_features=image_features, text_features=text_features, score=score,
                     texts_per_block=100)

METHOD = base.Method(name="finelip", recipe="finelip.py", fields=("global",), loss=loss,
                     forward_flops_per_pair=forward_flops_per_pair,
                     init_extra_params=init_extra_params, scorer=SCORER,
                     study_runs={"finelip": ()})  # CLIM ranking loss
