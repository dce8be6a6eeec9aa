"""The Flax CLIP against HF transformers' CLIPModel, and its compute knobs against each other."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from goal_jax.models import clip
from goal_jax.models import state_dicts
import _torch_refs as refs  # tests/ is on sys.path under pytest.

TINY = dict(vision_width=64, vision_layers=2, vision_heads=4, text_width=32, text_layers=2,
            text_heads=2, embed=32, image=32, patch=8)
B16 = dict(vision_width=768, vision_layers=12, vision_heads=12, text_width=512, text_layers=12,
           text_heads=8, embed=512, image=224, patch=16)


def _hf_reference(model, images, ids):
  """HF outputs in the goal_jax contract's terms (numpy)."""
  with torch.no_grad():
    vision = model.vision_model(pixel_values=refs.to_nchw(images), output_attentions=True)
    image_tokens = vision.last_hidden_state  # Before post_layernorm.
    image_projected = model.visual_projection(model.vision_model.post_layernorm(image_tokens))
    text = model.text_model(input_ids=torch.from_numpy(ids).long(), output_hidden_states=True)
    text_projected = model.text_projection(text.last_hidden_state)  # After final_layer_norm.
    normalize = lambda x: (x / x.norm(dim=-1, keepdim=True)).numpy()
    return dict(
        image_embedding=normalize(model.get_image_features(pixel_values=refs.to_nchw(images))
                                  .pooler_output),
        image_tokens=image_tokens.numpy(), image_projected=image_projected.numpy(),
        attention=vision.attentions[-1].numpy(),
        text_embedding=normalize(model.get_text_features(input_ids=torch.from_numpy(ids).long())
                                 .pooler_output),
        text_tokens=text.hidden_states[-1].numpy(), text_projected=text_projected.numpy())


def _converted(tmp_path, model, **kw):
  model.save_pretrained(tmp_path / "hf", safe_serialization=True)
  return state_dicts.convert(f"hf:{tmp_path / 'hf'}", **kw)


def _assert_matches_hf(params, config, reference, images, ids, atol=1e-4):
  image_out, text_out = _forward(config, params, images, ids)
  attention = _image_attention(config, params, images)["attention"]
  np.testing.assert_allclose(image_out["embedding"], reference["image_embedding"], atol=atol)
  np.testing.assert_allclose(image_out["tokens"], reference["image_tokens"], atol=atol)
  np.testing.assert_allclose(image_out["tokens_projected"], reference["image_projected"], atol=atol)
  np.testing.assert_allclose(attention, reference["attention"], atol=atol)
  np.testing.assert_allclose(text_out["embedding"], reference["text_embedding"], atol=atol)
  np.testing.assert_allclose(text_out["tokens"], reference["text_tokens"], atol=atol)
  np.testing.assert_allclose(text_out["tokens_projected"], reference["text_projected"], atol=atol)
  np.testing.assert_array_equal(text_out["eot_index"], ids.argmax(-1))


@pytest.mark.parametrize("shapes", [
    pytest.param(TINY, id="tiny"),
    pytest.param(B16, id="B16", marks=pytest.mark.slow),
])
def test_matches_hf_clip_model(tmp_path, shapes):
  hf = refs.hf_clip(**shapes)
  hf.set_attn_implementation("eager")  # Needed for attention weights.
  params, config = _converted(tmp_path, hf)
  assert (config.vision_heads, config.text_heads) == (shapes["vision_heads"], shapes["text_heads"])
  images, ids = refs.random_inputs(2, shapes["image"], 77, lengths=[77, 9])
  _assert_matches_hf(params, config, _hf_reference(hf, images, ids), images, ids)
  assert float(params["logit_scale"]) == pytest.approx(3.1)


def test_variants_match_hf_parameter_counts():
  """Every named variant has exactly the parameter count of the HF model with those shapes."""
  import transformers
  for name in ("B/16", "L/14-336"):
    c = clip.get_model_config(name)
    hf_config = transformers.CLIPConfig(
        text_config=dict(hidden_size=c.text_width, intermediate_size=c.text_mlp_dim,
                         num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads),
        vision_config=dict(hidden_size=c.vision_width, intermediate_size=c.vision_mlp_dim,
                           num_hidden_layers=c.vision_layers, num_attention_heads=c.vision_heads,
                           image_size=c.image_size, patch_size=c.patch_size),
        projection_dim=c.embed_dim)
    with torch.device("meta"):
      hf_count = sum(p.numel() for p in transformers.CLIPModel(hf_config).parameters())
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(clip.abstract_params(c)))
    assert ours == hf_count, name


@pytest.fixture(scope="module")
def tiny():
  config = clip.get_model_config("tiny/8")
  params = refs.random_params(clip.abstract_params(config))
  images, ids = refs.random_inputs(3, config.image_size, config.context_length, seed=1)
  return config, params, images, ids


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, images, ids):
  return clip.CLIP(config).apply({"params": params}, images, ids)


@functools.partial(jax.jit, static_argnums=0)
def _image_attention(config, params, images):
  return clip.CLIP(config).apply({"params": params}, images, True, method="encode_image")


def _assert_outputs_close(a, b, atol, rtol=1e-7):
  for got, want in zip(a, b):
    for key in want:
      np.testing.assert_allclose(np.asarray(got[key], np.float32),
                                 np.asarray(want[key], np.float32), atol=atol, rtol=rtol,
                                 err_msg=key)


def test_scan_equals_loop(tiny):
  config, params, images, ids = tiny
  scanned = _forward(dataclasses.replace(config, scan=True),
                     clip.to_param_layout(params, scan=True), images, ids)
  _assert_outputs_close(scanned, _forward(config, params, images, ids), atol=1e-5)
  stacked = clip.to_param_layout(params, True)["text"]["transformer"]["resblocks"]
  assert stacked["attn"]["query"]["kernel"].shape == (2, 32, 2, 16)
  back = clip.to_param_layout(clip.to_param_layout(params, True), False)
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(params))


