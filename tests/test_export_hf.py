"""export_hf: checkpoint -> HF CLIPModel dir that transformers loads with the same outputs."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from PIL import Image

import _torch_refs as refs  # tests/ is on sys.path under pytest.
from _cli import run_command
from goal_jax import embed
from goal_jax import export_hf
from goal_jax.data import images as images_lib
from goal_jax.models import checkpoint
from goal_jax.models import clip
from goal_jax.models import state_dicts


def test_export_loads_in_transformers_with_same_embeddings(tmp_path):
  """A trained-like checkpoint: random params, 248-token context, scan layout."""
  from transformers import CLIPModel, CLIPTokenizer
  config = clip.get_model_config("tiny/8", context_length=248, scan=True)
  params = refs.random_params(clip.abstract_params(config), seed=7)
  checkpoint.save_model(tmp_path / "ckpt", params, config)
  assert run_command(export_hf, f"--checkpoint={tmp_path / 'ckpt'}",
                     f"--out={tmp_path / 'hf'}") == 0

  hf = CLIPModel.from_pretrained(tmp_path / "hf").eval()
  assert hf.config.text_config.max_position_embeddings == 248
  assert hf.config.text_config.hidden_act == "quick_gelu"
  images, ids = refs.random_inputs(2, 32, 248, seed=6, lengths=[248, 30])
  image_out, text_out = jax.jit(clip.CLIP(config).apply)({"params": params}, images, ids)
  with torch.no_grad():
    out = hf(pixel_values=refs.to_nchw(images), input_ids=torch.from_numpy(ids).long())
  np.testing.assert_allclose(image_out["embedding"], out.image_embeds.numpy(), atol=1e-5)
  np.testing.assert_allclose(text_out["embedding"], out.text_embeds.numpy(), atol=1e-5)
  np.testing.assert_allclose(hf.logit_scale.item(), params["logit_scale"], rtol=1e-6)

  tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "hf")
  assert tokenizer.model_max_length == 248
  assert tokenizer("a photo of a cat")["input_ids"][0] == 49406


def test_convert_export_convert_is_identity(tmp_path):
  hf_dir = tmp_path / "hf_in"
  refs.hf_clip(vision_heads=4, text_heads=2, seed=3).save_pretrained(hf_dir)
  params, config = state_dicts.convert(f"hf:{hf_dir}")
  checkpoint.save_model(tmp_path / "ckpt", params, config)
  export_hf.export(str(tmp_path / "ckpt"), str(tmp_path / "hf_out"), with_tokenizer=False)
  again, again_config = state_dicts.convert(f"hf:{tmp_path / 'hf_out'}")
  assert again_config == config
  jax.tree.map(np.testing.assert_array_equal, again, params)
  written = json.loads((tmp_path / "hf_out" / "config.json").read_text())
  assert written["projection_dim"] == config.embed_dim
  assert written["vision_config"]["num_attention_heads"] == 4


# Odd sizes on both sides of square, so the resized long edge truncates (301x517 at 224 is
# 224x384.6 -> 384) and the crop offset rounds down (odd leftover): both follow the same rule.
ODD_SIZES = [(301, 517), (517, 301), (40, 56), (33, 33), (225, 226), (1000, 333)]


def _photo(h, w, seed):
  """A smooth random-phase picture (like a photo, unlike noise) of h x w pixels."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w]
  phase = rng.uniform(0, 6.3, (3, 1, 1))
  pixels = 127.5 + 120 * np.sin(x / rng.uniform(5, 40) + phase) * np.cos(y / rng.uniform(5, 40))
  return Image.fromarray(pixels.transpose(1, 2, 0).astype(np.uint8))  # [3, h, w] -> [h, w, 3]


def _pil_image_processor(directory):
  from transformers import AutoImageProcessor
  return AutoImageProcessor.from_pretrained(directory, backend="pil")


@pytest.mark.parametrize("geometry_name", export_hf.GEOMETRIES)
def test_image_processor_makes_the_pipelines_pixels(tmp_path, geometry_name):
  """HF's CLIPImageProcessor (PIL backend) from our preprocessor_config = goal_jax's model input."""
  config = clip.get_model_config("B/16")
  (tmp_path / "preprocessor_config.json").write_text(
      json.dumps(export_hf.preprocessor_config(config, geometry_name)))
  processor = _pil_image_processor(tmp_path)
  for seed, (h, w) in enumerate(ODD_SIZES):
    image = _photo(h, w, seed)
    want = images_lib.model_image(image, 224, geometry_name)
    got = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    assert got.shape == want.shape == (224, 224, 3)
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{h}x{w}")
  np.testing.assert_array_equal(np.float32(export_hf.OPENAI_CLIP_MEAN), images_lib.MEAN_RGB)
  np.testing.assert_array_equal(np.float32(export_hf.OPENAI_CLIP_STD), images_lib.STD_RGB)


