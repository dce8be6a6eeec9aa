"""What a training method is: the one object the trainer, the benchmark and evaluation ask.

A method owns everything that makes it that method: the pipeline field groups its batches carry,
the trainable modules it adds beside CLIP, its forward (which tower runs on what, shaped for
speed), its objective, its FLOP count, and, if it has one, how it scores pairs at test time.
Nothing outside `goal_jax/methods/` branches on a method's name.

The trainable params are `{"clip": <CLIP params>, **extras}`, so regex param groups read
`clip/text/...`, `calibration/...`. A loss runs its objective under `contrastive.data_parallel`
on the mesh, so the contrastive terms all-gather exactly like the dense single-device computation.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import ml_collections

from goal_jax.models import clip

LossFn = Callable[[dict, Mapping[str, jax.Array]], tuple[jax.Array, dict]]


class Towers(NamedTuple):
  """CLIP's towers and heads bound to one set of params (`CLIP.encode_image` etc.)."""
  encode_image: Callable[[jax.Array], dict]
  encode_text: Callable[[jax.Array], dict]
  image_head: Callable[[jax.Array], jax.Array]
  text_head: Callable[[jax.Array], jax.Array]


def towers(model: clip.CLIP, clip_params: dict) -> Towers:
  bind = lambda method: functools.partial(model.apply, {"params": clip_params}, method=method)
  return Towers(bind(clip.CLIP.encode_image), bind(clip.CLIP.encode_text),
                bind(clip.CLIP.image_head), bind(clip.CLIP.text_head))


def contrastive_options(loss_config: ml_collections.ConfigDict) -> dict:
  """The InfoNCE options every method's config carries (`config.loss`)."""
  return dict(label_smoothing=loss_config.label_smoothing, max_scale=loss_config.max_scale)


def weights_of(loss_config: ml_collections.ConfigDict) -> dict[str, float]:
  """The config's term weights (`config.loss.weights`): overrides of the objective's defaults."""
  return dict(loss_config.weights.to_dict()) if loss_config.get("weights") else {}


def options_of(options_class: type, loss_config: ml_collections.ConfigDict) -> Any:
  """A frozen options dataclass (`MulCLIPOptions`, ...) from the config fields of its names."""
  return options_class(**{f.name: loss_config[f.name] for f in dataclasses.fields(options_class)
                          if f.name in loss_config})


def no_extra_params(loss_config, model_config, rng) -> dict:
  del loss_config, model_config, rng
  return {}


def no_local_pairs(loss_config) -> bool:
  del loss_config
  return False


@dataclasses.dataclass(frozen=True)
class Scorer:
  """How a method ranks image–text pairs at test time when the embeddings' cosine is not all.

  Split so that evaluation holds no more than it must: each row's features are computed batch by
  batch as the towers run (as embeddings are), then all images are scored against one block of
  texts at a time, so a score that compares tokens (`[Ni, Nt, Lt, Lv]`) never exceeds a block.
  All three are pure and jittable; `loss_config` is the method's `config.loss`, read at trace time.

  Attributes:
    image_features: `(image_out, extra_params, loss_config) -> {name: [B, ...]}` from
      `CLIP.encode_image`'s outputs and the method's params beside CLIP (`params` minus `clip`).
    text_features: `(text_out, extra_params, loss_config) -> {name: [B, ...]}`, from
      `CLIP.encode_text`'s outputs.
    score: `(image_features, text_features, loss_config) -> [Ni, Nt]` fp32, higher = better.
    texts_per_block: texts scored against all images per step: the memory bound above.
  """
  image_features: Callable[[Mapping[str, jax.Array], dict, Any], dict[str, jax.Array]]
  text_features: Callable[[Mapping[str, jax.Array], dict, Any], dict[str, jax.Array]]
  score: Callable[[Mapping[str, jax.Array], Mapping[str, jax.Array], Any], jax.Array]
  texts_per_block: int = 128


@dataclasses.dataclass(frozen=True)
class Method:
  """One training method (see the module docstring).

  Attributes:
    name: `config.method`.
    recipe: its config file under `configs/`, the paper's recipe.
    fields: the pipeline field groups a batch carries (`goal_jax.data.pipeline.FIELD_GROUPS`).
    loss: `loss(params, batch, *, model, loss_config, mesh) -> (loss, terms)`: forward + objective.
    forward_flops_per_pair: `(model_config, input_config) -> int`, model FLOPs of one pair's
      forward (a training step is 3× that per pair: backward = 2× forward).
    init_extra_params: `(loss_config, model_config, rng) -> dict`: params of its own modules.
    needs_local_pairs: `(loss_config) -> bool`: whether its weighted terms read local pairs, so
      the trainer refuses a dataset without any.
    scorer: how it ranks pairs at test time (`Scorer`); None: by the embeddings' cosine.
  """
  name: str
  recipe: str
  fields: tuple[str, ...]
  loss: Callable[..., tuple[jax.Array, dict]]
  forward_flops_per_pair: Callable[[clip.CLIPConfig, Any], int]
  init_extra_params: Callable[..., dict] = no_extra_params
  needs_local_pairs: Callable[[ml_collections.ConfigDict], bool] = no_local_pairs
  scorer: Scorer | None = None

  @property
  def input_fields(self) -> str:
    """`fields` as the pipeline config spells them (`config.input.fields`)."""
    return ",".join(self.fields)

  def make_loss_fn(self, model_config: clip.CLIPConfig, loss_config: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh | None = None) -> LossFn:
    """`loss_fn(params, batch) -> (loss, terms)`; pure, jittable."""
    return functools.partial(self.loss, model=clip.CLIP(model_config), loss_config=loss_config,
                             mesh=mesh)

  def train_flops_per_step(self, model_config: clip.CLIPConfig, input_config: Any,
                           batch: int) -> int:
    """Model FLOPs of one training step: forward + backward (2× forward) for every pair."""
    return 3 * batch * self.forward_flops_per_pair(model_config, input_config)
