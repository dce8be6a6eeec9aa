"""What a training method is: the one object the trainer, the benchmark and evaluation ask.

A method owns everything that makes it that method: the pipeline field groups its batches carry,
the trainable modules it adds beside the backbone, its forward (which tower runs on what, shaped
for speed), its objective, its FLOP count, and, if it has one, how it scores pairs at test time.
Nothing outside `goal_jax/methods/` branches on a method's name, and no method branches on the
backbone's family: it reads the towers' outputs (DESIGN.md's model contract) and compares
embeddings with the backbone's contrastive term (`pair_loss`: InfoNCE on CLIP, the sigmoid on
SigLIP, unless `config.loss.contrastive` says otherwise).

The trainable params are `{"clip": <backbone params>, **extras}` (`models/param_tree.py`; the key
predates SigLIP and names the two-tower backbone of either family), built by
`Method.init_params`. A loss runs its objective under `contrastive.data_parallel` on the mesh, so
the contrastive terms equal the dense single-device computation.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from goal_jax.losses import contrastive
from goal_jax.losses import pairwise
from goal_jax.models import families
from goal_jax.models import param_tree

LossFn = Callable[[dict, Mapping[str, jax.Array]], tuple[jax.Array, dict]]


class Towers(NamedTuple):
  """The backbone's towers and heads bound to one set of params (`encode_image` etc.)."""
  encode_image: Callable[[jax.Array], dict]
  encode_text: Callable[[jax.Array], dict]
  image_head: Callable[[jax.Array], jax.Array]
  text_head: Callable[[jax.Array], jax.Array]
  pool_region: Callable[[jax.Array, jax.Array], jax.Array]  # (patch tokens, mask) -> unit [B, E]
  # (ids, positions, segments, ends) -> unit [B, S, E]: packed captions (`text.packing`); None
  # for a text tower that cannot take them (SigLIP's is not causal).
  encode_packed_text: Callable[..., jax.Array] | None = None


def towers(model, clip_params: dict) -> Towers:
  """`model`: a family's Flax model (`clip.CLIP`, `siglip.SigLIP`)."""
  cls = type(model)
  bind = lambda method: functools.partial(model.apply, {"params": clip_params}, method=method)
  packed = getattr(cls, "encode_packed_text", None)
  return Towers(bind(cls.encode_image), bind(cls.encode_text), bind(cls.image_head),
                bind(cls.text_head), bind(cls.pool_region), packed and bind(packed))


def encode_packed(towers_: Towers, batch: Mapping[str, jax.Array]) -> jax.Array:
  """Unit embeddings `[B, S, E]` of the batch's packed short captions (`text.packing`)."""
  if towers_.encode_packed_text is None:
    raise ValueError("config.input.short_text_packing needs a causal text tower pooled at its "
                     "EOT token (CLIP's); this backbone's attends to its padding: set it to 0")
  return towers_.encode_packed_text(*(batch[k] for k in ("short_ids", "short_positions",
                                                         "short_segments", "short_ends")))


def contrastive_form(loss_config: ml_collections.ConfigDict, model_config) -> str:
  """`config.loss.contrastive`, or the loss the backbone was pretrained with."""
  return loss_config.get("contrastive") or families.of(model_config).contrastive


def pair_loss(model, clip_params: dict, loss_config: ml_collections.ConfigDict
              ) -> pairwise.PairLoss:
  """The contrastive term every objective uses, bound to the backbone's temperature and bias,
  with the options every method's config carries (`config.loss`)."""
  form = contrastive_form(loss_config, model.config)
  if form == "sigmoid" and loss_config.get("label_smoothing"):
    logging.warning("config.loss.label_smoothing=%s applies to the softmax; the sigmoid loss "
                    "ignores it", loss_config.label_smoothing)
  return pairwise.PairLoss(
      form, clip_params["logit_scale"], clip_params.get("logit_bias"),
      label_smoothing=loss_config.get("label_smoothing", 0.0),
      max_scale=loss_config.get("max_scale"),
      sigmoid_sharding=loss_config.get("sigmoid_sharding", "ring"),
      duplicates=loss_config.get("duplicates", "negative"))


def identity(tokens: jax.Array, batch: Mapping[str, jax.Array]) -> contrastive.RowIdentity:
  """Who each row of a contrastive term over `tokens` `[B, L]` is: its text and its record
  (`config.loss.duplicates` decides what two rows that are the same pair are to each other).
  A batch without `record_index` (the bench's random one) counts each row as its own image."""
  return contrastive.row_identity(tokens, record_index(batch))


def record_index(batch: Mapping[str, jax.Array]) -> jax.Array:
  if "record_index" in batch:
    return batch["record_index"]
  return jnp.arange(batch["image"].shape[0])


