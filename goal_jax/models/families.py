"""The backbone families, one module each (`models/clip.py`, `models/siglip.py`), and the one
place that tells them apart: by a config's class, or by the `family` a saved config names.

A family module gives its config class, its Flax model (`encode_image`, `encode_text`,
`image_head`, `text_head`: DESIGN.md's model contract), random and abstract params and its named
variants; and the family says what its towers were trained to read: the image normalisation and
resize, and the tokenizer (CLIP's BPE is built in; a SigLIP checkpoint carries its SentencePiece
model). Code that holds a config asks `of(config)` instead of importing a family.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from goal_jax import constants
from goal_jax.models import clip
from goal_jax.models import siglip
from goal_jax.text import sentencepiece_tokenizer
from goal_jax.text import tokenizer as clip_tokenizer

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
  image_mean: tuple[float, float, float]  # of pixels in [0, 1], per RGB channel
  image_std: tuple[float, float, float]
  geometry: str  # how an image becomes S x S: `center_crop` (CLIP's processor) or `squash`
  tokenizer: Callable[[str], Any]  # (checkpoint directory) -> its tokenizer
  contrastive: str  # the loss it was pretrained with: `softmax` (InfoNCE) or `sigmoid`
  # A causal text tower pooled at its EOT (CLIP's): a caption's embedding does not depend on
  # what follows its EOT, so captions can be cut short or packed (`config.input.local_context`,
  # `short_text_packing`). SigLIP's attends to its padding and pools the last position.
  causal_text: bool = False

  # What the recipes read too, kept in `constants.BACKBONES` (the configs import no model code).
  @property
  def default_variant(self) -> str:
    """What a config without an init checkpoint or a variant builds."""
    return constants.BACKBONES[self.name]["default_variant"]

  @property
  def demo_variant(self) -> str:
    return constants.BACKBONES[self.name]["demo_variant"]

  @property
  def short_context(self) -> int:
    """The pretrained text context: summaries and sentences are read at it."""
    return constants.BACKBONES[self.name]["short_context"]

  @property
  def long_context(self) -> int:
    """Long captions: Long-CLIP's stretch of the pretrained context."""
    return constants.BACKBONES[self.name]["long_context"]


REGISTRY = {
    "clip": Family("clip", clip.CLIPConfig, clip.CLIP, clip.init_params, clip.abstract_params,
                   clip.VARIANTS, clip.variant_of,
                   image_mean=(0.48145466, 0.4578275, 0.40821073),
                   image_std=(0.26862954, 0.26130258, 0.27577711), geometry="center_crop",
                   tokenizer=lambda directory: clip_tokenizer.get_tokenizer(),
                   contrastive="softmax", causal_text=True),
    # SigLIP: pixels to [-1, 1] and a plain resize to S x S (big_vision's `resize|value_range`,
    # transformers' SiglipImageProcessor).
    siglip.FAMILY: Family(siglip.FAMILY, siglip.SigLIPConfig, siglip.SigLIP, siglip.init_params,
                          siglip.abstract_params, siglip.VARIANTS, siglip.variant_of,
                          image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                          geometry="squash",
                          tokenizer=sentencepiece_tokenizer.from_checkpoint,
                          contrastive="sigmoid"),
}


def of(config) -> Family:
  """The family of a config object."""
  for family in REGISTRY.values():
    if isinstance(config, family.config_class):
      return family
  raise TypeError(f"{type(config).__name__} is no backbone family's config")


def named(name: str) -> Family:
  if name not in REGISTRY:
    raise ValueError(f"unknown backbone family {name!r}; known: {sorted(REGISTRY)}")
  return REGISTRY[name]


def get_variant(name: str, **overrides):
  """The config of a named variant of any family (`B/16`, `siglip2-B/16-256`, `demo`, ...)."""
  for family in REGISTRY.values():
    if name in family.variants:
      return family.config_class(**{**family.variants[name], **overrides})
  known = sorted(v for family in REGISTRY.values() for v in family.variants)
  raise ValueError(f"unknown model variant {name!r}; known: {known}")


def variant_of(config) -> str | None:
  """The name of the variant with `config`'s architecture, if it is one."""
  return of(config).variant_of(config)


def config_to_dict(config) -> dict[str, Any]:
  """What `model_config.json` holds: the config's fields, with the family unless it is CLIP
  (so CLIP checkpoints read the same as before)."""
  family = of(config).name
  values = config.to_dict()
  return values if family == "clip" else {FAMILY_KEY: family, **values}


def config_from_dict(values: Mapping[str, Any]):
  values = dict(values)
  return named(values.pop(FAMILY_KEY, "clip")).config_class.from_dict(values)
