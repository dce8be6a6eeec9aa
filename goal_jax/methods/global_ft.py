"""Global fine-tuning, GOAL's baseline (its Table 1, row 1): the contrastive term between image and
long caption only (InfoNCE on CLIP, SigLIP's sigmoid on SigLIP)."""
from goal_jax.losses import contrastive
from goal_jax.methods import base
from goal_jax.models import flops


def loss(params, batch, *, model, loss_config, mesh):
  towers = base.towers(model, params["clip"])
  image_embedding = towers.encode_image(batch["image"])["embedding"]
  text_embedding = towers.encode_text(batch["text"])["embedding"]
  pair_loss = base.pair_loss(model, params["clip"], loss_config)

  def objective(image_embedding, text_embedding, identity, axis_name):
    total = pair_loss(image_embedding, text_embedding, identity=identity, axis_name=axis_name)
    return total, {"global": total}

  return contrastive.data_parallel(objective, mesh)(image_embedding, text_embedding,
                                                    base.identity(batch["text"], batch))


def forward_flops_per_pair(c, input_config) -> int:
  """One image and one long caption."""
  del input_config
  return flops.image_forward_flops(c) + flops.text_forward_flops(c, c.context_length)


METHOD = base.Method(name="global", recipe="global_ft.py", fields=("global",), loss=loss,
                     forward_flops_per_pair=forward_flops_per_pair,
                     study_runs={"global": ()})  # GOAL's baseline
