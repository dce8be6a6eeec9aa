"""What every two-tower family's config shares (CLIP's, SigLIP's): the checks, the patch grid,
attention padding, and saving as a dict; named variants looked up both ways."""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import layout

from goal_jax.models import attention as attention_lib

ConfigT = TypeVar("ConfigT", bound="TowerConfig")


class TowerConfig:
  """Mixin for a family's frozen config dataclass, which has `{vision,text}_{width,heads}`,
  `image_size`, `patch_size`, `attention`, `attention_pad_multiple`, `layer_norm_eps`, and the
  compute knobs `layer_norm_fast_variance`, `layout_pin`, `patch_embedding` and
  `token_embedding_grad`."""

  def check_heads(self) -> None:
    for field, choices in (("patch_embedding", PATCH_EMBEDDINGS),
                           ("token_embedding_grad", TOKEN_EMBEDDING_GRADS)):
      if getattr(self, field) not in choices:
        raise ValueError(f"{field} must be one of {choices}, got {getattr(self, field)!r}")
    for tower in ("vision", "text"):
      width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
      if heads < 1 or width % heads:
        raise ValueError(f"{tower}_width {width} is not divisible by {tower}_heads {heads}")

  @property
  def grid_size(self) -> int:
    """Patches per side (a convolution with stride `patch_size` drops any remainder)."""
    return self.image_size // self.patch_size

  @property
  def pad_multiple(self) -> int:
    if self.attention_pad_multiple is not None:
      return self.attention_pad_multiple
    return attention_lib.PAD_MULTIPLES.get(self.attention, 1)  # what each kernel accepts

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown model config fields {unknown}")
    return cls(**values)


def layer_norm(config: TowerConfig, dtype: Any, name: str | None = None) -> nn.LayerNorm:
  """A tower's LayerNorm (statistics in fp32). `layer_norm_fast_variance` (Flax's default) takes
  the variance as E[x²] − E[x]², clipped at 0, in one pass; False takes E[(x − E[x])²], the
  form XLA's cuDNN layer-norm rewrite matches (`--xla_gpu_enable_cudnn_layer_norm`; the clip
  hides the pattern from it). Both are the same function; the params are the same."""
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype,
                      use_fast_variance=config.layer_norm_fast_variance, name=name)


def pin_row_major(x, config: TowerConfig):
  """`x`, a tower's residual stream where its blocks start, pinned to the row-major layout
  (features innermost) on the cuDNN path. Left free, XLA's GPU layout assignment laid CLIP's text
  tower and both SigLIP towers out batch-innermost (`[T, D, B]`), with transposes around every
  layer norm: in the global B/16 step compiled for an H100, 1,710 such arrays, none with the pin
  (README, Measurements). The cuDNN path is the GPU one; elsewhere nothing is pinned, as
  `jax.export` refuses the constraint's custom call. `layout_pin=False` leaves it free
  (`bench --candidates=free_layout`, the before of this change)."""
  if config.attention != "cudnn" or not config.layout_pin:
    return x
  return layout.with_layout_constraint(x, layout.Layout(major_to_minor=tuple(range(x.ndim))))


PATCH_EMBEDDINGS = ("auto", "conv", "matmul")
TOKEN_EMBEDDING_GRADS = ("auto", "scatter", "split")


def _resolved(config: TowerConfig, field: str, on_gpu: str, elsewhere: str) -> str:
  """A compute knob's choice: "auto" is `on_gpu` on the cuDNN path (the GPU one), else
  `elsewhere`, so that CPU and TPU programs, and the CPU study's numbers, stay as they were."""
  value = getattr(config, field)
  if value != "auto":
    return value
  return on_gpu if config.attention == "cudnn" else elsewhere


