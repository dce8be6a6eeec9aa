"""SigLIP and SigLIP 2 (fixed resolution) in Flax Linen, with big_vision's param names.

Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (ICCV 2023) and Tschannen et al.,
"SigLIP 2" (2025); reference code https://github.com/google-research/big_vision
(`models/vit.py` with `pool_type="map"`, `models/proj/image_text/text_transformer.py`,
`two_towers.py`) and transformers' `SiglipModel`. The fixed-resolution SigLIP 2 checkpoints use
the same towers; they differ from SigLIP 1 in the vocabulary (Gemma's 256k) only.

- Vision: conv patches (with bias), learned positions, no class token, pre-LN blocks, a final
  LayerNorm (`encoder_norm`), then the multi-head attention pooling head (`MAPHead_0`): a learned
  probe attends over the patch tokens, then LayerNorm + MLP residual.
- Text: token embedding, learned positions, *non-causal* pre-LN blocks, `encoder_norm`, pooled at
  the last position (the checkpoints were trained with the text padded to the full context, so
  what the last position reads depends on that padding), then a Dense `head`.
- `logit_scale` (big_vision's `t`) and `logit_bias` (`b`): `logits = exp(t) cos + b`.

Param tree: `img/{embedding, pos_embedding, Transformer/{encoderblock_i/{LayerNorm_0,
MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_1, MlpBlock_0/{Dense_0,Dense_1}},
encoder_norm}, MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}}`,
`txt/{Embed_0, pos_embedding, Encoder_0/{encoderblock_i, encoder_norm}, head}`, `logit_scale`,
`logit_bias`: big_vision's `two_towers` tree with `t`/`b` renamed (scalars here, `(1,)` there).

The outputs follow the model contract of `goal_jax.models.clip` (DESIGN.md): `embedding` (unit),
`tokens` (last block, before the final LayerNorm), `tokens_projected` (every token through the
tower's head) and, for text, `eot_index` (the pooled position). SigLIP has no per-token head, so
the choice made here: a token's head is the attention-pooling head restricted to that one token
(its softmax over a single key is 1, so the probe drops out: `out(value(LN(x)))`, then the MLP
residual), and a region's head is the pooling head restricted to the region's tokens
(`pool_region`). Pooling a region by the head the model was trained to pool with keeps the
region embedding in the space the image embedding lives in; for one token it reduces to the
closed form above, and for all tokens it is exactly the image embedding.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from goal_jax.models import attention as attention_lib
from goal_jax.models import towers
from goal_jax.models.clip import REMAT_POLICIES, l2_normalize

FAMILY = "siglip"
LOGIT_SCALE_INIT = math.log(10.0)  # the SigLIP paper's t' = log 10 and b = -10
LOGIT_BIAS_INIT = -10.0


@dataclasses.dataclass(frozen=True)
class SigLIPConfig(towers.TowerConfig):
  """Architecture (saved with checkpoints) plus compute knobs (dtype, attention, remat)."""
  image_size: int
  patch_size: int
  vision_width: int
  vision_layers: int
  vision_heads: int
  vision_mlp_dim: int
  text_width: int
  text_layers: int
  text_heads: int
  text_mlp_dim: int
  embed_dim: int  # the text head's output; the image embedding is the vision width
  context_length: int = 64
  vocab_size: int = 32000
  layer_norm_eps: float = 1e-6
  layer_norm_fast_variance: bool = True  # a compute knob: `towers.layer_norm`
  layout_pin: bool = True  # a compute knob: `towers.pin_row_major`
  patch_embedding: str = "auto"  # a compute knob: `towers.PatchEmbedding`
  token_embedding_grad: str = "auto"  # a compute knob: `towers.embed_tokens`
  dtype: str = "float32"
  attention: str = "xla"
  attention_pad_multiple: int | None = None  # None: 8 for cudnn, no padding for xla.
  remat: str | None = None
  pooling = "attention"  # the MAP head (a class attribute, not a saved field)

  def __post_init__(self):
    self.check_heads()
    if self.embed_dim != self.vision_width:
      raise ValueError(f"embed_dim {self.embed_dim} must equal vision_width {self.vision_width}: "
                       "SigLIP's image embedding is the pooling head's output")


def _towers(width, layers, heads, mlp, text=None) -> dict:
  text_width, text_layers, text_heads, text_mlp = text or (width, layers, heads, mlp)
  return dict(vision_width=width, vision_layers=layers, vision_heads=heads, vision_mlp_dim=mlp,
              text_width=text_width, text_layers=text_layers, text_heads=text_heads,
              text_mlp_dim=text_mlp, embed_dim=width)


_B = _towers(768, 12, 12, 3072)
_L = _towers(1024, 24, 16, 4096)
_SO400M = _towers(1152, 27, 16, 4304)
SIGLIP_VOCAB = 32000  # the English c4 SentencePiece
SIGLIP2_VOCAB = 256000  # Gemma's tokenizer

# The published fixed-resolution checkpoints (big_vision's `VANITY_NAMES`, transformers'
# google/siglip-* and google/siglip2-*): SigLIP 1 with the English 32k vocabulary, SigLIP 2 with
# Gemma's; So400m/14 at 224 px reads 16 tokens in SigLIP 1.
VARIANTS = {
    **{f"siglip-B/16-{s}": dict(_B, image_size=s, patch_size=16, vocab_size=SIGLIP_VOCAB)
       for s in (224, 256, 384, 512)},
    **{f"siglip-L/16-{s}": dict(_L, image_size=s, patch_size=16, vocab_size=SIGLIP_VOCAB)
       for s in (256, 384)},
    "siglip-So400m/14-224": dict(_SO400M, image_size=224, patch_size=14, context_length=16,
                                 vocab_size=SIGLIP_VOCAB),
    "siglip-So400m/14-384": dict(_SO400M, image_size=384, patch_size=14, vocab_size=SIGLIP_VOCAB),
    **{f"siglip2-B/16-{s}": dict(_B, image_size=s, patch_size=16, vocab_size=SIGLIP2_VOCAB)
       for s in (224, 256, 384, 512)},
    **{f"siglip2-L/16-{s}": dict(_L, image_size=s, patch_size=16, vocab_size=SIGLIP2_VOCAB)
       for s in (256, 384, 512)},
    **{f"siglip2-So400m/14-{s}": dict(_SO400M, image_size=s, patch_size=14,
                                      vocab_size=SIGLIP2_VOCAB) for s in (224, 384)},
    **{f"siglip2-So400m/16-{s}": dict(_SO400M, image_size=s, patch_size=16,
                                      vocab_size=SIGLIP2_VOCAB) for s in (256, 384, 512)},
    # The README demo's SigLIP: the demo CLIP's size (64 px, 8x8 grid, width 64, 3 layers).
    "siglip-demo": dict(_towers(64, 3, 4, 256), image_size=64, patch_size=8, vocab_size=512),
    # Tiny towers for tests and smoke runs.
    "siglip-tiny/4": dict(_towers(32, 2, 2, 64), image_size=16, patch_size=4, context_length=16,
                          vocab_size=128),
}


def get_model_config(name: str, **overrides) -> SigLIPConfig:
  return towers.get_variant(SigLIPConfig, VARIANTS, name, **overrides)


def variant_of(config: SigLIPConfig) -> str | None:
  return towers.variant_of(config, VARIANTS)


def gelu(x):
  return jax.nn.gelu(x, approximate=True)  # big_vision's nn.gelu; transformers' gelu_pytorch_tanh


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    y = gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0")(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="Dense_1")(y)


class EncoderBlock(nn.Module):
  """Pre-LN block, non-causal in both towers; `true_length` masks padded keys."""
  heads: int
  mlp_dim: int
  attention: str
  eps: float
  dtype: Any
  fast_variance: bool = True

  @nn.compact
  def __call__(self, x, true_length=None):
    norm = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype,
                                     use_fast_variance=self.fast_variance, name=name)
    y, _ = attention_lib.MultiHeadAttention(
        self.heads, causal=False, implementation=self.attention, dtype=self.dtype,
        name="MultiHeadDotProductAttention_0")(norm("LayerNorm_0")(x), true_length)
    x = x + y
    return x + MlpBlock(self.mlp_dim, self.dtype, name="MlpBlock_0")(norm("LayerNorm_1")(x))


class Encoder(nn.Module):
  """`layers` blocks (`encoderblock_{i}`) and the final `encoder_norm`, called apart (`norm`)
  so that the tokens before it are the contract's `tokens`."""
  layers: int
  heads: int
  mlp_dim: int
  config: SigLIPConfig

  def setup(self):
    c = self.config
    block = EncoderBlock
    if c.remat is not None:
      if c.remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be None or one of {sorted(REMAT_POLICIES)}, got {c.remat!r}")
      block = nn.remat(block, policy=REMAT_POLICIES[c.remat])
    dtype = jnp.dtype(c.dtype)
    self.blocks = [block(self.heads, self.mlp_dim, c.attention, c.layer_norm_eps, dtype,
                         c.layer_norm_fast_variance, name=f"encoderblock_{i}") for i in range(self.layers)]
    self.encoder_norm = towers.layer_norm(c, dtype)

  def __call__(self, x):
    """The blocks, padded once for cuDNN (padding masked as keys, cut off after)."""
    x, length = attention_lib.pad_to_multiple(x, self.config.pad_multiple)
    x = towers.pin_row_major(x, self.config)
    true_length = None if x.shape[1] == length else length
    for block in self.blocks:
      x = block(x, true_length)
    return x[:, :length]

  def norm(self, x):
    return self.encoder_norm(x)


