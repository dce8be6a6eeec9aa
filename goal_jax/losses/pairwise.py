"""The contrastive term of every objective: CLIP's InfoNCE or SigLIP's pairwise sigmoid.

Every method compares image and text embeddings over the batch somewhere (global long, summary,
GOAL's local pairs, MulCLIP's SAP, FG-CLIP's regions). Which loss does it is the backbone's
business, not the method's: a SigLIP model was pretrained with the sigmoid loss and its learned
bias b only means something there, a CLIP model with the softmax. So objectives take one
`PairLoss` and call it wherever their paper writes a contrastive term; the method's config picks
the form (`config.loss.contrastive`, default: the backbone's own).

Both forms are written for the rows one device holds with an `axis_name`, like every loss here.
Sharded, the softmax all-gathers the other modality (`n × B` logits per device: each row's
denominator needs every column); the sigmoid runs the SigLIP paper's chunked ring
(`goal_jax.losses.sigmoid`, `n × n` blocks), since each of its pairs is a problem of its own.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from goal_jax.losses import contrastive
from goal_jax.losses import sigmoid

FORMS = ("softmax", "sigmoid")


@dataclasses.dataclass(frozen=True)
class PairLoss:
  """A contrastive term bound to the model's temperature (and bias).

  Attributes:
    form: `softmax` (symmetric InfoNCE, CLIP) or `sigmoid` (SigLIP's Eq. 1).
    logit_scale: log temperature; the logits use exp(logit_scale) (clamped at `max_scale`).
    logit_bias: the sigmoid's learned bias b (SigLIP's params have it; unused by the softmax).
    label_smoothing: the softmax's (torch semantics); the sigmoid form has no classes to smooth.
    sigmoid_sharding: `ring` or `gather` (`goal_jax.losses.sigmoid`), when sharded.
    duplicates: the softmax's treatment of rows that are the same pair, given their
      `identity` (`contrastive.DUPLICATE_POLICIES`); the sigmoid scores every pair as its own
      binary problem, as SigLIP does, and takes no identity.
  """
  form: str
  logit_scale: jax.Array
  logit_bias: jax.Array | None = None
  label_smoothing: float = 0.0
  max_scale: float | None = None
  sigmoid_sharding: str = "ring"
  duplicates: str = "negative"

  def __post_init__(self):
    if self.duplicates not in contrastive.DUPLICATE_POLICIES:
      raise ValueError(f"config.loss.duplicates={self.duplicates!r}: expected one of "
                       f"{contrastive.DUPLICATE_POLICIES}")
    if self.form not in FORMS:
      raise ValueError(f"contrastive loss form {self.form!r}: expected one of {FORMS}")
    if self.form == "sigmoid" and self.logit_bias is None:
      raise ValueError("the sigmoid loss needs a learned logit bias, which this backbone does not "
                       "have (CLIP); use config.loss.contrastive=softmax, or a SigLIP model")

  @property
  def scale(self) -> jax.Array:
    return contrastive.temperature(self.logit_scale, self.max_scale)

  def parts(self, image: jax.Array, text: jax.Array, *, valid: jax.Array | None = None,
            identity: contrastive.RowIdentity | None = None,
            axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
    """(total, count) over the global batch, the loss being total / count: for objectives that
    average several problems themselves and must know which are empty (SAP)."""
    if self.form == "sigmoid":
      return sigmoid.sigmoid_parts(image, text, self.scale, self.logit_bias, valid=valid,
                                   axis_name=axis_name, form=self.sigmoid_sharding)
    total, count = contrastive.infonce_parts(image, text, self.scale, valid=valid,
                                             label_smoothing=self.label_smoothing,
                                             identity=identity, duplicates=self.duplicates,
                                             axis_name=axis_name)
    return total / 2.0, count  # InfoNCE averages its two directions

  def __call__(self, image: jax.Array, text: jax.Array, *, valid: jax.Array | None = None,
               identity: contrastive.RowIdentity | None = None,
               axis_name: str | None = None) -> jax.Array:
    """The loss of unit embeddings `image`, `text` `[n, E]` (this device's rows); `valid` `[n]`
    drops padded rows from every pair and the mean; 0 when no row is valid; `identity` says
    which rows are the same pair (`duplicates`)."""
    total, count = self.parts(image, text, valid=valid, identity=identity, axis_name=axis_name)
    return total / jnp.maximum(count, 1.0)


def infonce(logit_scale: jax.Array, **options) -> PairLoss:
  """CLIP's term (what tests and the softmax-only callers build)."""
  return PairLoss("softmax", logit_scale, **options)
