"""FineLIP's objective: a hinge ranking loss on token-level late-interaction scores.

FineLIP (Asokan et al., CVPR 2025; https://github.com/tiiuae/FineLIP) scores pairs with CLIM on
ATRM-refined tokens (`goal_jax.losses.clim`). Training is VSE++'s bidirectional hinge loss on that `[images, texts]`
matrix; retrieval ranks by 0.8·global cosine + 0.2·CLIM.

    L = Σ_i Σ_{j∉same(i)} [m + s_ij − s_ii]₊ + Σ_j Σ_{i∉same(j)} [m + s_ij − s_jj]₊

The released training loop uses this term alone: its CLIP InfoNCE only runs in its baseline mode.
`FINELIP_WEIGHTS` therefore keeps a long-caption InfoNCE term at weight 0 (not computed), for the
variant that adds the global loss back.

What the trainer passes:
- `image_out = CLIP.encode_image(batch["image"])`: `embedding`, `tokens_projected [B, 1+N, E]`;
- `text_out = CLIP.encode_text(batch["text"])` (long captions, 248 tokens): `embedding`,
  `tokens_projected [B, L, E]`, `eot_index [B]`;
- `image_ids [B]`: which sample an image is; rows sharing an id are not each other's negatives
  (`None`: every row is its own image, FineLIP's case, whose ids are dataset indices);
- `aggregators = token_aggregation.per_modality(N′, params["aggregation"])`: the two ATRMs,
  each `(tokens [B, N, E], mask [B, N]) -> [B, N′, E]`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax

from goal_jax.losses import clim
from goal_jax.losses import contrastive
from goal_jax.losses import pairwise
from goal_jax.models import token_aggregation

FINELIP_WEIGHTS = {"global_long": 0.0, "clim": 1.0}


@dataclasses.dataclass(frozen=True)
class FineLIPOptions:
  """FineLIP's released defaults (its argument parser and test script).

  - `margin = 0.2`: the ranking loss margin (`--margin`).
  - `max_violation = False`: hinge summed over all negatives; `True` keeps only the hardest
    negative per query (VSE++'s MH form). Released as an opt-in flag (`--max_violation`, off);
    its launch script, which would say whether the paper's runs set it, is not published.
  - `negative_slope = 0.1`: the leaky ReLU on token cosines before max-pooling.
  - `global_weight = 0.8`: test-time score = 0.8·global cosine + 0.2·CLIM, both raw (the
    evaluation script's `alpha`).
  """
  margin: float = 0.2
  max_violation: bool = False
  negative_slope: float = 0.1
  global_weight: float = 0.8


def finelip_objective(image_out: Mapping[str, jax.Array], text_out: Mapping[str, jax.Array],
                      image_ids: jax.Array | None = None, *,
                      aggregators: token_aggregation.PerModality | None,
                      pair_loss: pairwise.PairLoss, weights: Mapping[str, float] | None = None,
                      options: FineLIPOptions = FineLIPOptions(),
                      identity: contrastive.RowIdentity | None = None,
                      axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """FineLIP's loss. See the module docstring for what each argument holds.

  Args:
    weights: overrides of `FINELIP_WEIGHTS`; a 0-weight term is not computed. `global_long`
      (0 as released) adds the symmetric long-caption InfoNCE, FineLIP's baseline loss (it uses
      label smoothing 0.1 there).
    options: `FineLIPOptions`.
    identity: the rows' identities for `global_long` (`pair_loss.duplicates`); None: none.
    pair_loss: the `global_long` contrastive term (InfoNCE on CLIP).
    axis_name: set when running inside `data_parallel` / `shard_map`.

  Returns:
    `(total, terms)`, `terms` holding each computed term unweighted.
  """
  w = contrastive.resolve_weights(FINELIP_WEIGHTS, weights)
  terms = {}
  if w["global_long"]:
    terms["global_long"] = pair_loss(image_out["embedding"], text_out["embedding"],
                                     identity=identity, axis_name=axis_name)
  if w["clim"]:
    image_tokens, text_tokens = clim.refined_tokens(image_out, text_out, aggregators)
    similarity = clim.late_interaction(image_tokens, contrastive.gather(text_tokens, axis_name),
                                       negative_slope=options.negative_slope)
    terms["clim"] = clim.ranking_loss(similarity, image_ids, margin=options.margin,
                                      max_violation=options.max_violation, axis_name=axis_name)
  return contrastive.weighted_total(terms, w), terms
