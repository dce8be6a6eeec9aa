"""Retrieval metrics against brute-force loops and hand-computed cases, ties included."""
import contextlib

import jax
import numpy as np
import pytest

from goal_jax.evaluation import metrics


# --- Independent references: sort the gallery explicitly, then walk the list. ---------------


# mAP@K and MRR@K of a similarity matrix, from the library's rank functions.
def _joint_map_at_k(sim, relevance, k=10):
  """mAP@K in % over the rows of a [Q, G] similarity matrix (GOAL's |R| normalisation)."""
  ranks = metrics.relevant_ranks_from_similarity(sim, relevance)
  return float(100.0 * metrics.average_precision_at_k(ranks, k).mean())


def _mrr_at_k(sim, relevance, k=10):
  """MRR@K in % over the rows of a [Q, G] similarity matrix."""
  ranks = metrics.relevant_ranks_from_similarity(sim, relevance)
  return float(100.0 * metrics.reciprocal_rank_at_k(ranks, k).mean())


def ranked_list(scores, relevant):
  """Gallery indices best first; on equal scores non-relevant items come first (the tie rule)."""
  return sorted(range(len(scores)), key=lambda j: (-scores[j], j in relevant))


def brute_first_position(scores, relevant):
  order = ranked_list(scores, relevant)
  return min(order.index(r) for r in relevant)


def brute_recall(sim, relevant_sets, k):
  hits = [brute_first_position(sim[q], rel) < k for q, rel in enumerate(relevant_sets)]
  return 100.0 * np.mean(hits)


def brute_ap(scores, relevant, k):
  hits, total = 0, 0.0
  for position, j in enumerate(ranked_list(scores, relevant)[:k]):
    if j in relevant:
      hits += 1
      total += hits / (position + 1)
  return total / len(relevant)


def brute_map(sim, relevant_sets, k):
  return 100.0 * np.mean([brute_ap(sim[q], rel, k) for q, rel in enumerate(relevant_sets)])


def brute_mrr(sim, relevant_sets, k):
  values = []
  for q, rel in enumerate(relevant_sets):
    position = brute_first_position(sim[q], rel)
    values.append(1.0 / (position + 1) if position < k else 0.0)
  return 100.0 * np.mean(values)


def quantised(rng, n, dim=4):
  """Integer embeddings: dot products are exact in float32, so ties are real ties."""
  return rng.integers(-1, 2, size=(n, dim)).astype(np.float32)


def random_captions(rng, num_images, max_captions=4):
  counts = rng.integers(1, max_captions + 1, size=num_images)
  text_to_image = np.repeat(np.arange(num_images), counts)
  return rng.permutation(text_to_image)


# --- Hand-computed case. ---------------------------------------------------------------------

# 3 images x 6 captions, caption t belongs to image t // 2. Ties: image 1 and image 2 both score
# 0.5 with caption 5 (image 2's), which the tie rule counts against the ground truth.
HAND_SIM = np.array([
    [0.9, 0.1, 0.8, 0.2, 0.0, 0.0],
    [0.3, 0.2, 0.1, 0.4, 0.5, 0.5],
    [0.1, 0.7, 0.2, 0.3, 0.6, 0.5],
], np.float32)


def hand_embeddings():
  # image i = e_i, caption t = column t of HAND_SIM, so image_emb @ text_emb.T == HAND_SIM.
  return np.eye(3, dtype=np.float32), HAND_SIM.T.copy()


def test_recall_hand_case():
  images, texts = hand_embeddings()
  out = metrics.retrieval_recall(images, texts, np.repeat(np.arange(3), 2), ks=(1, 2, 5))
  # I2T first hits at positions 0, 2, 1 (image 1's best caption 0.4 is beaten by two 0.5s).
  # T2I first hits at positions 0, 2, 2, 0, 0, 1 (caption 5 ties 0.5 with image 1: counted as lost).
  expected = {"i2t_R@1": 100 / 3, "i2t_R@2": 200 / 3, "i2t_R@5": 100.0,
              "t2i_R@1": 50.0, "t2i_R@2": 400 / 6, "t2i_R@5": 100.0}
  assert out.keys() == expected.keys()
  for key, value in expected.items():
    assert out[key] == pytest.approx(value), key


