"""MulCLIP: global (long + ½ summary), word-patch reconstruction (WPR) and sub-caption patches (SAP).

The long captions run at the full context (248 tokens); the summary and every sentence run
together in one 77-token text forward. Two token aggregation modules (FineLIP's ATRM, which
MulCLIP calls token calibration) train beside CLIP as `calibration/image` and
`calibration/text`.
"""
import jax.numpy as jnp

from goal_jax.losses import clim
from goal_jax.losses import contrastive
from goal_jax.losses import mulclip as mulclip_loss
from goal_jax.methods import base
from goal_jax.models import flops
from goal_jax.models import token_aggregation


def init_extra_params(loss_config, model_config, rng) -> dict:
  return {"calibration": token_aggregation.init_per_modality(loss_config.calibration_tokens,
                                                             model_config, rng)}


def loss(params, batch, *, model, loss_config, mesh):
  towers = base.towers(model, params["clip"])
  image_out = towers.encode_image(batch["image"])
  text_out = towers.encode_text(batch["text"])
  sentences = batch["sentences"]
  size, num_sentences, length = sentences.shape
  short = jnp.concatenate([batch["summary"], sentences.reshape(size * num_sentences, length)])
  short_embedding = towers.encode_text(short)["embedding"]
  summary_embedding = short_embedding[:size]
  sentence_embedding = short_embedding[size:].reshape(size, num_sentences, -1)
  calibrators = token_aggregation.per_modality(loss_config.calibration_tokens,
                                               params["calibration"])
  image_out = {k: image_out[k] for k in clim.IMAGE_KEYS}
  text_out = {k: text_out[k] for k in clim.TEXT_KEYS}
  pair_loss = base.pair_loss(model, params["clip"], loss_config)

  def objective(image_out, text_out, summary_embedding, sentence_embedding, sentence_valid,
                axis_name):
    return mulclip_loss.mulclip_objective(
        image_out, text_out, summary_embedding, sentence_embedding,
        {"sentence_valid": sentence_valid}, calibrators=calibrators, pair_loss=pair_loss,
        weights=base.weights_of(loss_config),
        options=base.options_of(mulclip_loss.MulCLIPOptions, loss_config), axis_name=axis_name)

  return contrastive.data_parallel(objective, mesh)(
      image_out, text_out, summary_embedding, sentence_embedding, batch["sentence_valid"])


def forward_flops_per_pair(c, input_config) -> int:
  """Image, long caption, summary + M sentences at the short context, per-token heads on the
  image's tokens and the long caption's."""
  short = flops.text_forward_flops(c, input_config.sentence_context)
  token_heads = (flops.image_tokens(c) * flops.image_token_head_flops(c)
                 + c.context_length * flops.text_token_head_flops(c))
  return (flops.image_forward_flops(c) + flops.text_forward_flops(c, c.context_length)
          + (1 + input_config.max_sentences) * short + token_heads)


# MulCLIP and its paper's ablations of the two local levels.
STUDY_RUNS = {
    "mulclip": (),                                                        # global + WPR + SAP
    "mulclip_no_wpr": ("--config.loss.weights.wpr_image=0", "--config.loss.weights.wpr_text=0"),
    "mulclip_no_sap": ("--config.loss.weights.sap=0",),                   # global + WPR
}

METHOD = base.Method(name="mulclip", recipe="mulclip.py", fields=("global", "summary", "sentences"),
                     loss=loss, forward_flops_per_pair=forward_flops_per_pair,
                     init_extra_params=init_extra_params, study_runs=STUDY_RUNS)