def test_clip_processor_and_model_reproduce_goal_jax_embed(tmp_path):
  """The HF user's path: CLIPProcessor + CLIPModel on the export = `goal_jax.embed` at fp32.

  The checkpoint says bfloat16 (as a trained model's does): `embed` still computes in float32.
  Resized size and crop offset agree on every size; the resampling agrees with the processor's
  PIL backend (named here: with torchvision installed transformers defaults to a torch bicubic
  resize that rounds some pixels 1-2 levels off PIL's, ~1e-3 in the embeddings).
  """
  from transformers import AutoProcessor, CLIPModel, CLIPProcessor
  config = clip.get_model_config("tiny/8", context_length=96, dtype="bfloat16")
  params = refs.random_params(clip.abstract_params(config), seed=11)
  checkpoint.save_model(tmp_path / "ckpt", params, config)
  assert run_command(export_hf, f"--checkpoint={tmp_path / 'ckpt'}",
                     f"--out={tmp_path / 'hf'}") == 0
  assert (tmp_path / "hf" / "preprocessor_config.json").is_file()
  folder = tmp_path / "images"
  folder.mkdir()
  sizes = [(301, 517), (517, 301), (40, 56), (33, 33)]
  for index, (h, w) in enumerate(sizes):
    _photo(h, w, index).save(folder / f"{index}.png")
  texts = ["A red circle on a grey background.", "Two cats sleep on a sofa, next to a rug.",
           "a photo of a dog"]
  (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
  assert run_command(embed, f"--checkpoint={tmp_path / 'ckpt'}", f"--images={folder}",
                     f"--out={tmp_path / 'img.npy'}") == 0
  assert run_command(embed, f"--checkpoint={tmp_path / 'ckpt'}",
                     f"--texts={tmp_path / 'texts.txt'}", f"--out={tmp_path / 'txt.npy'}") == 0

  for loaded in (CLIPProcessor.from_pretrained(tmp_path / "hf"),
                 AutoProcessor.from_pretrained(tmp_path / "hf")):  # what HF users reach for
    assert loaded.image_processor.crop_size["height"] == config.image_size
    assert loaded.tokenizer.model_max_length == 96
  processor = CLIPProcessor.from_pretrained(tmp_path / "hf", backend="pil")
  model = CLIPModel.from_pretrained(tmp_path / "hf").eval()
  images = [Image.open(folder / f"{i}.png") for i in range(len(sizes))]
  inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
  with torch.no_grad():
    out = model(**inputs)
  np.testing.assert_allclose(out.image_embeds.numpy(), np.load(tmp_path / "img.npy"), atol=1e-5)
  np.testing.assert_allclose(out.text_embeds.numpy(), np.load(tmp_path / "txt.npy"), atol=1e-5)


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                        text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)


def test_existing_output_needs_overwrite_and_is_replaced(tmp_path, capsys):
  config = clip.get_model_config("tiny/8")
  checkpoint.save_model(tmp_path / "ckpt", refs.random_params(clip.abstract_params(config)),
                        config)
  out = tmp_path / "hf"
  out.mkdir()
  (out / "vocab.json").write_text("an older export's tokenizer file")
  export = lambda ckpt, dest, *args: run_command(
      export_hf, f"--checkpoint={ckpt}", f"--out={dest}", *args)
  last_error = lambda: capsys.readouterr().err.strip().splitlines()[-1]
  # Refused before any work: the checkpoint is not even read (here it does not exist).
  assert export(tmp_path / "absent", out) == 1
  assert last_error() == f"error: output {out} is not empty; pass --overwrite to replace it"
  assert export(tmp_path / "ckpt", out, "--overwrite", "--no_tokenizer") == 0
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors",
                                     "preprocessor_config.json"]
  assert not os.path.exists(f"{out}.tmp") and not os.path.exists(f"{out}.old")
  assert f"wrote {out / 'preprocessor_config.json'}" in capsys.readouterr().out
  assert export(tmp_path / "ckpt", tmp_path / "ckpt", "--overwrite") == 1
  assert re.match("error: the output .* is the source", last_error())
  assert export(tmp_path / "absent", tmp_path / "new") == 1
  assert re.match("error: .*absent is not a model checkpoint", last_error())


def test_overwrite_refuses_a_folder_with_files_an_export_does_not_write(tmp_path, capsys):
  """`--overwrite` replaces an earlier export only: a model card, say, is never deleted."""
  config = clip.get_model_config("tiny/8")
  checkpoint.save_model(tmp_path / "ckpt", refs.random_params(clip.abstract_params(config)),
                        config)
  out = tmp_path / "hf"
  assert run_command(export_hf, f"--checkpoint={tmp_path / 'ckpt'}", f"--out={out}",
                     "--no_tokenizer") == 0
  for name in ("README.md", "notes.txt", "eval.json", "zz_extra.bin"):
    (out / name).write_text("the user's")
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  capsys.readouterr()
  assert run_command(export_hf, f"--checkpoint={tmp_path / 'ckpt'}", f"--out={out}",
                     "--overwrite") == 1
  assert capsys.readouterr().err.strip().splitlines() == [
      f"error: --out {out} holds 4 file(s) an export does not write (README.md, eval.json, "
      "notes.txt and 1 more), which --overwrite would delete; choose an empty --out, or remove "
      "them"]
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
  assert not os.path.exists(f"{out}.tmp")


def test_command_errors_are_one_line(tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "x").write_text("")
  result = _run("goal_jax.export_hf", f"--checkpoint={tmp_path / 'ckpt'}",
                f"--out={tmp_path / 'out'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines() == [
      f"error: output {tmp_path / 'out'} is not empty; pass --overwrite to replace it"]
  missing = _run("goal_jax.export_hf", f"--checkpoint={tmp_path / 'ckpt'}",
                 f"--out={tmp_path / 'new'}")
  assert missing.returncode == 1 and "Traceback" not in missing.stderr
  assert len(missing.stderr.strip().splitlines()) == 1
  assert missing.stderr.startswith(f"error: {tmp_path / 'ckpt'} is not a model checkpoint")
  positional = _run("goal_jax.export_hf", tmp_path / "ckpt", tmp_path / "new")
  assert (positional.returncode, positional.stderr.strip().splitlines()) == (2, [
      f"error: unexpected arguments ['{tmp_path / 'ckpt'}', '{tmp_path / 'new'}']: "
      "pass --checkpoint=... --out=..."])
