"""Convert a PyTorch CLIP checkpoint into a goal_jax model checkpoint.

  python -m goal_jax.convert hf:/path/to/clip-vit-base-patch16 /ckpt/b16_248 --text_context=248
  python -m goal_jax.convert openai:ViT-L-14.pt /ckpt/l14 --scan
  python -m goal_jax.convert open_clip:open_clip_model.safetensors /ckpt/oc --activation=gelu

The output (Orbax params + model_config.json) is what training starts from. `--text_context`
applies Long-CLIP stretching of the text positions (77 -> 248). OpenAI/open_clip files carry no
head count, so it defaults to width // 64 (every released model); override it if yours differs.
"""
import argparse
import sys

from goal_jax.models import checkpoint
from goal_jax.models import convert as convert_lib


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m goal_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", help="hf:<dir> | openai:<file.pt> | open_clip:<file>")
  parser.add_argument("out", help="output model checkpoint directory")
  parser.add_argument("--text_context", type=int, default=None,
                      help="stretch the text position table to this many rows (e.g. 248)")
  parser.add_argument("--scan", action="store_true", help="stack layers for nn.scan")
  parser.add_argument("--variant", default=None,
                      help="what the file should be (e.g. B/16, L/14): files without a config "
                      "are then checked for a lost last layer or another architecture")
  parser.add_argument("--vision_heads", type=int, default=None)
  parser.add_argument("--text_heads", type=int, default=None)
  parser.add_argument("--activation", choices=("quick_gelu", "gelu"), default=None,
                      help="MLP activation (default: from config.json, else quick_gelu)")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  params, config = convert_lib.convert(
      args.source, text_context=args.text_context, scan=args.scan, variant=args.variant,
      vision_heads=args.vision_heads, text_heads=args.text_heads, activation=args.activation)
  checkpoint.save_model(args.out, params, config)
  print(f"wrote {args.out}: {config}")


if __name__ == "__main__":
  main()
