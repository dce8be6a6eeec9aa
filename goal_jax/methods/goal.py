"""GOAL (Choi et al., CVPR 2025): global + local InfoNCE + Token Similarity Learning.

The forward is shaped for speed: ONE vision forward over `[image; local_image]` and ONE text
forward over `[text; local_text]`, where the official code
(https://github.com/PerceptualAI-Lab/GOAL) runs each tower a second time for hidden states.
Without local terms (the global-only ablation) the local halves are not encoded at all.
"""
import jax.numpy as jnp

from goal_jax.losses import contrastive
from goal_jax.losses import goal as goal_loss
from goal_jax.methods import base
from goal_jax.models import flops

_LOCAL_FIELDS = ("local_valid", "local_patch_mask", "local_span_mask")


def needs_local_pairs(loss_config) -> bool:
  return goal_loss.reads_local_pairs(base.weights_of(loss_config))


def loss(params, batch, *, model, loss_config, mesh):
  towers = base.towers(model, params["clip"])
  weights = base.weights_of(loss_config)
  size = batch["image"].shape[0]
  if goal_loss.reads_local_pairs(weights):
    images = towers.encode_image(jnp.concatenate([batch["image"], batch["local_image"]]))
    texts = towers.encode_text(jnp.concatenate([batch["text"], batch["local_text"]]))
    image_out, local_image_out = goal_loss.split_halves(images, size)
    text_out, local_text_out = goal_loss.split_halves(texts, size)
    local_batch = {k: batch[k] for k in _LOCAL_FIELDS}
  else:
    image_out, text_out = towers.encode_image(batch["image"]), towers.encode_text(batch["text"])
    local_image_out = local_text_out = None
    local_batch = {}
  heads = goal_loss.Heads(image=towers.image_head, text=towers.text_head)

  def objective(image_out, text_out, local_image_out, local_text_out, local_batch, axis_name):
    return goal_loss.goal_objective(
        image_out, text_out, local_image_out, local_text_out, local_batch, heads=heads,
        logit_scale=params["clip"]["logit_scale"], weights=weights,
        tsl_form=loss_config.get("tsl_form", "diagonal"), axis_name=axis_name,
        **base.contrastive_options(loss_config))

  return contrastive.data_parallel(objective, mesh)(
      image_out, text_out, local_image_out, local_text_out, local_batch)


def forward_flops_per_pair(c, input_config) -> int:
  """Image and caption twice (global and local halves), plus one head pass per TSL term."""
  del input_config
  image, text = flops.image_forward_flops(c), flops.text_forward_flops(c, c.context_length)
  return 2 * image + 2 * text + flops.head_flops(c, c.vision_width) + flops.head_flops(
      c, c.text_width)


METHOD = base.Method(name="goal", recipe="goal.py", fields=("global", "local"), loss=loss,
                     forward_flops_per_pair=forward_flops_per_pair,
                     needs_local_pairs=needs_local_pairs)
