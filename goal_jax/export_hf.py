"""Export a goal_jax model checkpoint as a Hugging Face `CLIPModel` directory.

  python -m goal_jax.export_hf /ckpt/goal_b16 /export/goal_b16_hf

Writes config.json (by hand, so no transformers import), model.safetensors and the CLIP tokenizer
files; `transformers.CLIPModel.from_pretrained(OUT)` then gives the same embeddings. Text pooling
matches as long as each sequence holds one EOT token (HF takes the first EOT, goal_jax the argmax).
"""
import argparse
import json
import math
import os
import sys

from safetensors.numpy import save_file

from goal_jax.models import checkpoint
from goal_jax.models import clip
from goal_jax.models import convert as convert_lib

SOT_TOKEN = 49406


def hf_config(config: clip.CLIPConfig) -> dict:
  """The config.json of an HF CLIPModel with this architecture."""
  shared = dict(hidden_act=config.activation, layer_norm_eps=config.layer_norm_eps,
                projection_dim=config.embed_dim, attention_dropout=0.0, dropout=0.0,
                initializer_range=0.02, initializer_factor=1.0)
  text = dict(model_type="clip_text_model", vocab_size=config.vocab_size,
              hidden_size=config.text_width, intermediate_size=config.text_mlp_dim,
              num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
              max_position_embeddings=config.context_length, bos_token_id=SOT_TOKEN,
              eos_token_id=clip.EOT_TOKEN, pad_token_id=clip.EOT_TOKEN, **shared)
  vision = dict(model_type="clip_vision_model", hidden_size=config.vision_width,
                intermediate_size=config.vision_mlp_dim, num_hidden_layers=config.vision_layers,
                num_attention_heads=config.vision_heads, image_size=config.image_size,
                patch_size=config.patch_size, num_channels=3, **shared)
  return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=config.embed_dim,
              logit_scale_init_value=math.log(1 / 0.07), initializer_factor=1.0,
              torch_dtype="float32", text_config=text, vision_config=vision)


def export(checkpoint_dir: str, out_dir: str, with_tokenizer: bool = True) -> list[str]:
  """Writes the HF directory; returns the written file paths."""
  params, config = checkpoint.load_model(checkpoint_dir)
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, "config.json"), os.path.join(out_dir, "model.safetensors")]
  with open(paths[0], "w") as f:
    json.dump(hf_config(config), f, indent=2)
  save_file(convert_lib.params_to_hf(params), paths[1], metadata={"format": "pt"})
  if with_tokenizer:
    from goal_jax.text import tokenizer  # pylint: disable=g-import-not-at-top
    paths += tokenizer.get_tokenizer().write_hf_tokenizer_files(
        out_dir, model_max_length=config.context_length)
  return paths


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m goal_jax.export_hf", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("checkpoint", help="model checkpoint directory (convert/train output)")
  parser.add_argument("out", help="HF directory to write")
  parser.add_argument("--no_tokenizer", action="store_true", help="skip the tokenizer files")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  for path in export(args.checkpoint, args.out, with_tokenizer=not args.no_tokenizer):
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