class CrossAttention(nn.Module):
  """Queries from `queries`, keys and values from `tokens`; `mask` [B, T] says which keys count."""
  heads: int
  dtype: Any

  @nn.compact
  def __call__(self, queries, tokens, mask=None, return_weights=False):
    """`[B, Q, D]`, and with `return_weights` the attention weights `[B, heads, Q, T]` too
    (computed explicitly then: the fused kernel does not give them)."""
    width = tokens.shape[-1]
    heads = (self.heads, width // self.heads)
    q = nn.DenseGeneral(heads, dtype=self.dtype, name="query")(queries)
    k = nn.DenseGeneral(heads, dtype=self.dtype, name="key")(tokens)
    v = nn.DenseGeneral(heads, dtype=self.dtype, name="value")(tokens)
    mask = None if mask is None else mask[:, None, None, :]
    weights = None
    if return_weights:
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(heads[1])
      if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
      weights = jax.nn.softmax(logits, axis=-1)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    elif tokens.shape[1] == 1:  # one key: its softmax weight is 1 whatever the query
      out = jnp.broadcast_to(v, (v.shape[0], q.shape[1], *v.shape[2:]))
    else:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    out = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out")(out)
    return (out, weights) if return_weights else out


class MAPHead(nn.Module):
  """Multi-head attention pooling: a learned probe attends over the tokens (`mask`: the ones it
  may attend to), then LayerNorm + MLP residual; one vector per row."""
  width: int
  heads: int
  mlp_dim: int
  eps: float
  dtype: Any
  fast_variance: bool = True

  def setup(self):
    self.probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, self.width))
    self.attention = CrossAttention(self.heads, self.dtype, name="MultiHeadDotProductAttention_0")
    self.norm = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype,
                             use_fast_variance=self.fast_variance, name="LayerNorm_0")
    self.mlp = MlpBlock(self.mlp_dim, self.dtype, name="MlpBlock_0")

  def __call__(self, tokens, mask=None, return_weights=False):
    """`[B, D]`; with `return_weights` also the probe's attention over the tokens
    `[B, heads, T]`."""
    probe = jnp.broadcast_to(self.probe.astype(self.dtype), (tokens.shape[0], 1, self.width))
    y = self.attention(probe, tokens, mask, return_weights)
    y, weights = y if return_weights else (y, None)
    pooled = (y + self.mlp(self.norm(y)))[:, 0]
    return (pooled, weights[:, :, 0]) if return_weights else pooled

  def per_token(self, tokens):
    """The head restricted to each token alone: [..., T, D] -> [..., T, D]."""
    lead = tokens.shape[:-1]
    flat = tokens.reshape(-1, 1, self.width)
    return self(flat).reshape(*lead, self.width)


