"""Multi-head self-attention with a selectable kernel (XLA or cuDNN) and padding helpers.

Params follow Linen's `MultiHeadDotProductAttention` (query/key/value kernel [D, H, hd], bias
[H, hd]; out kernel [H, hd, D]) so the converter is a reshape of the PyTorch weights. The kernel is
`jax.nn.dot_product_attention`: cuDNN's fused kernel is ~40% faster on GPU but rejects sequence
lengths that are not a multiple of 8 (vision 197, text 77), so towers pad once with
`pad_to_multiple` and pass the true length.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn")


def pad_to_multiple(x: jax.Array, multiple: int) -> tuple[jax.Array, int]:
  """Zero-pads axis 1 of [B, T, D] up to a multiple of `multiple`; returns (padded, T)."""
  length = x.shape[1]
  padded = -(-length // multiple) * multiple
  if padded == length:
    return x, length
  return jnp.pad(x, ((0, 0), (0, padded - length), (0, 0))), length


def attention_mask(q_len: int, kv_len: int, causal: bool,
                   true_length: int | None) -> jax.Array | None:
  """Boolean [q_len, kv_len] mask (True = attend) for the explicit path, or None."""
  mask = None
  if causal:
    mask = jnp.tril(jnp.ones((q_len, kv_len), bool))
  if true_length is not None and true_length < kv_len:
    valid = jnp.broadcast_to(jnp.arange(kv_len) < true_length, (q_len, kv_len))
    mask = valid if mask is None else mask & valid
  return mask


def explicit_attention(q, k, v, causal: bool, true_length: int | None):
  """Plain einsum attention that also returns the weights [B, H, T, S] (for visualisation)."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) * scale
  mask = attention_mask(q.shape[1], k.shape[1], causal, true_length)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhts,bshd->bthd", weights.astype(v.dtype), v)
  return out, weights


class MultiHeadAttention(nn.Module):
  """Self-attention over [B, T, D]; `true_length` masks keys at and after it (padding)."""
  num_heads: int
  causal: bool = False
  implementation: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, true_length: int | None = None,
               return_weights: bool = False) -> tuple[jax.Array, jax.Array | None]:
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(f"attention must be one of {IMPLEMENTATIONS}, got {self.implementation!r}")
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
    head_dim = width // self.num_heads
    heads = (self.num_heads, head_dim)
    q, k, v = (nn.DenseGeneral(heads, dtype=self.dtype, name=name)(x)
               for name in ("query", "key", "value"))
    weights = None
    if return_weights:
      out, weights = explicit_attention(q, k, v, self.causal, true_length)
    else:
      lengths = None
      if true_length is not None and true_length < x.shape[1]:
        lengths = jnp.full((x.shape[0],), true_length, jnp.int32)
      out = jax.nn.dot_product_attention(
          q, k, v, is_causal=self.causal, query_seq_lengths=lengths,
          key_value_seq_lengths=lengths, implementation=self.implementation)
    out = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out")(out)
    return out, weights
