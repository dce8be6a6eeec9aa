"""Retrieval metrics: Recall@K, GOAL's joint global+local mAP@K, MRR@K; within-group detail scores.

Recall, mAP and MRR are computed from one primitive, the *rank of each relevant item*: for a query q
and a relevant gallery item r, `rank[q, r]` is the number of NON-relevant gallery items whose
similarity is >= the similarity of r. It is the 0-based position r would take in the ranked list if

  tie rule: a tie counts against the ground truth. Non-relevant items that score exactly as high as
  a relevant one are ranked before it; relevant items among themselves keep score order (their
  order within a tie does not change any metric here).

The rule is pessimistic and independent of the gallery order, so a collapsed model (all embeddings
equal) scores R@1 = 0 instead of an arbitrary value, and shuffling the gallery never changes a
number. Papers sort with `torch.argsort`, whose order within a tie is unspecified; with real float
embeddings exact ties are rare and the rule only matters for degenerate models.

From the ranks:
- the first relevant item sits at position `min_r rank[q, r]` (Recall@K: a hit if it is < K; MRR);
- the h-th relevant item in score order (h = 0, 1, ...) sits at `sorted(rank[q])[h] + h`, which is
  all AP@K needs.

Similarities are float32 dot products at HIGHEST matmul precision (TPUs otherwise multiply fp32 in
bf16 passes, which creates spurious ties), computed block by block on device so that a 25k x 5k
problem never holds the full matrix. A method that ranks by its own score (`methods.base.Scorer`)
gives the `[images, texts]` matrix instead (`score_matrix`), and each metric has a
`*_from_similarity` twin that ranks by it. All percentages are in [0, 100].

`hard_group_scores` asks whether a model sees details: it matches images and captions only inside
groups of scenes that differ in one attribute (synthetic `test_hard`), plus two-alternative trials
per edited attribute. Its comparisons follow the same tie rule (a tie is a miss) and similarity.
With `per_group=True` it also returns each group's own accuracy, what a bootstrap over test groups
resamples (`evaluation/bootstrap.py`).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from goal_jax import sharding

DEFAULT_BLOCK_SIZE = 512
RECALL_KS = (1, 5, 10, 25, 50)
PAD_RANK = np.iinfo(np.int32).max  # Rank of a padding entry: never retrieved.


# ----------------------------------------------------------------------------------------------
# Relevance as a padded index array.


def pad_relevance(relevant_lists, num_gallery=None):
  """Packs per-query lists of relevant gallery indices into an int32 [Q, R] array, -1 padded."""
  lists = [np.asarray(r, dtype=np.int64).ravel() for r in relevant_lists]
  width = max((len(r) for r in lists), default=0)
  out = np.full((len(lists), max(width, 1)), -1, dtype=np.int32)
  for q, r in enumerate(lists):
    out[q, :len(r)] = r
  return validate_relevance(out, len(lists), num_gallery)


def validate_relevance(relevance, num_queries, num_gallery=None):
  """Checks a padded relevance array; every query needs at least one relevant item."""
  relevance = np.asarray(relevance)
  if relevance.ndim != 2 or relevance.shape[0] != num_queries:
    raise ValueError(f"relevance must be [num_queries={num_queries}, R], got {relevance.shape}")
  if not np.issubdtype(relevance.dtype, np.integer):
    raise ValueError(f"relevance must hold integer gallery indices, got {relevance.dtype}")
  empty = np.flatnonzero((relevance < 0).all(axis=1))
  if empty.size:
    raise ValueError(f"query {empty[0]} (and {empty.size - 1} more) has no relevant item")
  if num_gallery is not None and relevance.max() >= num_gallery:
    q = int(np.argwhere(relevance >= num_gallery)[0, 0])
    raise ValueError(f"query {q} names gallery item {relevance[q].max()}, "
                     f"but the gallery has {num_gallery} items")
  for q in np.flatnonzero([len(set(r[r >= 0])) != (r >= 0).sum() for r in relevance]):
    raise ValueError(f"query {q} lists a relevant item twice: {relevance[q].tolist()}")
  return relevance.astype(np.int32)


# ----------------------------------------------------------------------------------------------
# The primitive: ranks of relevant items, blocked over queries.


def _ranks_from_block(sim, relevance):
  """[b, G] similarities, [b, R] relevant indices (-1 pad) -> [b, R] ranks (PAD_RANK if pad)."""
  b, g = sim.shape
  valid = relevance >= 0
  safe = jnp.where(valid, relevance, g)  # Out-of-range index: dropped by the scatter below.
  is_relevant = jnp.zeros((b, g + 1), bool).at[jnp.arange(b)[:, None], safe].set(True)[:, :g]
  relevant_scores = jnp.take_along_axis(sim, jnp.minimum(safe, g - 1), axis=1)
  columns = []
  for r in range(relevance.shape[1]):  # Unrolled: never materialises [b, R, G].
    beats = (sim >= relevant_scores[:, r:r + 1]) & ~is_relevant
    columns.append(beats.sum(axis=1, dtype=jnp.int32))
  ranks = jnp.stack(columns, axis=1)
  return jnp.where(valid, ranks, PAD_RANK)


def _similarity(queries, gallery):
  return jnp.dot(queries, gallery.T, precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32)


@jax.jit
def _ranks_from_embeddings(queries, relevance, gallery):
  return _ranks_from_block(_similarity(queries, gallery), relevance)


_ranks_from_similarity = jax.jit(_ranks_from_block)


def _check_finite(name, array):
  if not np.all(np.isfinite(array)):
    bad = np.argwhere(~np.isfinite(array))[0]
    raise ValueError(f"{name} has a non-finite value at index {tuple(int(i) for i in bad)}")


def _as_float32(name, array, ndim=2):
  array = np.asarray(array, dtype=np.float32)
  if array.ndim != ndim:
    raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
  _check_finite(name, array)
  return array


def _embedding_pair(query_emb, gallery_emb):
  queries = _as_float32("query embeddings", query_emb)
  gallery = _as_float32("gallery embeddings", gallery_emb)
  if queries.shape[1] != gallery.shape[1]:
    raise ValueError(f"embedding widths differ: queries {queries.shape}, gallery {gallery.shape}")
  return queries, gallery


def _placement():
  """Where jit runs a call: replicated on the `jax.set_mesh` mesh, else on the default device.

  Inputs put there explicitly leave jit no copy of its own to make (and the guard none to refuse).
  """
  mesh = jax.sharding.get_mesh()
  return None if mesh.empty else sharding.replicated(mesh)


def _map_blocks(fn, blocked, pad_values, block_size, *shared):
  """Concatenated `fn(*row_blocks, *shared)` over fixed-size row blocks of the `blocked` arrays.

  The tail block is padded (row values `pad_values`) so one compiled shape serves the whole call.
  Host arrays in, host arrays out; every copy is an explicit `device_put`/`device_get`, so
  scoring runs under `jax.transfer_guard("disallow")` (the `shared` arrays are sent once).
  """
  num = blocked[0].shape[0]
  if num == 0:
    raise ValueError("no queries to evaluate")
  block = max(1, min(block_size, num))
  placement = _placement()
  shared = jax.device_put(shared, placement)
  outputs = []
  for start in range(0, num, block):
    rows = [a[start:start + block] for a in blocked]
    count = rows[0].shape[0]
    rows = [np.concatenate([r, np.full((block - count,) + r.shape[1:], v, r.dtype)])
            for r, v in zip(rows, pad_values)]
    out = jax.device_get(fn(*jax.device_put(rows, placement), *shared))
    outputs.append(jax.tree.map(lambda x: x[:count], out))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def relevant_ranks(query_emb, gallery_emb, relevance, *, block_size=DEFAULT_BLOCK_SIZE):
  """Ranks of relevant items for embeddings; similarity = dot product (normalise beforehand).

  Args:
    query_emb: [Q, E] query embeddings.
    gallery_emb: [G, E] gallery embeddings.
    relevance: [Q, R] int gallery indices relevant to each query, -1 padded (see pad_relevance).
    block_size: queries per device step; memory is about block_size * G * 5 bytes.

  Returns:
    int32 [Q, R]: for each relevant item, the number of non-relevant items scoring >= it; padding
    entries hold PAD_RANK.
  """
  queries, gallery = _embedding_pair(query_emb, gallery_emb)
  relevance = validate_relevance(relevance, queries.shape[0], gallery.shape[0])
  return _map_blocks(_ranks_from_embeddings, (queries, relevance), (0, -1), block_size, gallery)


def relevant_ranks_from_similarity(sim, relevance, *, block_size=DEFAULT_BLOCK_SIZE):
  """Like relevant_ranks, from a precomputed [Q, G] similarity matrix (compared in float32)."""
  sim = _as_float32("similarity matrix", sim)
  relevance = validate_relevance(relevance, sim.shape[0], sim.shape[1])
  return _map_blocks(_ranks_from_similarity, (sim, relevance), (0, -1), block_size)


# ----------------------------------------------------------------------------------------------
# Metrics from ranks.


def first_relevant_position(ranks):
  """0-based position of the best-ranked relevant item per query."""
  return np.asarray(ranks).min(axis=1)


def reciprocal_rank_at_k(ranks, k):
  """Per query 1 / (position + 1) of the first relevant item, 0 if it is not in the top K."""
  position = first_relevant_position(ranks).astype(np.float64)
  return np.where(position < k, 1.0 / (position + 1.0), 0.0)


def average_precision_at_k(ranks, k):
  """Per-query AP@K with GOAL's normalisation: divided by |R|, not by min(|R|, K).

  AP@K = (1/|R|) * sum over relevant items at position p < K of (relevant items up to p) / (p + 1).

  Args:
    ranks: [Q, R] from relevant_ranks; |R| per query is its number of non-padding entries.
    k: cut-off.
  """
  ranks = np.asarray(ranks, dtype=np.int64)
  num_relevant = (ranks != PAD_RANK).sum(axis=1)
  ordered = np.sort(ranks, axis=1)
  hits_before = np.arange(ranks.shape[1])[None, :]
  position = ordered + hits_before  # h-th relevant item follows h relevant ones.
  gain = np.where(position < k, (hits_before + 1.0) / (position + 1.0), 0.0)
  return gain.sum(axis=1) / num_relevant


# ----------------------------------------------------------------------------------------------
# Image-text retrieval with several captions per image.


def _check_text_to_image(text_to_image, num_images, num_texts):
  text_to_image = np.asarray(text_to_image)
  if text_to_image.shape != (num_texts,) or not np.issubdtype(text_to_image.dtype, np.integer):
    raise ValueError(f"text_to_image must be an int array of shape ({num_texts},), got "
                     f"{text_to_image.dtype} {text_to_image.shape}")
  bad = np.flatnonzero((text_to_image < 0) | (text_to_image >= num_images))
  if bad.size:
    raise ValueError(f"text {bad[0]} points at image {text_to_image[bad[0]]}, "
                     f"but there are {num_images} images")
  orphans = np.setdiff1d(np.arange(num_images), text_to_image)
  if orphans.size:
    raise ValueError(f"image {orphans[0]} (and {orphans.size - 1} more) has no caption")
  return text_to_image


def captions_per_image(text_to_image, num_images):
  """[num_images, max captions] text indices of each image, -1 padded."""
  order = np.argsort(text_to_image, kind="stable")
  counts = np.bincount(text_to_image, minlength=num_images)
  return pad_relevance(np.split(order, np.cumsum(counts)[:-1]))


def _embedding_rankers(image_emb, text_emb, block_size):
  """{direction: relevance -> ranks} over embeddings (similarity = dot product)."""
  return {"i2t": functools.partial(relevant_ranks, image_emb, text_emb, block_size=block_size),
          "t2i": functools.partial(relevant_ranks, text_emb, image_emb, block_size=block_size)}


def _similarity_rankers(sim, block_size):
  """{direction: relevance -> ranks} over an `[images, texts]` score matrix."""
  return {"i2t": functools.partial(relevant_ranks_from_similarity, sim, block_size=block_size),
          "t2i": functools.partial(relevant_ranks_from_similarity, np.transpose(sim),
                                   block_size=block_size)}


def _retrieval_positions(rankers, text_to_image, num_images, num_texts):
  text_to_image = _check_text_to_image(text_to_image, num_images, num_texts)
  i2t = rankers["i2t"](captions_per_image(text_to_image, num_images))
  t2i = rankers["t2i"](text_to_image[:, None])
  return first_relevant_position(i2t), first_relevant_position(t2i)


def retrieval_ranks(image_emb, text_emb, text_to_image, *, block_size=DEFAULT_BLOCK_SIZE):
  """First-hit positions for both directions.

  Returns:
    (i2t [num_images], t2i [num_texts]) 0-based positions: I2T is the best-placed caption of the
    image (any caption counts), T2I the caption's one image.
  """
  return _retrieval_positions(_embedding_rankers(image_emb, text_emb, block_size), text_to_image,
                              np.shape(image_emb)[0], np.shape(text_emb)[0])


def _recall_at(positions, ks):
  i2t, t2i = positions
  out = {}
  for direction, position in (("i2t", i2t), ("t2i", t2i)):
    for k in ks:
      out[f"{direction}_R@{k}"] = float(100.0 * np.mean(position < k))
  return out


def retrieval_recall(image_emb, text_emb, text_to_image=None, ks=RECALL_KS, *,
                     block_size=DEFAULT_BLOCK_SIZE):
  """Image->text and text->image Recall@K in %.

  Args:
    image_emb: [N, E] image embeddings (L2-normalised for cosine similarity).
    text_emb: [T, E] caption embeddings.
    text_to_image: [T] index of each caption's image; None means one caption per image, in order.
    ks: cut-offs.
    block_size: queries per device step.

  Returns:
    {"i2t_R@K": ..., "t2i_R@K": ...} for every K in ks.
  """
  if text_to_image is None:
    text_to_image = np.arange(np.shape(text_emb)[0])
  return _recall_at(retrieval_ranks(image_emb, text_emb, text_to_image, block_size=block_size), ks)


def retrieval_recall_from_similarity(sim, text_to_image=None, ks=RECALL_KS, *,
                                     block_size=DEFAULT_BLOCK_SIZE):
  """`retrieval_recall` from an `[images, texts]` score matrix (e.g. `score_matrix`)."""
  if text_to_image is None:
    text_to_image = np.arange(np.shape(sim)[1])
  positions = _retrieval_positions(_similarity_rankers(sim, block_size), text_to_image,
                                   *np.shape(sim))
  return _recall_at(positions, ks)


# ----------------------------------------------------------------------------------------------
# GOAL's joint global+local test (its released `mAP_goal_jointtest.py`).

JOINT_MODES = ("effective", "intended")


def joint_relevance(group_ids, is_global, mode="effective"):
  """Relevant items of each query in GOAL's mixed gallery of global and local pairs.

  Item i is an (image, caption) pair: a whole image with its long caption (global) or a crop with
  its sentence (local); `group_ids[i]` names the source image. Images and captions share indices,
  so one array serves both directions.

  Args:
    group_ids: [Q] source image of each item (any hashable values).
    is_global: [Q] bool, True for the global pair of a group.
    mode: "effective" reproduces the released code, where the global<->local links never form and
      each query's only relevant item is its own pair (mAP@K then equals MRR@K); "intended" follows
      the code's logic: a global item is relevant to its group's locals and each local to its
      group's global (locals of one group are not relevant to each other).

  Returns:
    int32 [Q, R] relevant indices, -1 padded.
  """
  if mode not in JOINT_MODES:
    raise ValueError(f"mode must be one of {JOINT_MODES}, got {mode!r}")
  is_global = np.asarray(is_global, dtype=bool)
  _, groups = np.unique(np.asarray(group_ids), return_inverse=True)
  groups = groups.ravel()
  if groups.shape != is_global.shape:
    raise ValueError(f"group_ids {groups.shape} and is_global {is_global.shape} differ in length")
  own = np.arange(len(groups))
  if mode == "effective":
    return own[:, None].astype(np.int32)
  globals_per_group = np.bincount(groups[is_global], minlength=groups.max(initial=-1) + 1)
  if (globals_per_group > 1).any():
    raise ValueError(f"group {np.flatnonzero(globals_per_group > 1)[0]} has several global items")
  lists = []
  for i in own:
    partners = own[(groups == groups[i]) & (is_global != is_global[i])]
    lists.append(np.concatenate([[i], partners]))
  return pad_relevance(lists, len(groups))


def _joint(rankers, group_ids, is_global, mode, k):
  relevance = joint_relevance(group_ids, is_global, mode)
  out = {}
  for direction in ("i2t", "t2i"):
    ranks = rankers[direction](relevance)
    out[f"{direction}_mAP@{k}"] = float(100.0 * average_precision_at_k(ranks, k).mean())
    out[f"{direction}_MRR@{k}"] = float(100.0 * reciprocal_rank_at_k(ranks, k).mean())
  return out


def joint_retrieval(image_emb, text_emb, group_ids, is_global, *, mode="effective", k=10,
                    block_size=DEFAULT_BLOCK_SIZE):
  """GOAL's joint test: I2T and T2I mAP@K (and MRR@K) in % over the mixed gallery."""
  return _joint(_embedding_rankers(image_emb, text_emb, block_size), group_ids, is_global, mode,
                k)