def test_retrieval_ranks_hand_case():
  images, texts = hand_embeddings()
  i2t, t2i = metrics.retrieval_ranks(images, texts, np.repeat(np.arange(3), 2))
  np.testing.assert_array_equal(i2t, [0, 2, 1])
  np.testing.assert_array_equal(t2i, [0, 2, 2, 0, 0, 1])


# --- Random embeddings with ties against the loops. -------------------------------------------


@pytest.mark.parametrize("seed,block_size", [(0, 8), (1, 512), (2, 5)])
def test_recall_matches_brute_force_with_ties_and_multi_captions(seed, block_size):
  rng = np.random.default_rng(seed)
  num_images = 23
  text_to_image = random_captions(rng, num_images)
  images, texts = quantised(rng, num_images), quantised(rng, len(text_to_image))
  ks = (1, 5, 10, 25, 50)
  out = metrics.retrieval_recall(images, texts, text_to_image, ks, block_size=block_size)
  sim = images.astype(np.float64) @ texts.T.astype(np.float64)
  captions = [set(np.flatnonzero(text_to_image == i)) for i in range(num_images)]
  owners = [{int(i)} for i in text_to_image]
  for k in ks:
    assert out[f"i2t_R@{k}"] == pytest.approx(brute_recall(sim, captions, k)), k
    assert out[f"t2i_R@{k}"] == pytest.approx(brute_recall(sim.T, owners, k)), k
  # The test set really has ties that decide hits (else the tie rule is untested).
  assert any(len(set(row)) < len(row) for row in sim)


def test_recall_ignores_gallery_order():
  """A consequence of the tie rule: permuting captions never changes a number."""
  rng = np.random.default_rng(3)
  text_to_image = random_captions(rng, 15)
  images, texts = quantised(rng, 15, dim=3), quantised(rng, len(text_to_image), dim=3)
  perm = rng.permutation(len(text_to_image))
  a = metrics.retrieval_recall(images, texts, text_to_image)
  b = metrics.retrieval_recall(images, texts[perm], text_to_image[perm])
  assert a == b


def test_collapsed_embeddings_score_zero_at_one():
  same = np.ones((10, 4), np.float32)
  out = metrics.retrieval_recall(same, same, ks=(1, 9, 10))
  assert out == {"i2t_R@1": 0.0, "i2t_R@9": 0.0, "i2t_R@10": 100.0,
                 "t2i_R@1": 0.0, "t2i_R@9": 0.0, "t2i_R@10": 100.0}


def test_perfect_embeddings_score_hundred():
  rng = np.random.default_rng(4)
  images = rng.normal(size=(30, 16)).astype(np.float32)
  images /= np.linalg.norm(images, axis=1, keepdims=True)
  out = metrics.retrieval_recall(images, images, ks=(1,))
  assert out == {"i2t_R@1": 100.0, "t2i_R@1": 100.0}


def test_blocked_ranks_match_full_similarity_ranks():
  rng = np.random.default_rng(5)
  queries, gallery = quantised(rng, 41), quantised(rng, 29)
  relevance = metrics.pad_relevance([rng.choice(29, rng.integers(1, 4), replace=False)
                                     for _ in range(41)])
  from_emb = metrics.relevant_ranks(queries, gallery, relevance, block_size=6)
  from_sim = metrics.relevant_ranks_from_similarity(queries @ gallery.T, relevance, block_size=41)
  np.testing.assert_array_equal(from_emb, from_sim)
  assert (from_emb[relevance < 0] == metrics.PAD_RANK).all()


