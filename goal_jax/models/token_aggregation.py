"""Learned token aggregation: many patch or word tokens summarised by a few learned mixtures.

FineLIP (Asokan et al., CVPR 2025; https://github.com/tiiuae/FineLIP) calls it ATRM, the
adaptive token refinement module; MulCLIP's paper calls the same module token calibration. Both
train it beside CLIP, one instance per modality, on projected tokens before normalisation.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

_einsum = functools.partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST)


class TokenAggregation(nn.Module):
  """FineLIP's ATRM, MulCLIP's token calibration: N tokens → `num_tokens` convex combinations.

  A score MLP (LayerNorm → Dense(C→ratio·C) → GELU → Dense(→N′)) gives every source token a
  score per output slot; the `[N′, N]` scores times a learnable scalar (init 1) are softmaxed over
  the valid source tokens only, and the output is A·X. Input: projected, unnormalised tokens, as
  in FineLIP (its aggregation runs before `F.normalize`). LayerNorm eps and exact GELU follow
  PyTorch, so ported weights give the same numbers.
  """
  num_tokens: int = 39  # int(196 · 0.4 · 0.5), FineLIP's default for both modalities.
  hidden_ratio: float = 0.2

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    width = tokens.shape[-1]
    x = nn.LayerNorm(epsilon=1e-5, name="norm")(tokens)
    x = nn.Dense(int(width * self.hidden_ratio), name="hidden")(x)
    x = nn.gelu(x, approximate=False)
    scores = nn.Dense(self.num_tokens, name="scores")(x)  # [..., N, N']
    scale = self.param("scale", nn.initializers.ones, ())
    scores = jnp.swapaxes(scores, -1, -2).astype(jnp.float32) * scale  # [..., N', N]
    if mask is not None:
      scores = jnp.where(mask[..., None, :], scores, -1e9)
    weights = jax.nn.softmax(scores, axis=-1)
    return _einsum("...kn,...nc->...kc", weights, tokens.astype(jnp.float32))


def init_per_modality(num_tokens: int, model_config, rng: jax.Array) -> dict:
  """Params of one module per modality, `{"image": ..., "text": ...}`, for a CLIP whose
  projected tokens have width `model_config.embed_dim`."""
  module = TokenAggregation(num_tokens=num_tokens)
  image_rng, text_rng = jax.random.split(rng)
  width = model_config.embed_dim
  image_tokens = jnp.zeros((1, model_config.grid_size ** 2, width), jnp.float32)
  text_tokens = jnp.zeros((1, model_config.context_length, width), jnp.float32)
  return {"image": module.init(image_rng, image_tokens)["params"],
          "text": module.init(text_rng, text_tokens)["params"]}


# One module bound to its params: `(tokens [B, N, E], mask [B, N]) -> [B, N′, E]`.
Aggregate = Callable[[jax.Array, jax.Array], jax.Array]


class PerModality(NamedTuple):
  """One aggregation module per modality, each bound to its params."""
  image: Aggregate
  text: Aggregate


def per_modality(num_tokens: int, params: dict) -> PerModality:
  """The two modules, bound to the params `init_per_modality` made."""
  module = TokenAggregation(num_tokens=num_tokens)
  return PerModality(image=lambda x, m: module.apply({"params": params["image"]}, x, m),
                     text=lambda x, m: module.apply({"params": params["text"]}, x, m))


def text_token_mask(text_end: jax.Array, length: int) -> jax.Array:
  """The text tokens both papers aggregate: those before the tower's `text_end` (CLIP: SOT and
  the words, not EOT nor the padding after it; SigLIP: the words, not the EOS run)."""
  return jnp.arange(length)[None, :] < text_end[:, None]
