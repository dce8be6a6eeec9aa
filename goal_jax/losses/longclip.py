"""Long-CLIP's objective: long-caption InfoNCE + primary-component-matched short-caption InfoNCE.

    L = CE(v, t_long) + CE(PCM(v), t_short), both symmetric, label smoothing 0.1
(Long-CLIP, Zhang et al., ECCV 2024, Sec. 3). PCM: centre the batch of unit image embeddings, keep the
top-32 principal components, add the mean back, renormalise.

What the trainer passes: `image_out = encode_image(batch["image"])`, `text_out =
encode_text(batch["text"])`, `short_embedding = encode_text(batch["summary"])["embedding"]`
(Long-CLIP's short caption is the first sentence, which is our default `summary`). Long-CLIP also
re-initialises `logit_scale` to ln(100); that is the trainer's (config's) business.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from goal_jax.losses import contrastive
from goal_jax.losses import pairwise

LONGCLIP_WEIGHTS = {"long": 1.0, "short": 1.0}
_dot = functools.partial(jnp.matmul, precision=contrastive.PRECISION)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def top_eigen_projector(matrix: jax.Array, k: int) -> jax.Array:
  """Orthogonal projector onto the span of the top-k eigenvectors of a symmetric matrix.

  The custom derivative only couples kept with discarded eigenpairs, the only pairs the projector
  depends on: SVD/eigh derivatives divide by every eigenvalue gap, and a centred batch has equal
  (zero) trailing eigenvalues, which would turn the gradient into NaN.
  """
  _, vectors = jnp.linalg.eigh(matrix)
  kept = vectors[:, matrix.shape[0] - k:]
  return _dot(kept, kept.T)


@top_eigen_projector.defjvp
def _top_eigen_projector_jvp(k, primals, tangents):
  (matrix,), (tangent,) = primals, tangents
  values, vectors = jnp.linalg.eigh(matrix)
  n = matrix.shape[0]
  kept = jnp.arange(n) >= n - k
  projector = _dot(vectors * kept, vectors.T)
  gaps = values[:, None] - values[None, :]
  coupled = kept[:, None] & ~kept[None, :] & (jnp.abs(gaps) > 1e-12)
  inverse_gaps = jnp.where(coupled, 1.0 / jnp.where(coupled, gaps, 1.0), 0.0)
  rotated = _dot(_dot(vectors.T, tangent), vectors)
  rotated = 0.5 * (rotated + rotated.T)
  half = inverse_gaps * rotated
  return projector, _dot(_dot(vectors, half + half.T), vectors.T)


def primary_components(features: jax.Array, num_components: int = 32) -> jax.Array:
  """Reconstruction of `features [B, E]` from its top principal components, mean added back.

  Uses the smaller of the B×B Gram and the E×E scatter matrix; both give the same result.
  """
  batch, width = features.shape
  features = features.astype(jnp.float32)
  mean = jnp.mean(features, axis=0, keepdims=True)
  centred = features - mean
  if num_components >= min(batch - 1, width):
    return features  # the centred rows have rank <= B - 1: nothing is discarded.
  if batch <= width:
    reconstruction = _dot(top_eigen_projector(_dot(centred, centred.T), num_components), centred)
  else:
    reconstruction = _dot(centred, top_eigen_projector(_dot(centred.T, centred), num_components))
  return reconstruction + mean


def primary_component_embedding(image: jax.Array, num_components: int = 32, *,
                                scope: str = "global", axis_name: str | None = None) -> jax.Array:
  """Long-CLIP's coarse image embedding: `l2_normalize(primary_components(image))`.

  `scope="global"` runs PCA on the whole (gathered) batch, so the result does not depend on the
  device count and equals the dense computation; `"local"` runs it per device, as Long-CLIP's
  DDP code does (each GPU decomposes its own 128 rows).
  """
  if scope not in ("global", "local"):
    raise ValueError("primary_component_embedding: scope must be 'global' or 'local', "
                     f"got {scope!r}")
  if scope == "local" or axis_name is None:
    return contrastive.l2_normalize(primary_components(image, num_components))
  n_local = image.shape[0]
  whole = primary_components(contrastive.gather(image, axis_name), num_components)
  start = contrastive.row_offset(n_local, axis_name)
  return contrastive.l2_normalize(jax.lax.dynamic_slice_in_dim(whole, start, n_local, axis=0))


def longclip_objective(image_out: Mapping[str, jax.Array], text_out: Mapping[str, jax.Array],
                       short_embedding: jax.Array | None, *, pair_loss: pairwise.PairLoss,
                       weights: Mapping[str, float] | None = None, num_components: int = 32,
                       pca_scope: str = "global",
                       identities: Mapping[str, contrastive.RowIdentity] | None = None,
                       axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Long-CLIP's loss: `long` = pair_loss(image, long caption), `short` = pair_loss(PCM(image),
  short), `pair_loss` being InfoNCE with label smoothing 0.1 on CLIP, as released.

  Args:
    weights: overrides of `LONGCLIP_WEIGHTS`; a 0-weight term is not computed.
    num_components: principal components kept (Long-CLIP: 32).
    pca_scope: see `primary_component_embedding`.
    identities: the `long` and `short` rows' identities (`pair_loss.duplicates`); None: none.
    axis_name: set when running inside `data_parallel` / `shard_map`.

  Returns:
    `(total, terms)` with the unweighted computed terms.
  """
  w = contrastive.resolve_weights(LONGCLIP_WEIGHTS, weights)
  pair = functools.partial(pair_loss, axis_name=axis_name)
  identities = identities or {}
  terms = {}
  if w["long"]:
    terms["long"] = pair(image_out["embedding"], text_out["embedding"],
                         identity=identities.get("long"))
  if w["short"]:
    terms["short"] = pair(primary_component_embedding(
        image_out["embedding"], num_components, scope=pca_scope, axis_name=axis_name),
        short_embedding, identity=identities.get("short"))
  return contrastive.weighted_total(terms, w), terms
