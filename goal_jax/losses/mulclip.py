"""MulCLIP's objective: global (long + ½ summary), WPR on calibrated tokens, and SAP.

    L = L_batch(v_cls, t_long) + ½·L_batch(v_cls, t_short) + λ_W·L_Word + λ_S·L_Sub

(MulCLIP's paper; λ_W = λ_S = 1). Its body gives no code and leaves details open, so WPR
and SAP follow the most direct reading of its equations; every open choice
is a field of `MulCLIPOptions`, whose docstring says which default was picked and why.

What the trainer passes:
- `image_out = CLIP.encode_image(batch["image"])`: `embedding`, `tokens_projected [B, 1+N, E]`;
- `text_out = CLIP.encode_text(batch["text"])`: `embedding`, `tokens_projected [B, Lc, E]`,
  `eot_index [B]`;
- `summary_embedding = encode_text(batch["summary"])["embedding"]` `[B, E]`;
- `sentence_embedding`: `encode_text(sentences.reshape(B*M, Ls))["embedding"]` reshaped `[B, M, E]`;
- `batch["sentence_valid"] [B, M]`;
- `calibrators = token_aggregation.per_modality(N′, params["calibration"])`: the two token
  calibration modules, each `(tokens [B, N, E], mask [B, N]) -> [B, N′, E]`.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from goal_jax.losses import clim
from goal_jax.losses import contrastive
from goal_jax.losses import pairwise
from goal_jax.models import token_aggregation

# λ_W multiplies both WPR directions: map a config's `wpr_weight` to both keys.
MULCLIP_WEIGHTS = {"global_long": 1.0, "global_summary": 0.5, "wpr_image": 1.0,
                   "wpr_text": 1.0, "sap": 1.0}
TOKEN_ALIGNMENTS = ("wpr", "clim")
_einsum = functools.partial(jnp.einsum, precision=contrastive.PRECISION)


@dataclasses.dataclass(frozen=True)
class MulCLIPOptions:
  """The choices MulCLIP's paper leaves open.

  Defaults and why:
  - `wpr_attention_temperature = wpr_temperature = 0.07`: fixed, CLIP's initial temperature; the
    paper does not give its values, and a fixed value keeps the within-sample term from steering
    the learnable global `logit_scale`.
  - `wpr_symmetric = True`: each WPR InfoNCE is averaged over both softmax directions (rows:
    token vs. all reconstructions; columns: reconstruction vs. all tokens), as SPARC's
    within-sample fine-grained loss (Bica et al., NeurIPS 2024).
  - `sap_patches = "calibrated"`: SAP aggregates the calibrated visual tokens v′, so that v′ is
    supervised through SAP via v̄ as the paper's description of the calibration implies; `"raw"`
    uses the normalised projected patch tokens.
  - `sap_temperature = 0.07`, `sap_top_k = None`: a softmax over all patches (differentiable
    "aggregate"); `sap_top_k=k` first keeps the k best-scoring patches (the "extracts" reading).
  - SAP negatives are the other images' own aggregates (one B×B matrix per sentence index, the
    cheap reading), with CLIP's `logit_scale`, since the paper writes L_batch.
  - `token_alignment = "wpr"`: the paper's within-sample word-patch reconstruction. `"clim"`
    replaces it by FineLIP's batch-wise late interaction on the same calibrated tokens, trained
    with FineLIP's ranking loss (`goal_jax.losses.clim`, FineLIP's released defaults) as the term
    `clim`, in WPR's place and at WPR's weight λ_W (`weights["wpr_image"]`): the ablation "WPR
    replaced by batch-wise CLIM".
  """
  wpr_attention_temperature: float = 0.07
  wpr_temperature: float = 0.07
  wpr_symmetric: bool = True
  sap_patches: str = "calibrated"
  sap_temperature: float = 0.07
  sap_top_k: int | None = None
  token_alignment: str = "wpr"

  def __post_init__(self):
    if self.token_alignment not in TOKEN_ALIGNMENTS:
      raise ValueError(f"MulCLIPOptions.token_alignment must be one of "
                       f"{TOKEN_ALIGNMENTS}, got {self.token_alignment!r}")
    if self.sap_patches not in ("calibrated", "raw"):
      raise ValueError(f"MulCLIPOptions.sap_patches must be 'calibrated' or 'raw', "
                       f"got {self.sap_patches!r}")


def _within_sample_infonce(queries: jax.Array, keys: jax.Array, temperature: float,
                           symmetric: bool) -> jax.Array:
  """Per-sample InfoNCE between `[B, T, E]` unit tokens, token t's positive being keys[t]."""
  logits = _einsum("bte,bse->bts", queries, keys) / temperature
  labels = jnp.broadcast_to(jnp.arange(logits.shape[1]), logits.shape[:2])
  loss = jnp.mean(contrastive.cross_entropy(logits, labels), axis=-1)
  if symmetric:
    transposed = jnp.mean(contrastive.cross_entropy(jnp.swapaxes(logits, 1, 2), labels), axis=-1)
    loss = 0.5 * (loss + transposed)
  return loss


