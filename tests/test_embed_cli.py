"""`python -m goal_jax.embed` on a tiny image folder and a text file, against direct model.apply."""
import dataclasses

import jax
import numpy as np
import pytest
from PIL import Image

from _cli import run_command
from goal_jax import embed
from goal_jax.data import geometry
from goal_jax.models import checkpoint, clip
from goal_jax.text import tokenizer as text_tokenizer

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  config = clip.get_model_config("tiny/8", context_length=96)
  params = clip.init_params(config, jax.random.key(1))
  path = tmp_path_factory.mktemp("ckpt") / "model"
  checkpoint.save_model(path, params, config)
  return path, params, config


def _apply(params, config, method, x):
  return np.asarray(clip.CLIP(config).apply({"params": params}, x, method=method)["embedding"])


def test_embed_image_folder(ckpt, tmp_path):
  path, params, config = ckpt
  folder = tmp_path / "images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  sizes = {"b.png": (40, 56), "a.jpg": (48, 32), "c.PNG": (33, 33)}
  for name, (h, w) in sizes.items():
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
  (folder / "notes.txt").write_text("not an image")
  out = tmp_path / "emb" / "img.npy"
  assert run_command(embed, f"--checkpoint={path}", f"--images={folder}", f"--out={out}",
                     "--batch_size=8") == 0
  embeddings = np.load(out)
  names = (tmp_path / "emb" / "img_files.txt").read_text().split()
  assert names == ["a.jpg", "b.png", "c.PNG"]
  assert embeddings.shape == (3, config.embed_dim) and embeddings.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
  for row, name in zip(embeddings, names):
    with Image.open(folder / name) as image:
      pixels = np.asarray(geometry.resize_image(image.convert("RGB"), config.image_size,
                                                "center_crop"), np.float64)
    pixels = ((pixels / 255.0 - MEAN) / STD).astype(np.float32)
    expected = _apply(params, config, clip.CLIP.encode_image, pixels[None])[0]
    np.testing.assert_allclose(row, expected, atol=2e-5)


@pytest.mark.parametrize("context", [None, 12])
def test_embed_text_file(ckpt, tmp_path, context):
  path, params, config = ckpt
  texts = ["A red circle on a grey background.", "Two cats sleep on a sofa &amp; a rug.",
           "A very long caption " + "with many words " * 10]
  text_file = tmp_path / "texts.txt"
  text_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
  out = tmp_path / "txt.npy"
  extra = [f"--text_context={context}"] if context else []
  assert run_command(embed, f"--checkpoint={path}", f"--texts={text_file}", f"--out={out}",
                     "--batch_size=8", *extra) == 0
  embeddings = np.load(out)
  assert embeddings.shape == (3, config.embed_dim)
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
  ids = text_tokenizer.get_tokenizer()(texts, context_length=context or config.context_length).ids
  assert (ids[2, -1] == text_tokenizer.EOT_ID) == bool(context)  # the long one is truncated at 12
  expected = _apply(params, config, clip.CLIP.encode_text, ids)
  np.testing.assert_allclose(embeddings, expected, atol=2e-5)


def test_bad_inputs(ckpt, tmp_path, capsys):
  path, _, _ = ckpt
  text_file = tmp_path / "texts.txt"
  text_file.write_text("one\n\nthree\n")

  def refused(*args, code=1):
    capsys.readouterr()
    assert run_command(embed, f"--checkpoint={path}", f"--out={tmp_path / 'x.npy'}", *args) == code
    return capsys.readouterr().err.strip().splitlines()[-1]

  assert refused(f"--texts={text_file}").endswith("texts.txt:2: blank line (one text per line "
                                                  "expected)")
  text_file.write_text("one\n")
  assert refused(f"--texts={text_file}", "--text_context=100") == (
      "error: --text_context must be in [2, 96] (the model's context), got 100")
  (tmp_path / "empty").mkdir()
  assert "holds no image" in refused(f"--images={tmp_path / 'empty'}")
  assert refused(code=2) == "error: give one of --images=FOLDER or --texts=FILE"
  assert refused(f"--texts={text_file}", "--context_length=12", code=2).startswith(
      "error: Unknown command line flag 'context_length'")


def test_compute_dtype_is_the_commands_not_the_checkpoints(ckpt, tmp_path):
  """A model saved as bfloat16 (as training saves it) embeds in float32 unless --dtype says."""
  path, params, config = ckpt
  bf16_path = tmp_path / "bf16"
  checkpoint.save_model(bf16_path, params, dataclasses.replace(config, dtype="bfloat16"))
  folder = tmp_path / "images"
  folder.mkdir()
  rng = np.random.default_rng(1)
  for index in range(3):
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{index}.png")
  text_file = tmp_path / "texts.txt"
  text_file.write_text("A red circle on a grey background.\nTwo cats sleep on a sofa.\n")

  def run(model, source, *extra):
    out = tmp_path / "out.npy"
    assert run_command(embed, f"--checkpoint={model}", source, f"--out={out}", *extra) == 0
    return np.load(out)

  for source in (f"--images={folder}", f"--texts={text_file}"):
    fp32 = run(path, source)
    np.testing.assert_array_equal(run(bf16_path, source), fp32)
    np.testing.assert_array_equal(run(bf16_path, source, "--dtype=float32"), fp32)
    bf16 = run(bf16_path, source, "--dtype=bfloat16")
    np.testing.assert_array_equal(run(path, source, "--dtype=bfloat16"), bf16)
    assert 1e-4 < np.abs(bf16 - fp32).max() < 0.05  # bfloat16 rounding, not another model
  assert run_command(embed, f"--checkpoint={path}", f"--texts={text_file}", "--out=x.npy",
                     "--dtype=int8") == 2
