"""MulCLIP: global (long + ½ summary), word-patch reconstruction (WPR) and sub-caption patches (SAP).

The long captions run at the full context (248 tokens); the summary and every sentence run
together in one 77-token text forward, or, with `config.input.short_text_packing` (a width),
packed back to back in one row per pair (`goal_jax.text.packing`: the same embeddings for the
captions that fit, the rest dropped and logged as `short_text/dropped`). Two token aggregation
modules (FineLIP's ATRM, which MulCLIP calls token calibration) train beside CLIP as
`calibration/image` and `calibration/text`. With `config.loss.sap_logit_scale=own`, SAP's own log temperature trains
beside them as `sap_logit_scale`, started at the backbone's `logit_scale` (as FG-CLIP starts its
region temperatures); it exists only then, so other MulCLIP checkpoints keep their param tree.
"""
import jax.numpy as jnp
import numpy as np

from goal_jax.losses import clim
from goal_jax.losses import contrastive
from goal_jax.losses import mulclip as mulclip_loss
from goal_jax.methods import base
from goal_jax.models import flops
from goal_jax.models import token_aggregation
from goal_jax.text import packing as text_packing


SAP_SCALE = "sap_logit_scale"  # params key of SAP's own log temperature
# What a direct `init_extra_params` call gets (CLIP's initial ln(1/0.07));
# `start_extra_params` then sets it to the backbone's.
LOGIT_SCALE_INIT = float(np.log(1 / 0.07))


def _options(loss_config) -> mulclip_loss.MulCLIPOptions:
  return base.options_of(mulclip_loss.MulCLIPOptions, loss_config)


def init_extra_params(loss_config, model_config, rng) -> dict:
  extras = {"calibration": token_aggregation.init_per_modality(loss_config.calibration_tokens,
                                                               model_config, rng)}
  if _options(loss_config).sap_logit_scale == "own":
    extras[SAP_SCALE] = jnp.asarray(LOGIT_SCALE_INIT, jnp.float32)
  return extras


def start_extra_params(extras: dict, clip_params) -> dict:
  """SAP's own temperature, when it has one, starts at the backbone's (drawn or pretrained)."""
  if SAP_SCALE not in extras:
    return extras
  return {**extras, SAP_SCALE: np.array(clip_params["logit_scale"], np.float32)}


def _short_embeddings(towers, batch):
  """(summary [B, E], sentences [B, M, E], sentence_valid [B, M]): all at the short context in
  one text forward, or from the pipeline's packed rows when the batch has them."""
  sentences = batch["sentences"]
  if "short_ids" not in batch:
    size, num_sentences, length = sentences.shape
    short = jnp.concatenate([batch["summary"], sentences.reshape(size * num_sentences, length)])
    embedding = towers.encode_text(short)["embedding"]
    return (embedding[:size], embedding[size:].reshape(size, num_sentences, -1),
            batch["sentence_valid"])
  embedding = text_packing.unpack(base.encode_packed(towers, batch), batch, _CAPTIONS)
  kept = text_packing.unpack(batch["short_kept"], batch, _CAPTIONS)
  return embedding["summary"], embedding["sentences"], kept["sentences"]


def step_metrics(batch) -> dict:
  """Sentences the packed rows had no room for (`config.input.short_text_packing`)."""
  if "short_kept" not in batch:
    return {}
  kept = text_packing.unpack(batch["short_kept"], batch, _CAPTIONS)
  return {"short_text/dropped": jnp.sum(batch["sentence_valid"] & ~kept["sentences"])}


