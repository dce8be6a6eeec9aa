"""Duplicate-aware InfoNCE (`config.loss.duplicates`): rows with the same text or record are the
same pair. Checked against a loop-by-loop numpy reference, on a hand-made floor, dense against
sharded on 4 devices, and through the methods' losses."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax.losses import contrastive
from goal_jax.losses import pairwise
from goal_jax.methods import base


def reference(image, text, tokens, image_ids, scale, mode, valid, label_smoothing=0.0):
  """Each row and direction by hand: which columns compete, which are positives."""
  image, text = np.asarray(image, np.float64), np.asarray(text, np.float64)
  n = len(image)
  same = [[tuple(tokens[i]) == tuple(tokens[j]) or image_ids[i] == image_ids[j]
           for j in range(n)] for i in range(n)]
  total = 0.0
  for logits in (scale * image @ text.T, scale * text @ image.T):
    for i in range(n):
      if not valid[i]:
        continue
      columns = [j for j in range(n) if valid[j] and (mode != "mask" or j == i or not same[i][j])]
      log_z = np.log(np.sum(np.exp(logits[i, columns])))
      if mode == "positive":
        positives = [j for j in columns if same[i][j]]
        nll = log_z - np.log(np.sum(np.exp(logits[i, positives])))
      else:
        nll = log_z - logits[i, i]
      uniform = np.mean([log_z - logits[i, j] for j in columns])
      total += (1 - label_smoothing) * nll + label_smoothing * uniform
  return total / 2 / np.sum(valid)


def _case(n=8, width=5, seed=0):
  """Rows 0, 2, 5 share a caption, rows 1 and 6 another; rows 3 and 7 are the same record."""
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  image = unit(rng.normal(size=(n, width))).astype(np.float32)
  text = unit(rng.normal(size=(n, width))).astype(np.float32)
  tokens = rng.integers(1, 50, size=(n, 6))
  for copy, of in ((2, 0), (5, 0), (6, 1)):
    tokens[copy], text[copy] = tokens[of], text[of]
  image_ids = np.arange(n)
  image_ids[7] = image_ids[3]
  return image, text, tokens, image_ids


@pytest.mark.parametrize("mode", contrastive.DUPLICATE_POLICIES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_each_policy_equals_the_hand_reference(mode, label_smoothing):
  image, text, tokens, image_ids = _case()
  valid = np.ones(len(image), bool)
  valid[4] = False
  loss = pairwise.PairLoss("softmax", jnp.log(10.0), duplicates=mode,
                           label_smoothing=label_smoothing)
  got = loss(jnp.asarray(image), jnp.asarray(text), valid=jnp.asarray(valid),
             identity=contrastive.row_identity(jnp.asarray(tokens), jnp.asarray(image_ids)))
  want = reference(image, text, tokens, image_ids, 10.0, mode, valid, label_smoothing)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_without_duplicates_every_policy_is_the_papers_infonce():
  image, text, _, _ = _case()
  tokens = np.arange(len(image) * 3).reshape(len(image), 3)
  identity = contrastive.row_identity(jnp.asarray(tokens), jnp.arange(len(image)))
  plain = contrastive.infonce(jnp.asarray(image), jnp.asarray(text), jnp.log(10.0))
  for mode in contrastive.DUPLICATE_POLICIES:
    loss = pairwise.PairLoss("softmax", jnp.log(10.0), duplicates=mode)
    np.testing.assert_allclose(float(loss(jnp.asarray(image), jnp.asarray(text),
                                          identity=identity)), float(plain), rtol=1e-6)


def test_identical_captions_lose_their_ln_k_floor():
  """Two images, one caption, matched perfectly: InfoNCE cannot go below ln 2 per direction
  pair (each copy must pick "its" image among identical texts); the others reach ~0."""
  image = np.eye(3, dtype=np.float32)[[0, 1, 2]]
  text = np.eye(3, dtype=np.float32)[[0, 0, 2]]
  image[1] = image[0]  # both images of the caption embed alike: the best the model can do
  tokens = np.array([[5, 6], [5, 6], [7, 8]])
  identity = contrastive.row_identity(jnp.asarray(tokens), jnp.arange(3))
  losses = {mode: float(pairwise.PairLoss("softmax", jnp.log(100.0), duplicates=mode)(
      jnp.asarray(image), jnp.asarray(text), identity=identity))
      for mode in contrastive.DUPLICATE_POLICIES}
  # Rows 0 and 1 each score ln 2 in both directions, row 2 ~0: (4 ln 2) / 2 / 3.
  np.testing.assert_allclose(losses["negative"], 4 * np.log(2) / 2 / 3, rtol=1e-4)
  assert losses["positive"] < 1e-6 and losses["mask"] < 1e-6


@pytest.mark.parametrize("mode", ["positive", "mask"])
def test_sharded_equals_dense_with_gradients(mode):
  image, text, tokens, image_ids = _case(n=12, seed=3)
  tokens[9] = tokens[2]  # a duplicate across devices (rows 2 and 9 are on devices 0 and 3)
  valid = np.ones(12, bool)
  valid[10] = False
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  identity = contrastive.row_identity(jnp.asarray(tokens), jnp.asarray(image_ids))

  def run(image, text, scale, sharded):
    loss = pairwise.PairLoss("softmax", scale, duplicates=mode)
    objective = lambda i, t, v, ident, axis_name: loss(i, t, valid=v, identity=ident,
                                                       axis_name=axis_name)
    return contrastive.data_parallel(objective, mesh if sharded else None)(
        image, text, jnp.asarray(valid), identity)

  args = (jnp.asarray(image), jnp.asarray(text), jnp.log(jnp.float32(20.0)))
  dense = jax.value_and_grad(functools.partial(run, sharded=False), argnums=(0, 1, 2))(*args)
  sharded = jax.jit(jax.value_and_grad(functools.partial(run, sharded=True),
                                       argnums=(0, 1, 2)))(*args)
  np.testing.assert_allclose(float(sharded[0]), float(dense[0]), rtol=1e-5)
  for s, d in zip(sharded[1], dense[1]):
    np.testing.assert_allclose(np.asarray(s), np.asarray(d), rtol=1e-4, atol=1e-6)
  want = reference(image, text, tokens, image_ids, 20.0, mode, valid)
  np.testing.assert_allclose(float(dense[0]), want, rtol=1e-5)


def test_text_key_is_equal_exactly_for_equal_token_rows():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 49408, size=(3000, 77))
  tokens[:, 40:] = 0  # padded, as real batches are
  tokens[1] = tokens[0]
  tokens[2] = tokens[0]
  tokens[2, [3, 4]] = tokens[0, [4, 3]]  # the same tokens in another order
  tokens[3] = tokens[0]
  tokens[3, 39] += 1                     # one token changed
  keys = np.asarray(contrastive.text_key(jnp.asarray(tokens)))
  assert keys.dtype == np.uint32 and keys.shape == (3000, 2)
  assert (keys[0] == keys[1]).all()
  assert len({tuple(k) for k in keys}) == 2999  # only rows 0 and 1 share a key


def test_duplicate_metrics_count_pairs_of_valid_rows():
  tokens = np.array([[1, 2], [1, 2], [3, 4], [1, 2], [3, 4], [1, 2]])
  batch = {"text": jnp.asarray(tokens), "summary": jnp.asarray(tokens[:, ::-1]),
           "record_index": jnp.asarray([0, 1, 2, 3, 2, 5]),
           "valid": jnp.asarray([True, True, True, True, True, False])}
  counts = {k: float(v) for k, v in base.duplicate_metrics(batch).items()}
  # Valid copies of [1, 2]: rows 0, 1, 3 -> 3 pairs; of [3, 4]: rows 2, 4 -> 1 pair.
  assert counts == {"duplicate_pairs/text": 4.0, "duplicate_pairs/summary": 4.0,
                    "duplicate_pairs/record_index": 1.0}


def test_an_unknown_policy_is_one_clear_error():
  with pytest.raises(ValueError, match="config.loss.duplicates='merge'"):
    pairwise.PairLoss("softmax", jnp.log(10.0), duplicates="merge")