class VisionTower(nn.Module):
  """ViT without a class token; head = encoder_norm + the attention-pooling head."""
  config: SigLIPConfig

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    self.embedding = towers.patch_embedding(c, dtype, use_bias=True)
    self.pos_embedding = self.param("pos_embedding", nn.initializers.normal(1 / math.sqrt(
        c.vision_width)), (1, c.grid_size ** 2, c.vision_width))
    self.Transformer = Encoder(c.vision_layers, c.vision_heads, c.vision_mlp_dim, c)  # pylint: disable=invalid-name
    self.MAPHead_0 = MAPHead(c.vision_width, c.vision_heads, c.vision_mlp_dim,  # pylint: disable=invalid-name
                             c.layer_norm_eps, dtype, c.layer_norm_fast_variance)

  def head(self, x):
    """Each vector [..., D] through the head on its own (`MAPHead.per_token`); fp32 out."""
    return self.MAPHead_0.per_token(self.Transformer.norm(x)).astype(jnp.float32)

  def pool_region(self, tokens, mask):
    """The head over the tokens `mask` [B, N] selects (a box's patches): [B, E] fp32, unit."""
    return l2_normalize(self.MAPHead_0(self.Transformer.norm(tokens), mask))

  def __call__(self, images, return_attention=False):
    """The model contract's outputs; `return_attention` adds `pool_attention` `[B, heads, N]`,
    the pooling head's attention over the patches (what the embedding is made of)."""
    c = self.config
    if images.shape[1:] != (c.image_size, c.image_size, 3):
      raise ValueError(f"images must be [B, {c.image_size}, {c.image_size}, 3], got {images.shape}")
    x = self.embedding(images.astype(jnp.dtype(c.dtype)))
    x = x.reshape(x.shape[0], -1, x.shape[-1]) + self.pos_embedding.astype(x.dtype)
    tokens = self.Transformer(x)
    pooled = self.MAPHead_0(self.Transformer.norm(tokens), return_weights=return_attention)
    pooled, weights = pooled if return_attention else (pooled, None)
    projected = self.head(tokens)
    out = {"embedding": l2_normalize(pooled), "tokens": tokens, "tokens_projected": projected,
           "patch_tokens": tokens, "patch_tokens_projected": projected}
    if return_attention:
      out["pool_attention"] = weights
    return out


