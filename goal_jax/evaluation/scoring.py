"""How evaluation ranks pairs: the embeddings' cosine, or the trained method's own score.

A method may rank pairs at test time by more than the cosine of the two global embeddings
(`methods.base.Scorer`; FineLIP: 0.8·cosine + 0.2·late interaction on refined tokens). A
`MethodScoring` binds such a scorer to the loss config it was trained with. Evaluation then turns
each row into the scorer's features batch by batch, as it embeds (`embedding.Embedder(features=
...)`), and scores all images against one block of texts at a time (`metrics.score_matrix`).

The tasks that rank a gallery (`tasks.SCORED_TASKS`: retrieval, the joint test, hard groups)
rank by it; zero-shot keeps the embeddings, as its classifier averages each class's prompt
embeddings, which a token-level score has no counterpart of. A model directory records its method
(`models/checkpoint.py`); `for_model` reads it for `evaluate`, the trainer uses `of_method`.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections
import numpy as np

from goal_jax import methods
from goal_jax.evaluation import metrics
from goal_jax.methods import base
from goal_jax.models import checkpoint
from goal_jax.models import param_tree

METHOD = "method"
EMBEDDING = "embedding"
CHOICES = (METHOD, EMBEDDING)


@dataclasses.dataclass(frozen=True)
class MethodScoring:
  """A method's scorer bound to its loss config; hashable, so compiled steps are cached on it.

  Params are never held here: features read the method's whole tree `{"clip": ..., **extras}`.
  """
  method: str
  scorer: base.Scorer
  loss_config: ml_collections.FrozenConfigDict

  @property
  def label(self) -> str:
    """What results record as the scoring (`method:<name>`)."""
    return f"{METHOD}:{self.method}"

  def of(self, kind: str, tower_out, params) -> dict:
    """The features of `kind` (`image` or `text`) from its tower's outputs (jittable)."""
    features = self.scorer.image_features if kind == "image" else self.scorer.text_features
    return features(tower_out, param_tree.extras_of(params), self.loss_config)

  def score(self, image_features, text_features) -> jax.Array:
    return self.scorer.score(image_features, text_features, self.loss_config)

  def similarity(self, image_features, text_features) -> np.ndarray:
    """`[images, texts]` float32 scores of host features, one block of texts per step."""
    return metrics.score_matrix(_jitted_score(self), image_features, text_features,
                                texts_per_block=self.scorer.texts_per_block)


@functools.lru_cache(maxsize=None)
def _jitted_score(scoring: MethodScoring):
  return jax.jit(scoring.score)


def label(scoring: MethodScoring | None) -> str:
  return EMBEDDING if scoring is None else scoring.label


def of_method(name: str, loss_config) -> MethodScoring | None:
  """The scoring of method `name` trained with `loss_config`; None if it ranks by embeddings."""
  scorer = methods.get(name).scorer
  if scorer is None:
    return None
  return MethodScoring(name, scorer, ml_collections.FrozenConfigDict(loss_config))


def for_model(directory: str, clip_params, model_config, choice: str | None = None):
  """The scoring a model directory is ranked by, and the params evaluation then reads.

  Args:
    directory: a model checkpoint; the method that trained it is in its `method.json`.
    clip_params: its CLIP params (`checkpoint.load_model`).
    model_config: their `CLIPConfig`, for the shapes of the method's own params.
    choice: `method`, `embedding`, or None: the method's when it has a scorer.

  Returns:
    `(None, clip_params)` to rank by embeddings, else `(MethodScoring, {"clip": clip_params,
    **the method's params})`, those restored strictly.
  """
  if choice not in (None, *CHOICES):
    raise ValueError(f"scoring must be one of {CHOICES}, got {choice!r}")
  record = checkpoint.load_method(directory)
  scoring = of_method(record["name"], record["loss"]) if record else None
  if choice == EMBEDDING or (choice is None and scoring is None):
    return None, clip_params
  if scoring is None:
    why = ("records no method (a converted model, a training checkpoint step or an older run)"
           if record is None else f"was trained by {record['name']}, which has no scorer")
    raise ValueError(f"--scoring={METHOD}: {directory} {why}; use --scoring={EMBEDDING}")
  abstract = methods.get(scoring.method).abstract_extra_params(
      ml_collections.ConfigDict(record["loss"]), model_config)
  extras = checkpoint.load_method_params(directory, abstract)
  return scoring, param_tree.merge(clip_params, extras)
