"""GOAL (Choi et al., CVPR 2025): global + local InfoNCE + Token Similarity Learning.

The forward is shaped for speed: ONE vision forward over `[image; local_image]` and ONE text
forward over `[text; local_text]`, where the official code
(https://github.com/PerceptualAI-Lab/GOAL) runs each tower a second time for hidden states.
Without local terms (the global-only ablation) the local halves are not encoded at all. With
`config.input.local_context` shorter than the caption's context, the local sentences run as a
text forward of their own at that length: the same embeddings (the text tower is causal and
pooled at the EOT) for sentences that fit, and the ones cut short are logged per step as
`local_text/truncated`.
"""
from absl import logging
import jax
import jax.numpy as jnp

from goal_jax.data import detail as data_detail
from goal_jax.losses import contrastive
from goal_jax.losses import goal as goal_loss
from goal_jax.methods import base
from goal_jax.models import flops

_LOCAL_FIELDS = ("local_valid", "local_patch_mask", "local_span_mask")


def check_data(config, source) -> None:
  """Local terms refuse a dataset without local pairs (they would silently train global-only);
  a dataset where only some records have one is logged, and so are records whose local crops
  would come from the small stored copy (no detail copy: `data.detail`)."""
  if not goal_loss.reads_local_pairs(base.weights_of(config.loss)):
    return
  name, split = config.input.dataset, config.input.split
  # 128 records: enough to tell none from some, without reading 512 detail copies at start-up.
  found = data_detail.survey(source, max_records=128)
  with_pair, seen = found.with_pair, found.seen
  if not with_pair:
    raise ValueError(
        f"dataset {name!r} split {split!r} has no local pairs (none in {found.seen} records "
        f"read), so GOAL's local and TSL terms would all be 0. Mine them with LISM:\n"
        f"  python -m goal_jax.lism --data_dir={config.input.data_dir} --dataset={name} "
        f"--split={split} --checkpoint=/path/to/converted_clip\n"
        f"and train on dataset={name}_lism; or train global-only with configs/global_ft.py")
  logging.info("%s: %d of %d records read have a local pair", name, with_pair, seen)
  if found.small_copy_pairs:
    logging.warning(
        "%s: %d of the %d records read with a local pair have no detail copy: their local crops "
        "come from the small stored copy (short side 256 by default), not the original pixels as "
        "in GOAL. Prepare the dataset again (the detail copy is on by default) and re-run LISM.",
        name, found.small_copy_pairs, with_pair)


def step_metrics(batch) -> dict:
  """`local_pair_share`: how much of the batch fed the local terms; `local_text/truncated`: the
  local sentences `config.input.local_context` cut short."""
  out = {}
  if "local_valid" in batch:
    out["local_pair_share"] = jnp.mean(batch["local_valid"].astype(jnp.float32))
  if "local_text_truncated" in batch:
    out["local_text/truncated"] = jnp.sum(batch["local_text_truncated"] & batch["local_valid"])
  return out


def _encode_texts(model, clip_params, text, local_text):
  """Both halves in one text forward, or two when the local sentences are shorter. The second
  reads the params through an optimisation barrier: given the same weights, XLA's GPU dot merger
  would join the two forwards' products into one over their concatenated activations, copying
  them every layer (7 GB more copies a step at batch 64, compiled for an H100)."""
  if text.shape[1] != local_text.shape[1]:
    local_towers = base.towers(model, jax.lax.optimization_barrier(clip_params))
    return base.towers(model, clip_params).encode_text(text), local_towers.encode_text(local_text)
  return goal_loss.split_halves(
      base.towers(model, clip_params).encode_text(jnp.concatenate([text, local_text])),
      text.shape[0])


def loss(params, batch, *, model, loss_config, mesh):
  towers = base.towers(model, params["clip"])
  weights = base.weights_of(loss_config)
  size = batch["image"].shape[0]
  if goal_loss.reads_local_pairs(weights):
    images = towers.encode_image(jnp.concatenate([batch["image"], batch["local_image"]]))
    image_out, local_image_out = goal_loss.split_halves(images, size)
    text_out, local_text_out = _encode_texts(model, params["clip"], batch["text"],
                                             batch["local_text"])
    local_batch = {k: batch[k] for k in _LOCAL_FIELDS}
    identities = {"global": base.identity(batch["text"], batch),
                  "local": base.identity(batch["local_text"], batch)}
  else:
    image_out, text_out = towers.encode_image(batch["image"]), towers.encode_text(batch["text"])
    local_image_out = local_text_out = None
    local_batch = {}
    identities = {"global": base.identity(batch["text"], batch)}
  poolers = goal_loss.Poolers(image=towers.pool_region,
                              text=goal_loss.mean_then_head(towers.text_head))
  pair_loss = base.pair_loss(model, params["clip"], loss_config)

  def objective(image_out, text_out, local_image_out, local_text_out, local_batch, identities,
                axis_name):
    return goal_loss.goal_objective(
        image_out, text_out, local_image_out, local_text_out, local_batch, poolers=poolers,
        pair_loss=pair_loss, weights=weights,
        tsl_form=loss_config.get("tsl_form", "diagonal"), identities=identities,
        axis_name=axis_name)

  return contrastive.data_parallel(objective, mesh)(
      image_out, text_out, local_image_out, local_text_out, local_batch, identities)


def forward_flops_per_pair(c, input_config) -> int:
  """Image and caption twice (global and local halves; the local sentence at
  `local_context`), plus one head pass per TSL term."""
  local = input_config.get("local_context", 0) or c.context_length
  image, text = flops.image_forward_flops(c), flops.text_forward_flops(c, c.context_length)
  return (2 * image + text + flops.text_forward_flops(c, local) + flops.region_pool_flops(c)
          + flops.text_token_head_flops(c))


# GOAL and two ablations, each leaving one local objective out.
STUDY_RUNS = {
    "goal": (),                                                           # global + local + TSL
    "goal_no_tsl": ("--config.loss.weights.tsl_image=0", "--config.loss.weights.tsl_text=0"),
    "goal_no_local": ("--config.loss.weights.local=0",),                  # global + TSL
}

METHOD = base.Method(name="goal", recipe="goal.py", fields=("global", "local"), loss=loss,
                     forward_flops_per_pair=forward_flops_per_pair, check_data=check_data,
                     step_metrics=step_metrics, study_runs=STUDY_RUNS)
