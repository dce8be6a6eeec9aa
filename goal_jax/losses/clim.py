"""CLIM, FineLIP's cross-modal late interaction: tokens refined by ATRM, scored token by token,
and the hinge ranking loss FineLIP trains it with; MulCLIP's WPR ablation uses it too.

FineLIP (Asokan et al., CVPR 2025; https://github.com/tiiuae/FineLIP) refines each side's tokens
with its ATRM (`goal_jax.models.token_aggregation.TokenAggregation`): image = [CLS, N′ aggregated
patches], text = [N′ aggregated SOT+word tokens, EOT], all L2-normalised. On SigLIP, which has no
class token, the image's first token is its attention-pooled embedding, and the text's last the
token at the pooled (last) position. CLIM scores a pair by
token-to-token cosines through a leaky ReLU, max-pooled over the other side and averaged, summed
over both directions; retrieval fuses it with the global cosine (`fused_score`).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from goal_jax.losses import contrastive
from goal_jax.models import token_aggregation
from goal_jax.models.clip import token_at

_einsum = functools.partial(jnp.einsum, precision=contrastive.PRECISION)
_MASKED_SIMILARITY = -1e9  # below any leaky-ReLU'd cosine: a padded text token is never the max


def refined_image_tokens(image_out: Mapping[str, jax.Array],
                         aggregate: token_aggregation.Aggregate) -> jax.Array:
  """`[global, ATRM(patches)]`, unit fp32 `[B, 1+N′, E]`, from a vision tower's outputs: its
  `embedding` (CLIP: the normalised projected CLS, so this is FineLIP's `[CLS, ...]`; SigLIP:
  the attention-pooled embedding) and `patch_tokens_projected` `[B, N, E]` (the ATRM sees them
  unnormalised, as released)."""
  patches = image_out["patch_tokens_projected"].astype(jnp.float32)
  aggregated = aggregate(patches, jnp.ones(patches.shape[:2], bool)).astype(jnp.float32)
  pooled = image_out["embedding"].astype(jnp.float32)[:, None]
  return contrastive.l2_normalize(jnp.concatenate([pooled, aggregated], axis=1))


def refined_text_tokens(text_out: Mapping[str, jax.Array],
                        aggregate: token_aggregation.Aggregate) -> jax.Array:
  """`[ATRM(words), pooled]`, unit fp32 `[B, N′+1, E]`, from a text tower's outputs: the
  `tokens_projected` `[B, L, E]` before `text_end` (CLIP: SOT and the words) aggregated, and the
  token at `eot_index` (the pooled position: CLIP's EOT)."""
  text_tokens = text_out["tokens_projected"].astype(jnp.float32)
  mask = token_aggregation.text_token_mask(text_out["text_end"], text_tokens.shape[1])
  words = aggregate(text_tokens, mask)
  eot = token_at(text_tokens, text_out["eot_index"])[:, None]
  return contrastive.l2_normalize(jnp.concatenate([words.astype(jnp.float32), eot], axis=1))


IMAGE_KEYS = ("embedding", "patch_tokens_projected")  # the tower outputs CLIM reads
TEXT_KEYS = ("embedding", "tokens_projected", "eot_index", "text_end")


def refined_tokens(image_out: Mapping[str, jax.Array], text_out: Mapping[str, jax.Array],
                   aggregators: token_aggregation.PerModality) -> tuple[jax.Array, jax.Array]:
  """The unit tokens CLIM compares: `[global, ATRM(patches)]` and `[ATRM(words), pooled]`,
  `([B, 1+N′, E], [B, N′+1, E])` L2-normalised fp32, from the towers' outputs (`IMAGE_KEYS`,
  `TEXT_KEYS`). The ATRMs see unnormalised tokens, as released."""
  return (refined_image_tokens(image_out, aggregators.image),
          refined_text_tokens(text_out, aggregators.text))


def late_interaction(image_tokens: jax.Array, text_tokens: jax.Array,
                     text_mask: jax.Array | None = None, *,
                     negative_slope: float = 0.1) -> jax.Array:
  """CLIM similarity of every image with every text (FineLIP's cross-modal late interaction).

  s = mean_t max_v lrelu(cos) + mean_v max_t lrelu(cos): the two directions are summed, not
  averaged, so s lies in [−0.2, 2]. Materialises `[Ni, Nt, Lt, Lv]` cosines: fine for a training
  batch; score large retrieval sets in chunks of texts, as FineLIP's evaluation does.

  Args:
    image_tokens: `[Ni, Lv, E]` unit tokens; text_tokens: `[Nt, Lt, E]` unit tokens.
    text_mask: `[Nt, Lt]` bool, for texts of different lengths (FineLIP's refined texts all have
      N′+1 tokens and need none); masked tokens leave both the max and the mean.

  Returns:
    `[Ni, Nt]` fp32.
  """
  cosines = _einsum("ive,jte->ijtv", image_tokens.astype(jnp.float32),
                    text_tokens.astype(jnp.float32))
  cosines = jax.nn.leaky_relu(cosines, negative_slope)
  best_image_token = jnp.max(cosines, axis=3)  # [Ni, Nt, Lt]
  if text_mask is None:
    text_to_image = jnp.mean(best_image_token, axis=2)
  else:
    valid = text_mask.astype(bool)[None]
    count = jnp.maximum(jnp.sum(valid, axis=2), 1)
    text_to_image = jnp.sum(jnp.where(valid, best_image_token, 0.0), axis=2) / count
    cosines = jnp.where(valid[..., None], cosines, _MASKED_SIMILARITY)
  image_to_text = jnp.mean(jnp.max(cosines, axis=2), axis=2)
  return text_to_image + image_to_text


def ranking_loss(similarity: jax.Array, image_ids: jax.Array | None = None, *,
                 margin: float = 0.2, max_violation: bool = False,
                 axis_name: str | None = None) -> jax.Array:
  """FineLIP's (VSE++) bidirectional hinge loss, summed over the global batch as released.

  Row i's positive is text i. Pairs whose images share an id, the diagonal included, are never
  negatives, in either direction; with `max_violation` each image and each text keeps only its
  largest violation.

  Args:
    similarity: `[n, B]` scores of this device's images against every text of the global batch
      (gathered in device order; `[B, B]` when `axis_name` is None).
    image_ids: `[n]` ints, this device's rows; `None` = all images distinct.
    axis_name: mesh axis when called inside `shard_map`; the `[B, B]` matrix (not the tokens)
      is all-gathered for the text-to-image direction.

  Returns:
    The scalar loss (a sum, not a mean: FineLIP's scale).
  """
  similarity = similarity.astype(jnp.float32)
  n_local = similarity.shape[0]
  offset = contrastive.row_offset(n_local, axis_name)
  rows = offset + jnp.arange(n_local)
  if image_ids is None:
    image_ids = rows
  ids_all = contrastive.gather(image_ids, axis_name)
  positive = jnp.take_along_axis(similarity, rows[:, None], axis=1)[:, 0]  # s_ii, local i
  # Image i (local) against every text j.
  violation = jax.nn.relu(margin + similarity - positive[:, None])
  text_cost = jnp.where(image_ids[:, None] == ids_all[None, :], 0.0, violation)
  # Text j (local) against every image i: this device's columns of the global matrix.
  columns = jax.lax.dynamic_slice_in_dim(contrastive.gather(similarity, axis_name), offset,
                                         n_local, axis=1)
  violation = jax.nn.relu(margin + columns - positive[None, :])
  image_cost = jnp.where(ids_all[:, None] == image_ids[None, :], 0.0, violation)
  if max_violation:
    text_cost, image_cost = jnp.max(text_cost, axis=1), jnp.max(image_cost, axis=0)
  return (contrastive.global_sum(text_cost, axis_name)
          + contrastive.global_sum(image_cost, axis_name))


def fused_score(image_embedding: jax.Array, text_embedding: jax.Array, clim: jax.Array, *,
                global_weight: float = 0.8) -> jax.Array:
  """FineLIP's retrieval score: w·cos(global) + (1 − w)·CLIM, neither rescaled first.

  Args:
    image_embedding: `[Ni, E]`, text_embedding: `[Nt, E]` unit global embeddings;
    clim: `[Ni, Nt]` from `late_interaction`.
  """
  cosine = jnp.matmul(image_embedding.astype(jnp.float32), text_embedding.astype(jnp.float32).T,
                      precision=contrastive.PRECISION)
  return global_weight * cosine + (1.0 - global_weight) * clim.astype(jnp.float32)
