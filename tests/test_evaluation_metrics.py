"""Retrieval metrics against brute-force loops and hand-computed cases, ties included."""
import contextlib

import jax
import numpy as np
import pytest

from goal_jax.evaluation import metrics


# --- Independent references: sort the gallery explicitly, then walk the list. ---------------


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
  assert metrics.joint_map_at_k(sim, relevance, k) == pytest.approx(expected_map)
  assert metrics.mrr_at_k(sim, relevance, k) == pytest.approx(brute_mrr(sim, relevant_sets, k))
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
  mrr = metrics.mrr_at_k(sim, relevance, 10)
  assert metrics.joint_map_at_k(sim, relevance, 10) == pytest.approx(mrr)
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
  assert metrics.joint_map_at_k(JOINT_SIM, relevance, 10) == pytest.approx(100 * np.mean(ap))
  # k=1: dividing by |R| = 2, not min(|R|, k) = 1, halves the two hits.
  assert metrics.joint_map_at_k(JOINT_SIM, relevance, 1) == pytest.approx(100 * (0.5 + 0.5) / 4)


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
    sim_map = metrics.joint_map_at_k(joint_sim, joint_relevance, k=5)
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
    metrics.joint_map_at_k(np.zeros((2, 3)), np.array([[0], [-1]]))
  with pytest.raises(ValueError, match="gallery has 3 items"):
    metrics.joint_map_at_k(np.zeros((2, 3)), np.array([[0], [3]]))
  with pytest.raises(ValueError, match="mode must be one of"):
    metrics.joint_relevance([0], [True], "optimistic")
  with pytest.raises(ValueError, match="several global items"):
    metrics.joint_relevance([0, 0], [True, True], "intended")
