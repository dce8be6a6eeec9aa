"""export_hf: checkpoint -> HF CLIPModel dir that transformers loads with the same outputs."""
import json

import jax
import numpy as np
import torch

import _torch_refs as refs  # tests/ is on sys.path under pytest.
from goal_jax import export_hf
from goal_jax.models import checkpoint
from goal_jax.models import clip
from goal_jax.models import convert


def test_export_loads_in_transformers_with_same_embeddings(tmp_path):
  """A trained-like checkpoint: random params, 248-token context, scan layout."""
  from transformers import CLIPModel, CLIPTokenizer
  config = clip.get_model_config("tiny/8", context_length=248, scan=True)
  params = refs.random_params(clip.abstract_params(config), seed=7)
  checkpoint.save_model(tmp_path / "ckpt", params, config)
  export_hf.main([str(tmp_path / "ckpt"), str(tmp_path / "hf")])

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
  params, config = convert.convert(f"hf:{hf_dir}")
  checkpoint.save_model(tmp_path / "ckpt", params, config)
  export_hf.export(str(tmp_path / "ckpt"), str(tmp_path / "hf_out"), with_tokenizer=False)
  again, again_config = convert.convert(f"hf:{tmp_path / 'hf_out'}")
  assert again_config == config
  jax.tree.map(np.testing.assert_array_equal, again, params)
  written = json.loads((tmp_path / "hf_out" / "config.json").read_text())
  assert written["projection_dim"] == config.embed_dim
  assert written["vision_config"]["num_attention_heads"] == 4