def joint_retrieval_from_similarity(sim, group_ids, is_global, *, mode="effective", k=10,
                                    block_size=DEFAULT_BLOCK_SIZE):
  """`joint_retrieval` from the mixed gallery's `[images, texts]` score matrix."""
  return _joint(_similarity_rankers(sim, block_size), group_ids, is_global, mode, k)


HARD_GROUP_KEYS = ("group_t2i_acc", "group_i2t_acc", "group_acc")
PER_GROUP_KEYS = ("group_acc",)  # the per-group outcomes `per_group=True` returns
BASE_EDITS = ("", "base")  # `edits` values of a group's base member ("" also: no attribute known)

_group_similarity = jax.jit(jax.vmap(_similarity))


def _group_members(groups):
  """[G, M] record indices of each group (-1 padded) and the group values, in sorted order."""
  values, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
  single = np.flatnonzero(counts < 2)
  if single.size:
    raise ValueError(f"group {values[single[0]].item()!r} (and {single.size - 1} more) has one "
                     "record; a within-group score needs at least 2")
  order = np.argsort(inverse.ravel(), kind="stable")
  return pad_relevance(np.split(order, np.cumsum(counts)[:-1])), values.tolist()


def _base_variant_pairs(members, values, edits):
  """(group, base slot, variant slot, attribute) arrays of every edited member and its base."""
  pairs = []
  for g, row in enumerate(members):
    row = row[row >= 0]
    bases = [m for m, r in enumerate(row) if edits[r] in BASE_EDITS]
    variants = [m for m, r in enumerate(row) if edits[r] not in BASE_EDITS]
    if variants and len(bases) != 1:
      raise ValueError(f"group {values[g]!r} has edited members but {len(bases)} base members "
                       f"(edits {[edits[r] for r in row]}); it needs exactly one")
    pairs.extend((g, bases[0], v, edits[row[v]]) for v in variants)
  g, b, v, attributes = zip(*pairs) if pairs else ((), (), (), ())
  return np.array(g, int), np.array(b, int), np.array(v, int), np.array(attributes, str)


