"""Methods: from a batch to a loss. One forward per tower input, then the method's objective.

A method names (a) the pipeline fields it needs, (b) any trainable modules beside CLIP (MulCLIP's
token calibration), and (c) how its forward feeds `goal_jax.losses`. The trainable params are
`{"clip": <CLIP params>, **extras}`, so regex param groups read `clip/text/...`, `calibration/...`.

Forward passes are shaped for speed: GOAL runs ONE vision forward over `[image; local_image]` and
ONE text forward over `[text; local_text]` (the official code runs each tower twice); MulCLIP
runs the long captions at 248 tokens and the summary plus all sentences together at 77.
The objective itself runs under `contrastive.data_parallel` on the mesh, so the contrastive terms
all-gather exactly like the dense single-device computation.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from goal_jax.losses import contrastive
from goal_jax.losses import goal as goal_loss
from goal_jax.losses import longclip as longclip_loss
from goal_jax.losses import mulclip as mulclip_loss
from goal_jax.models import clip

# Pipeline field preset per method (`goal_jax.data.pipeline.FIELD_PRESETS` / groups).
FIELDS = {"global": "global", "goal": "goal", "mulclip": "mulclip", "longclip": "global,summary"}
METHODS = tuple(FIELDS)


def _check_method(method: str) -> None:
  if method not in FIELDS:
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")


def needs_local_pairs(method: str, loss_config: ml_collections.ConfigDict) -> bool:
  """Whether the method's weighted terms read local pairs (GOAL's local and TSL terms)."""
  _check_method(method)
  if method != "goal":
    return False
  weights = contrastive.resolve_weights(goal_loss.GOAL_WEIGHTS, _weights(loss_config))
  return any(weights[k] for k in goal_loss.LOCAL_TERMS)


def init_extra_params(method: str, loss_config: ml_collections.ConfigDict,
                      model_config: clip.CLIPConfig, rng: jax.Array) -> dict:
  """Params of the method's own modules (not CLIP's): MulCLIP's two calibration modules."""
  _check_method(method)
  if method != "mulclip":
    return {}
  module = mulclip_loss.TokenCalibration(num_tokens=loss_config.calibration_tokens)
  image_rng, text_rng = jax.random.split(rng)
  width = model_config.embed_dim
  image_tokens = jnp.zeros((1, model_config.grid_size ** 2, width), jnp.float32)
  text_tokens = jnp.zeros((1, model_config.context_length, width), jnp.float32)
  return {"calibration": {
      "image": module.init(image_rng, image_tokens)["params"],
      "text": module.init(text_rng, text_tokens)["params"]}}


def _encoders(model: clip.CLIP, clip_params: dict):
  variables = {"params": clip_params}
  encode_image = lambda x: model.apply(variables, x, method=clip.CLIP.encode_image)
  encode_text = lambda x: model.apply(variables, x, method=clip.CLIP.encode_text)
  heads = goal_loss.Heads(
      image=lambda x: model.apply(variables, x, method=clip.CLIP.image_head),
      text=lambda x: model.apply(variables, x, method=clip.CLIP.text_head))
  return encode_image, encode_text, heads


def _contrastive_options(loss_config) -> dict:
  return dict(label_smoothing=loss_config.label_smoothing, max_scale=loss_config.max_scale)


def _weights(loss_config) -> dict[str, float]:
  return dict(loss_config.weights.to_dict()) if loss_config.get("weights") else {}


def mulclip_options(loss_config) -> mulclip_loss.MulCLIPOptions:
  """`MulCLIPOptions` from the config's fields; `sap_top_k=0` (a config int) means all patches."""
  fields = {f: loss_config[f] for f in mulclip_loss.MulCLIPOptions.__dataclass_fields__
            if f in loss_config}
  if not fields.get("sap_top_k"):
    fields["sap_top_k"] = None
  return mulclip_loss.MulCLIPOptions(**fields)


def _goal(params, batch, *, model, loss_config, mesh):
  encode_image, encode_text, heads = _encoders(model, params["clip"])
  weights = contrastive.resolve_weights(goal_loss.GOAL_WEIGHTS, _weights(loss_config))
  size = batch["image"].shape[0]
  needs_local = any(weights[k] for k in goal_loss.LOCAL_TERMS)
  if needs_local:  # One forward per tower over [global; local].
    images = encode_image(jnp.concatenate([batch["image"], batch["local_image"]]))
    texts = encode_text(jnp.concatenate([batch["text"], batch["local_text"]]))
    image_out, local_image_out = goal_loss.split_halves(images, size)
    text_out, local_text_out = goal_loss.split_halves(texts, size)
  else:
    image_out, text_out = encode_image(batch["image"]), encode_text(batch["text"])
    local_image_out = local_text_out = None
  local_batch = {k: batch[k] for k in ("local_valid", "local_patch_mask", "local_span_mask")
                 if needs_local}

  def objective(image_out, text_out, local_image_out, local_text_out, local_batch, axis_name):
    return goal_loss.goal_objective(
        image_out, text_out, local_image_out, local_text_out, local_batch, heads=heads,
        logit_scale=params["clip"]["logit_scale"], weights=weights,
        tsl_form=loss_config.get("tsl_form", "diagonal"),
        axis_name=axis_name, **_contrastive_options(loss_config))

  return contrastive.data_parallel(objective, mesh)(
      image_out, text_out, local_image_out, local_text_out, local_batch)