class TextTower(nn.Module):
  """Non-causal text transformer pooled at the last position; head = encoder_norm + Dense."""
  config: SigLIPConfig

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    self.Embed_0 = nn.Embed(c.vocab_size, c.text_width, dtype=dtype,  # pylint: disable=invalid-name
                            embedding_init=nn.initializers.normal(c.text_width ** -0.5))
    self.pos_embedding = self.param("pos_embedding", nn.initializers.normal(1 / math.sqrt(
        c.text_width)), (1, c.context_length, c.text_width))
    self.Encoder_0 = Encoder(c.text_layers, c.text_heads, c.text_mlp_dim, c)  # pylint: disable=invalid-name
    self.head_dense = nn.Dense(c.embed_dim, dtype=dtype, name="head")

  def head(self, x):
    """encoder_norm + head on any [..., Dt]; fp32 out."""
    return self.head_dense(self.Encoder_0.norm(x)).astype(jnp.float32)

  def __call__(self, ids):
    c = self.config
    length = ids.shape[1]
    if ids.ndim != 2 or length > c.context_length:
      raise ValueError(f"ids must be [B, L] with L <= {c.context_length}, got {ids.shape}")
    x = (towers.embed_tokens(self.Embed_0, ids, c)
         + self.pos_embedding[:, :length].astype(jnp.dtype(c.dtype)))
    tokens = self.Encoder_0(x)
    eot_index = jnp.full((ids.shape[0],), length - 1, jnp.int32)
    projected = self.head(tokens)
    return {"embedding": l2_normalize(projected[:, -1]), "tokens": tokens,
            "tokens_projected": projected, "eot_index": eot_index, "text_end": text_end(ids)}


def text_end(ids: jax.Array) -> jax.Array:
  """[B] the first EOS position: with the sticky EOS every position from there on holds the id
  the last one holds, and no caption token is an EOS."""
  trailing = jnp.cumprod((ids == ids[:, -1:])[:, ::-1].astype(jnp.int32), axis=1).sum(axis=1)
  return ids.shape[1] - trailing


class SigLIP(nn.Module):
  """Two towers, `logit_scale` (log temperature) and `logit_bias`, initialised as the paper."""
  config: SigLIPConfig

  def setup(self):
    self.img = VisionTower(self.config)
    self.txt = TextTower(self.config)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(LOGIT_SCALE_INIT), ())
    self.logit_bias = self.param("logit_bias", nn.initializers.constant(LOGIT_BIAS_INIT), ())

  def encode_image(self, images, return_attention=False) -> dict:
    return self.img(images, return_attention)

  def encode_text(self, ids) -> dict:
    return self.txt(ids)

  def image_head(self, x):
    return self.img.head(x)

  def text_head(self, x):
    return self.txt.head(x)

  def pool_region(self, tokens, mask):
    return self.img.pool_region(tokens, mask)

  def logits(self, image_embedding, text_embedding):
    """`[images, texts]` pairwise logits: exp(logit_scale) · cosine + logit_bias."""
    return (jnp.exp(self.logit_scale) * image_embedding @ text_embedding.T + self.logit_bias)

  def __call__(self, images, ids):
    return self.encode_image(images), self.encode_text(ids)


def dummy_inputs(config: SigLIPConfig) -> tuple[jax.Array, jax.Array]:
  size = config.image_size
  return (jnp.zeros((1, size, size, 3), jnp.float32),
          jnp.zeros((1, config.context_length), jnp.int32))


def init_params(config: SigLIPConfig, rng: jax.Array) -> dict:
  return jax.jit(lambda r: SigLIP(config).init(r, *dummy_inputs(config))["params"])(rng)


def abstract_params(config: SigLIPConfig) -> dict:
  return jax.eval_shape(lambda: SigLIP(config).init(jax.random.key(0),
                                                    *dummy_inputs(config))["params"])
