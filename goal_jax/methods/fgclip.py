"""FG-CLIP (Xie et al., ICML 2025): global long + short terms, region captions, hard negatives.

Its second stage as released (https://github.com/360CVGroup/FG-CLIP, first version at commit
0fcea59: `fgclip/model/clip_strc/fgclip.py` `FGCLIPModel.forward`, `fgclip/train/train_fgclip.py`).
The forward: ONE vision forward, whose projected patch tokens also give the region features
(RoIAlign of each box, `models/roi_align.py`), the long caption at the full context, and ONE text
forward for every short text of an image (summary, region captions, hard negatives) when they
share a length. A term with weight 0 is not computed and its texts are not encoded.

Region features pool the projected patch map, as the release pools its map after
`post_layernorm` and `visual_projection` (`get_image_box_roi_features`); the release's map is
the penultimate block's output sent through the last block with attention cut to the value path
(`forward_without_attn`), ours the last block's true output through the head
(`patch_tokens_projected`, the model contract's), so the method reads any family's towers.

Own params, beside the backbone's (`params["fgclip"]`): the two region temperatures, started at
the backbone's `logit_scale` as the release starts `logit_scale_finegraind` and
`logit_scale_hardneg` (`train_fgclip.py`: `torch.ones([]) * model.logit_scale`), and, when the
contrastive form is SigLIP's sigmoid, the region term's own bias, started at the backbone's
`logit_bias`: a region's caption competes with ~R·B others (B for an image's), so the prior a
bias encodes differs, and its own bias can move without moving the global terms'.
"""
import dataclasses

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from goal_jax.data import regions as data_regions
from goal_jax.losses import contrastive
from goal_jax.losses import fgclip as fgclip_loss
from goal_jax.methods import base
from goal_jax.models import flops
from goal_jax.models import roi_align
from goal_jax.text import packing as text_packing

EXTRAS = "fgclip"  # its params beside the backbone's: `fgclip/logit_scale_region`, ...
SCALES = ("logit_scale_region", "logit_scale_hard_negative")
REGION_BIAS = "logit_bias_region"
# What a direct `init_extra_params` call gets; `Method.init_params` then starts them at the
# backbone's values (`start_extra_params`). CLIP's initial ln(1/0.07) (the release's
# `logit_scale_init_value`) and SigLIP's initial bias.
LOGIT_SCALE_INIT = float(np.log(1 / 0.07))
LOGIT_BIAS_INIT = -10.0


def _weights(loss_config) -> dict[str, float]:
  return contrastive.resolve_weights(fgclip_loss.FGCLIP_WEIGHTS, base.weights_of(loss_config))


def init_extra_params(loss_config, model_config, rng) -> dict:
  del rng
  own = {name: jnp.asarray(LOGIT_SCALE_INIT, jnp.float32) for name in SCALES}
  if base.contrastive_form(loss_config, model_config) == "sigmoid":
    own[REGION_BIAS] = jnp.asarray(LOGIT_BIAS_INIT, jnp.float32)
  return {EXTRAS: own}


def start_extra_params(extras: dict, clip_params) -> dict:
  """The region temperatures (and bias) start at the backbone's, drawn or pretrained."""
  own = dict(extras[EXTRAS])
  for name in SCALES:
    own[name] = np.array(clip_params["logit_scale"], np.float32)
  if REGION_BIAS in own and "logit_bias" in clip_params:  # a CLIP has none: pair_loss says so
    own[REGION_BIAS] = np.array(clip_params["logit_bias"], np.float32)
  return {**extras, EXTRAS: own}


def check_data(config, source) -> None:
  """The region terms refuse a split without boxed pairs, the hard term one without hard
  negatives (they would silently be 0)."""
  w = _weights(config.loss)
  if not fgclip_loss.reads_regions(w):
    return
  found = data_regions.check(source, dataset=config.input.dataset, split=config.input.split,
                             data_dir=config.input.data_dir,
                             hard_negatives=bool(w["hard_negative"]))
  logging.info("%s: %d of %d records read have a boxed pair, %d with hard negatives (%.1f per "
               "pair)", config.input.dataset, found.with_region, found.seen,
               found.with_negatives, found.negatives_per_pair)


def _kept(batch) -> dict:
  """Region captions and hard negatives as the loss reads them: valid and, when the batch packs
  its short captions (`config.input.short_text_packing`), kept in the rows."""
  valid = {caption: batch[field].astype(bool) for caption, field in
           (("region_text", "region_valid"), ("region_negatives", "region_negative_valid"))
           if field in batch}
  if "short_kept" not in batch:
    return valid
  kept = text_packing.unpack(batch["short_kept"], batch, _CAPTIONS)
  return {k: v & kept[k] for k, v in valid.items()}


def step_metrics(batch) -> dict:
  """`region_share`: valid region slots of the batch; `hard_negative_share`: those with hard
  negatives (the rows the two region terms average over); with packed short captions,
  `short_text/dropped`: the region captions and hard negatives the rows had no room for."""
  if "region_valid" not in batch:
    return {}
  read = _kept(batch)
  valid = read["region_text"]
  with_negatives = valid & jnp.any(read["region_negatives"], axis=-1)
  out = {"region_share": jnp.mean(valid.astype(jnp.float32)),
         "hard_negative_share": jnp.mean(with_negatives.astype(jnp.float32))}
  if "short_kept" in batch:
    valid = _kept({k: v for k, v in batch.items() if k != "short_kept"})
    out["short_text/dropped"] = sum(jnp.sum(valid[k] & ~read[k]) for k in read)
  return out