def hard_group_scores(image_emb, text_emb, groups, edits=None, *, per_group=False):
  """Does the model see details? Image-caption matching inside groups of near-identical scenes.

  Each group is a base scene and variants that change one attribute of it, so the gist never tells
  group members apart, only the details do. Similarity is the float32 dot product (normalise
  beforehand); a tie counts as a miss, so a collapsed model scores 0, not chance. A model blind to
  the edits but biased towards some image or caption scores exactly chance: one hit per group, and
  two of each pair's four trials (each direction asks both members).

  Args:
    image_emb: [N, E] image embeddings; row i and text_emb row i are record i's pair.
    text_emb: [N, E] caption embeddings.
    groups: [N] group of each record (at least 2 records per group).
    edits: [N] str, the attribute a variant changes, "" or "base" for the base member (one per
      group that has edited members); None, or "" everywhere, when the attributes are unknown.
    per_group: also return the per-group outcomes (below).

  Returns:
    In %: `group_t2i_acc` (each caption's own image scores strictly above every other image of
    its group; chance 1/M in a group of M), `group_i2t_acc` (each image's own caption above the
    group's other captions), `group_acc` (their mean, the headline number), and `2afc_<a>` for
    each attribute a in edits: over every (base, variant editing a) pair, four two-alternative
    trials (base caption: base image > variant image; variant caption: variant image > base
    image; base image: base caption > variant caption; variant image: variant caption > base
    caption), chance 50%. Directions per attribute are not split: the group keys show that.
    With `per_group`, the pair (that dict, `{"group_acc": [G floats]}`): per group, in ascending
    order of the group values, the % of its T2I and I2T decisions that hit (2 per member). Their
    mean over groups is `group_acc` when the groups are the same size (`test_hard`: 4 each);
    otherwise `group_acc` weighs each group by its size.
  """
  image = _as_float32("image embeddings", image_emb)
  text = _as_float32("text embeddings", text_emb)
  if image.shape != text.shape:
    raise ValueError(f"image and text embeddings must pair row by row, got shapes {image.shape} "
                     f"and {text.shape}")

  def group_similarity(rows):
    return jax.device_get(_group_similarity(*jax.device_put((image[rows], text[rows]),
                                                            _placement())))

  return _hard_group_scores(group_similarity, image.shape[0], groups, edits, per_group)