def duplicate_metrics(batch: Mapping[str, jax.Array]) -> dict:
  """Pairs of valid rows of the global batch with the same long caption, summary or record:
  what `config.loss.duplicates` acts on (logged each step by the trainer)."""
  valid = batch["valid"].astype(bool) if "valid" in batch else jnp.ones(
      batch["text"].shape[:1], bool)
  both = valid[:, None] & valid[None, :] & ~np.eye(valid.shape[0], dtype=bool)
  out = {}
  for field in ("text", "summary", "record_index"):
    if field in batch:
      key = batch[field] if field == "record_index" else contrastive.text_key(batch[field])
      same = key[:, None] == key[None, :]
      same = jnp.all(same, axis=-1) if same.ndim == 3 else same
      out[f"duplicate_pairs/{field}"] = jnp.sum(same & both) / 2
  return out


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


def keep_extra_params(extras: dict, clip_params) -> dict:
  del clip_params
  return extras


def no_data_check(config, source) -> None:
  del config, source


def no_step_metrics(batch) -> dict:
  del batch
  return {}


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
    start_extra_params: `(extras, clip_params) -> extras`: those of its own params that start
      from the backbone's (FG-CLIP's region temperatures start at its `logit_scale`), set by
      `init_params` once the backbone's params (drawn or pretrained) are known.
    check_data: `(config, source) -> None`, run by the trainer before any compilation on the
      training split's source; raises `ValueError` (with the command that fixes it) for data the
      method cannot train on, e.g. GOAL without local pairs.
    step_metrics: `(batch) -> {name: scalar}`: what the method logs beside the loss terms (on
      device, inside the jitted step).
    scorer: how it ranks pairs at test time (`Scorer`); None: by the embeddings' cosine.
    study_runs: the runs `python -m goal_jax.study` trains for it, `{run name: overrides of its
      recipe}` (`--config.<field>=<value>` words): the method itself and its paper's ablations.
  """
  name: str
  recipe: str
  fields: tuple[str, ...]
  loss: Callable[..., tuple[jax.Array, dict]]
  forward_flops_per_pair: Callable[[Any, Any], int]
  init_extra_params: Callable[..., dict] = no_extra_params
  start_extra_params: Callable[[dict, Any], dict] = keep_extra_params
  check_data: Callable[[ml_collections.ConfigDict, Any], None] = no_data_check
  step_metrics: Callable[[Mapping[str, jax.Array]], dict] = no_step_metrics
  scorer: Scorer | None = None
  study_runs: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

  @property
  def input_fields(self) -> str:
    """`fields` as the pipeline config spells them (`config.input.fields`)."""
    return ",".join(self.fields)

  def init_params(self, config: ml_collections.ConfigDict, model_config, rng: jax.Array,
                  clip_params: Any = None) -> dict:
    """The whole trainable tree on the host: `clip_params` (a pretrained start) or the backbone
    drawn from `rng`, and the method's own modules drawn from it (then `start_extra_params`).

    A pretrained start gets `config.reset_logit_scale` when set (Long-CLIP and FineLIP restart
    the temperature at ln 100, as their released code does) and the contrastive form is the
    softmax: the sigmoid's temperature and bias were learned together, and a new temperature
    beside the old bias would make every pair a confident match or mismatch.
    """
    clip_rng, extra_rng = jax.random.split(rng)
    reset = config.get("reset_logit_scale")
    if reset is not None and contrastive_form(config.loss, model_config) != "softmax":
      logging.info("reset_logit_scale=%s is for the softmax; the sigmoid keeps the start's "
                   "temperature and bias", reset)
      reset = None
    if clip_params is None:
      clip_params = jax.device_get(families.of(model_config).init_params(model_config, clip_rng))
    elif reset is not None:
      clip_params = {**clip_params,
                     "logit_scale": np.asarray(config.reset_logit_scale, np.float32)}
    extras = jax.device_get(self.init_extra_params(config.loss, model_config, extra_rng))
    return param_tree.merge(clip_params, self.start_extra_params(extras, clip_params))

  def abstract_extra_params(self, loss_config, model_config) -> dict:
    """Shapes of the method's own params (the restore target of a model's `method_params`)."""
    return jax.eval_shape(functools.partial(self.init_extra_params, loss_config, model_config),
                          jax.random.key(0))

  def make_loss_fn(self, model_config, loss_config: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh | None = None) -> LossFn:
    """`loss_fn(params, batch) -> (loss, terms)`; pure, jittable. The contrastive form is
    checked here, before anything compiles."""
    form = contrastive_form(loss_config, model_config)
    if form not in pairwise.FORMS:
      raise ValueError(f"config.loss.contrastive={form!r}: expected one of {pairwise.FORMS}")
    model = families.of(model_config).model_class(model_config)
    return functools.partial(self.loss, model=model, loss_config=loss_config, mesh=mesh)

  def train_flops_per_step(self, model_config, input_config: Any,
                           batch: int) -> int:
    """Model FLOPs of one training step: forward + backward (2× forward) for every pair."""
    return 3 * batch * self.forward_flops_per_pair(model_config, input_config)
