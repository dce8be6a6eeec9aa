"""Long-CLIP stretching against its formula written out by hand; the frozen-prefix transform."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from goal_jax.models import positions


def _table(rows=77, width=6, seed=0):
  return np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32)


def test_stretch_to_248_is_longclip_formula_at_every_row():
  table = _table()
  want = np.zeros((248, table.shape[1]), np.float64)
  e = table.astype(np.float64)
  for i in range(20):
    want[i] = e[i]
  for i in range(56):
    for k in range(4):
      want[20 + 4 * i + k] = (1 - k / 4) * e[20 + i] + (k / 4) * e[21 + i]
  for k in range(4):
    want[244 + k] = e[76] + k * (e[76] - e[75]) / 4
  got = positions.stretch_positions(table, 248)
  assert got.shape == (248, 6) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_stretch_generalises_linearly():
  # A table linear in the row index must come out as the same line at the source positions.
  rows = np.arange(77, dtype=np.float64)[:, None]
  table = np.concatenate([2.0 * rows + 1.0, -0.5 * rows], axis=1)
  got = positions.stretch_positions(table, 132)
  # keep 20, then 57 source steps over 112 target steps; row 131 lands at 20 + 111 * 57/112.
  p = np.where(np.arange(132) < 20, np.arange(132), 20 + (np.arange(132) - 20) * 57 / 112)
  np.testing.assert_allclose(got, np.stack([2.0 * p + 1.0, -0.5 * p], axis=1), atol=1e-12)
  # Hand value: row 21 sits at 20 + 57/112 between E[20] and E[21].
  table = _table()
  w = 57 / 112
  np.testing.assert_allclose(positions.stretch_positions(table, 132)[21],
                             (1 - w) * table[20] + w * table[21], atol=1e-6)
  np.testing.assert_array_equal(positions.stretch_positions(table, 77), table)
  with pytest.raises(ValueError, match="cannot stretch 77 positions to 10"):
    positions.stretch_positions(table, 10)


def test_stretch_text_positions_touches_only_the_text_table():
  params = {"text": {"positional_embedding": _table(), "ln_final": {"scale": np.ones(6)}},
            "visual": {"positional_embedding": _table(seed=3)}}
  stretched = positions.stretch_text_positions(params, 248)
  np.testing.assert_array_equal(stretched["text"]["positional_embedding"],
                                positions.stretch_positions(_table(), 248))
  assert stretched["visual"] is params["visual"]
  assert stretched["text"]["ln_final"] is params["text"]["ln_final"]
  assert params["text"]["positional_embedding"].shape == (77, 6)  # the input is left as it was


def test_merge_longclip_positions():
  table, residual = _table(seed=1), _table(seed=2)
  merged = positions.merge_longclip_positions(table, residual)
  np.testing.assert_array_equal(merged[:20], table[:20])
  np.testing.assert_array_equal(merged[20:], residual[20:])
  with pytest.raises(ValueError, match="differ in shape"):
    positions.merge_longclip_positions(table, residual[:50])


def _adamw_step(tx, params):
  grads = {"text": {"positional_embedding": jnp.ones((248, 4)), "ln_final": jnp.ones((4,))},
           "logit_scale": jnp.ones(())}
  updates, _ = tx.update(grads, tx.init(params), params)
  return optax.apply_updates(params, updates)


def test_frozen_prefix_never_moves_under_adamw_weight_decay():
  params = {"params": {"text": {"positional_embedding": jnp.asarray(_table(248, 4)),
                                "ln_final": jnp.ones((4,))}, "logit_scale": jnp.ones(())}}
  adamw = optax.adamw(1e-2, weight_decay=0.5)
  frozen = optax.chain(adamw, positions.freeze_position_prefix(keep=20))
  inner = params["params"]
  new = _adamw_step(frozen, inner)
  table, new_table = inner["text"]["positional_embedding"], new["text"]["positional_embedding"]
  np.testing.assert_array_equal(new_table[:20], table[:20])
  assert np.all(new_table[20:] != table[20:])
  assert np.all(new["text"]["ln_final"] != inner["text"]["ln_final"])
  # Without the transform the same step moves the prefix (so the check above can fail).
  assert np.all(_adamw_step(adamw, inner)["text"]["positional_embedding"][:20] != table[:20])
  # A 'params' root and a missing table.
  nested = frozen.update({"params": inner}, frozen.init(params), params)[0]
  np.testing.assert_array_equal(nested["params"]["text"]["positional_embedding"][:20], 0.0)
  freeze = positions.freeze_position_prefix()
  with pytest.raises(ValueError, match="text/positional_embedding"):
    freeze.update({"x": jnp.ones(3)}, freeze.init({"x": jnp.ones(3)}))