@functools.partial(jax.jit, static_argnums=0)
@functools.partial(jax.grad, argnums=1)
def _grad(config, params, images, ids):
  image_out, text_out = _forward(config, params, images, ids)
  return jnp.sum(image_out["embedding"] @ text_out["embedding"].T) + jnp.mean(text_out["tokens"])


@pytest.fixture(scope="module")
def tiny_grads(tiny):
  return _grad(*tiny)


@pytest.mark.parametrize("remat,scan", [
    ("full", True), pytest.param("dots", False, marks=pytest.mark.slow)])
def test_remat_keeps_gradients(tiny, tiny_grads, remat, scan):
  config, params, images, ids = tiny
  grads = _grad(dataclasses.replace(config, remat=remat, scan=scan),
                clip.to_param_layout(params, scan), images, ids)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6),
               clip.to_param_layout(grads, False), jax.device_get(tiny_grads))


def test_bfloat16_is_close_to_float32(tiny):
  config, params, images, ids = tiny
  image_out, text_out = _forward(dataclasses.replace(config, dtype="bfloat16"), params, images, ids)
  assert image_out["embedding"].dtype == jnp.float32
  assert image_out["tokens"].dtype == jnp.bfloat16
  for got, want in zip((image_out, text_out), _forward(config, params, images, ids)):
    for key in ("embedding", "tokens", "tokens_projected"):
      error = np.abs(np.asarray(got[key], np.float32) - want[key]).max()
      assert error <= 0.02 * np.abs(want[key]).max(), key


def test_padded_attention_equals_unpadded(tiny):
  """The cuDNN padding path (vision 17 -> 24 with lengths, text 77 -> 80 causal) run with XLA."""
  config, params, images, ids = tiny
  padded = dataclasses.replace(config, attention_pad_multiple=8)
  _assert_outputs_close(_forward(padded, params, images, ids),
                        _forward(config, params, images, ids), atol=1e-5)
  attention = _image_attention(padded, params, images)
  assert attention["attention"].shape == (3, 4, 17, 17)
  np.testing.assert_allclose(attention["attention"].sum(-1), 1.0, atol=1e-5)


def test_heads_and_repeated_calls_follow_the_contract(tiny):
  config, params, images, ids = tiny
  model = clip.CLIP(config)
  image_out, text_out = _forward(config, params, images, ids)

  def several(m, images, ids):  # Losses encode several texts in one apply.
    return (m.image_head(m.encode_image(images)["tokens"][:, 0]),
            m.text_head(m.encode_text(ids[:, :40])["tokens"]), m.encode_text(ids)["embedding"])

  image_pooled, short_tokens, text_embedding = jax.jit(functools.partial(
      model.apply, method=several))({"params": params}, images, ids)
  np.testing.assert_allclose(image_pooled / np.linalg.norm(image_pooled, axis=-1, keepdims=True),
                             image_out["embedding"], atol=1e-6)
  np.testing.assert_allclose(short_tokens, text_out["tokens_projected"][:, :40], atol=1e-5)
  np.testing.assert_allclose(text_embedding, text_out["embedding"], atol=1e-6)


def test_init_params_follow_the_abstract_tree():
  config = clip.get_model_config("tiny/4")
  params = clip.init_params(config, jax.random.key(0))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == jax.tree.map(
      lambda x: (x.shape, x.dtype), clip.abstract_params(config))
  np.testing.assert_allclose(params["logit_scale"], np.log(1 / 0.07), rtol=1e-6)
  np.testing.assert_array_equal(params["visual"]["ln_pre"]["scale"], 1.0)
  assert 0.005 < float(jnp.std(params["text"]["positional_embedding"])) < 0.02  # normal(0.01)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="unknown model variant 'H/14'"):
    clip.get_model_config("H/14")
  config = clip.get_model_config("tiny/8")
  params = clip.abstract_params(config)
  with pytest.raises(ValueError, match="images must be"):
    jax.eval_shape(lambda p: clip.CLIP(config).apply({"params": p}, jnp.zeros((1, 16, 16, 3)),
                                                     method="encode_image"), params)
  with pytest.raises(ValueError, match="attention must be one of"):
    jax.eval_shape(lambda p: _forward(dataclasses.replace(config, attention="flash"), p,
                                      *clip.dummy_inputs(config)), params)


@pytest.mark.gpu
def test_cudnn_attention_matches_xla():
  config = clip.get_model_config("tiny/8", dtype="bfloat16")
  params = clip.init_params(config, jax.random.key(0))
  images, ids = refs.random_inputs(4, config.image_size, config.context_length, seed=2)
  cudnn = _forward(dataclasses.replace(config, attention="cudnn"), params, images, ids)
  # bf16 keeps 8 significant bits, so a different summation order in the fused kernel moves an
  # output by a few steps of the *tensor's* scale, also where the output itself is near zero (on
  # an H200: 0.031 at |2.5|, and 0.021 at 0.014 in a tensor reaching 2.8). Allow two bf16 steps
  # at each tensor's largest magnitude, and a 1 % relative error overall.
  xla = _forward(config, params, images, ids)
  for got, want in zip(cudnn, xla):
    for key in want:
      got_key, want_key = np.asarray(got[key], np.float32), np.asarray(want[key], np.float32)
      step = 2.0**-7 * np.abs(want_key).max()
      np.testing.assert_allclose(got_key, want_key, atol=2 * step, rtol=0, err_msg=key)
      assert np.linalg.norm(got_key - want_key) <= 1e-2 * np.linalg.norm(want_key), key