class PatchEmbedding(nn.Conv):
  """The patch embedding: a convolution with stride = kernel = patch (`nn.Conv`'s params, so
  checkpoints are unchanged), computed as that convolution or as one matrix product over the
  flattened patches (`matmul`). On an H200 cuDNN's convolution took 0.53 ms of the global B/16
  step at batch 64 (several kernels, 0.45 TB/s) for 15 GFLOP a matrix product does in a few
  tens of microseconds (README, Measurements). "auto": the product on the cuDNN path, the
  convolution elsewhere (`bench --candidates=conv_patches` times the convolution)."""
  as_matmul: bool = False

  @nn.compact
  def __call__(self, inputs):
    if not self.as_matmul:
      return nn.Conv.__call__(self, inputs)
    size, channels = self.kernel_size[0], inputs.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (size, size, channels, self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    batch, height, width = inputs.shape[:3]
    rows, cols = height // size, width // size  # VALID: a remainder is dropped, as the conv does
    patches = inputs[:, :rows * size, :cols * size].reshape(batch, rows, size, cols, size, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows, cols, -1)
    out = patches @ kernel.reshape(-1, self.features)  # (kh, kw, c) order, as the kernel's
    return out if bias is None else out + bias


def patch_embedding(config: TowerConfig, dtype: Any, use_bias: bool,
                    name: str | None = None) -> PatchEmbedding:
  as_matmul = _resolved(config, "patch_embedding", "matmul", "conv") == "matmul"
  return PatchEmbedding(config.vision_width, (config.patch_size,) * 2,
                        strides=(config.patch_size,) * 2, padding="VALID", use_bias=use_bias,
                        dtype=dtype, name=name, as_matmul=as_matmul)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _take_split_grad(vocab: int, table, ids, split_id):
  return jnp.take(table, ids, axis=0)


def _take_split_grad_fwd(vocab, table, ids, split_id):
  del vocab
  return jnp.take(table, ids, axis=0), (ids, split_id)


def _take_split_grad_bwd(vocab, residuals, grad):
  ids, split_id = residuals
  grad = grad.reshape(-1, grad.shape[-1])
  ids = ids.reshape(-1)
  is_split = ids == split_id
  split_row = jnp.sum(jnp.where(is_split[:, None], grad, 0), axis=0)
  # The split id's positions go out of range and are dropped from the scatter.
  table_grad = jnp.zeros((vocab, grad.shape[-1]), grad.dtype).at[
      jnp.where(is_split, vocab, ids)].add(grad, mode="drop")
  return table_grad.at[split_id].add(split_row), None, None


_take_split_grad.defvjp(_take_split_grad_fwd, _take_split_grad_bwd)


def embed_tokens(embed: nn.Embed, ids, config: TowerConfig):
  """`embed(ids)`, or with `token_embedding_grad="split"` the same rows whose gradient sums the
  padding id's positions as one reduction and scatters only the others. The plain gradient is
  a scatter-add of every position into the table, on a GPU one atomic add per element: the
  padding id's thousands of positions all land in one row and queue behind each other (on an
  H200, 0.86 ms of GOAL's B/16 step at batch 64 and 1.65 ms of MulCLIP's, 0.1–0.2 TB/s). The
  split id is the smallest id in the last column, the padding id of every family's tokenizer
  (0, EOT under the reproduction switch, SigLIP's sticky EOS) whenever a row is padded; the
  gradient is the same sum for any split id, so a batch without padding only gains less. The
  table's gradient is summed in its own precision (fp32) rather than the compute dtype.
  "auto": split on the cuDNN path."""
  if (_resolved(config, "token_embedding_grad", "split", "scatter") == "scatter"
      or not ids.size):
    return embed(ids)
  split_id = jnp.min(ids[:, -1])
  rows = _take_split_grad(embed.num_embeddings, embed.embedding, ids, split_id)
  return rows.astype(embed.dtype or rows.dtype)


def variant_of(config: TowerConfig, variants: Mapping[str, Mapping[str, Any]]) -> str | None:
  """The name of the variant with `config`'s architecture (fields the variant does not fix,
  such as the context and the compute knobs, aside)."""
  for name, fields in variants.items():
    if all(getattr(config, key) == value for key, value in fields.items()):
      return name
  return None


def get_variant(config_class: type[ConfigT], variants: Mapping[str, Mapping[str, Any]],
                name: str, **overrides) -> ConfigT:
  if name not in variants:
    raise ValueError(f"unknown model variant {name!r}; known: {sorted(variants)}")
  return config_class(**{**variants[name], **overrides})
