"""Analytic forward FLOPs of CLIP's towers, the unit every method's cost is counted in.

For a tower of width D, depth L, MLP width F and T tokens, with output dim E (and patch size P
for the ViT):

  forward(T) = 2·T·L·(4·D² + 2·D·F)   matmuls: 2 · weights · tokens
             + 4·L·T²·D               attention scores and values (full T×T, also when causal)
             + 2·D·E                  the pooled head
             + 2·(T−1)·3P²·D          patch embedding (vision only)

SigLIP's vision tower has no class token (T = N patches) and pools by attention instead of a
projection (`attention_pool_flops`: a learned probe's query, keys and values of the N tokens,
the scores, the output projection and the MLP of one vector).

Layer norms, softmaxes and the loss are < 1 % at B/16 and left out. `python -m goal_jax.bench`
checks these counts against XLA's count of the lowered training step.
"""


def tower_forward_flops(width: int, layers: int, mlp_dim: int, tokens: int, embed_dim: int,
                        patch_inputs: int = 0) -> int:
  """Forward FLOPs of one sequence through a tower (formula in the module docstring).

  `patch_inputs` is 3·P² for the ViT (its conv stem runs on the `tokens − 1` patches), else 0.
  """
  matmuls = 2 * tokens * layers * (4 * width * width + 2 * width * mlp_dim)
  attention = 4 * layers * tokens * tokens * width
  stem = 2 * (tokens - 1) * patch_inputs * width if patch_inputs else 0
  return matmuls + attention + 2 * width * embed_dim + stem


def _attention_pools(c) -> bool:
  return c.pooling == "attention"


def image_tokens(c) -> int:
  """Tokens of the vision tower: the (S/P)² patches, and CLIP's class token."""
  return c.grid_size ** 2 + (0 if _attention_pools(c) else 1)


def attention_pool_flops(c, tokens: int) -> int:
  """SigLIP's pooling head over `tokens` tokens: probe query, keys and values, scores and
  weighted values, output projection, the MLP of the pooled vector."""
  width = c.vision_width
  return (2 * width * width + 4 * tokens * width * width + 4 * tokens * width
          + 2 * width * width + 4 * width * c.vision_mlp_dim)


def image_forward_flops(c) -> int:
  """One image through the vision tower (with its pooling to the embedding)."""
  if not _attention_pools(c):
    return tower_forward_flops(c.vision_width, c.vision_layers, c.vision_mlp_dim,
                               image_tokens(c), c.embed_dim, 3 * c.patch_size ** 2)
  patches = c.grid_size ** 2
  blocks = tower_forward_flops(c.vision_width, c.vision_layers, c.vision_mlp_dim, patches, 0)
  return blocks + 2 * patches * 3 * c.patch_size ** 2 * c.vision_width + attention_pool_flops(
      c, patches)


def text_forward_flops(c, tokens: int) -> int:
  """One caption of `tokens` tokens through the text tower."""
  return tower_forward_flops(c.text_width, c.text_layers, c.text_mlp_dim, tokens, c.embed_dim)


def image_token_head_flops(c) -> int:
  """One vision token through the tower's per-token head (`tokens_projected`): CLIP's
  projection, or SigLIP's pooling head on that one token (value, output projection, MLP)."""
  if not _attention_pools(c):
    return 2 * c.vision_width * c.embed_dim
  width = c.vision_width
  return 4 * width * width + 4 * width * c.vision_mlp_dim


def text_token_head_flops(c) -> int:
  """One text token through the head (width → embed_dim)."""
  return 2 * c.text_width * c.embed_dim


def region_pool_flops(c) -> int:
  """A box's patches to one embedding (`pool_region`, GOAL's TSL): CLIP's mean through the
  head, SigLIP's pooling head over the patches (counted over all of them: masked, not cut)."""
  if not _attention_pools(c):
    return image_token_head_flops(c)
  return attention_pool_flops(c, c.grid_size ** 2)
