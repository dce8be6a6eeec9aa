"""SigLIP towers against transformers' `SiglipModel`, and weights in and out (HF, big_vision)."""
import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece
import torch
import transformers

import _spm
from goal_jax.models import siglip, siglip_weights


def _hf_model(image_size=20, patch_size=4, vocab=97, context=12, seed=0):
  torch.manual_seed(seed)
  config = transformers.SiglipConfig(
      vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, image_size=image_size, patch_size=patch_size),
      text_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                       num_attention_heads=3, vocab_size=vocab, max_position_embeddings=context,
                       projection_size=32))
  model = transformers.SiglipModel(config).eval()
  with torch.no_grad():  # random, not the init's constants: every tensor must be mapped right
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
    model.logit_scale.fill_(2.3)
    model.logit_bias.fill_(-4.0)
  return model


def _inputs(model, batch=3, seed=1):
  rng = np.random.default_rng(seed)
  v, t = model.config.vision_config, model.config.text_config
  images = rng.normal(size=(batch, v.image_size, v.image_size, 3)).astype(np.float32)
  ids = rng.integers(0, t.vocab_size, size=(batch, t.max_position_embeddings)).astype(np.int32)
  return images, ids


def _assert_embeds_like_hf(hf, config, params, images, ids):
  """Our towers' unit embeddings against `hf`'s within 1e-4; returns ours and its output."""
  image_out, text_out = siglip.SigLIP(config).apply({"params": params}, images, ids)
  with torch.no_grad():
    want = hf(pixel_values=torch.tensor(images).permute(0, 3, 1, 2),
              input_ids=torch.tensor(ids, dtype=torch.long))
  np.testing.assert_allclose(image_out["embedding"], _unit(want.image_embeds), atol=1e-4)
  np.testing.assert_allclose(text_out["embedding"], _unit(want.text_embeds), atol=1e-4)
  return image_out, text_out, want


def _ours(model, **overrides):
  config = siglip_weights.config_from_hf(model.config.to_dict(), **overrides)
  params = siglip_weights.from_hf_state_dict(model.state_dict(), config)
  return config, params


@pytest.mark.parametrize("image_size, pad_multiple", [(16, None), (20, None), (20, 8)])
def test_matches_transformers(image_size, pad_multiple):
  """Embeddings and pairwise logits (bias included) within 1e-4 at fp32; 20 px gives 25 patch
  tokens, which the cuDNN path pads to 32 (`attention_pad_multiple=8`, masked keys)."""
  hf = _hf_model(image_size=image_size)
  config, params = _ours(hf, attention_pad_multiple=pad_multiple)
  images, ids = _inputs(hf)
  image_out, text_out, want = _assert_embeds_like_hf(hf, config, params, images, ids)
  logits = siglip.SigLIP(config).apply(
      {"params": params}, image_out["embedding"], text_out["embedding"],
      method=siglip.SigLIP.logits)
  np.testing.assert_allclose(logits, want.logits_per_image, atol=1e-4)
  # The contract's other outputs: tokens before the final LayerNorm, the pooled position.
  with torch.no_grad():
    hidden = hf.vision_model(pixel_values=torch.tensor(images).permute(0, 3, 1, 2),
                             output_hidden_states=True).hidden_states[-1]
  np.testing.assert_allclose(image_out["tokens"], hidden, atol=1e-4)
  assert (text_out["eot_index"] == ids.shape[1] - 1).all()


def test_heads_of_a_region_and_of_one_token():
  """The pooling head over all tokens is the image embedding; over one token it is the closed
  form out(value(LN(x))) + MLP residual, also what `tokens_projected` holds."""
  hf = _hf_model()
  config, params = _ours(hf)
  images, _ = _inputs(hf)
  model = siglip.SigLIP(config)
  out = model.apply({"params": params}, images, method=siglip.SigLIP.encode_image)
  everything = jnp.ones(out["tokens"].shape[:2], bool)
  np.testing.assert_allclose(
      model.apply({"params": params}, out["tokens"], everything,
                  method=siglip.SigLIP.pool_region), out["embedding"], atol=1e-5)
  one = jnp.zeros_like(everything).at[:, 7].set(True)
  region = model.apply({"params": params}, out["tokens"], one, method=siglip.SigLIP.pool_region)
  projected = out["tokens_projected"][:, 7]
  np.testing.assert_allclose(region, projected / jnp.linalg.norm(projected, axis=-1,
                                                                 keepdims=True), atol=1e-5)
  # By hand, in torch: LayerNorm, value and out projections, then the head's MLP residual.
  head = hf.vision_model.head
  with torch.no_grad():
    x = hf.vision_model.post_layernorm(torch.tensor(np.asarray(out["tokens"][:, 7])))
    w_v = head.attention.in_proj_weight[64:]
    b_v = head.attention.in_proj_bias[64:]
    y = head.attention.out_proj(x @ w_v.T + b_v)
    y = y + head.mlp(head.layernorm(y))
  np.testing.assert_allclose(projected, y, atol=1e-4)