# --- mAP and MRR. ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 10])
def test_map_and_mrr_match_brute_force(k):
  rng = np.random.default_rng(6)
  sim = rng.integers(0, 40, size=(60, 31)).astype(np.float32)  # Some ties in every row.
  relevant_sets = [set(rng.choice(31, rng.integers(1, 6), replace=False).tolist())
                   for _ in range(60)]
  relevance = metrics.pad_relevance([sorted(r) for r in relevant_sets])
  expected_map = brute_map(sim, relevant_sets, k)
  assert _joint_map_at_k(sim, relevance, k) == pytest.approx(expected_map)
  assert _mrr_at_k(sim, relevance, k) == pytest.approx(brute_mrr(sim, relevant_sets, k))
  # The case distinguishes GOAL's 1/|R| from 1/min(|R|, k): some multi-relevant query scores.
  assert k >= 5 or any(len(r) > k and brute_ap(sim[q], r, k) > 0
                       for q, r in enumerate(relevant_sets))


def test_effective_joint_map_equals_mrr():
  rng = np.random.default_rng(7)
  groups = np.repeat(np.arange(20), 2)
  is_global = np.tile([True, False], 20)
  relevance = metrics.joint_relevance(groups, is_global, "effective")
  np.testing.assert_array_equal(relevance, np.arange(40)[:, None])
  sim = rng.integers(0, 6, size=(40, 40)).astype(np.float32)
  mrr = _mrr_at_k(sim, relevance, 10)
  assert _joint_map_at_k(sim, relevance, 10) == pytest.approx(mrr)
  assert mrr == pytest.approx(brute_mrr(sim, [{q} for q in range(40)], 10))
  assert 0 < mrr < 100


# Items: global 0 and its local 1 (group "a"), global 2 and its local 3 (group "b").
JOINT_SIM = np.array([
    [0.5, 0.9, 0.7, 0.1],  # relevant {0, 1} at positions 0, 2      -> AP = (1 + 2/3) / 2
    [0.2, 0.3, 0.3, 0.4],  # relevant {1, 0}: 1 ties with 2 and loses: 2, 3 -> (1/3 + 2/4) / 2
    [0.0, 0.0, 1.0, 0.8],  # relevant {2, 3} at positions 0, 1      -> 1
    [0.9, 0.8, 0.7, 0.6],  # relevant {3, 2} at positions 2, 3      -> (1/3 + 2/4) / 2
], np.float32)


def test_intended_joint_map_hand_case():
  relevance = metrics.joint_relevance(["a", "a", "b", "b"], [True, False, True, False], "intended")
  np.testing.assert_array_equal(relevance, [[0, 1], [1, 0], [2, 3], [3, 2]])
  ap = [(1 + 2 / 3) / 2, (1 / 3 + 2 / 4) / 2, 1.0, (1 / 3 + 2 / 4) / 2]
  assert _joint_map_at_k(JOINT_SIM, relevance, 10) == pytest.approx(100 * np.mean(ap))
  # k=1: dividing by |R| = 2, not min(|R|, k) = 1, halves the two hits.
  assert _joint_map_at_k(JOINT_SIM, relevance, 1) == pytest.approx(100 * (0.5 + 0.5) / 4)


