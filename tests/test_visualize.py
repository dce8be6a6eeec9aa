"""Visualisation maths against independent references, and the PNGs the command writes."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from _cli import run_command
from goal_jax import visualize
from goal_jax.evaluation import attention_maps
from goal_jax.losses import mulclip
from goal_jax.models import checkpoint, clip, families


def test_goal_attention_map_matches_loops():
  rng = np.random.default_rng(0)
  heads, grid = 3, 4
  tokens = 1 + grid * grid
  attention = rng.random((heads, tokens, tokens))
  attention /= attention.sum(-1, keepdims=True)
  expected = np.zeros(grid * grid)
  for key in range(1, tokens):  # mean over heads and non-CLS queries of attention to `key`
    total = sum(attention[h, q, key] for h in range(heads) for q in range(1, tokens))
    expected[key - 1] = total / (heads * (tokens - 1))
  got = attention_maps.goal_attention_map(attention)
  np.testing.assert_allclose(got, expected.reshape(grid, grid), rtol=1e-12)
  # Row-major grid: patch (row r, column c) is token 1 + r * grid + c.
  attention[:, 1:, 1 + 2 * grid + 3] += 10.0
  assert np.unravel_index(np.argmax(attention_maps.goal_attention_map(attention)),
                          (grid, grid)) == (2, 3)
  with pytest.raises(ValueError, match="square grid"):
    attention_maps.goal_attention_map(np.ones((2, 5 + 1, 6)))


@pytest.mark.parametrize("size", [(32, 48), (7, 5), (4, 4)])
def test_bicubic_resize_matches_torch(size):
  torch = pytest.importorskip("torch")
  values = np.random.default_rng(1).random((4, 4))
  expected = torch.nn.functional.interpolate(
      torch.from_numpy(values)[None, None], size=size, mode="bicubic",
      align_corners=False)[0, 0].numpy()
  np.testing.assert_allclose(attention_maps.bicubic_resize(values, size), expected, atol=1e-12)


def test_overlay_and_min_max():
  image = np.full((2, 3, 3), 100, np.uint8)
  heat = np.full((2, 3, 3), 201, np.uint8)
  np.testing.assert_array_equal(attention_maps.overlay(image, heat), np.full((2, 3, 3), 150))
  np.testing.assert_allclose(attention_maps.min_max(np.array([2.0, 4.0, 3.0])), [0, 1, 0.5])
  np.testing.assert_array_equal(attention_maps.min_max(np.ones(3)), np.zeros(3))
  jet = attention_maps.heat_image(np.array([[0.0, 1.0]]))
  assert jet[0, 0, 2] > 100 and jet[0, 0, 0] == 0  # jet: blue at 0, red at 1
  assert jet[0, 1, 0] > 100 and jet[0, 1, 2] == 0


def test_sentence_weights_are_what_sap_aggregates():
  rng = np.random.default_rng(2)
  sentences, patches = rng.normal(size=(3, 8)), rng.normal(size=(16, 8))
  weights = attention_maps.sentence_patch_weights(sentences, patches, temperature=0.1)
  np.testing.assert_allclose(weights.sum(-1), 1.0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  aggregate = mulclip.aggregate_patches(jnp.asarray(unit(sentences))[None],
                                        jnp.asarray(unit(patches))[None], temperature=0.1)[0]
  np.testing.assert_allclose(unit(weights @ unit(patches)), np.asarray(aggregate), atol=1e-5)


def test_model_view_box():
  assert attention_maps.model_view_box((300, 451), 32, "squash") == (0, 0, 451, 300)
  # 451 x 300 -> 48 x 32 (width truncated), window x in [8, 40) of 48 -> [75.2, 375.8) of 451.
  assert attention_maps.model_view_box((300, 451), 32, "center_crop") == (75, 0, 376, 300)
  assert attention_maps.model_view_box((100, 40), 32, "center_crop") == (0, 30, 40, 70)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  config = clip.get_model_config("tiny/8", context_length=96)
  params = clip.init_params(config, jax.random.key(2))
  path = tmp_path_factory.mktemp("ckpt") / "model"
  checkpoint.save_model(path, params, config)
  image_path = tmp_path_factory.mktemp("img") / "photo.png"
  gradient = np.linspace(0, 255, 50 * 70 * 3).reshape(50, 70, 3).astype(np.uint8)
  Image.fromarray(gradient).save(image_path)
  return path, params, config, image_path


def test_attention_png_has_the_image_size_and_overlays(ckpt, tmp_path):
  """`--geometry=squash`: the whole image; the default is the family's (CLIP: the centre square,
  as `evaluate` and `embed` show it images)."""
  path, params, config, image_path = ckpt
  out, heat_out = tmp_path / "attn.png", tmp_path / "heat.png"
  assert run_command(visualize, "attention", f"--checkpoint={path}", f"--image={image_path}",
                     f"--out={out}", f"--heatmap_out={heat_out}", "--geometry=squash") == 0
  image = np.asarray(Image.open(image_path).convert("RGB"))
  overlaid, heat = np.asarray(Image.open(out)), np.asarray(Image.open(heat_out))
  assert overlaid.shape == heat.shape == image.shape == (50, 70, 3)
  expected = np.round(0.5 * image.astype(float) + 0.5 * heat.astype(float))
  np.testing.assert_allclose(overlaid, expected, atol=1)
  # The heat map is the model's attention map through the documented steps.
  out_model = visualize.encode_image(params, config, Image.open(image_path).convert("RGB"),
                                     "squash")
  assert out_model["attention"].shape == (config.vision_heads, 17, 17)
  grid_map = attention_maps.goal_attention_map(out_model["attention"])
  expected_heat = attention_maps.heat_image(
      attention_maps.min_max(attention_maps.bicubic_resize(grid_map, (50, 70))))
  np.testing.assert_array_equal(heat, expected_heat)
  cropped = tmp_path / "crop.png"
  assert run_command(visualize, "attention", f"--checkpoint={path}", f"--image={image_path}",
                     f"--out={cropped}") == 0
  assert Image.open(cropped).size == (50, 50)  # CLIP's own geometry: the centre square
  assert visualize.geometry_of(config, None) == "center_crop" == families.of(config).geometry


def test_encode_image_attention_is_the_last_blocks(ckpt):
  _, params, config, image_path = ckpt
  out = visualize.encode_image(params, config, Image.open(image_path).convert("RGB"), "squash")
  weights = out["attention"]
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  # Recompute the last block's attention by hand from the tokens entering it (the output of a
  # tower one block shorter, on the same params).
  pixels = visualize.images_lib.model_image(Image.open(image_path).convert("RGB"),
                                          config.image_size, "squash")[None]
  layers = config.vision_layers
  shorter = clip.CLIP(dataclasses.replace(config, vision_layers=layers - 1))
  x = np.asarray(shorter.apply({"params": params}, pixels, method=clip.CLIP.encode_image)["tokens"],
                 np.float64)
  block = params["visual"]["transformer"][f"resblocks_{layers - 1}"]
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  y = (x - mean) / np.sqrt(var + config.layer_norm_eps) * block["ln_1"]["scale"] + \
      block["ln_1"]["bias"]
  project = lambda name: (np.einsum("btd,dhk->bthk", y, block["attn"][name]["kernel"])
                          + block["attn"][name]["bias"])
  q, k = project("query"), project("key")
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(weights, expected[0], atol=1e-5)


def test_sentence_pngs(ckpt, tmp_path):
  path, _, _, image_path = ckpt
  out = tmp_path / "sent.png"
  assert run_command(visualize, "sentences", f"--checkpoint={path}", f"--image={image_path}",
                     f"--out={out}", "--caption=A bright gradient fills the frame. The left side "
                     "is dark. The right side is light.") == 0
  for index in range(3):
    assert Image.open(tmp_path / f"sent_s{index}.png").size == (50, 50)  # CLIP: centre square
  assert not (tmp_path / "sent_s3.png").exists()
  grid = Image.open(out)
  assert grid.format == "PNG" and grid.size[0] > grid.size[1]  # 3 panels in one row


def test_sentence_weights_of_the_model(ckpt):
  _, params, config, image_path = ckpt
  image = Image.open(image_path).convert("RGB")
  sentences = ["A dark corner.", "A light corner."]
  weights, overlays = visualize.sentence_overlays(params, config, image, sentences,
                                                  temperature=0.05)
  assert weights.shape == (2, 4, 4) and len(overlays) == 2
  np.testing.assert_allclose(weights.sum((1, 2)), 1.0)
  model = clip.CLIP(config)
  from goal_jax.text import tokenizer  # pylint: disable=g-import-not-at-top
  ids = tokenizer.get_tokenizer()(sentences, context_length=config.context_length).ids
  text = np.asarray(model.apply({"params": params}, ids, method=clip.CLIP.encode_text)["embedding"])
  patches = visualize.encode_image(params, config, image)["tokens_projected"][1:]
  cos = (text / np.linalg.norm(text, axis=1, keepdims=True)) @ (
      patches / np.linalg.norm(patches, axis=1, keepdims=True)).T
  expected = np.exp(cos / 0.05) / np.exp(cos / 0.05).sum(1, keepdims=True)
  np.testing.assert_allclose(weights.reshape(2, -1), expected, atol=1e-5)


def test_training_curves_png(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step in range(1, 41):
      record = {"step": step, "loss": 4.0 / step, "lr": 1e-5 * min(1, step / 5)}
      if step % 10 == 0:
        record["eval/Synthetic/t2i_R@1"] = float(step)
      f.write(json.dumps(record) + "\n")
  out = tmp_path / "curves.png"
  assert run_command(visualize, "curves", f"--workdir={tmp_path}", f"--out={out}") == 0
  image = Image.open(out)
  assert image.format == "PNG" and image.size == (1350, 300)  # 3 panels of 4.5 x 3 in at 100 dpi
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert visualize.curve_keys(records) == ["loss", "lr", "eval/Synthetic/t2i_R@1"]
  assert visualize.plot_curves(records, str(tmp_path / "eval.png"), "^eval/") == [
      "eval/Synthetic/t2i_R@1"]
  with pytest.raises(ValueError, match="no metric to plot"):
    visualize.plot_curves(records, str(tmp_path / "none.png"), "nothing")


def test_plots_leave_the_matplotlib_backend_and_pyplot_alone(tmp_path, monkeypatch):
  """A notebook's inline backend survives: nothing switches the backend or opens pyplot figures."""
  import sys  # pylint: disable=g-import-not-at-top
  import matplotlib  # pylint: disable=g-import-not-at-top

  def no_switch(*args, **kwargs):
    raise AssertionError(f"matplotlib.use{args} called")

  backend = matplotlib.rcParams["backend"]
  pyplot = sys.modules.get("matplotlib.pyplot")
  figures = pyplot.get_fignums() if pyplot else []
  monkeypatch.setattr(matplotlib, "use", no_switch)
  records = [{"step": s, "loss": 1.0 / s} for s in range(1, 5)]
  visualize.plot_curves(records, str(tmp_path / "curves.png"))
  panel = np.zeros((50, 70, 3), np.uint8)
  visualize.save_grid([panel, panel], ["a", "b"], str(tmp_path / "grid.png"))
  assert matplotlib.rcParams["backend"] == backend
  if pyplot:
    assert pyplot.get_fignums() == figures
  # 4.5 x 3 in at 100 dpi; 2 panels of 4 x (4 * 50/70 + 0.8) in (Agg truncates to pixels).
  assert Image.open(tmp_path / "curves.png").size == (450, 300)
  assert Image.open(tmp_path / "grid.png").size == (800, int(100 * (4 * 50 / 70 + 0.8)))