def loss(params, batch, *, model, loss_config, mesh):
  towers = base.towers(model, params["clip"])
  image_out = towers.encode_image(batch["image"])
  text_out = towers.encode_text(batch["text"])
  sentences = batch["sentences"]
  summary_embedding, sentence_embedding, sentence_valid = _short_embeddings(towers, batch)
  calibrators = token_aggregation.per_modality(loss_config.calibration_tokens,
                                               params["calibration"])
  image_out = {k: image_out[k] for k in clim.IMAGE_KEYS}
  text_out = {k: text_out[k] for k in clim.TEXT_KEYS}
  pair_loss = base.pair_loss(model, params["clip"], loss_config)

  identities = {"global_long": base.identity(batch["text"], batch),
                "global_summary": base.identity(batch["summary"], batch),
                "sap": base.identity(sentences, batch)}  # text keys [B, M, 2]

  def objective(image_out, text_out, summary_embedding, sentence_embedding, sentence_valid,
                identities, axis_name):
    return mulclip_loss.mulclip_objective(
        image_out, text_out, summary_embedding, sentence_embedding,
        {"sentence_valid": sentence_valid}, calibrators=calibrators, pair_loss=pair_loss,
        weights=base.weights_of(loss_config), options=_options(loss_config),
        sap_logit_scale=params.get(SAP_SCALE), identities=identities, axis_name=axis_name)

  return contrastive.data_parallel(objective, mesh)(
      image_out, text_out, summary_embedding, sentence_embedding, sentence_valid, identities)


def forward_flops_per_pair(c, input_config) -> int:
  """Image, long caption, summary + M sentences at the short context (or their packed row),
  per-token heads on the image's tokens and the long caption's."""
  width, rows = input_config.get("short_text_packing", 0), input_config.get("short_text_rows", 1)
  if width:
    # The rows of `width` tokens (each with one caption's head), and the other captions' heads.
    short = (rows * flops.text_forward_flops(c, width)
             + (1 + input_config.max_sentences - rows) * flops.text_token_head_flops(c))
  else:
    short = (1 + input_config.max_sentences) * flops.text_forward_flops(
        c, input_config.sentence_context)
  token_heads = (flops.image_tokens(c) * flops.image_token_head_flops(c)
                 + c.context_length * flops.text_token_head_flops(c))
  return (flops.image_forward_flops(c) + flops.text_forward_flops(c, c.context_length)
          + short + token_heads)


# MulCLIP, its paper's ablations of the two local levels, and SAP's open choices (one run each
# away from the direct reading, `MulCLIPOptions`; top_k keeps a quarter of the demo's 16
# calibrated tokens).
_SAP_READING = "--config.loss.sap_stop_gradient=none"
STUDY_RUNS = {
    "mulclip": (),                                                        # global + WPR + SAP
    "mulclip_no_wpr": ("--config.loss.weights.wpr_image=0", "--config.loss.weights.wpr_text=0"),
    "mulclip_no_sap": ("--config.loss.weights.sap=0",),                   # global + WPR
    # SAP's open choices, each changed alone from the direct reading (no stop-gradient), which
    # is the first run; MulCLIPOptions says which won on data seed 0 and became the default.
    **{name: (_SAP_READING, *overrides) for name, overrides in {
        "mulclip_sap_no_stopgrad": (),
        "mulclip_sap_topk": ("--config.loss.sap_aggregation=top_k", "--config.loss.sap_top_k=4"),
        "mulclip_sap_argmax": ("--config.loss.sap_aggregation=argmax",),
        "mulclip_sap_raw": ("--config.loss.sap_patches=raw",),
        "mulclip_sap_own_scale": ("--config.loss.sap_logit_scale=own",),
        "mulclip_sap_fixed_scale": ("--config.loss.sap_logit_scale=fixed",),
    }.items()},
}

_FIELDS = ("global", "summary", "sentences")
_CAPTIONS = text_packing.captions_of(_FIELDS)  # what its packed rows hold, in order

METHOD = base.Method(name="mulclip", recipe="mulclip.py", fields=_FIELDS,
                     loss=loss, forward_flops_per_pair=forward_flops_per_pair,
                     init_extra_params=init_extra_params, start_extra_params=start_extra_params,
                     step_metrics=step_metrics, study_runs=STUDY_RUNS)
