"""The backbone families, one module each (`models/clip.py`, `models/siglip.py`), and the one
place that tells them apart: by a config's class, or by the `family` a saved config names.

A family module gives its config class, its Flax model (`encode_image`, `encode_text`,
`image_head`, `text_head`: DESIGN.md's model contract), random and abstract params and its named
variants; code that holds a config asks `of(config)` instead of importing a family.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from goal_jax.models import clip
from goal_jax.models import siglip

FAMILY_KEY = "family"  # in a saved config; absent: CLIP (checkpoints from before SigLIP)


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  config_class: type
  model_class: type
  init_params: Callable[..., dict]
  abstract_params: Callable[[Any], dict]
  variants: Mapping[str, Mapping[str, Any]]
  variant_of: Callable[[Any], str | None]


REGISTRY = {
    "clip": Family("clip", clip.CLIPConfig, clip.CLIP, clip.init_params, clip.abstract_params,
                   clip.VARIANTS, clip.variant_of),
    siglip.FAMILY: Family(siglip.FAMILY, siglip.SigLIPConfig, siglip.SigLIP, siglip.init_params,
                          siglip.abstract_params, siglip.VARIANTS, siglip.variant_of),
}


def of(config) -> Family:
  """The family of a config object."""
  for family in REGISTRY.values():
    if isinstance(config, family.config_class):
      return family
  raise TypeError(f"{type(config).__name__} is no backbone family's config")


def config_to_dict(config) -> dict[str, Any]:
  """What `model_config.json` holds: the config's fields, with the family unless it is CLIP
  (so CLIP checkpoints read the same as before)."""
  family = of(config).name
  values = config.to_dict()
  return values if family == "clip" else {FAMILY_KEY: family, **values}


def config_from_dict(values: Mapping[str, Any]):
  values = dict(values)
  name = values.pop(FAMILY_KEY, "clip")
  if name not in REGISTRY:
    raise ValueError(f"unknown backbone family {name!r}; known: {sorted(REGISTRY)}")
  return REGISTRY[name].config_class.from_dict(values)
