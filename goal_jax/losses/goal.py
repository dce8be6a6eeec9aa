"""GOAL's objective (Choi et al., CVPR 2025): global + local InfoNCE and Token Similarity Learning.

    L = 1·L_global + 0.5·L_local + 1·L_TSL_img + 1·L_TSL_txt        (GOAL's released code)

What the trainer passes (one forward over `[image; local_image]` and `[text; local_text]`, split
into halves with `split_halves` on the *global* arrays, before any `data_parallel`):
- `image_out` / `text_out`: `encode_image(batch["image"])` / `encode_text(batch["text"])`
  (uses `embedding`, and for TSL the pre-LN last-block outputs: `patch_tokens` of the image,
  `tokens` of the text);
- `local_image_out` / `local_text_out`: the same for `batch["local_image"]` / `batch["local_text"]`
  (uses `embedding` only);
- `batch`: `local_valid [B]`, `local_patch_mask [B, G*G]` (over `patch_tokens`),
  `local_span_mask [B, Lc]` (the sentence's tokens inside `text`);
- `poolers`: how a box's patches and a sentence's tokens become one unit embedding. CLIP: the
  mean of the pre-LN tokens through post-LN + projection, exactly the CLS/EOT path
  (`CLIP.pool_region`, `mean_then_head(text_head)`); SigLIP: its attention-pooling head over
  the box's patches (`SigLIP.pool_region`), the text as CLIP's.
Local outputs may be `None` when the local and TSL weights are 0 (global fine-tuning baseline).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from goal_jax.losses import contrastive
from goal_jax.losses import pairwise
from goal_jax.models.clip import masked_mean

GOAL_WEIGHTS = {"global": 1.0, "local": 0.5, "tsl_image": 1.0, "tsl_text": 1.0}
LOCAL_TERMS = ("local", "tsl_image", "tsl_text")  # the terms that read a local pair


def reads_local_pairs(weights: Mapping[str, float] | None) -> bool:
  """Whether GOAL's terms under these weight overrides read a local pair (local or TSL > 0)."""
  resolved = contrastive.resolve_weights(GOAL_WEIGHTS, weights)
  return any(resolved[k] for k in LOCAL_TERMS)


Pool = Callable[[jax.Array, jax.Array], jax.Array]  # (tokens [B, T, D], mask [B, T]) -> [B, E]


class Poolers(NamedTuple):
  """How each tower turns the tokens a mask selects into one embedding (TSL's pooled side)."""
  image: Pool
  text: Pool


def mean_then_head(head: Callable[[jax.Array], jax.Array]) -> Pool:
  """GOAL's pooling: the masked mean of pre-LN tokens through the tower's final LN + projection."""
  return lambda tokens, mask: head(masked_mean(tokens, mask))


def split_halves(outputs: Mapping[str, jax.Array], size: int) -> tuple[dict, dict]:
  """Splits a forward over a `[first; second]` concatenation into the two halves' outputs."""
  first = {k: v[:size] for k, v in outputs.items()}
  second = {k: v[size:] for k, v in outputs.items()}
  return first, second


TSL_FORMS = ("diagonal", "matrix")