def test_intended_relevance_with_two_locals_per_image():
  relevance = metrics.joint_relevance([7, 7, 7, 3, 3], [True, False, False, True, False],
                                      "intended")
  as_sets = [set(row[row >= 0].tolist()) for row in relevance]
  # Global: itself and all its locals; local: itself and its global, not its sibling.
  assert as_sets == [{0, 1, 2}, {1, 0}, {2, 0}, {3, 4}, {4, 3}]
  assert relevance[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_joint_retrieval_both_directions_match_brute_force():
  rng = np.random.default_rng(8)
  groups = np.repeat(np.arange(12), 2)
  is_global = np.tile([True, False], 12)
  images, texts = quantised(rng, 24), quantised(rng, 24)
  sim = images.astype(np.float64) @ texts.T.astype(np.float64)
  for mode in metrics.JOINT_MODES:
    out = metrics.joint_retrieval(images, texts, groups, is_global, mode=mode, k=10, block_size=7)
    relevance = metrics.joint_relevance(groups, is_global, mode)
    sets = [set(row[row >= 0].tolist()) for row in relevance]
    assert out["i2t_mAP@10"] == pytest.approx(brute_map(sim, sets, 10)), mode
    assert out["t2i_mAP@10"] == pytest.approx(brute_map(sim.T, sets, 10)), mode
    assert out["i2t_MRR@10"] == pytest.approx(brute_mrr(sim, sets, 10)), mode
    assert out["t2i_MRR@10"] == pytest.approx(brute_mrr(sim.T, sets, 10)), mode


# --- Top-k lists. -------------------------------------------------------------------------------


def test_top_k_matches_stable_argsort():
  rng = np.random.default_rng(9)
  queries, gallery = quantised(rng, 13), quantised(rng, 17)
  scores, indices = metrics.top_k(queries, gallery, 5, block_size=4)
  sim = queries @ gallery.T
  expected = np.argsort(-sim, axis=1, kind="stable")[:, :5]  # Lower index first on ties.
  np.testing.assert_array_equal(indices, expected)
  np.testing.assert_array_equal(scores, np.take_along_axis(sim, expected, axis=1))


# --- Explicit transfers. ------------------------------------------------------------------------


@pytest.mark.parametrize("on_mesh", [False, True])
def test_metrics_run_under_a_disallowing_transfer_guard(on_mesh):
  """A trainer's `disallow` guard never trips scoring, on one device or inside `jax.set_mesh`."""
  rng = np.random.default_rng(10)
  text_to_image = random_captions(rng, 9)
  images, texts = quantised(rng, 9), quantised(rng, len(text_to_image))
  sim = images.astype(np.float64) @ texts.T.astype(np.float64)
  captions = [set(np.flatnonzero(text_to_image == i)) for i in range(9)]
  groups, is_global = np.repeat(np.arange(6), 2), np.tile([True, False], 6)
  joint_images, joint_texts = quantised(rng, 12), quantised(rng, 12)
  joint_sim = joint_images.astype(np.float64) @ joint_texts.T.astype(np.float64)
  joint_relevance = metrics.joint_relevance(groups, is_global, "intended")
  joint_sets = [set(row[row >= 0].tolist()) for row in joint_relevance]
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  with contextlib.ExitStack() as stack:
    if on_mesh:
      stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(jax.transfer_guard("disallow"))
    recall = metrics.retrieval_recall(images, texts, text_to_image, ks=(1, 5), block_size=4)
    joint = metrics.joint_retrieval(joint_images, joint_texts, groups, is_global,
                                    mode="intended", k=5, block_size=5)
    sim_map = _joint_map_at_k(joint_sim, joint_relevance, k=5)
    scores, indices = metrics.top_k(images, texts, 3, block_size=4)
  for k in (1, 5):
    assert recall[f"i2t_R@{k}"] == pytest.approx(brute_recall(sim, captions, k)), k
  assert joint["i2t_mAP@5"] == pytest.approx(brute_map(joint_sim, joint_sets, 5))
  assert joint["t2i_MRR@5"] == pytest.approx(brute_mrr(joint_sim.T, joint_sets, 5))
  assert sim_map == pytest.approx(brute_map(joint_sim, joint_sets, 5))
  expected = np.argsort(-sim, axis=1, kind="stable")[:, :3]
  np.testing.assert_array_equal(indices, expected)
  np.testing.assert_array_equal(scores, np.take_along_axis(sim, expected, axis=1))
  assert isinstance(scores, np.ndarray) and isinstance(indices, np.ndarray)
  # The guard is on: an implicit copy in this test would have raised.
  with jax.transfer_guard("disallow"), pytest.raises(Exception, match="Disallowed"):
    jax.numpy.asarray(images) + 1


# --- Bad input. -------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
  images, texts = hand_embeddings()
  with pytest.raises(ValueError, match="image 2 .*has no caption"):
    metrics.retrieval_recall(images, texts, np.array([0, 0, 1, 1, 1, 1]))
  with pytest.raises(ValueError, match="text 5 points at image 3"):
    metrics.retrieval_recall(images, texts, np.array([0, 0, 1, 1, 2, 3]))
  bad = texts.copy()
  bad[4, 1] = np.nan
  with pytest.raises(ValueError, match=r"non-finite value at index \(4, 1\)"):
    metrics.retrieval_recall(images, bad, np.repeat(np.arange(3), 2))
  with pytest.raises(ValueError, match="query 1 .*has no relevant item"):
    _joint_map_at_k(np.zeros((2, 3)), np.array([[0], [-1]]))
  with pytest.raises(ValueError, match="gallery has 3 items"):
    _joint_map_at_k(np.zeros((2, 3)), np.array([[0], [3]]))
  with pytest.raises(ValueError, match="mode must be one of"):
    metrics.joint_relevance([0], [True], "optimistic")
  with pytest.raises(ValueError, match="several global items"):
    metrics.joint_relevance([0, 0], [True, True], "intended")


def brute_group_scores(sim, groups, edits):
  """Loops over each group's members: own pair strictly above every rival, else a miss."""
  t2i, i2t, trials = [], [], {}
  for group in set(groups):
    members = [r for r in range(len(groups)) if groups[r] == group]
    for r in members:
      i2t.append(all(sim[r, r] > sim[r, o] for o in members if o != r))
      t2i.append(all(sim[r, r] > sim[o, r] for o in members if o != r))
    base = [r for r in members if edits[r] in ("", "base")]
    for v in (r for r in members if edits[r] not in ("", "base")):
      b = base[0]
      trials.setdefault(edits[v], []).extend([
          sim[b, b] > sim[v, b], sim[v, v] > sim[b, v], sim[b, b] > sim[b, v],
          sim[v, v] > sim[v, b]])
  out = {"group_t2i_acc": 100 * np.mean(t2i), "group_i2t_acc": 100 * np.mean(i2t)}
  out["group_acc"] = (out["group_t2i_acc"] + out["group_i2t_acc"]) / 2
  out.update({f"2afc_{a}": 100 * np.mean(t) for a, t in trials.items()})
  return out


# Two groups of 4; sim[i, j] = image i . caption j. Between groups 9.0, which must be ignored.
HARD_SIM = np.full((8, 8), 9.0, np.float32)
HARD_SIM[:4, :4] = [  # group 12: base, colour, shape, colour
    [0.9, 0.5, 0.2, 0.1],  # I2T hit
    [0.6, 0.8, 0.3, 0.8],  # I2T miss: caption 3 ties the own 0.8
    [0.7, 0.1, 0.6, 0.0],  # I2T miss: caption 0 beats the own 0.6
    [0.2, 0.4, 0.5, 0.7],  # I2T hit; caption 3 (T2I) misses: image 1 gives it 0.8 > 0.7
]
HARD_SIM[4:, 4:] = [  # group 3: size, base, colour, binding
    [0.5, 0.5, 0.0, 0.0],  # I2T miss (tie); caption 4 (T2I) hits: 0.5 > 0.4, 0, 0
    [0.4, 0.3, 0.2, 0.1],  # I2T miss; caption 5 misses (image 4: 0.5), caption 6 (image 5: 0.2)
    [0.0, 0.0, 0.1, 0.0],  # I2T hit
    [0.0, 0.0, 0.0, 0.0],  # I2T miss and caption 7 misses: ties everywhere
]
HARD_GROUPS = np.array([12] * 4 + [3] * 4)
HARD_EDITS = ["base", "colour", "shape", "colour", "size", "base", "colour", "binding"]


def hard_group_embeddings():
  return np.eye(8, dtype=np.float32), HARD_SIM.T.copy()  # image_emb @ text_emb.T == HARD_SIM


def test_hard_group_scores_hand_case():
  out = metrics.hard_group_scores(*hard_group_embeddings(), HARD_GROUPS, HARD_EDITS)
  # T2I hits: captions 0, 1, 2 and 4 (4 of 8); I2T hits: images 0, 3 and 6 (3 of 8).
  # 2AFC trials per (base b, variant v): b's caption, v's caption, b's image, v's image.
  #   colour (0, 1): .9>.6 .8>.5 .9>.5 .8>.6 -> 4; (0, 3): .9>.2 .7>.1 .9>.1 .7>.2 -> 4;
  #          (5, 6): .3>0 .1>.2 no, .3>.2 .1>0 -> 3; 11 of 12.
  #   shape (0, 2): .9>.7 .6>.2 .9>.2 .6>.7 no -> 3 of 4.
  #   size (5, 4): .3>.5 no, .5>.4, .3>.4 no, .5>.5 tie -> 1 of 4.
  #   binding (5, 7): .3>0, 0>.1 no, .3>.1, 0>0 tie -> 2 of 4.
  expected = {"group_t2i_acc": 50.0, "group_i2t_acc": 37.5, "group_acc": 43.75,
              "2afc_binding": 50.0, "2afc_colour": 1100 / 12, "2afc_shape": 75.0,
              "2afc_size": 25.0}
  assert list(out) == list(expected)  # group keys first, then attributes in sorted order
  for key, value in expected.items():
    assert out[key] == pytest.approx(value), key
  assert out == pytest.approx(brute_group_scores(HARD_SIM, HARD_GROUPS, HARD_EDITS))


def test_hard_group_scores_per_group_hand_case():
  image, text = hard_group_embeddings()
  out, per_group = metrics.hard_group_scores(image, text, HARD_GROUPS, HARD_EDITS, per_group=True)
  assert out == metrics.hard_group_scores(image, text, HARD_GROUPS, HARD_EDITS)
  # Ascending group order: group 3 (records 4-7), then group 12 (records 0-3).
  #   group 3: T2I hit caption 4, I2T hit image 6 -> 2 of 8 decisions;
  #   group 12: T2I hits captions 0, 1, 2, I2T hits images 0 and 3 -> 5 of 8.
  assert per_group == {"group_acc": [25.0, 62.5]}
  assert tuple(per_group) == metrics.PER_GROUP_KEYS
  assert np.mean(per_group["group_acc"]) == out["group_acc"]  # groups of equal size
  assert metrics.hard_group_scores_from_similarity(HARD_SIM, HARD_GROUPS, HARD_EDITS,
                                                   per_group=True) == (out, per_group)


@pytest.mark.parametrize("seed", [0, 1])
def test_per_group_mean_is_group_acc_for_groups_of_four(seed):
  rng = np.random.default_rng(seed)
  groups = rng.permutation(np.repeat(np.arange(30) * 3, 4))
  images, texts = quantised(rng, len(groups), dim=6), quantised(rng, len(groups), dim=6)
  out, per_group = metrics.hard_group_scores(images, texts, groups, per_group=True)
  assert len(per_group["group_acc"]) == 30 and 0 < out["group_acc"] < 100
  assert np.mean(per_group["group_acc"]) == pytest.approx(out["group_acc"], abs=1e-9)
  # Groups of unequal size: group_acc weighs each group by its size.
  sizes = np.repeat([2, 5], 5)
  groups = np.repeat(np.arange(10), sizes)
  images, texts = quantised(rng, len(groups), dim=6), quantised(rng, len(groups), dim=6)
  out, per_group = metrics.hard_group_scores(images, texts, groups, per_group=True)
  assert np.average(per_group["group_acc"], weights=sizes) == pytest.approx(out["group_acc"])


def test_hard_group_scores_ignore_record_order():
  image, text = hard_group_embeddings()
  perm = np.random.default_rng(11).permutation(8)
  shuffled = metrics.hard_group_scores(image[perm], text[perm], HARD_GROUPS[perm],
                                       [HARD_EDITS[p] for p in perm])
  assert shuffled == metrics.hard_group_scores(image, text, HARD_GROUPS, HARD_EDITS)


@pytest.mark.parametrize("seed", [0, 1])
def test_hard_group_scores_match_brute_force_with_ties(seed):
  rng = np.random.default_rng(seed)
  sizes = rng.integers(2, 6, size=9)  # groups of 2 to 5, one base each
  groups = rng.permutation(np.repeat(np.arange(9) * 7, sizes))
  edits = [""] * len(groups)
  for group in set(groups.tolist()):
    members = np.flatnonzero(groups == group)
    edits[members[0]] = "base"
    for m in members[1:]:
      edits[m] = str(rng.choice(["colour", "shape", "size", "texture", "binding"]))
  images, texts = quantised(rng, len(groups), dim=3), quantised(rng, len(groups), dim=3)
  sim = images.astype(np.float64) @ texts.T.astype(np.float64)
  out = metrics.hard_group_scores(images, texts, groups, edits)
  expected = brute_group_scores(sim, groups.tolist(), edits)
  assert out.keys() == expected.keys() and out == pytest.approx(expected)
  assert any(len(set(row)) < len(row) for row in sim)  # ties decide some trials


def test_hard_group_scores_collapsed_zero_perfect_hundred():
  groups, edits = np.repeat([0, 1], 4), ["base", "colour", "shape", "texture"] * 2
  same = np.ones((8, 4), np.float32)
  collapsed = metrics.hard_group_scores(same, same, groups, edits)
  assert collapsed == {"group_t2i_acc": 0.0, "group_i2t_acc": 0.0, "group_acc": 0.0,
                       "2afc_colour": 0.0, "2afc_shape": 0.0, "2afc_texture": 0.0}
  basis = np.eye(8, dtype=np.float32)
  assert set(metrics.hard_group_scores(basis, basis, groups, edits).values()) == {100.0}


def test_hard_group_scores_without_attributes_give_group_keys_only():
  image, text = hard_group_embeddings()
  for edits in (None, [""] * 8):
    out = metrics.hard_group_scores(image, text, HARD_GROUPS, edits)
    assert tuple(out) == metrics.HARD_GROUP_KEYS
    assert (out["group_t2i_acc"], out["group_i2t_acc"]) == (50.0, 37.5)


@pytest.mark.parametrize("on_mesh", [False, True])
def test_hard_group_scores_run_under_a_disallowing_transfer_guard(on_mesh):
  image, text = hard_group_embeddings()
  expected = metrics.hard_group_scores(image, text, HARD_GROUPS, HARD_EDITS)
  with contextlib.ExitStack() as stack:
    if on_mesh:
      stack.enter_context(jax.set_mesh(jax.make_mesh((jax.device_count(),), ("data",))))
    stack.enter_context(jax.transfer_guard("disallow"))
    assert metrics.hard_group_scores(image, text, HARD_GROUPS, HARD_EDITS) == expected


def test_hard_group_scores_bad_inputs():
  image, text = hard_group_embeddings()
  with pytest.raises(ValueError, match=r"pair row by row, got shapes \(8, 8\) and \(7, 8\)"):
    metrics.hard_group_scores(image, text[:7], HARD_GROUPS, HARD_EDITS)
  with pytest.raises(ValueError, match="one entry per record"):
    metrics.hard_group_scores(image, text, HARD_GROUPS[:7], HARD_EDITS)
  with pytest.raises(ValueError, match="one entry per record"):
    metrics.hard_group_scores(image, text, HARD_GROUPS, HARD_EDITS[:7])
  with pytest.raises(ValueError, match="group 5 .*has one record"):
    metrics.hard_group_scores(image, text, [12] * 7 + [5], None)
  with pytest.raises(ValueError, match="group 3 has edited members but 2 base members"):
    metrics.hard_group_scores(image, text, HARD_GROUPS, HARD_EDITS[:4] + ["", "base", "a", "b"])
  with pytest.raises(ValueError, match="group 12 has edited members but 0 base members"):
    metrics.hard_group_scores(image, text, HARD_GROUPS, ["colour"] * 4 + HARD_EDITS[4:])
  with pytest.raises(ValueError, match="edits must be strings, got None"):
    metrics.hard_group_scores(image, text, HARD_GROUPS, [None] * 8)
  bad = text.copy()
  bad[2, 5] = np.inf
  with pytest.raises(ValueError, match=r"text embeddings has a non-finite value at index \(2, 5\)"):
    metrics.hard_group_scores(image, bad, HARD_GROUPS, HARD_EDITS)
  with pytest.raises(ValueError, match="no records"):
    metrics.hard_group_scores(np.zeros((0, 4)), np.zeros((0, 4)), [], [])
