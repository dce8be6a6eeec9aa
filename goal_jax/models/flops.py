"""Analytic forward FLOPs of CLIP's towers, the unit every method's cost is counted in.

For a tower of width D, depth L, MLP width F and T tokens, with output dim E (and patch size P
for the ViT):

  forward(T) = 2·T·L·(4·D² + 2·D·F)   matmuls: 2 · weights · tokens
             + 4·L·T²·D               attention scores and values (full T×T, also when causal)
             + 2·D·E                  the pooled head
             + 2·(T−1)·3P²·D          patch embedding (vision only)

Layer norms, softmaxes and the loss are < 1 % at B/16 and left out. `python -m goal_jax.bench`
checks these counts against XLA's count of the lowered training step.
"""
from goal_jax.models import clip


def tower_forward_flops(width: int, layers: int, mlp_dim: int, tokens: int, embed_dim: int,
                        patch_inputs: int = 0) -> int:
  """Forward FLOPs of one sequence through a tower (formula in the module docstring).

  `patch_inputs` is 3·P² for the ViT (its conv stem runs on the `tokens − 1` patches), else 0.
  """
  matmuls = 2 * tokens * layers * (4 * width * width + 2 * width * mlp_dim)
  attention = 4 * layers * tokens * tokens * width
  stem = 2 * (tokens - 1) * patch_inputs * width if patch_inputs else 0
  return matmuls + attention + 2 * width * embed_dim + stem


def image_forward_flops(c: clip.CLIPConfig) -> int:
  """One image through the vision tower: 1 + (S/P)² tokens."""
  return tower_forward_flops(c.vision_width, c.vision_layers, c.vision_mlp_dim,
                             1 + c.grid_size ** 2, c.embed_dim, 3 * c.patch_size ** 2)


def text_forward_flops(c: clip.CLIPConfig, tokens: int) -> int:
  """One caption of `tokens` tokens through the text tower."""
  return tower_forward_flops(c.text_width, c.text_layers, c.text_mlp_dim, tokens, c.embed_dim)


def head_flops(c: clip.CLIPConfig, width: int) -> int:
  """One token through a projection head (width → embed_dim)."""
  return 2 * width * c.embed_dim