def test_compute_dtype_is_the_commands_not_the_checkpoints(ckpt, tmp_path):
  """A model saved as bfloat16 draws the float32 model's maps unless --dtype=bfloat16."""
  path, params, config, image_path = ckpt
  bf16_path = tmp_path / "bf16"
  checkpoint.save_model(bf16_path, params, dataclasses.replace(config, dtype="bfloat16"))

  def heat(model, *extra):
    out, heat_out = tmp_path / "attn.png", tmp_path / "heat.png"
    assert run_command(visualize, "attention", f"--checkpoint={model}", f"--image={image_path}",
                       f"--out={out}", f"--heatmap_out={heat_out}", *extra) == 0
    return np.asarray(Image.open(heat_out), np.int32)

  fp32 = heat(path)
  np.testing.assert_array_equal(heat(bf16_path), fp32)
  bf16 = heat(bf16_path, "--dtype=bfloat16")
  np.testing.assert_array_equal(heat(path, "--dtype=bfloat16"), bf16)
  assert np.abs(bf16 - fp32).max() > 0, "bfloat16 gave the float32 maps"
  sentences = ["sentences", f"--checkpoint={bf16_path}", f"--image={image_path}",
               f"--out={tmp_path / 's.png'}", "--caption=A gradient.", "--dtype=bfloat16"]
  assert run_command(visualize, *sentences[:-1], "--dtype=int8") == 2


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "error: give one command, attention | sentences | curves, then --flags; got []"),
    (["curves", "--out=c.png", "--workdir=w", "--checkpoint=c"], 2,
     "error: curves takes no --checkpoint"),
    (["curves", "--out=c.png"], 2, "error: curves needs one of --workdir or --metrics"),
    (["attention", "--checkpoint=c", "--out=a.png"], 2,
     "error: attention needs --image (--help lists the flags)"),
    (["sentences", "--checkpoint=CKPT", "--image=IMAGE", "--out=s.png"], 2,
     "error: sentences needs one of --caption or --caption_file"),
    (["attention", "--checkpoint=CKPT", "--image=absent.png", "--out=a.png"], 1,
     "error: [Errno 2] No such file or directory: 'absent.png'"),
])
def test_verbs_check_their_flags(ckpt, capsys, args, code, message):
  path, _, _, image_path = ckpt
  args = [a.replace("CKPT", str(path)).replace("IMAGE", str(image_path)) for a in args]
  capsys.readouterr()
  assert run_command(visualize, *args) == code
  assert capsys.readouterr().err.strip().splitlines()[-1] == message


