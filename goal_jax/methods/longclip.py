"""Long-CLIP (Zhang et al., ECCV 2024): long-caption InfoNCE + primary-component short InfoNCE
(the backbone's contrastive term: the sigmoid on SigLIP)."""
from goal_jax.losses import contrastive
from goal_jax.losses import longclip as longclip_loss
from goal_jax.methods import base
from goal_jax.models import flops


def loss(params, batch, *, model, loss_config, mesh):
  towers = base.towers(model, params["clip"])
  image_embedding = towers.encode_image(batch["image"])["embedding"]
  text_embedding = towers.encode_text(batch["text"])["embedding"]
  short_embedding = towers.encode_text(batch["summary"])["embedding"]
  pair_loss = base.pair_loss(model, params["clip"], loss_config)

  identities = {"long": base.identity(batch["text"], batch),
                "short": base.identity(batch["summary"], batch)}

  def objective(image_embedding, text_embedding, short_embedding, identities, axis_name):
    return longclip_loss.longclip_objective(
        {"embedding": image_embedding}, {"embedding": text_embedding}, short_embedding,
        pair_loss=pair_loss, weights=base.weights_of(loss_config),
        num_components=loss_config.num_components, pca_scope=loss_config.pca_scope,
        identities=identities, axis_name=axis_name)

  return contrastive.data_parallel(objective, mesh)(image_embedding, text_embedding,
                                                    short_embedding, identities)


def forward_flops_per_pair(c, input_config) -> int:
  """Image, long caption and short caption (at the short context)."""
  return (flops.image_forward_flops(c) + flops.text_forward_flops(c, c.context_length)
          + flops.text_forward_flops(c, input_config.sentence_context))


METHOD = base.Method(name="longclip", recipe="longclip.py", fields=("global", "summary"),
                     loss=loss, forward_flops_per_pair=forward_flops_per_pair,
                     study_runs={"longclip": ()})  # long + PCM short
