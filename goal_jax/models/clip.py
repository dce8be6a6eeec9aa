"""OpenAI CLIP in Flax Linen: a pre-LN ViT and a causal text transformer with OpenAI param names.

Names mirror OpenAI's state dict (as scenic does) so conversion is a rename table. One forward of a
tower returns what GOAL/MulCLIP need at once: the pooled normalised embedding, the last block's
tokens before the final LayerNorm (for pooling sub-spans) and every token through LN + projection.
See DESIGN.md "Model contract".
"""
import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from goal_jax.models import attention as attention_lib
from goal_jax.models import towers
from goal_jax.text import tokenizer as text_tokenizer

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class CLIPConfig(towers.TowerConfig):
  """Architecture (saved with checkpoints) plus compute knobs (dtype, attention, remat, scan)."""
  embed_dim: int
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
  context_length: int = 77
  vocab_size: int = text_tokenizer.VOCAB_SIZE
  activation: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  layer_norm_fast_variance: bool = True  # a compute knob: `towers.layer_norm`
  layout_pin: bool = True  # a compute knob: `towers.pin_row_major`
  patch_embedding: str = "auto"  # a compute knob: `towers.PatchEmbedding`
  token_embedding_grad: str = "auto"  # a compute knob: `towers.embed_tokens`
  # A compute knob: the EOT token by `token_at` ("mask"), or by `take_along_axis` ("gather",
  # the form before 2026-12-05, kept to time against: `bench --candidates=eot_gather`).
  eot_pooling: str = "mask"
  dtype: str = "float32"
  attention: str = "xla"
  attention_pad_multiple: int | None = None  # None: 8 for cudnn, no padding for xla.
  remat: str | None = None  # None, "full" or "dots".
  scan: bool = False
  pooling = "class_token"  # how the vision tower makes its embedding (a class attribute)

  def __post_init__(self):
    self.check_heads()
    if self.eot_pooling not in ("mask", "gather"):
      raise ValueError(f"eot_pooling must be 'mask' or 'gather', got {self.eot_pooling!r}")
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch_size}")


def _openai(embed, image, patch, v_width, v_layers, t_width, t_layers=12):
  return dict(embed_dim=embed, image_size=image, patch_size=patch, vision_width=v_width,
              vision_layers=v_layers, vision_heads=v_width // 64, vision_mlp_dim=4 * v_width,
              text_width=t_width, text_layers=t_layers, text_heads=t_width // 64,
              text_mlp_dim=4 * t_width)


VARIANTS = {
    "B/32": _openai(512, 224, 32, 768, 12, 512),
    "B/16": _openai(512, 224, 16, 768, 12, 512),
    "L/14": _openai(768, 224, 14, 1024, 24, 768),
    "L/14-336": _openai(768, 336, 14, 1024, 24, 768),
    # Tiny towers for tests and smoke runs (head dim 16).
    "tiny/8": dict(embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=2,
                   vision_heads=4, vision_mlp_dim=256, text_width=32, text_layers=2,
                   text_heads=2, text_mlp_dim=128),
    # The README demo's CLIP: 64 px, 8x8 patch grid, trains on 2 CPU cores in minutes.
    "demo": dict(embed_dim=64, image_size=64, patch_size=8, vision_width=64, vision_layers=3,
                 vision_heads=4, vision_mlp_dim=256, text_width=64, text_layers=3,
                 text_heads=4, text_mlp_dim=256),
    "tiny/4": dict(embed_dim=32, image_size=16, patch_size=4, vision_width=32, vision_layers=2,
                   vision_heads=2, vision_mlp_dim=128, text_width=32, text_layers=2,
                   text_heads=2, text_mlp_dim=128),
}


def variant_of(config: CLIPConfig) -> str | None:
  """The name of the variant with `config`'s architecture (context and compute knobs aside)."""
  return towers.variant_of(config, VARIANTS)


def get_model_config(name: str, **overrides) -> CLIPConfig:
  """Config of a named variant ("B/16", "L/14", "tiny/8", ...) with field overrides."""
  return towers.get_variant(CLIPConfig, VARIANTS, name, **overrides)