def test_hf_state_dict_round_trip_and_strictness():
  hf = _hf_model()
  config, params = _ours(hf)
  back = siglip_weights.to_hf_state_dict(params, config)
  want = {k: v.numpy() for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
  assert set(back) == set(want)
  for key, value in want.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  state = dict(hf.state_dict())
  state.pop("text_model.head.bias")
  with pytest.raises(siglip_weights.WeightsError, match="missing text_model.head.bias"):
    siglip_weights.from_hf_state_dict(state, config)
  state = dict(hf.state_dict(), extra_tensor=torch.zeros(1))
  with pytest.raises(siglip_weights.WeightsError, match="extra_tensor"):
    siglip_weights.from_hf_state_dict(state, config)
  wrong = dataclasses.replace(config, text_mlp_dim=44)
  with pytest.raises(siglip_weights.WeightsError, match="shape"):
    siglip_weights.from_hf_state_dict(hf.state_dict(), wrong)


def test_big_vision_npz_round_trip(tmp_path):
  """big_vision's `two_towers` layout (`params/img/...`, `t` and `b` of shape (1,)) in and out,
  exactly, through a real `.npz` file."""
  config = siglip.get_model_config("siglip-tiny/4")
  params = jax.device_get(siglip.init_params(config, jax.random.key(3)))
  tree = siglip_weights.to_big_vision(params)
  assert tree["params/t"].shape == (1,) and "params/img/MAPHead_0/probe" in tree
  assert "params/txt/Encoder_0/encoder_norm/scale" in tree
  np.savez(tmp_path / "siglip.npz", **tree)
  loaded = dict(np.load(tmp_path / "siglip.npz"))
  back = siglip_weights.from_big_vision(loaded, config)
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(params))
  again = siglip_weights.to_big_vision(back)
  assert set(again) == set(tree)
  for key in tree:
    np.testing.assert_array_equal(again[key], tree[key])
  loaded["params/txt/extra"] = np.zeros(2)
  with pytest.raises(siglip_weights.WeightsError, match="txt/extra"):
    siglip_weights.from_big_vision(loaded, config)


def test_published_variants():
  """Widths and depths of the published towers (big_vision's `vit.py`/`two_towers.py`)."""
  b16 = siglip.get_model_config("siglip2-B/16-256")
  assert (b16.vision_width, b16.vision_layers, b16.vision_heads, b16.vision_mlp_dim,
          b16.grid_size, b16.vocab_size, b16.context_length) == (768, 12, 12, 3072, 16, 256000,
                                                                  64)
  so = siglip.get_model_config("siglip-So400m/14-384")
  assert (so.vision_width, so.vision_layers, so.vision_mlp_dim, so.grid_size) == (1152, 27, 4304,
                                                                                  27)
  assert siglip.get_model_config("siglip-So400m/14-224").context_length == 16
  assert siglip.variant_of(b16) == "siglip2-B/16-256"
  assert len(siglip.VARIANTS) == 2 + 4 + 2 + 2 + 4 + 3 + 2 + 3  # tiny and the demo's


# --- long text, checkpoints and the convert command -----------------------------------------

def test_long_text_stretch_of_a_big_vision_table():
  """SigLIP's [1, 64, D] table to 196 rows as Long-CLIP: rows < 20 kept, then 4 target rows per
  source row, E'[20 + 4i + k] = (1 - k/4) E[20 + i] + (k/4) E[21 + i], the last 4 extrapolated."""
  from goal_jax.models import positions  # pylint: disable=g-import-not-at-top
  table = np.random.default_rng(0).normal(size=(1, 64, 3)).astype(np.float32)
  params = {"txt": {"pos_embedding": table, "Embed_0": {"embedding": np.zeros(2)}}}
  out = positions.stretch_text_positions(params, positions.SIGLIP_LONG_CONTEXT)["txt"]
  stretched = out["pos_embedding"]
  assert stretched.shape == (1, 196, 3) and out["Embed_0"] is params["txt"]["Embed_0"]
  e = table[0].astype(np.float64)
  want = [e[j] for j in range(20)]
  for i in range(43):
    want += [(1 - k / 4) * e[20 + i] + (k / 4) * e[21 + i] for k in range(4)]
  want += [e[63] + (k / 4) * (e[63] - e[62]) for k in range(4)]  # past the end: extrapolated
  np.testing.assert_allclose(stretched[0], np.array(want), rtol=1e-6, atol=1e-6)