def hard_group_scores_from_similarity(sim, groups, edits=None, *, per_group=False):
  """`hard_group_scores` from an `[images, captions]` score matrix, record i's image row i and
  caption column i; only the scores inside each group are read."""
  sim = _as_float32("similarity matrix", sim)
  if sim.shape[0] != sim.shape[1]:
    raise ValueError(f"images and captions must pair row by row, got scores {sim.shape}")
  return _hard_group_scores(lambda rows: sim[rows[:, :, None], rows[:, None, :]], sim.shape[0],
                            groups, edits, per_group)


def _hard_group_scores(group_similarity, num, groups, edits, per_group):
  """`hard_group_scores` given `group_similarity(rows [G, M]) -> [G, M, M]` scores."""
  if num == 0:
    raise ValueError("no records to evaluate")
  groups = np.asarray(groups)
  edits = [""] * num if edits is None else list(edits)
  if groups.shape != (num,) or len(edits) != num:
    raise ValueError(f"groups {groups.shape} and edits ({len(edits)},) must have one entry per "
                     f"record ({num},)")
  bad = [e for e in edits if not isinstance(e, str)]
  if bad:
    raise ValueError(f"edits must be strings, got {bad[0]!r}")
  members, values = _group_members(groups)
  valid = members >= 0
  sim = group_similarity(np.maximum(members, 0))
  own = np.diagonal(sim, axis1=1, axis2=2)  # [G, M]: sim[g, i, j] = image i . caption j
  rivals = valid[:, None, :] & ~np.eye(members.shape[1], dtype=bool)  # [G, i, j]: j is a rival
  i2t_hit = ~((sim >= own[:, :, None]) & rivals).any(axis=2)
  t2i_hit = ~((sim >= own[:, None, :]) & np.swapaxes(rivals, 1, 2)).any(axis=1)
  t2i, i2t = 100.0 * t2i_hit[valid].mean(), 100.0 * i2t_hit[valid].mean()
  out = {"group_t2i_acc": float(t2i), "group_i2t_acc": float(i2t),
         "group_acc": float((t2i + i2t) / 2)}
  g, b, v, attributes = _base_variant_pairs(members, values, edits)
  base, variant = own[g, b], own[g, v]
  trials = np.stack([base > sim[g, v, b], variant > sim[g, b, v],
                     base > sim[g, b, v], variant > sim[g, v, b]], axis=1)
  for attribute in sorted(set(attributes.tolist())):
    out[f"2afc_{attribute}"] = float(100.0 * trials[attributes == attribute].mean())
  if not per_group:
    return out
  hits = ((t2i_hit & valid).sum(axis=1) + (i2t_hit & valid).sum(axis=1)) / (2 * valid.sum(axis=1))
  return out, {"group_acc": (100.0 * hits).tolist()}