def masked_mean(tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `tokens [..., T, D]` over `mask [..., T]` in fp32; zeros (not NaN) where the mask
  is empty."""
  weights = mask.astype(jnp.float32)
  total = jnp.einsum("...t,...td->...d", weights, tokens.astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
  return total / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1.0)


def token_at(tokens: jax.Array, index: jax.Array) -> jax.Array:
  """`tokens[b, index[b]]` of `[B, T, D]` tokens: the same values as a gather (each row sums one
  token and zeros), with an elementwise gradient instead of a gather's scatter into `[B, T, D]`
  (the scatter was first suspected of the text tower's GPU layout, wrongly: README, Measurements;
  `bench --candidates=eot_gather` times the two)."""
  hit = jnp.arange(tokens.shape[1])[None, :, None] == index[:, None, None]
  return jnp.sum(jnp.where(hit, tokens, jnp.zeros((), tokens.dtype)), axis=1)


def l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class Mlp(nn.Module):
  hidden: int
  activation: str
  dtype: Any

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, name="c_fc")(x)
    x = ACTIVATIONS[self.activation](x)
    return nn.Dense(width, dtype=self.dtype, name="c_proj")(x)


class ResidualBlock(nn.Module):
  """Pre-LN block: (carry, segments) -> (carry, attention weights), so nn.scan can stack it
  (`segments` [B, T] or None, the same for every block: packed rows, `attention.py`)."""
  heads: int
  mlp_dim: int
  causal: bool
  activation: str
  attention: str
  eps: float
  dtype: Any
  true_length: int | None = None
  fast_variance: bool = True
  return_weights: bool = False

  @nn.compact
  def __call__(self, x, segments=None):
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_emb"))
    norm = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype,
                                     use_fast_variance=self.fast_variance, name=name)
    y, weights = attention_lib.MultiHeadAttention(
        self.heads, causal=self.causal, implementation=self.attention, dtype=self.dtype,
        name="attn")(norm("ln_1")(x), self.true_length, self.return_weights, segments)
    x = x + y
    x = x + Mlp(self.mlp_dim, self.activation, self.dtype, name="mlp")(norm("ln_2")(x))
    return x, weights


class Transformer(nn.Module):
  """`layers` residual blocks, as a Python loop (`resblocks_{i}`) or one nn.scan (`resblocks`)."""
  layers: int
  heads: int
  mlp_dim: int
  causal: bool
  config: CLIPConfig

  @nn.compact
  def __call__(self, x, true_length=None, return_attention=False, segments=None):
    c = self.config
    block = ResidualBlock
    if c.remat is not None:
      if c.remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be None or one of {sorted(REMAT_POLICIES)}, got {c.remat!r}")
      # Inside scan XLA cannot CSE across iterations; in a Python loop it would undo the remat.
      block = nn.remat(block, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan)
    kwargs = dict(heads=self.heads, mlp_dim=self.mlp_dim, causal=self.causal,
                  activation=c.activation, attention=c.attention, eps=c.layer_norm_eps,
                  dtype=jnp.dtype(c.dtype), true_length=true_length,
                  fast_variance=c.layer_norm_fast_variance)
    if c.scan:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=nn.broadcast, length=self.layers)
      x, weights = stack(**kwargs, return_weights=return_attention, name="resblocks")(x,
                                                                                      segments)
      return x, None if weights is None else weights[-1]
    weights = None
    for i in range(self.layers):
      last = i == self.layers - 1
      x, weights = block(**kwargs, return_weights=return_attention and last,
                         name=f"resblocks_{i}")(x, segments)
    return x, weights


def _run_padded(transformer, x, multiple, causal, return_attention, segments=None):
  """Pads once per tower for cuDNN (causal towers need no length: padding is in the future; a
  packed row's padding is its segment 0) and pins the residual stream's layout there
  (`towers.pin_row_major`)."""
  x, length = attention_lib.pad_to_multiple(x, multiple)
  if segments is not None:
    segments = jnp.pad(segments, ((0, 0), (0, x.shape[1] - length)))
  x = towers.pin_row_major(x, transformer.config)
  true_length = None if causal or x.shape[1] == length else length
  x, weights = transformer(x, true_length, return_attention, segments)
  if weights is not None:
    weights = weights[:, :, :length, :length]
  return x[:, :length], weights


def _tower_outputs(head, tokens, pooled, attention, return_attention, **extra) -> dict:
  """A tower's output dict, the DESIGN.md model contract shared by both towers.

  `embedding` = unit head(pooled), `tokens` before the head, `tokens_projected` = head(tokens),
  then the tower's `extra` outputs and, when asked for, the last block's `attention`.
  """
  out = {"embedding": l2_normalize(head(pooled)), "tokens": tokens,
         "tokens_projected": head(tokens), **extra}
  if return_attention:
    out["attention"] = attention
  return out


class VisionTower(nn.Module):
  """ViT: conv patches, CLS, positions, ln_pre, blocks; head = ln_post + proj."""
  config: CLIPConfig

  def setup(self):
    c = self.config
    dtype, scale = jnp.dtype(c.dtype), c.vision_width ** -0.5
    self.conv1 = towers.patch_embedding(c, dtype, use_bias=False)
    self.class_embedding = self.param("class_embedding", nn.initializers.normal(scale),
                                      (c.vision_width,))
    self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(scale),
                                           (c.grid_size ** 2 + 1, c.vision_width))
    self.ln_pre = towers.layer_norm(c, dtype)
    self.transformer = Transformer(c.vision_layers, c.vision_heads, c.vision_mlp_dim,
                                   causal=False, config=c)
    self.ln_post = towers.layer_norm(c, dtype)
    self.proj = self.param("proj", nn.initializers.normal(scale), (c.vision_width, c.embed_dim))

  def head(self, x):
    """ln_post + proj on any [..., Dv]; fp32 out."""
    x = self.ln_post(x)
    return (x @ self.proj.astype(x.dtype)).astype(jnp.float32)

  def __call__(self, images, return_attention=False):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    if images.shape[1:] != (c.image_size, c.image_size, 3):
      raise ValueError(f"images must be [B, {c.image_size}, {c.image_size}, 3], got {images.shape}")
    x = self.conv1(images.astype(dtype))
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding.astype(dtype), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding.astype(dtype)
    x = self.ln_pre(x)
    tokens, weights = _run_padded(self.transformer, x, c.pad_multiple, False, return_attention)
    out = _tower_outputs(self.head, tokens, tokens[:, 0], weights, return_attention)
    return {**out, "patch_tokens": tokens[:, 1:],
            "patch_tokens_projected": out["tokens_projected"][:, 1:]}

  def pool_region(self, tokens, mask):
    """GOAL's region embedding: the mean of the patch tokens `mask` [B, N] selects, through the
    head (the CLS path): [B, E] fp32, unit."""
    return l2_normalize(self.head(masked_mean(tokens, mask)))


class TextTower(nn.Module):
  """Causal text transformer; pooled at the EOT token (`text_tokenizer.EOT_ID`, the largest id,
  so found by argmax); head = ln_final + proj."""
  config: CLIPConfig

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    self.token_embedding = nn.Embed(c.vocab_size, c.text_width, dtype=dtype,
                                    embedding_init=nn.initializers.normal(0.02))
    self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                           (c.context_length, c.text_width))
    self.transformer = Transformer(c.text_layers, c.text_heads, c.text_mlp_dim, causal=True,
                                   config=c)
    self.ln_final = towers.layer_norm(c, dtype)
    self.text_projection = self.param("text_projection",
                                      nn.initializers.normal(c.text_width ** -0.5),
                                      (c.text_width, c.embed_dim))

  def head(self, x):
    """ln_final + text_projection on any [..., Dt]; fp32 out."""
    x = self.ln_final(x)
    return (x @ self.text_projection.astype(x.dtype)).astype(jnp.float32)

  def __call__(self, ids, return_attention=False):
    c = self.config
    length = ids.shape[1]
    if ids.ndim != 2 or length > c.context_length:
      raise ValueError(f"ids must be [B, L] with L <= {c.context_length}, got {ids.shape}")
    x = (towers.embed_tokens(self.token_embedding, ids, c)
         + self.positional_embedding[:length].astype(jnp.dtype(c.dtype)))
    tokens, weights = _run_padded(self.transformer, x, c.pad_multiple, True, return_attention)
    eot_index = jnp.argmax(ids, axis=-1)
    if c.eot_pooling == "gather":
      pooled = jnp.take_along_axis(tokens, eot_index[:, None, None], axis=1)[:, 0]
    else:
      pooled = token_at(tokens, eot_index)
    return _tower_outputs(self.head, tokens, pooled, weights, return_attention,
                          eot_index=eot_index, text_end=eot_index)

  def packed(self, ids, positions, segments, ends):
    """Captions packed in rows (`goal_jax.text.packing`): ids, positions, segments [B, R, W];
    the unit embeddings [B, S, E] of the EOT tokens at `ends` [B, S] (positions in the R·W
    tokens of a pair's rows). Equal to `__call__` on each caption alone (causal attention within
    each segment, positions from each caption's start)."""
    c = self.config
    dtype = jnp.dtype(c.dtype)
    size, width = ids.shape[0], ids.shape[-1]
    rows = lambda x: x.reshape(-1, width)
    x = (towers.embed_tokens(self.token_embedding, rows(ids), c)
         + jnp.take(self.positional_embedding, rows(positions), axis=0).astype(dtype))
    tokens, _ = _run_padded(self.transformer, x, c.pad_multiple, True, False, rows(segments))
    tokens = tokens.reshape(size, -1, tokens.shape[-1])  # [B, R·W, D]
    hit = jnp.arange(tokens.shape[1])[None, None, :] == ends[:, :, None]  # [B, S, R·W]
    pooled = jnp.einsum("bst,btd->bsd", hit.astype(tokens.dtype), tokens)
    return l2_normalize(self.head(pooled))


class CLIP(nn.Module):
  """Two towers plus the learnable log temperature `logit_scale` (init ln(1/0.07))."""
  config: CLIPConfig

  def setup(self):
    self.visual = VisionTower(self.config)
    self.text = TextTower(self.config)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(1 / 0.07)),
                                  ())

  def encode_image(self, images, return_attention=False) -> dict:
    """images [B, H, W, 3] -> embedding [B, E], tokens [B, 1+N, Dv], tokens_projected."""
    return self.visual(images, return_attention)

  def encode_text(self, ids, return_attention=False) -> dict:
    """ids [B, L] -> embedding [B, E], tokens [B, L, Dt], tokens_projected [B, L, E], eot_index."""
    return self.text(ids, return_attention)

  def encode_packed_text(self, ids, positions, segments, ends) -> jax.Array:
    """Rows of packed captions (`goal_jax.text.packing`) -> unit embeddings [B, S, E]."""
    return self.text.packed(ids, positions, segments, ends)

  def image_head(self, x):
    return self.visual.head(x)

  def pool_region(self, tokens, mask):
    return self.visual.pool_region(tokens, mask)

  def text_head(self, x):
    return self.text.head(x)

  def __call__(self, images, ids):
    return self.encode_image(images), self.encode_text(ids)


def dummy_inputs(config: CLIPConfig) -> tuple[jax.Array, jax.Array]:
  size = config.image_size
  return (jnp.zeros((1, size, size, 3), jnp.float32),
          jnp.zeros((1, config.context_length), jnp.int32))


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: CLIPConfig, rng: jax.Array) -> dict:
  """Random params (the 'params' collection) for `config`."""
  return CLIP(config).init(rng, *dummy_inputs(config))["params"]


def abstract_params(config: CLIPConfig) -> dict:
  """Shapes and dtypes of the params, without allocating them."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def _map_transformers(params: dict, fn) -> dict:
  """Applies fn to the `transformer` subtree of both towers, returning a new tree."""
  params = dict(params)
  for tower in ("visual", "text"):
    params[tower] = dict(params[tower])
    params[tower]["transformer"] = fn(dict(params[tower]["transformer"]))
  return params


def _stack(transformer: dict) -> dict:
  if "resblocks" in transformer:
    return transformer
  count = len(transformer)
  blocks = [transformer[f"resblocks_{i}"] for i in range(count)]
  return {"resblocks": jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *blocks)}


def _unstack(transformer: dict) -> dict:
  if "resblocks" not in transformer:
    return transformer
  stacked = transformer["resblocks"]
  count = jax.tree.leaves(stacked)[0].shape[0]
  return {f"resblocks_{i}": jax.tree.map(lambda x, i=i: np.asarray(x[i]), stacked)
          for i in range(count)}


def to_param_layout(params: dict, scan: bool) -> dict:
  """Converts params between the loop layout (`resblocks_{i}`) and the scan layout (stacked)."""
  return _map_transformers(params, _stack if scan else _unstack)
