"""FG-CLIP's region terms: box features against their captions, and against hard negatives.

FG-CLIP (Xie et al., ICML 2025; https://github.com/360CVGroup/FG-CLIP) adds two region terms to
the global long- and short-caption InfoNCE in its second stage. As released (first version,
`fgclip/model/clip_strc/fgclip.py`, `FGCLIPModel.forward`, commit 0fcea59; the loader
`fgclip/train/train_fgclip.py`):

    L = L_long + L_short + 0.1 · L_region + 0.5 · L_hard

- Region features: `roi_align` of each box on the patch-token map, one output cell, adaptive
  sampling, `aligned=True` (`goal_jax.models.roi_align`). The release's map is the penultimate
  block's output sent through the last block with its attention cut to the value path
  (`forward_without_attn`), then `post_layernorm` and `visual_projection`; which map to pool is
  the method's choice.
- Region text: the region caption through the text tower at 77 positions and `text_projection`,
  the short caption's head (the long caption has its own `text_filip_projection`, copied from it
  at the start). FG-CLIP 2 (`fgclip2/`) adds a separate `boxtext_head`; the first version has
  none. At most 4 boxes per image (`max_anns`); a box's caption is drawn at random from its
  `short_expr` and `long_expr` for the region term, the `short_expr` for the hard term.
- Temperatures: each region term has its own learnable log scale (`logit_scale_finegraind`,
  `logit_scale_hardneg`), both started at CLIP's trained `logit_scale`.

Both terms are written for the rows one device holds with an `axis_name`, as every loss in
`goal_jax.losses`, and give the same value and gradients dense or sharded. Where the release
averages per GPU (each term is a mean over the GPU's own regions; DDP then averages the
gradients), these average over the global batch: equal when every GPU holds as many regions.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from goal_jax.losses import contrastive

# The released objective's weights (`box_loss_weight`, `hard_box_loss_weight`).
FGCLIP_WEIGHTS = {"global_long": 1.0, "global_short": 1.0, "region": 0.1, "hard_negative": 0.5}

REGION_TERMS = ("region", "hard_negative")  # the terms that read a batch's regions

# `pair_loss(image [M, E], text [M, E], *, valid, axis_name) -> scalar`: the project's contrastive
# term (`goal_jax.losses.pairwise.PairLoss`: InfoNCE or SigLIP's sigmoid).
PairLossFn = Callable[..., jax.Array]


def hard_negative_loss(region_embedding: jax.Array, positive_text: jax.Array,
                       negative_text: jax.Array, valid: jax.Array, negative_valid: jax.Array,
                       scale: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Each region's caption against its own K hard negatives: cross-entropy over 1 + K texts.

  As released (`hard_contrastive_loss`): logits `scale · <region, text>` for [its caption, its K
  negatives], target the caption, softmax over those 1 + K only (no other region or image takes
  part, so nothing is gathered), averaged over the regions that have negatives. The release
  always has K = 10 (it reshapes the texts to `[regions, 11, E]`) and keeps a region iff its
  annotation has `flag_short_neg == 1`.

  Args:
    region_embedding: `[n, R, E]` unit region features (this device's images).
    positive_text: `[n, R, E]` unit embeddings of each region's caption.
    negative_text: `[n, R, K, E]` unit embeddings of its hard negatives.
    valid: `[n, R]` bool, the region exists.
    negative_valid: `[n, R, K]` bool; an invalid negative leaves its region's softmax. A region
      counts iff it is valid and has at least one valid negative.
    scale: the temperature, `exp` of a log scale (released: `logit_scale_hardneg`).
    axis_name: mesh axis when called inside `jax.shard_map`.

  Returns:
    The mean over the counted regions of the global batch; 0 if there are none.
  """
  texts = jnp.concatenate([positive_text[:, :, None], negative_text], axis=2)  # [n, R, 1+K, E]
  logits = scale * jnp.einsum("nre,nrke->nrk", region_embedding.astype(jnp.float32),
                              texts.astype(jnp.float32), precision=contrastive.PRECISION)
  negative_valid = negative_valid.astype(bool)
  columns = jnp.concatenate([jnp.ones_like(negative_valid[:, :, :1]), negative_valid], axis=2)
  # Each region is a one-row problem of its own columns: `[n, R, 1, 1+K]`, target column 0.
  losses = contrastive.cross_entropy(logits[:, :, None], jnp.zeros(valid.shape + (1,), jnp.int32),
                                     columns)[..., 0]
  counted = valid.astype(bool) & jnp.any(negative_valid, axis=-1)
  return contrastive.batch_mean(losses, counted, axis_name)


