"""make_optimizer against a numpy AdamW; groups, freezing, schedules, clipping, MultiSteps."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from goal_jax.training import optimizer as opt_lib

# A toy quadratic: loss = sum_i 0.5 * a_i * (p_i - t_i)^2 over a two-level param tree.
RNG = np.random.default_rng(0)
SHAPES = {"visual": {"proj": (3, 2), "ln": (2,)}, "text": {"embed": (4, 2)}, "logit_scale": ()}
PARAMS = jax.tree.map(lambda s: RNG.normal(size=s).astype(np.float32), SHAPES,
                      is_leaf=lambda x: isinstance(x, tuple))
TARGETS = jax.tree.map(lambda p: RNG.normal(size=p.shape).astype(np.float32), PARAMS)
CURVATURE = jax.tree.map(lambda p: RNG.uniform(0.5, 3.0, size=p.shape).astype(np.float32), PARAMS)


def quadratic_grads(params):
  return jax.tree.map(lambda p, t, a: a * (p - t), params, TARGETS, CURVATURE)


def run(config, steps, params=PARAMS, grads_fn=quadratic_grads, extra=()):
  tx, schedule = opt_lib.make_optimizer(config, params, extra)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(grads_fn(params), state, params)
    return optax.apply_updates(params, updates), state

  params = jax.tree.map(jnp.asarray, params)
  for _ in range(steps):
    params, state = step(params, state)
  return jax.device_get(params), schedule


def numpy_adamw(params, steps, lr_fn, b1, b2, eps, wd):
  """Loshchilov & Hutter AdamW (decoupled decay) on the quadratic, float64 numpy, leaf by leaf."""
  out = {}
  for name, p0 in _flat(params).items():
    p = p0.astype(np.float64)
    target, curvature = _flat(TARGETS)[name], _flat(CURVATURE)[name]
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t in range(1, steps + 1):
      g = curvature * (p - target)
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * g * g
      m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
      p = p - lr_fn(t - 1) * (m_hat / (np.sqrt(v_hat) + eps) + wd * p)
    out[name] = p
  return out


def _flat(tree):
  return {"/".join(str(k.key) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_adamw_matches_numpy_on_quadratic():
  config = dict(lr=0.05, schedule="cosine", total_steps=10, lr_floor=0.005, warmup_steps=2,
                b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1)
  got, schedule = run(config, steps=6)
  lr_fn = lambda t: float(schedule(jnp.asarray(t)))
  want = numpy_adamw(PARAMS, 6, lr_fn, b1=0.8, b2=0.95, eps=1e-6, wd=0.1)
  for name, value in _flat(got).items():
    np.testing.assert_allclose(value, want[name], rtol=2e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(value, _flat(PARAMS)[name])


def test_cosine_schedule_matches_formula():
  peak, floor, total = 3e-4, 1e-5, 50
  schedule = opt_lib.make_schedule("cosine", peak, total_steps=total, lr_floor=floor)
  for t in (0, 1, 17, 25, 49, 50, 80):
    want = floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
    np.testing.assert_allclose(float(schedule(jnp.asarray(t))), want, rtol=1e-6)


def test_warmup_then_cosine():
  schedule = opt_lib.make_schedule("cosine", 1.0, total_steps=14, warmup_steps=4)
  got = [float(schedule(jnp.asarray(t))) for t in range(16)]
  want = [0.25, 0.5, 0.75, 1.0] + [0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)]
  np.testing.assert_allclose(got, want + [0.0, 0.0], atol=1e-7)


def test_constant_schedule_and_bad_configs():
  assert float(opt_lib.make_schedule("constant", 2e-3)(jnp.asarray(7))) == np.float32(2e-3)
  with pytest.raises(ValueError, match="total_steps > warmup_steps"):
    opt_lib.make_schedule("cosine", 1.0)
  with pytest.raises(ValueError, match="unknown schedule 'linear'"):
    opt_lib.make_schedule("linear", 1.0)
  with pytest.raises(ValueError, match=r"unknown fields \['learning_rate'\]"):
    opt_lib.make_optimizer(dict(learning_rate=1.0), PARAMS)
  with pytest.raises(ValueError, match=r"rule \['vision/.\*'\] takes no leaf"):
    opt_lib.make_optimizer(dict(param_groups=[("vision/.*", None)], schedule="constant"), PARAMS)


def test_frozen_groups_do_not_move_and_have_no_state():
  config = dict(lr=0.1, schedule="constant", weight_decay=0.1,
                param_groups=[("visual/.*", None)])
  got, _ = run(config, steps=3)
  for name in ("visual/proj", "visual/ln"):
    np.testing.assert_array_equal(_flat(got)[name], _flat(PARAMS)[name])
  for name in ("text/embed", "logit_scale"):
    assert not np.allclose(_flat(got)[name], _flat(PARAMS)[name])
  assert opt_lib.summarize_groups(PARAMS, config["param_groups"]) == {"frozen": 8, "lr_x1.0": 9}
  tx, _ = opt_lib.make_optimizer(config, PARAMS)
  n_state = sum(x.size for x in jax.tree.leaves(tx.init(PARAMS)))
  n_trainable = 8 + 1  # text/embed and logit_scale: mu and nu each, plus two step counts
  assert n_state == 2 * n_trainable + 2


def test_lr_multiplier_equals_scaled_lr_run():
  # Op by op: compiled, XLA fuses the two differently shaped programs differently (1 ulp apart).
  base = dict(lr=0.01, schedule="cosine", total_steps=8, lr_floor=0.001, weight_decay=0.05)
  with jax.disable_jit():
    grouped, _ = run({**base, "param_groups": [("text/.*", 3.0), (".*logit_scale", None)]},
                     steps=4)
    scaled, _ = run({**base, "lr": 0.01 * 3.0, "lr_floor": 0.001 * 3.0}, steps=4)
    plain, _ = run(base, steps=4)
  g, s, p = _flat(grouped), _flat(scaled), _flat(plain)
  np.testing.assert_array_equal(g["text/embed"], s["text/embed"])
  np.testing.assert_array_equal(g["visual/proj"], p["visual/proj"])
  np.testing.assert_array_equal(g["logit_scale"], _flat(PARAMS)["logit_scale"])


def test_decay_regex_limits_weight_decay():
  # With zero gradients AdamW's update is just -lr * wd * p, and only where decay applies.
  config = dict(lr=0.1, schedule="constant", weight_decay=0.5, decay_regex="visual/.*")
  zero_grads = lambda params: jax.tree.map(jnp.zeros_like, params)
  got, _ = run(config, steps=1, grads_fn=zero_grads)
  for name, p0 in _flat(PARAMS).items():
    want = p0 * (1 - 0.1 * 0.5) if name.startswith("visual/") else p0
    np.testing.assert_allclose(_flat(got)[name], want, rtol=1e-6, err_msg=name)


def test_clipping_uses_trainable_grads_only():
  # eps=1 makes Adam sensitive to gradient scale, so the clip factor shows in the result.
  frozen_huge = lambda params: {**quadratic_grads(params), "logit_scale": jnp.float32(1e6)}
  config = dict(lr=0.1, schedule="constant", eps=1.0, weight_decay=0.0, grad_clip_norm=0.5,
                param_groups=[("logit_scale", None)])
  got, _ = run(config, steps=1, grads_fn=frozen_huge)
  g = {n: v for n, v in _flat(quadratic_grads(PARAMS)).items() if n != "logit_scale"}
  norm = math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in g.values()))
  scale = min(1.0, 0.5 / norm)
  assert scale < 0.5  # the clip is active
  for name, grad in g.items():
    clipped = grad * scale  # one Adam step: m_hat = g, v_hat = g^2
    want = _flat(PARAMS)[name] - 0.1 * clipped / (np.abs(clipped) + 1.0)
    np.testing.assert_allclose(_flat(got)[name], want, rtol=1e-5, err_msg=name)
  assert _flat(got)["logit_scale"] == _flat(PARAMS)["logit_scale"]


def test_multisteps_equals_one_step_on_mean_gradient():
  config = dict(lr=0.02, schedule="constant", weight_decay=0.1, grad_clip_norm=100.0)
  micro = [jax.tree.map(lambda p: RNG.normal(size=p.shape).astype(np.float32), PARAMS)
           for _ in range(4)]
  tx, _ = opt_lib.make_optimizer({**config, "grad_accum_steps": 4}, PARAMS)
  state, params, update = tx.init(PARAMS), PARAMS, jax.jit(tx.update)
  for i, g in enumerate(micro):
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    if i < 3:
      np.testing.assert_array_equal(_flat(params)["text/embed"], _flat(PARAMS)["text/embed"])
  tx1, _ = opt_lib.make_optimizer(config, PARAMS)
  mean = jax.tree.map(lambda *g: sum(g) / 4, *micro)
  updates, _ = jax.jit(tx1.update)(mean, tx1.init(PARAMS), PARAMS)
  want = optax.apply_updates(PARAMS, updates)
  for name, value in _flat(params).items():
    np.testing.assert_allclose(value, _flat(want)[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_extra_transforms_run_last():
  def zero_first_row():  # a stand-in for models.positions.freeze_position_prefix
    def update(updates, state, params=None):
      del params
      updates["text"]["embed"] = updates["text"]["embed"].at[0].set(0.0)
      return updates, state
    return optax.GradientTransformation(lambda p: optax.EmptyState(), update)

  config = dict(lr=0.1, schedule="constant", grad_accum_steps=2)
  got, _ = run(config, steps=4, extra=[zero_first_row()])
  np.testing.assert_array_equal(_flat(got)["text/embed"][0], _flat(PARAMS)["text/embed"][0])
  assert not np.allclose(_flat(got)["text/embed"][1:], _flat(PARAMS)["text/embed"][1:])