def encode_texts_together(encode_text, texts: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Unit embeddings `[B, ..., E]` of the `[B, ..., L]` ids in `texts`, one text forward per
  length: each image's texts side by side (`[B, M, L]` -> `[B·M, L]`), so the rows of one
  image stay on the device that holds it."""
  by_length: dict[int, list[str]] = {}
  for name, ids in texts.items():
    by_length.setdefault(ids.shape[-1], []).append(name)
  out = {}
  for length, names in by_length.items():
    batch = texts[names[0]].shape[0]
    rows = [texts[name].reshape(batch, -1, length) for name in names]
    ids = jnp.concatenate(rows, axis=1)
    embedding = encode_text(ids.reshape(-1, length))["embedding"].reshape(batch, ids.shape[1], -1)
    splits = np.cumsum([r.shape[1] for r in rows])[:-1]
    for name, part in zip(names, jnp.split(embedding, splits, axis=1)):
      out[name] = part.reshape(*texts[name].shape[:-1], part.shape[-1])
  return out


def loss(params, batch, *, model, loss_config, mesh):
  towers = base.towers(model, params["clip"])
  own = params[EXTRAS]
  w = _weights(loss_config)
  reads_regions = fgclip_loss.reads_regions(w)
  image_out = towers.encode_image(batch["image"])
  long_embedding = (towers.encode_text(batch["text"])["embedding"] if w["global_long"]
                    else None)
  short_texts = {}
  if w["global_short"]:
    short_texts["summary"] = batch["summary"]
  if reads_regions:
    short_texts["region_text"] = batch["region_text"]
  if w["hard_negative"]:
    short_texts["region_negatives"] = batch["region_negatives"]
  if "short_ids" in batch:  # every short caption the batch carries, packed in rows
    short = text_packing.unpack(base.encode_packed(towers, batch), batch, _CAPTIONS)
  else:
    short = encode_texts_together(towers.encode_text, short_texts)
  regions = None
  if reads_regions:
    read = _kept(batch)
    grid = roi_align.as_grid(image_out["patch_tokens_projected"])
    regions = {"embedding": contrastive.l2_normalize(
                   roi_align.region_features(grid, batch["region_box"])),
               "text": short["region_text"], "valid": read["region_text"]}
    if w["hard_negative"]:
      regions.update(negatives=short["region_negatives"],
                     negative_valid=read["region_negatives"])
  pair_loss = base.pair_loss(model, params["clip"], loss_config)
  # The same form and options, at the region term's own temperature (and bias).
  region_pair_loss = dataclasses.replace(pair_loss, logit_scale=own["logit_scale_region"],
                                         logit_bias=own.get(REGION_BIAS))
  hard_negative_scale = contrastive.temperature(own["logit_scale_hard_negative"],
                                                loss_config.get("max_scale"))

  identities = {"global_long": base.identity(batch["text"], batch)}
  if w["global_short"]:
    identities["global_short"] = base.identity(batch["summary"], batch)
  if reads_regions:  # a region is its image's record and its index there
    count = batch["region_valid"].shape[1]
    identities["region"] = contrastive.row_identity(
        batch["region_text"], base.record_index(batch)[:, None] * count + jnp.arange(count))

  def objective(image_embedding, long_embedding, short_embedding, regions, identities,
                axis_name):
    return fgclip_loss.fgclip_objective(
        image_embedding, long_embedding, short_embedding, regions, pair_loss=pair_loss,
        region_pair_loss=region_pair_loss, hard_negative_scale=hard_negative_scale, weights=w,
        identities=identities, axis_name=axis_name)

  return contrastive.data_parallel(objective, mesh)(
      image_out["embedding"], long_embedding, short.get("summary"), regions, identities)


def forward_flops_per_pair(c, input_config) -> int:
  """Image, long caption, the short texts (summary, R region captions, R·K hard negatives, or
  their packed rows) and every patch through the per-token head (the map RoIAlign pools)."""
  regions = input_config.max_regions * (1 + input_config.hard_negatives)
  width = input_config.get("short_text_packing", 0)
  if width:
    short = (input_config.short_text_rows * flops.text_forward_flops(c, width)
             + (1 + regions - input_config.short_text_rows) * flops.text_token_head_flops(c))
  else:
    short = (flops.text_forward_flops(c, input_config.sentence_context)
             + regions * flops.text_forward_flops(c, input_config.region_context))
  return (flops.image_forward_flops(c) + flops.text_forward_flops(c, c.context_length) + short
          + c.grid_size ** 2 * flops.image_token_head_flops(c))


# FG-CLIP's second stage, and the same without its hard-negative term.
STUDY_RUNS = {
    "fgclip": (),
    "fgclip_no_hard": ("--config.loss.weights.hard_negative=0",),
}

_CAPTIONS = text_packing.captions_of(("summary", "regions"))  # its packed rows, in order

METHOD = base.Method(name="fgclip", recipe="fgclip.py", fields=("global", "summary", "regions"),
                     loss=loss, forward_flops_per_pair=forward_flops_per_pair,
                     init_extra_params=init_extra_params, start_extra_params=start_extra_params,
                     check_data=check_data, step_metrics=step_metrics, study_runs=STUDY_RUNS)
