"""The compute knobs of the towers' embeddings (`towers.PatchEmbedding`, `towers.embed_tokens`):
other forms of the same function, against the forms they replace."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goal_jax import sharding
from goal_jax.models import families
from goal_jax.models import towers


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("size", [32, 35])  # 35: a remainder the VALID convolution drops
def test_patch_embedding_as_a_matrix_product_equals_the_convolution(use_bias, size):
  images = jax.random.normal(jax.random.PRNGKey(1), (3, size, size, 3))
  make = lambda as_matmul: towers.PatchEmbedding(  # noqa: E731
      16, (8, 8), strides=(8, 8), padding="VALID", use_bias=use_bias, as_matmul=as_matmul)
  conv_params = nn.Conv(16, (8, 8), strides=(8, 8), padding="VALID",
                        use_bias=use_bias).init(jax.random.PRNGKey(0), images)
  for as_matmul in (False, True):
    params = make(as_matmul).init(jax.random.PRNGKey(0), images)
    # nn.Conv's params, names, shapes and random init, so checkpoints are unchanged.
    assert jax.tree.structure(params) == jax.tree.structure(conv_params)
    assert all(np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(conv_params)))
  if use_bias:  # a bias the init leaves at zero would not show its use
    conv_params = jax.tree.map(lambda x: x + 0.5 if x.ndim == 1 else x, conv_params)
  reference = nn.Conv(16, (8, 8), strides=(8, 8), padding="VALID",
                      use_bias=use_bias).apply(conv_params, images)
  assert reference.shape == (3, size // 8, size // 8, 16)
  np.testing.assert_array_equal(make(False).apply(conv_params, images), reference)
  np.testing.assert_allclose(make(True).apply(conv_params, images), reference,
                             rtol=1e-5, atol=1e-5)


def _table_grads(ids, cotangent, form):
  vocab, width = 11, cotangent.shape[-1]
  embed = nn.Embed(vocab, width)
  config = families.get_variant("tiny/8", token_embedding_grad=form)
  table = {"params": {"embedding": jnp.arange(vocab * width, dtype=jnp.float32)
                      .reshape(vocab, width)}}
  lookup = lambda t: embed.apply(t, ids, config, method=towers.embed_tokens)  # noqa: E731
  rows, vjp = jax.vjp(lookup, table)
  return rows, vjp(cotangent)[0]["params"]["embedding"]


@pytest.mark.parametrize("ids", [
    [[3, 5, 0, 0, 0], [4, 0, 0, 0, 0], [3, 3, 7, 0, 0]],  # padded with 0, which is no real token
    [[3, 0, 5, 0, 0], [4, 0, 0, 0, 0], [0, 3, 7, 0, 0]],  # the padding id is also a real token
    [[3, 5, 9, 2, 1], [4, 6, 8, 10, 1], [3, 3, 7, 7, 1]],  # no row padded: EOS 1 is split
    [[3, 5, 1, 1, 1], [4, 6, 8, 10, 1], [3, 1, 1, 1, 1]],  # SigLIP's sticky EOS as padding
])
def test_the_split_table_gradient_equals_the_scatter_add(ids):
  ids = jnp.asarray(ids, jnp.int32)
  # Integers, so that every order of summation gives the same floats: equal to the bit.
  cotangent = jax.random.randint(jax.random.PRNGKey(0), (*ids.shape, 4), -50, 50).astype(
      jnp.float32)
  rows, split = _table_grads(ids, cotangent, "split")
  reference_rows, scatter = _table_grads(ids, cotangent, "scatter")
  np.testing.assert_array_equal(rows, reference_rows)
  np.testing.assert_array_equal(split, scatter)
  # And against a hand-made sum, row by row.
  expected = np.zeros_like(scatter)
  np.add.at(expected, np.asarray(ids).reshape(-1), np.asarray(cotangent).reshape(-1, 4))
  np.testing.assert_array_equal(split, expected)


@pytest.mark.parametrize("variant", ["tiny/8", "siglip-tiny/4"])
def test_a_model_with_both_knobs_computes_the_same_loss_and_gradients(variant):
  """The whole model, both towers: the GPU forms against the forms used elsewhere."""
  configs = [families.get_variant(variant, patch_embedding=p, token_embedding_grad=g)
             for p, g in (("conv", "scatter"), ("matmul", "split"))]
  family = families.of(configs[0])
  params = family.init_params(configs[0], jax.random.PRNGKey(0))
  assert jax.tree.structure(params) == jax.tree.structure(
      family.init_params(configs[1], jax.random.PRNGKey(0)))
  c = configs[0]
  images = jax.random.normal(jax.random.PRNGKey(1), (3, c.image_size, c.image_size, 3))
  ids = np.array(jax.random.randint(jax.random.PRNGKey(2), (3, 12), 2, 60))
  ids[:, 7:] = 0
  ids[0, 6] = c.vocab_size - 1

  def loss_and_grads(config):
    model = family.model_class(config)

    def loss(p):
      image = model.apply({"params": p}, images, method="encode_image")
      text = model.apply({"params": p}, jnp.asarray(ids), method="encode_text")
      return jnp.sum(image["embedding"] @ text["embedding"].T) + jnp.mean(text["tokens"] ** 2)
    return jax.value_and_grad(loss)(params)

  (loss_a, grads_a), (loss_b, grads_b) = map(loss_and_grads, configs)
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(a))) + 1e-7)


def test_unknown_knob_values_are_refused():
  with pytest.raises(ValueError, match="patch_embedding must be one of"):
    families.get_variant("tiny/8", patch_embedding="fft")
  with pytest.raises(ValueError, match="token_embedding_grad must be one of"):
    families.get_variant("siglip-tiny/4", token_embedding_grad="atomic")


def test_the_split_gradient_of_a_batch_sharded_over_four_devices():
  """As the trainer runs it: ids and gradients split over the batch axis of a mesh (the split
  id is then a global minimum), the table replicated; equal to the scatter-add to the bit."""
  mesh = sharding.make_mesh((("data", 4),))
  rows = sharding.batch_sharding(mesh)
  ids = np.zeros((8, 6), np.int32)
  ids[:, :3] = np.arange(24).reshape(8, 3) % 7 + 2
  ids[5] = [3, 4, 5, 6, 7, 8]  # one full row
  cotangent = jax.random.randint(jax.random.PRNGKey(3), (8, 6, 4), -50, 50).astype(jnp.float32)
  ids, cotangent = jax.device_put(ids, rows), jax.device_put(cotangent, rows)
  grads = {form: jax.jit(lambda i, g, form=form: _table_grads(i, g, form)[1])(ids, cotangent)
           for form in ("split", "scatter")}
  np.testing.assert_array_equal(grads["split"], grads["scatter"])
  assert float(jnp.abs(grads["split"][0]).sum()) > 0  # the padding row got its sum
