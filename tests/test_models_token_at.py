"""`clip.token_at`: the EOT token without a gather, so no training step scatters into tokens."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from goal_jax import methods
from goal_jax.bench import steps
from goal_jax.models import clip
from goal_jax.training import loop


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_token_at_equals_the_gather_to_the_bit_and_so_do_its_gradients(dtype):
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.normal(size=(5, 9, 7)), dtype)
  tokens = tokens.at[1, 2].set(jnp.inf).at[2, 0].set(jnp.nan)  # other rows' tokens stay out
  index = jnp.asarray([0, 8, 3, 3, 5])
  gather = lambda t: jnp.take_along_axis(t, index[:, None, None], axis=1)[:, 0]
  np.testing.assert_array_equal(clip.token_at(tokens, index), gather(tokens))
  np.testing.assert_array_equal(clip.token_at(tokens, index), tokens[jnp.arange(5), index])
  weights = jnp.asarray(rng.normal(size=7), dtype)
  grad = lambda pick: jax.grad(lambda t: (pick(t) * weights).astype(jnp.float32).sum())(tokens)
  np.testing.assert_array_equal(grad(lambda t: clip.token_at(t, index)), grad(gather))


def test_the_text_tower_pools_the_same_either_way():
  c = clip.get_model_config("tiny/8")
  params = clip.init_params(c, jax.random.key(0))
  ids = np.zeros((3, c.context_length), np.int32)
  ids[:, 0] = 49406
  for row, end in enumerate((5, 1, 76)):
    ids[row, 1:end] = np.arange(1, end) + 100
    ids[row, end] = 49407  # EOT: the largest id
  out = {pool: clip.CLIP(dataclasses.replace(c, eot_pooling=pool)).apply(
      {"params": params}, ids, method=clip.CLIP.encode_text) for pool in ("mask", "gather")}
  np.testing.assert_array_equal(out["mask"]["embedding"], out["gather"]["embedding"])
  np.testing.assert_array_equal(out["mask"]["eot_index"], [5, 1, 76])
  with pytest.raises(ValueError, match="eot_pooling must be 'mask' or 'gather'"):
    dataclasses.replace(c, eot_pooling="first")


def _scatter_operands(jaxpr, found):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name.startswith("scatter"):
      found.append(tuple(eqn.invars[0].aval.shape))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax_core.ClosedJaxpr):
          _scatter_operands(sub.jaxpr, found)
        elif isinstance(sub, jax_core.Jaxpr):
          _scatter_operands(sub, found)
  return found


def _token_scatters(method, eot_pooling):
  """Shapes of what the step's gradient scatters into that are text tokens `[..., T, D]`."""
  config = steps.method_config(method, "tiny/8", 8, attention="xla", dtype="float32")
  c = dataclasses.replace(loop.model_config_from(config, None), eot_pooling=eot_pooling)
  step = steps.make_train_step(method, config, c, 8, extra_steps=1, materialise=False)
  with jax.set_mesh(step.mesh):
    jaxpr = jax.make_jaxpr(lambda p, b: jax.grad(lambda p: step.training.loss_fn(p, b)[0])(p))(
        step.training.abstract_state["params"], step.abstract_batch())
  return [s for s in _scatter_operands(jaxpr.jaxpr, [])
          if len(s) >= 3 and s[-1] == c.text_width and s[-2] in (77, c.context_length)]


@pytest.mark.parametrize("method", sorted(methods.REGISTRY))
def test_no_training_step_scatters_into_text_tokens(method):
  """The EOT gather's gradient was such a scatter (0.2 ms of transposes around it in the H200
  trace); the token embedding's scatter into the vocabulary table is another matter."""
  assert _token_scatters(method, "mask") == []
  if method == "global":  # the check can fail: the gather's gradient is such a scatter
    assert _token_scatters(method, "gather") == [(8, 248, 32)]