@pytest.fixture(scope="module")
def siglip_ckpt(tmp_path_factory):
  """A tiny SigLIP saved with its SentencePiece model, as `convert` keeps one."""
  from goal_jax.models import siglip  # pylint: disable=g-import-not-at-top
  from goal_jax.text import sentencepiece_tokenizer  # pylint: disable=g-import-not-at-top
  texts = ["A dark corner of the frame.", "A light corner.", "The gradient fills the frame."]
  tokenizer = sentencepiece_tokenizer.SentencePieceTokenizer(
      sentencepiece_tokenizer.train_model(texts * 10, 60))
  config = siglip.get_model_config("siglip-tiny/4", vocab_size=tokenizer.vocab_size)
  params = jax.device_get(siglip.init_params(config, jax.random.key(3)))
  path = tmp_path_factory.mktemp("siglip") / "model"
  checkpoint.save_model(path, params, config, extra_files=tokenizer.checkpoint_files())
  image_path = tmp_path_factory.mktemp("img") / "photo.png"
  gradient = np.linspace(0, 255, 40 * 60 * 3).reshape(40, 60, 3).astype(np.uint8)
  Image.fromarray(gradient).save(image_path)
  return path, params, config, image_path


def test_siglip_attention_is_its_pooling_heads(siglip_ckpt, tmp_path):
  """SigLIP has no class token: the map is the attention-pooling head's probe over the patches,
  recomputed here from the head's params; the explicit weights give the fused path's embedding."""
  from goal_jax.models import siglip  # pylint: disable=g-import-not-at-top
  path, params, config, image_path = siglip_ckpt
  image = Image.open(image_path).convert("RGB")
  out = visualize.encode_image(params, config, image)
  weights = out["pool_attention"]
  assert weights.shape == (config.vision_heads, config.grid_size ** 2)
  pixels = np.asarray(image.resize((config.image_size,) * 2, Image.BICUBIC), np.float32)
  fused = siglip.SigLIP(config).apply({"params": params}, (pixels / 127.5 - 1.0)[None],
                                      method=siglip.SigLIP.encode_image)
  np.testing.assert_allclose(out["embedding"], fused["embedding"][0], atol=1e-4)
  head = params["img"]["MAPHead_0"]
  tokens = np.asarray(fused["tokens"][0], np.float64)
  norm = params["img"]["Transformer"]["encoder_norm"]
  mean, var = tokens.mean(-1, keepdims=True), tokens.var(-1, keepdims=True)
  x = (tokens - mean) / np.sqrt(var + config.layer_norm_eps) * norm["scale"] + norm["bias"]
  attention = head["MultiHeadDotProductAttention_0"]
  q = np.einsum("d,dhk->hk", head["probe"][0, 0], attention["query"]["kernel"]) + \
      attention["query"]["bias"]
  k = np.einsum("td,dhk->thk", x, attention["key"]["kernel"]) + attention["key"]["bias"]
  logits = np.einsum("hk,thk->ht", q, k) / np.sqrt(q.shape[-1])
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(weights, expected / expected.sum(-1, keepdims=True), atol=2e-4)
  out_png = tmp_path / "attn.png"
  assert run_command(visualize, "attention", f"--checkpoint={path}", f"--image={image_path}",
                     f"--out={out_png}") == 0
  assert Image.open(out_png).size == (60, 40)
  sentences_png = tmp_path / "sent.png"
  assert run_command(visualize, "sentences", f"--checkpoint={path}", f"--image={image_path}",
                     f"--out={sentences_png}", "--caption=A dark corner. A light corner.") == 0
  assert Image.open(tmp_path / "sent_s1.png").size == (60, 40)