# ----------------------------------------------------------------------------------------------
# Blocked similarity for callers that need the values (visualisation, top-k lists).


@functools.partial(jax.jit, static_argnames="k")
def _top_k_block(queries, gallery, k):
  return jax.lax.top_k(_similarity(queries, gallery), k)


def top_k(query_emb, gallery_emb, k, *, block_size=DEFAULT_BLOCK_SIZE):
  """(scores [Q, k], indices [Q, k]) of the most similar gallery items; ties: lower index first."""
  queries, gallery = _embedding_pair(query_emb, gallery_emb)
  fn = functools.partial(_top_k_block, k=min(k, gallery.shape[0]))
  return _map_blocks(fn, (queries,), (0,), block_size, gallery)


def score_matrix(score_fn, image_features, text_features, *, texts_per_block):
  """`[images, texts]` float32 scores by a method's `score_fn`, one block of texts at a time.

  Args:
    score_fn: `(image_features, text_features) -> [ni, nt]`, jitted by the caller (a method's
      `Scorer.score`); features are trees of `[N, ...]` host arrays.
    texts_per_block: texts scored against all images per device step; the tail block is padded
      with zero features, whose columns are dropped.
  """
  leaves, treedef = jax.tree.flatten(text_features)
  block = lambda *args: score_fn(args[-1], jax.tree.unflatten(treedef, args[:-1])).T
  columns = _map_blocks(block, leaves, (0,) * len(leaves), texts_per_block, image_features)
  return np.ascontiguousarray(np.asarray(columns, np.float32).T)