def token_similarity(tokens: jax.Array, mask: jax.Array, pool: Pool,
                     target: jax.Array, valid: jax.Array | None = None,
                     axis_name: str | None = None, form: str = "diagonal") -> jax.Array:
  """One TSL term between each pooled region and the embedding of its own crop (or sentence).

  `form="diagonal"` (the default, what the official code runs): the mean over samples of
  (cos(norm(pool(tokens, mask)), target) − 1)², `pool` being GOAL's `mean_then_head` on CLIP. `form="matrix"`: the paper's Eq. 14 read
  literally, MSE between the n×n batch similarity matrix (each pooled region against every
  target of the global batch) and the identity, so a region is also pushed away from the other
  samples' crops. No temperature in either; gradients reach both the pooled tokens and the
  target embedding. Samples that are invalid or whose mask is empty leave the mean (their row
  and, in the matrix form, their column).
  """
  if tokens.shape[:-1] != mask.shape:
    raise ValueError(f"TSL: tokens {tokens.shape} and mask {mask.shape} disagree; the patch mask "
                     "must index the patch tokens (no class token) and the span mask text tokens")
  if form not in TSL_FORMS:
    raise ValueError(f"TSL form {form!r}: expected one of {TSL_FORMS}")
  pooled = contrastive.l2_normalize(pool(tokens, mask).astype(jnp.float32))
  target = target.astype(jnp.float32)
  keep = jnp.any(mask, axis=-1)
  if valid is not None:
    keep = keep & valid.astype(bool)
  if form == "diagonal":
    cosine = jnp.sum(pooled * target, axis=-1)
    return contrastive.batch_mean(jnp.square(cosine - 1.0), keep, axis_name)
  # Rows: this device's samples; columns: every target of the global batch.
  columns = contrastive.gather(target, axis_name)
  column_keep = contrastive.gather(keep, axis_name)
  cosine = jnp.einsum("rd,cd->rc", pooled, columns, precision=contrastive.PRECISION)
  rows = jnp.arange(pooled.shape[0]) + contrastive.row_offset(pooled.shape[0], axis_name)
  identity = (rows[:, None] == jnp.arange(columns.shape[0])[None, :]).astype(jnp.float32)
  cell_keep = keep[:, None] & column_keep[None, :]
  total = contrastive.global_sum(jnp.sum(jnp.where(cell_keep, jnp.square(cosine - identity),
                                                   0.0)), axis_name)
  cells = contrastive.global_sum(jnp.sum(cell_keep.astype(jnp.float32)), axis_name)
  return total / jnp.maximum(cells, 1.0)


def goal_objective(image_out: Mapping[str, jax.Array], text_out: Mapping[str, jax.Array],
                   local_image_out: Mapping[str, jax.Array] | None,
                   local_text_out: Mapping[str, jax.Array] | None,
                   batch: Mapping[str, Any], *, poolers: Poolers | None,
                   pair_loss: pairwise.PairLoss, weights: Mapping[str, float] | None = None,
                   tsl_form: str = "diagonal",
                   identities: Mapping[str, contrastive.RowIdentity] | None = None,
                   axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """GOAL's loss. See the module docstring for what each argument holds.

  Args:
    weights: overrides of `GOAL_WEIGHTS` (`global`, `local`, `tsl_image`, `tsl_text`); a term
      whose weight is 0 is not computed and its inputs may be `None`.
    pair_loss: the global and local contrastive terms (GOAL: InfoNCE, no label smoothing, no
      clamp; SigLIP's sigmoid on a SigLIP backbone).
    tsl_form: `diagonal` (the official code) or `matrix` (Eq. 14 read literally); see
      `token_similarity`.
    identities: `global` and `local` rows' identities (`pair_loss.duplicates`); None: none.
    axis_name: set when running inside `data_parallel` / `shard_map`. Global and local rows are
      gathered separately (the official code gathers `[global; local]` and splits, which mixes
      them on more than one GPU).

  Returns:
    `(total, terms)`: `terms` maps each computed term's name to its unweighted value.
  """
  w = contrastive.resolve_weights(GOAL_WEIGHTS, weights)
  local_valid = batch["local_valid"] if reads_local_pairs(w) else None
  identities = identities or {}
  terms = {}
  if w["global"]:
    terms["global"] = pair_loss(image_out["embedding"], text_out["embedding"],
                                identity=identities.get("global"), axis_name=axis_name)
  if w["local"]:
    terms["local"] = pair_loss(local_image_out["embedding"], local_text_out["embedding"],
                               valid=local_valid, identity=identities.get("local"),
                               axis_name=axis_name)
  if w["tsl_image"]:
    terms["tsl_image"] = token_similarity(
        image_out["patch_tokens"], batch["local_patch_mask"], poolers.image,
        local_image_out["embedding"], local_valid, axis_name, tsl_form)
  if w["tsl_text"]:
    terms["tsl_text"] = token_similarity(
        text_out["tokens"], batch["local_span_mask"], poolers.text,
        local_text_out["embedding"], local_valid, axis_name, tsl_form)
  return contrastive.weighted_total(terms, w), terms
