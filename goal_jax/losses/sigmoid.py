"""SigLIP's pairwise sigmoid loss, dense or sharded as the SigLIP paper's chunked ring.

Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (ICCV 2023), Eq. 1: every image-text
pair of the batch is a binary problem, positive on the diagonal,

    L = -1/|B| Σ_i Σ_j log σ(z_ij (t x_i·y_j + b)),  z_ij = 1 if i = j else -1,

with t = exp(logit_scale) (init log 10) and b = logit_bias (init -10), both learned.

Sharded over a mesh axis (`axis_name`, inside `jax.shard_map`, as every loss in
`goal_jax.losses`), two forms give the dense value and gradients:
- `ring` (the paper's Sec. 3.3): each device keeps its images; the text chunks travel around the
  devices (`ppermute`), one chunk per step, so a device only ever holds `n × n` logits of its
  `n` rows, never the global `B × B` (big_vision's current trainer materialises the global
  matrix; its header leaves the chunked version as a TODO). Positives meet only in the first
  step, on the device's own chunk.
- `gather`: all texts gathered at once, `n × B` logits per device (what InfoNCE does here).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from goal_jax.losses import contrastive

FORMS = ("ring", "gather")


def _positive_correction(image, text, scale, bias, valid):
  """What turns the diagonal pairs' negative terms into positive ones: -log σ(d) - (-log σ(-d))
  = softplus(-d) - softplus(d) per pair (no n x n mask of signs is built)."""
  diag = scale * jnp.sum(image * text, axis=-1) + bias
  correction = jax.nn.softplus(-diag) - jax.nn.softplus(diag)
  return jnp.sum(correction if valid is None else correction * valid)


def _pair_terms(image, text, scale, bias, positive: bool, valid_rows, valid_cols):
  """Σ_ij -log σ(z_ij logit_ij) of one block; `positive`: the block holds the diagonal.

  Every pair as a negative first, -log σ(-l) = softplus(l), then the diagonal corrected.
  """
  logits = scale * jnp.einsum("ie,je->ij", image, text,
                              precision=contrastive.PRECISION) + bias
  terms = jax.nn.softplus(logits)
  if valid_rows is not None:
    terms = terms * (valid_rows[:, None] & valid_cols[None, :])
  total = jnp.sum(terms)
  if positive:
    total = total + _positive_correction(image, text, scale, bias, valid_rows)
  return total


def sigmoid_parts(image: jax.Array, text: jax.Array, scale: jax.Array, bias: jax.Array, *,
                  valid: jax.Array | None = None, axis_name: str | None = None,
                  form: str = "ring") -> tuple[jax.Array, jax.Array]:
  """(Σ over the global batch's valid pairs of -log σ(z_ij logit_ij), number of valid rows |B|).

  `scale` is the temperature exp(logit_scale) (fp32), `bias` the logit bias. Building block for
  objectives that average several problems themselves (MulCLIP's SAP, one per sentence index).
  """
  if form not in FORMS:
    raise ValueError(f"sigmoid loss form must be one of {FORMS}, got {form!r}")
  image, text = image.astype(jnp.float32), text.astype(jnp.float32)
  bias = jnp.asarray(bias, jnp.float32)
  mask = None if valid is None else valid.astype(bool)
  count = contrastive.global_sum(
      jnp.ones(image.shape[0]) if mask is None else mask.astype(jnp.float32), axis_name)
  if axis_name is None:
    total = _pair_terms(image, text, scale, bias, True, mask, mask)
  elif form == "gather":
    total = _gathered_terms(image, text, scale, bias, mask, axis_name)
  else:
    total = _ring_terms(image, text, scale, bias, mask, axis_name)
  return contrastive.global_sum(total, axis_name), count


def sigmoid_loss(image: jax.Array, text: jax.Array, logit_scale: jax.Array,
                 logit_bias: jax.Array, *, valid: jax.Array | None = None,
                 axis_name: str | None = None, form: str = "ring",
                 max_scale: float | None = None) -> jax.Array:
  """The pairwise sigmoid loss of unit embeddings `image`, `text` `[n, E]` (this device's rows).

  `valid` `[n]` leaves padding rows out of every pair (and of |B|). `form` (sharded only):
  `ring` or `gather` (module docstring); both equal the dense loss. `max_scale` clamps the
  temperature from above, as for InfoNCE (SigLIP itself does not clamp).
  """
  total, count = sigmoid_parts(image, text, contrastive.temperature(logit_scale, max_scale),
                               logit_bias, valid=valid, axis_name=axis_name, form=form)
  return total / jnp.maximum(count, 1.0)


def _ring_terms(image, text, scale, bias, mask, axis_name):
  """This device's images against every text chunk, the chunks passed one device along."""
  devices = jax.lax.axis_size(axis_name)
  shift = [(i, (i + 1) % devices) for i in range(devices)]
  # Each block's logits are recomputed in the backward pass rather than kept: otherwise autodiff
  # keeps all `devices` blocks, as much as the gathered n x B logits.
  block = jax.checkpoint(_pair_terms, static_argnums=(4,))
  cols = mask
  total = block(image, text, scale, bias, True, mask, cols)
  for _ in range(devices - 1):
    text = jax.lax.ppermute(text, axis_name, shift)
    if cols is not None:
      cols = jax.lax.ppermute(cols, axis_name, shift)
    total = total + block(image, text, scale, bias, False, mask, cols)
  return total


def _gathered_terms(image, text, scale, bias, mask, axis_name):
  """This device's images against all texts at once; its positives are its own rows' pairs."""
  texts = contrastive.gather(text, axis_name)
  logits = scale * jnp.einsum("ie,je->ij", image, texts, precision=contrastive.PRECISION) + bias
  terms = jax.nn.softplus(logits)
  if mask is not None:
    terms = terms * (mask[:, None] & contrastive.gather(mask, axis_name)[None, :])
  return jnp.sum(terms) + _positive_correction(image, text, scale, bias, mask)