def test_frozen_prefix_on_a_big_vision_table():
  from goal_jax.models import positions  # pylint: disable=g-import-not-at-top
  updates = {"txt": {"pos_embedding": jnp.ones((1, 8, 2))}, "img": {"x": jnp.ones(3)}}
  frozen, _ = positions.freeze_position_prefix(keep=3).update(updates, None)
  np.testing.assert_array_equal(frozen["txt"]["pos_embedding"][0, :3], 0)
  np.testing.assert_array_equal(frozen["txt"]["pos_embedding"][0, 3:], 1)
  np.testing.assert_array_equal(frozen["img"]["x"], 1)


def _unit(features) -> np.ndarray:
  """transformers' features (a tensor, or an output holding `pooler_output`) as unit rows."""
  x = getattr(features, "pooler_output", features)
  return (x / x.norm(dim=-1, keepdim=True)).numpy()


def _embed_image_files(tmp_path, checkpoint, shape, *, count, seed):
  """`count` random image files of `shape` embedded by the `embed` command: (rows, images)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from _cli import run_command  # pylint: disable=g-import-not-at-top
  from goal_jax import embed  # pylint: disable=g-import-not-at-top
  photos = tmp_path / "photos"
  photos.mkdir()
  rng = np.random.default_rng(seed)
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, (*shape, 3), np.uint8)).save(photos / f"{i}.png")
  assert run_command(embed, f"--checkpoint={checkpoint}", f"--images={photos}",
                     f"--out={tmp_path / 'img.npy'}") == 0
  return np.load(tmp_path / "img.npy"), [Image.open(photos / f"{i}.png") for i in range(count)]


def _hf_folder(tmp_path, **kwargs):
  hf = _hf_model(**kwargs)
  folder = tmp_path / "siglip_hf"
  hf.save_pretrained(folder)
  return hf, folder


def test_convert_command_reads_a_siglip_folder(tmp_path):
  """`python -m goal_jax.convert` on a SiglipModel folder: a model checkpoint that loads back
  as SigLIP (`model_config.json` names the family) and embeds as transformers does."""
  from _cli import run_command  # pylint: disable=g-import-not-at-top
  from goal_jax import convert  # pylint: disable=g-import-not-at-top
  from goal_jax.models import checkpoint  # pylint: disable=g-import-not-at-top
  hf, folder = _hf_folder(tmp_path, context=24)
  out = tmp_path / "ckpt"
  assert run_command(convert, f"--source={folder}", f"--out={out}") == 0
  params, config = checkpoint.load_model(str(out))
  assert isinstance(config, siglip.SigLIPConfig) and config.context_length == 24
  _assert_embeds_like_hf(hf, config, params, *_inputs(hf))
  # Stretched on the way in: 24 -> 36 keeps rows < 20, then 4 rows per source row.
  long_out = tmp_path / "ckpt_long"
  assert run_command(convert, f"--source={folder}", f"--out={long_out}",
                     "--text_context=36") == 0
  long_params, long_config = checkpoint.load_model(str(long_out))
  assert long_config.context_length == 36
  e, stretched = params["txt"]["pos_embedding"][0], long_params["txt"]["pos_embedding"][0]
  np.testing.assert_array_equal(stretched[:20], e[:20])
  np.testing.assert_allclose(stretched[20 + 4 * 1 + 3], 0.25 * e[21] + 0.75 * e[22], atol=1e-6)


def test_convert_command_reads_a_big_vision_npz(tmp_path):
  """An `.npz` carries no config: the architecture comes from its shapes, the image size from
  the published variant with that grid (So400m/14 at 384 px is a 27 x 27 grid)."""
  from _cli import run_command  # pylint: disable=g-import-not-at-top
  from goal_jax import convert  # pylint: disable=g-import-not-at-top
  from goal_jax.models import checkpoint  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(siglip.get_model_config("siglip-tiny/4"), vision_heads=4,
                               text_heads=4)
  params = jax.device_get(siglip.init_params(config, jax.random.key(5)))
  np.savez(tmp_path / "tiny.npz", **siglip_weights.to_big_vision(params))
  out = tmp_path / "ckpt"
  assert run_command(convert, f"--source={tmp_path / 'tiny.npz'}", f"--out={out}") == 0
  loaded, loaded_config = checkpoint.load_model(str(out))
  assert loaded_config == config
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), params)
  so400m = siglip.get_model_config("siglip-So400m/14-384")
  shapes = flax.traverse_util.flatten_dict(siglip.abstract_params(so400m), sep="/")
  assert siglip_weights.config_from_big_vision(shapes) == so400m
  assert run_command(convert, f"--source={tmp_path / 'missing.npz'}",
                     f"--out={tmp_path / 'x'}") == 1


def test_convert_then_embed_as_a_user(tmp_path):
  """A SiglipModel folder with its SentencePiece model -> `convert` -> `embed` of texts and of
  image files: the rows equal transformers' on the same ids and on SiglipImageProcessor's
  pixels (bicubic resize, [-1, 1])."""
  from _cli import run_command  # pylint: disable=g-import-not-at-top
  from goal_jax import convert, embed  # pylint: disable=g-import-not-at-top
  from goal_jax.text import sentencepiece_tokenizer  # pylint: disable=g-import-not-at-top
  texts = ["a red circle beside a blue square", "Café façade at dusk — naïve art",
           "two dogs run on the beach"]
  model = _spm.train(texts * 30, 36)
  hf, folder = _hf_folder(tmp_path, vocab=36, context=16)
  (folder / "spiece.model").write_bytes(model)
  out = tmp_path / "ckpt"
  assert run_command(convert, f"--source={folder}", f"--out={out}") == 0
  assert (out / "spiece.model").read_bytes() == model

  (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
  assert run_command(embed, f"--checkpoint={out}", f"--texts={tmp_path / 'texts.txt'}",
                     f"--out={tmp_path / 'txt.npy'}") == 0
  ids = sentencepiece_tokenizer.SentencePieceTokenizer(model)(texts, 16).ids
  with torch.no_grad():
    features = hf.get_text_features(input_ids=torch.tensor(ids, dtype=torch.long))
  np.testing.assert_allclose(np.load(tmp_path / "txt.npy"), _unit(features), atol=1e-4)

  rows, photos = _embed_image_files(tmp_path, out, (37, 53), count=3, seed=0)
  processor = transformers.SiglipImageProcessor(size={"height": 20, "width": 20})
  pixels = processor(photos, return_tensors="pt").pixel_values
  with torch.no_grad():
    features = hf.get_image_features(pixel_values=pixels)
  np.testing.assert_allclose(rows, _unit(features), atol=1e-5)


def test_export_loads_in_transformers_and_embeds_as_embed(tmp_path):
  """`export_hf` of a converted SigLIP: `AutoProcessor` and `SiglipModel.from_pretrained` load
  it, and on lowercase text without punctuation (what SiglipTokenizer keeps) and on images its
  embeddings equal `embed`'s within 1e-5 at fp32; the positions at the stretched length."""
  from _cli import run_command  # pylint: disable=g-import-not-at-top
  from goal_jax import convert, embed, export_hf  # pylint: disable=g-import-not-at-top
  texts = ["a red circle beside a blue square", "two dogs run on the beach at dusk"]
  model = _spm.train(texts * 30, 30)
  _, folder = _hf_folder(tmp_path, vocab=30, context=24)
  (folder / "spiece.model").write_bytes(model)
  ckpt, out = tmp_path / "ckpt", tmp_path / "export"
  assert run_command(convert, f"--source={folder}", f"--out={ckpt}", "--text_context=32") == 0
  assert run_command(export_hf, f"--checkpoint={ckpt}", f"--out={out}") == 0
  processor = transformers.AutoProcessor.from_pretrained(out)
  exported = transformers.SiglipModel.from_pretrained(out).eval()
  assert exported.config.text_config.max_position_embeddings == 32

  (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
  assert run_command(embed, f"--checkpoint={ckpt}", f"--texts={tmp_path / 'texts.txt'}",
                     f"--out={tmp_path / 'txt.npy'}") == 0
  tokens = processor(text=texts, padding="max_length", max_length=32, return_tensors="pt")
  with torch.no_grad():
    features = exported.get_text_features(input_ids=tokens.input_ids)
  np.testing.assert_allclose(np.load(tmp_path / "txt.npy"), _unit(features), atol=1e-5)

  rows, photos = _embed_image_files(tmp_path, ckpt, (41, 29), count=2, seed=1)
  pixels = processor(images=photos, return_tensors="pt").pixel_values
  with torch.no_grad():
    features = exported.get_image_features(pixel_values=pixels)
  np.testing.assert_allclose(rows, _unit(features), atol=1e-5)


def test_tokenizer_kept_with_its_lowercasing(tmp_path):
  """A folder whose tokenizer_config.json is SiglipTokenizer's lowercases (as transformers
  does); an `.npz` takes the one `.model` file beside it, lowercasing unless told not to."""
  from _cli import run_command  # pylint: disable=g-import-not-at-top
  from goal_jax import convert  # pylint: disable=g-import-not-at-top
  from goal_jax.models import families  # pylint: disable=g-import-not-at-top
  spm = _spm.train(["a red circle", "A Blue Square", "two dogs"] * 30, 23)
  _, folder = _hf_folder(tmp_path, vocab=23, context=16)
  (folder / "spiece.model").write_bytes(spm)
  (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "SiglipTokenizer"}')
  assert run_command(convert, f"--source={folder}", f"--out={tmp_path / 'a'}") == 0
  config = siglip_weights.config_from_hf(transformers.AutoConfig.from_pretrained(
      folder).to_dict())
  tok = families.of(config).tokenizer(str(tmp_path / "a"))
  assert tok.lowercase and tok.encode("A Blue Square") == tok.encode("a blue square")
  assert run_command(convert, f"--source={folder}", f"--out={tmp_path / 'b'}",
                     "--nolowercase") == 0
  assert not families.of(config).tokenizer(str(tmp_path / "b")).lowercase

  npz_dir = tmp_path / "npz"
  npz_dir.mkdir()
  tiny = siglip.get_model_config("siglip-tiny/4")
  np.savez(npz_dir / "tiny.npz", **siglip_weights.to_big_vision(
      jax.device_get(siglip.init_params(tiny, jax.random.key(0)))))
  (npz_dir / "c4_en.model").write_bytes(spm)
  assert run_command(convert, f"--source={npz_dir / 'tiny.npz'}", f"--out={tmp_path / 'c'}") == 0
  assert (tmp_path / "c" / "spiece.model").read_bytes() == spm
  assert families.of(tiny).tokenizer(str(tmp_path / "c")).lowercase
  no_tokenizer = tmp_path / "npz_alone"
  no_tokenizer.mkdir()
  (no_tokenizer / "tiny.npz").write_bytes((npz_dir / "tiny.npz").read_bytes())
  assert run_command(convert, f"--source={no_tokenizer / 'tiny.npz'}",
                     f"--out={tmp_path / 'd'}") == 0
  with pytest.raises(FileNotFoundError, match="--tokenizer"):
    families.of(tiny).tokenizer(str(tmp_path / "d"))


def test_a_folder_with_only_tokenizer_json(tmp_path):
  """`convert` keeps a folder's tokenizer.json when it has no .model; `embed` then tokenises with
  it (ids from the `tokenizers` library) and equals SiglipModel on those ids."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from _cli import run_command  # pylint: disable=g-import-not-at-top
  from goal_jax import convert, embed  # pylint: disable=g-import-not-at-top
  from goal_jax.text import sentencepiece_tokenizer  # pylint: disable=g-import-not-at-top
  texts = ["a red circle beside a blue square", "two dogs run on the beach"]
  spm = _spm.train(texts * 30, 26)
  library = sentencepiece.SentencePieceProcessor(model_proto=spm)
  json_tok = tokenizers.Tokenizer(tokenizers.models.Unigram(
      [(library.id_to_piece(i), library.get_score(i)) for i in range(26)], unk_id=2))
  json_tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
  hf, folder = _hf_folder(tmp_path, vocab=26, context=16)
  (folder / "tokenizer.json").write_text(json_tok.to_str(), encoding="utf-8")
  out = tmp_path / "ckpt"
  assert run_command(convert, f"--source={folder}", f"--out={out}") == 0
  assert (out / "tokenizer.json").is_file() and not (out / "spiece.model").exists()
  (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
  assert run_command(embed, f"--checkpoint={out}", f"--texts={tmp_path / 'texts.txt'}",
                     f"--out={tmp_path / 'txt.npy'}") == 0
  ids = sentencepiece_tokenizer.from_checkpoint(str(out))(texts, 16).ids
  want = json_tok.encode(texts[0]).ids[:15]  # the library's ids, EOS last
  assert ids[0, :len(want)].tolist() == want and ids[0, -1] == 1
  with torch.no_grad():
    features = hf.get_text_features(input_ids=torch.tensor(ids, dtype=torch.long))
  features = getattr(features, "pooler_output", features)
  np.testing.assert_allclose(np.load(tmp_path / "txt.npy"),
                             (features / features.norm(dim=-1, keepdim=True)).numpy(), atol=1e-5)
