"""Mesh, FSDP rules, sharded init and global batches on 4 fake CPU devices, against a
replicated run."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from goal_jax import sharding as sh


class ToyTwoTower(nn.Module):
  """Two small towers and a learnable temperature: the shapes, not the maths, of a CLIP."""

  @nn.compact
  def __call__(self, x):
    a = nn.Dense(16, name="image")(x)
    b = nn.Dense(16, name="text")(nn.gelu(nn.Dense(6, name="text_hidden")(x)))
    scale = self.param("logit_scale", nn.initializers.constant(2.0), ())
    logits = jnp.exp(scale) * a @ b.T
    labels = jnp.arange(x.shape[0])
    ce = optax.softmax_cross_entropy_with_integer_labels
    return (ce(logits, labels).mean() + ce(logits.T, labels).mean()) / 2


MODEL = ToyTwoTower()
TX = optax.adamw(1e-2)
FSDP = [(".*text_hidden/kernel", 'fsdp(axis="data", min_size_mb=0)'),
        (".*(image|text)/kernel", "fsdp(min_size_mb=0)"), (".*", "replicate")]


def init_state(rng):
  params = MODEL.init(rng, jnp.zeros((8, 8)))["params"]
  return {"params": params, "opt_state": TX.init(params), "step": jnp.zeros((), jnp.int32)}


def train_step(state, x):
  loss, grads = jax.value_and_grad(lambda p: MODEL.apply({"params": p}, x))(state["params"])
  updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, loss


def run(strategy, steps=3):
  mesh = sh.make_mesh([("data", -1)])
  init, abstract = sh.sharded_init(init_state, jax.random.key(0), mesh=mesh, strategy=strategy)
  state, shardings = init(), sh.shardings_of(abstract)
  step = jax.jit(train_step, donate_argnums=(0,), out_shardings=(shardings, None))
  x = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
  losses = []
  with jax.set_mesh(mesh):
    for _ in range(steps):
      state, loss = step(state, sh.make_global_batch(x, mesh))
      losses.append(float(loss))
  return state, shardings, losses


def test_make_mesh_shapes_and_axis_types():
  mesh = sh.make_mesh()
  assert dict(mesh.shape) == {"data": 4} and mesh.axis_types == (AxisType.Auto,)
  mesh = sh.make_mesh([("data", -1), ("model", 2)])
  assert dict(mesh.shape) == {"data": 2, "model": 2}
  assert sh.make_mesh([("data", 2)], devices=jax.devices()[:2]).devices.size == 2
  with pytest.raises(ValueError, match="not divisible by 3"):
    sh.make_mesh([("data", -1), ("model", 3)])
  with pytest.raises(ValueError, match="needs 2 devices, have 4"):
    sh.make_mesh([("data", 2)])
  with pytest.raises(ValueError, match="at most one axis"):
    sh.make_mesh([("data", -1), ("model", -1)])


def test_fsdp_rule_picks_largest_divisible_dim():
  mesh = sh.make_mesh([("data", -1)])
  abstract = {
      "big": jax.ShapeDtypeStruct((6, 1024, 512), jnp.float32),   # 12 MiB: shard dim 1
      "tie": jax.ShapeDtypeStruct((2048, 2048), jnp.float32),     # 16 MiB: first of equals
      "odd": jax.ShapeDtypeStruct((1023, 1025), jnp.float32),     # 4 MiB, nothing divisible by 4
      "small": jax.ShapeDtypeStruct((256, 256), jnp.float32),     # 0.25 MiB < 4 MiB
      "scalar": jax.ShapeDtypeStruct((), jnp.float32),
      "rng": jax.eval_shape(lambda: jax.random.key(0)),
  }
  got = sh.infer_sharding(abstract, mesh, [(".*", "fsdp")])
  want = {"big": P(None, "data", None), "tie": P("data", None), "odd": P(), "small": P(),
          "scalar": P(), "rng": P()}
  assert {k: v.spec for k, v in got.items()} == want
  two_axes = sh.make_mesh([("data", 2), ("model", 2)])
  got = sh.infer_sharding(abstract, two_axes, [("big", 'fsdp(axis=("data", "model"))')])
  assert got["big"].spec == P(None, ("data", "model"), None) and got["tie"].spec == P()


def test_bad_rules_are_named():
  mesh = sh.make_mesh()
  tree = {"w": jax.ShapeDtypeStruct((8,), jnp.float32)}
  with pytest.raises(ValueError, match="'shard_all'.*unknown rule"):
    sh.infer_sharding(tree, mesh, [(".*", "shard_all")])
  with pytest.raises(ValueError, match="'fsdp\\(1\\)'"):
    sh.infer_sharding(tree, mesh, [(".*", "fsdp(1)")])
  with pytest.raises(ValueError, match="takes no leaf"):
    sh.infer_sharding(tree, mesh, [("visual/.*", "fsdp")])


def test_fsdp_matches_replicated_training():
  fsdp_state, fsdp_shardings, fsdp_losses = run(FSDP)
  repl_state, _, repl_losses = run(sh.DEFAULT_STRATEGY)
  params = fsdp_state["params"]
  assert params["text_hidden"]["kernel"].shape == (8, 6)
  assert params["text_hidden"]["kernel"].sharding.spec == P("data", None)  # 6 is indivisible
  assert params["image"]["kernel"].sharding.spec == P(None, "data")  # (8, 16): the larger
  assert params["image"]["bias"].sharding.spec == P()
  mu = fsdp_state["opt_state"][0].mu
  assert mu["image"]["kernel"].sharding.spec == P(None, "data")
  assert fsdp_shardings["params"]["text"]["kernel"].spec == P(None, "data")  # (6, 16)
  assert all(x.sharding.spec == P() for x in jax.tree.leaves(repl_state))
  np.testing.assert_allclose(fsdp_losses, repl_losses, rtol=1e-6)
  assert fsdp_losses[-1] < fsdp_losses[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(fsdp_state), jax.device_get(repl_state))


def test_make_global_batch_splits_rows_and_names_a_bad_field():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
  batch = {"image": np.arange(8 * 3, dtype=np.float32).reshape(8, 3),
           "record_index": np.arange(8, dtype=np.int32)}
  out = sh.make_global_batch(batch, mesh)
  for name, x in out.items():
    assert x.sharding == jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    assert len(x.addressable_shards) == 4 and x.addressable_shards[1].data.shape[0] == 2
    np.testing.assert_array_equal(np.asarray(x), batch[name])
  with pytest.raises(ValueError, match="batch\\['text'\\] has shape \\(6, 2\\)"):
    sh.make_global_batch({"text": np.zeros((6, 2))}, mesh)