def region_text_loss(region_embedding: jax.Array, region_text: jax.Array, valid: jax.Array, *,
                     pair_loss: PairLossFn, identity: contrastive.RowIdentity | None = None,
                     axis_name: str | None = None) -> jax.Array:
  """Regions against region captions: `pair_loss` over every valid region of the batch.

  The `[n, R]` regions are flattened to `n·R` rows (image-major, so the rows gathered from all
  devices are the dense batch's, in order), and each region's caption competes with every other
  valid region's caption of the global batch, other regions of its own image included; padded
  regions leave every pair and the mean.

  The release (`pairwise_contrastive_loss`, at its own learnable `logit_scale_finegraind`) is
  InfoNCE over the regions of one GPU's batch only: unlike its global terms it gathers nothing,
  so a region's negatives are the ~4 x 512 other regions on its GPU and the term depends on the
  GPU count. Here they are the regions of the global batch (gathered when sharded), so dense and
  sharded agree; `pair_loss` may also be SigLIP's sigmoid.

  Args:
    region_embedding, region_text: `[n, R, E]` unit embeddings.
    valid: `[n, R]` bool.
    pair_loss: `pair_loss(image [M, E], text [M, E], *, valid [M] or None, identity, axis_name)`.
    identity: `[n, R]`-leading identities of the regions (`pair_loss.duplicates`); None: none.
    axis_name: mesh axis when called inside `jax.shard_map`.
  """
  n, regions, width = region_embedding.shape
  if identity is not None:
    identity = jax.tree.map(lambda x: x.reshape(n * regions, *x.shape[2:]), identity)
  return pair_loss(region_embedding.reshape(n * regions, width),
                   region_text.reshape(n * regions, width),
                   valid=valid.reshape(n * regions).astype(bool), identity=identity,
                   axis_name=axis_name)


def reads_regions(weights: Mapping[str, float] | None) -> bool:
  """Whether the terms under these weight overrides read regions (region or hard negative > 0)."""
  resolved = contrastive.resolve_weights(FGCLIP_WEIGHTS, weights)
  return any(resolved[k] for k in REGION_TERMS)


def fgclip_objective(image_embedding: jax.Array, long_embedding: jax.Array | None,
                     short_embedding: jax.Array | None, regions: Mapping[str, jax.Array] | None,
                     *, pair_loss: PairLossFn, region_pair_loss: PairLossFn,
                     hard_negative_scale: jax.Array,
                     weights: Mapping[str, float] | None = None,
                     identities: Mapping[str, contrastive.RowIdentity] | None = None,
                     axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`L = w_long·pair(v, t_long) + w_short·pair(v, t_short) + w_region·L_region + w_hard·L_hard`.

  Args:
    image_embedding: `[n, E]` unit image embeddings (this device's rows).
    long_embedding, short_embedding: `[n, E]` unit caption embeddings; None when the term's
      weight is 0 (then it is not computed).
    regions: `embedding` `[n, R, E]` unit region features, `text` `[n, R, E]` their captions,
      `valid` `[n, R]`, and for the hard term `negatives` `[n, R, K, E]`, `negative_valid`
      `[n, R, K]`; None when neither region term is weighted.
    pair_loss: the global terms' contrastive term (the backbone's temperature and bias).
    region_pair_loss: the region term's, at its own temperature (released:
      `logit_scale_finegraind`).
    hard_negative_scale: the hard term's temperature, `exp` of its own log scale (released:
      `logit_scale_hardneg`).
    weights: overrides of `FGCLIP_WEIGHTS`; a 0-weight term is not computed.
    identities: the rows' identities of `global_long`, `global_short` and `region` (`[n, R]`
      leaves, flattened with the regions) for `pair_loss.duplicates`; None: none.
    axis_name: mesh axis when called inside `jax.shard_map`.

  Returns:
    `(total, terms)` with the unweighted computed terms.
  """
  w = contrastive.resolve_weights(FGCLIP_WEIGHTS, weights)
  identities = identities or {}
  terms = {}
  if w["global_long"]:
    terms["global_long"] = pair_loss(image_embedding, long_embedding,
                                     identity=identities.get("global_long"), axis_name=axis_name)
  if w["global_short"]:
    terms["global_short"] = pair_loss(image_embedding, short_embedding,
                                      identity=identities.get("global_short"),
                                      axis_name=axis_name)
  if w["region"]:
    terms["region"] = region_text_loss(regions["embedding"], regions["text"], regions["valid"],
                                       pair_loss=region_pair_loss,
                                       identity=identities.get("region"), axis_name=axis_name)
  if w["hard_negative"]:
    terms["hard_negative"] = hard_negative_loss(
        regions["embedding"], regions["text"], regions["negatives"], regions["valid"],
        regions["negative_valid"], hard_negative_scale, axis_name=axis_name)
  return contrastive.weighted_total(terms, w), terms
