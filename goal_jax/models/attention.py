"""Multi-head self-attention with a selectable kernel (XLA, cuDNN, Pallas on TPU) and padding.

Params follow Linen's `MultiHeadDotProductAttention` (query/key/value kernel [D, H, hd], bias
[H, hd]; out kernel [H, hd, D]) so the converter is a reshape of the PyTorch weights. The kernel is
`jax.nn.dot_product_attention`: cuDNN's fused kernel is ~40% faster on GPU but rejects sequence
lengths that are not a multiple of 8 (vision 197, text 77), so towers pad once with
`pad_to_multiple` and pass the true length. `pallas_tpu` is JAX's Pallas flash attention for TPUs
(`jax.experimental.pallas.ops.tpu.flash_attention`): its blocks are 128 long, so towers pad to
multiples of 128 for it, and padded keys are another segment, which no query attends to.

`segments` `[B, T]` (several captions packed in one row, `goal_jax.text.packing`) confines each
token's attention to the tokens of its own segment: the Pallas kernel's segment ids on TPUs, a
boolean mask through XLA's attention elsewhere. cuDNN takes a mask only as an additive bias
whose gradient it always computes, so packed rows use XLA's attention on GPUs too (their
attention is a small part of a packed row's work).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

IMPLEMENTATIONS = ("xla", "cudnn", "pallas_tpu")
PAD_MULTIPLES = {"cudnn": 8, "pallas_tpu": 128}  # the sequence lengths each kernel accepts
BATCH_AXIS = "data"  # the mesh axis batch rows are split over (`goal_jax.sharding`)


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


def _pallas_tpu_attention(q, k, v, causal: bool, true_length: int | None,
                          segment_ids: jax.Array | None = None):
  """[B, T, H, hd] attention through the Pallas TPU flash kernel ([B, H, T, hd] inside); keys at
  and after `true_length` are segment 0, every query segment 1; or `segment_ids` [B, T] as given."""
  from jax.experimental.pallas.ops.tpu import flash_attention as flash  # pylint: disable=g-import-not-at-top
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  segments = None
  if segment_ids is not None:
    segments = flash.SegmentIds(q=segment_ids, kv=segment_ids)
  elif true_length is not None and true_length < k.shape[2]:
    batch, length = q.shape[0], k.shape[2]
    kv = jnp.broadcast_to((jnp.arange(length) < true_length).astype(jnp.int32), (batch, length))
    segments = flash.SegmentIds(q=jnp.ones((batch, q.shape[2]), jnp.int32), kv=kv)
  def kernel(q, k, v, segments):
    return flash.flash_attention(q, k, v, segment_ids=segments, causal=causal,
                                 sm_scale=q.shape[-1] ** -0.5)

  # A Mosaic kernel is not partitioned automatically: on a mesh, each device runs it on its
  # batch rows (the towers' activations are split over the `data` axis).
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.size > 1 and BATCH_AXIS in mesh.axis_names:
    kernel = jax.shard_map(kernel, mesh=mesh, in_specs=P(BATCH_AXIS), out_specs=P(BATCH_AXIS),
                           check_vma=False)
  return kernel(q, k, v, segments).transpose(0, 2, 1, 3)


class MultiHeadAttention(nn.Module):
  """Self-attention over [B, T, D]; `true_length` masks keys at and after it (padding);
  `segments` [B, T] keeps each token's attention within its segment."""
  num_heads: int
  causal: bool = False
  implementation: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, true_length: int | None = None,
               return_weights: bool = False, segments: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
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
      if segments is not None:
        raise ValueError("attention weights are not returned for packed rows (segments)")
      out, weights = explicit_attention(q, k, v, self.causal, true_length)
    elif self.implementation == "pallas_tpu":
      out = _pallas_tpu_attention(q, k, v, self.causal, true_length, segments)
    elif segments is not None:
      if true_length is not None:
        raise ValueError("packed rows (segments) mark their padding as segment 0, not by length")
      same = segments[:, None, :, None] == segments[:, None, None, :]  # [B, 1, T, T]
      out = jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=self.causal,
                                         implementation="xla")
    else:
      lengths = None
      if true_length is not None and true_length < x.shape[1]:
        lengths = jnp.full((x.shape[0],), true_length, jnp.int32)
      out = jax.nn.dot_product_attention(
          q, k, v, is_causal=self.causal, query_seq_lengths=lengths,
          key_value_seq_lengths=lengths, implementation=self.implementation)
    out = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out")(out)
    return out, weights