def _mulclip(params, batch, *, model, loss_config, mesh):
  encode_image, encode_text, _ = _encoders(model, params["clip"])
  weights = contrastive.resolve_weights(mulclip_loss.MULCLIP_WEIGHTS, _weights(loss_config))
  options = mulclip_options(loss_config)
  image_out = encode_image(batch["image"])
  text_out = encode_text(batch["text"])
  sentences = batch["sentences"]
  size, num_sentences, length = sentences.shape
  short = jnp.concatenate([batch["summary"], sentences.reshape(size * num_sentences, length)])
  short_embedding = encode_text(short)["embedding"]
  summary_embedding = short_embedding[:size]
  sentence_embedding = short_embedding[size:].reshape(size, num_sentences, -1)
  calibration = mulclip_loss.TokenCalibration(num_tokens=loss_config.calibration_tokens)
  calibrators = mulclip_loss.Calibrators(
      image=lambda x, m: calibration.apply({"params": params["calibration"]["image"]}, x, m),
      text=lambda x, m: calibration.apply({"params": params["calibration"]["text"]}, x, m))
  image_out = {k: image_out[k] for k in ("embedding", "tokens_projected")}
  text_out = {k: text_out[k] for k in ("embedding", "tokens_projected", "eot_index")}

  def objective(image_out, text_out, summary_embedding, sentence_embedding, sentence_valid,
                axis_name):
    return mulclip_loss.mulclip_objective(
        image_out, text_out, summary_embedding, sentence_embedding,
        {"sentence_valid": sentence_valid}, calibrators=calibrators,
        logit_scale=params["clip"]["logit_scale"], weights=weights, options=options,
        axis_name=axis_name, **_contrastive_options(loss_config))

  return contrastive.data_parallel(objective, mesh)(
      image_out, text_out, summary_embedding, sentence_embedding, batch["sentence_valid"])


def _longclip(params, batch, *, model, loss_config, mesh):
  encode_image, encode_text, _ = _encoders(model, params["clip"])
  image_embedding = encode_image(batch["image"])["embedding"]
  text_embedding = encode_text(batch["text"])["embedding"]
  short_embedding = encode_text(batch["summary"])["embedding"]

  def objective(image_embedding, text_embedding, short_embedding, axis_name):
    return longclip_loss.longclip_objective(
        {"embedding": image_embedding}, {"embedding": text_embedding}, short_embedding,
        logit_scale=params["clip"]["logit_scale"], weights=_weights(loss_config),
        num_components=loss_config.num_components, axis_name=axis_name,
        **_contrastive_options(loss_config))

  return contrastive.data_parallel(objective, mesh)(image_embedding, text_embedding,
                                                    short_embedding)


def _global(params, batch, *, model, loss_config, mesh):
  """Global fine-tuning (GOAL's baseline): InfoNCE(image, long caption) only."""
  encode_image, encode_text, _ = _encoders(model, params["clip"])
  image_embedding = encode_image(batch["image"])["embedding"]
  text_embedding = encode_text(batch["text"])["embedding"]

  def objective(image_embedding, text_embedding, axis_name):
    loss = contrastive.infonce(image_embedding, text_embedding, params["clip"]["logit_scale"],
                               axis_name=axis_name, **_contrastive_options(loss_config))
    return loss, {"global": loss}

  return contrastive.data_parallel(objective, mesh)(image_embedding, text_embedding)


_OBJECTIVES: dict[str, Callable[..., Any]] = {
    "global": _global, "goal": _goal, "mulclip": _mulclip, "longclip": _longclip}


def make_loss_fn(method: str, model_config: clip.CLIPConfig,
                 loss_config: ml_collections.ConfigDict,
                 mesh: jax.sharding.Mesh | None = None
                 ) -> Callable[[dict, Mapping[str, jax.Array]], tuple[jax.Array, dict]]:
  """`loss_fn(params, batch) -> (loss, terms)` for `method`; pure, jittable."""
  _check_method(method)
  return functools.partial(_OBJECTIVES[method], model=clip.CLIP(model_config),
                           loss_config=loss_config, mesh=mesh)
