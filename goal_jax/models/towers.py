"""What every two-tower family's config shares (CLIP's, SigLIP's): the checks, the patch grid,
attention padding, and saving as a dict; named variants looked up both ways."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import flax.linen as nn
from jax.experimental import layout

from goal_jax.models import attention as attention_lib

ConfigT = TypeVar("ConfigT", bound="TowerConfig")


class TowerConfig:
  """Mixin for a family's frozen config dataclass, which has `{vision,text}_{width,heads}`,
  `image_size`, `patch_size`, `attention`, `attention_pad_multiple`, `layer_norm_eps`,
  `layer_norm_fast_variance` and `layout_pin` fields."""

  def check_heads(self) -> None:
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