def word_patch_reconstruction(visual: jax.Array, textual: jax.Array, *,
                              attention_temperature: float = 0.07, temperature: float = 0.07,
                              symmetric: bool = True,
                              axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """WPR (L_Word = L_recon,image + L_recon,text) on unit calibrated tokens, within each sample.

  Affinity S = v′ t′ᵀ; ṽ_j = Σ_k softmax_k(S_jk/τ_r) t′_k and t̃_k = Σ_j softmax_j(S_jk/τ_r) v′_j
  (bidirectional attention); then InfoNCE over the tokens of the same sample between v′ and
  norm(Ṽ′) (resp. t′ and norm(T̃′)), positive = the token's own reconstruction.

  Args:
    visual: `[B, Nv, E]`, textual: `[B, Nt, E]`, both L2-normalised.

  Returns:
    `(image_term, text_term)`, each averaged over the global batch.
  """
  affinity = _einsum("bje,bke->bjk", visual, textual) / attention_temperature
  visual_recon = _einsum("bjk,bke->bje", jax.nn.softmax(affinity, axis=2), textual)
  textual_recon = _einsum("bjk,bje->bke", jax.nn.softmax(affinity, axis=1), visual)
  terms = []
  for tokens, recon in ((visual, visual_recon), (textual, textual_recon)):
    per_sample = _within_sample_infonce(tokens, contrastive.l2_normalize(recon), temperature,
                                        symmetric)
    terms.append(contrastive.batch_mean(per_sample, None, axis_name))
  return terms[0], terms[1]


def patch_weights(sentences: jax.Array, patches: jax.Array, *, temperature: float = 0.07,
                  top_k: int | None = None, normalize: bool = False) -> jax.Array:
  """SAP's sentence-conditioned weights w_i = softmax_j(cos(tᵢ, p_j)/τ) over the patches.

  With `top_k`, only the k best-scoring patches of each sentence get weight (ties at the k-th
  score keep all tied patches). The visualisation plots these weights; SAP aggregates with them.

  Args:
    sentences: `[..., M, E]` sentence embeddings; patches: `[..., N, E]` patch tokens; both unit
      vectors unless `normalize`, which L2-normalises them first (any input scale).

  Returns:
    `[..., M, N]` weights, each row summing to one.
  """
  if normalize:
    sentences, patches = contrastive.l2_normalize(sentences), contrastive.l2_normalize(patches)
  scores = _einsum("...me,...ne->...mn", sentences, patches) / temperature
  if top_k is not None and top_k < scores.shape[-1]:
    kth = jax.lax.top_k(scores, top_k)[0][..., -1:]
    scores = jnp.where(scores >= jax.lax.stop_gradient(kth), scores, -1e9)
  return jax.nn.softmax(scores, axis=-1)


def aggregate_patches(sentences: jax.Array, patches: jax.Array, *, temperature: float = 0.07,
                      top_k: int | None = None) -> jax.Array:
  """v̄ᵢ = norm(Σ_j w_ij p_j) with w = `patch_weights` (optionally over the top k patches only).

  Args:
    sentences: `[B, M, E]` unit sentence embeddings; patches: `[B, N, E]` unit patch tokens.

  Returns:
    `[B, M, E]` unit aggregates, one per sentence.
  """
  weights = patch_weights(sentences, patches, temperature=temperature, top_k=top_k)
  return contrastive.l2_normalize(_einsum("bmn,bne->bme", weights, patches))


def subcaption_patch_alignment(sentences: jax.Array, patches: jax.Array,
                               sentence_valid: jax.Array, pair_loss: pairwise.PairLoss, *,
                               temperature: float = 0.07, top_k: int | None = None,
                               axis_name: str | None = None) -> jax.Array:
  """SAP (L_Sub): per sentence index i, the contrastive term (`pair_loss`: InfoNCE on CLIP)
  over the batch between v̄ᵢ and tᵢ; mean over i.

  Absent sentences (`sentence_valid` False) leave both denominators of their index; an index
  with no sentence in the whole batch leaves the mean.
  """
  aggregates = aggregate_patches(sentences, patches, temperature=temperature, top_k=top_k)

  def one_index(agg, sent, valid):
    return pair_loss.parts(agg, sent, valid=valid, axis_name=axis_name)

  totals, counts = jax.vmap(one_index, in_axes=(1, 1, 1))(aggregates, sentences, sentence_valid)
  present = counts > 0
  per_index = totals / jnp.maximum(counts, 1.0)
  return jnp.sum(jnp.where(present, per_index, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def mulclip_objective(image_out: Mapping[str, jax.Array], text_out: Mapping[str, jax.Array],
                      summary_embedding: jax.Array | None, sentence_embedding: jax.Array | None,
                      batch: Mapping[str, Any], *,
                      calibrators: token_aggregation.PerModality | None,
                      pair_loss: pairwise.PairLoss, weights: Mapping[str, float] | None = None,
                      options: MulCLIPOptions = MulCLIPOptions(),
                      axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """MulCLIP's loss. See the module docstring for what each argument holds.

  Args:
    weights: overrides of `MULCLIP_WEIGHTS`; a 0-weight term is not computed ("w/o WPR" =
      `{"wpr_image": 0, "wpr_text": 0}`), and unused inputs may be `None`. With
      `options.token_alignment="clim"` the term `clim` replaces both WPR terms at λ_W.
    options: the open design choices (`MulCLIPOptions`).
    pair_loss: the batch contrastive terms (global and SAP): InfoNCE on CLIP.
    axis_name: set when running inside `data_parallel` / `shard_map`.

  Returns:
    `(total, terms)`, `terms` holding each computed term unweighted.
  """
  w = contrastive.resolve_weights(MULCLIP_WEIGHTS, weights)
  image = image_out["embedding"]
  terms = {}
  if w["global_long"]:
    terms["global_long"] = pair_loss(image, text_out["embedding"], axis_name=axis_name)
  if w["global_summary"]:
    terms["global_summary"] = pair_loss(image, summary_embedding, axis_name=axis_name)

  if options.token_alignment == "clim":
    w.update(clim=w["wpr_image"], wpr_image=0.0, wpr_text=0.0)
  if w.get("clim"):
    image_tokens, text_tokens = clim.refined_tokens(image_out, text_out, calibrators)
    similarity = clim.late_interaction(image_tokens, contrastive.gather(text_tokens, axis_name))
    terms["clim"] = clim.ranking_loss(similarity, axis_name=axis_name)
  need_wpr = bool(w["wpr_image"] or w["wpr_text"])
  need_visual = need_wpr or (w["sap"] and options.sap_patches == "calibrated")
  patches = image_out["patch_tokens_projected"].astype(jnp.float32)
  if need_visual:
    visual = contrastive.l2_normalize(
        calibrators.image(patches, jnp.ones(patches.shape[:2], bool)))
  if need_wpr:
    text_tokens = text_out["tokens_projected"].astype(jnp.float32)
    mask = token_aggregation.text_token_mask(text_out["text_end"], text_tokens.shape[1])
    textual = contrastive.l2_normalize(calibrators.text(text_tokens, mask))
    wpr_image, wpr_text = word_patch_reconstruction(
        visual, textual, attention_temperature=options.wpr_attention_temperature,
        temperature=options.wpr_temperature, symmetric=options.wpr_symmetric,
        axis_name=axis_name)
    if w["wpr_image"]:
      terms["wpr_image"] = wpr_image
    if w["wpr_text"]:
      terms["wpr_text"] = wpr_text
  if w["sap"]:
    if options.sap_patches == "calibrated":
      sap_patches = visual
    else:
      sap_patches = contrastive.l2_normalize(patches)
    terms["sap"] = subcaption_patch_alignment(
        sentence_embedding, sap_patches, batch["sentence_valid"], pair_loss,
        temperature=options.sap_temperature, top_k=options.sap_top_k, axis_name=axis_name)
  return contrastive.weighted_total(terms, w), terms
