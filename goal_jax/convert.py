"""Convert a PyTorch CLIP checkpoint into a goal_jax model checkpoint.

  python -m goal_jax.convert /models/clip-vit-base-patch16 /ckpt/b16_248 --text_context=248
  python -m goal_jax.convert ViT-L-14.pt /ckpt/l14 --scan
  python -m goal_jax.convert open_clip_model.safetensors /ckpt/oc --activation=gelu

The source is an HF `CLIPModel` directory (it holds `config.json`) or one OpenAI / Long-CLIP /
open_clip weights file (`.pt`, `.bin`, `.safetensors`; the weights file of an HF directory is
refused: pass the directory); the prefixes `hf:`, `openai:` and `open_clip:` say the same
explicitly. The output (Orbax params + model_config.json) is what training starts from; an
output that is not empty is refused before any work unless `--overwrite`. `--text_context`
applies Long-CLIP stretching of the text positions (77 -> 248). OpenAI/open_clip files carry no
head count, so it defaults to width // 64 (every released model); override it if yours differs.
"""
import argparse
import os
import sys

from goal_jax.models import checkpoint
from goal_jax.models import convert as convert_lib

# What an HF directory keeps its weights in: such a file is only convertible with its config.json.
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m goal_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", help="HF model directory or OpenAI/open_clip weights file "
                      "(optionally prefixed hf: | openai: | open_clip:)")
  parser.add_argument("out", help="output model checkpoint directory")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
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


def resolve_source(source: str) -> str:
  """A source as the library reads it (`fmt:path`); a bare path gets its format from what it is.

  A directory is an HF model when it holds `config.json`. A bare file is read as an OpenAI-layout
  state dict: OpenAI, Long-CLIP and open_clip files share that layout and one reader, so nothing
  is guessed. The one ambiguous file, the weights of an HF directory, is refused with the directory
  to pass instead (its config.json states what the weights alone cannot).
  """
  fmt, sep, _ = source.partition(":")
  if sep and fmt in convert_lib.FORMATS:
    return source
  if os.path.isdir(source):
    if os.path.isfile(os.path.join(source, "config.json")):
      return f"hf:{source}"
    if os.path.isfile(os.path.join(source, checkpoint.CONFIG_FILE)):
      raise ValueError(f"{source} is already a goal_jax model checkpoint ({checkpoint.CONFIG_FILE})"
                       "; nothing to convert")
    raise ValueError(f"{source} is a directory without config.json: not an HF model directory")
  if os.path.isfile(source):
    folder = os.path.dirname(os.path.abspath(source))
    name = os.path.basename(source)
    hf_weights = name in _HF_WEIGHT_FILES or (name.startswith("model-")
                                              and name.endswith(".safetensors"))
    if hf_weights and os.path.isfile(os.path.join(folder, "config.json")):
      raise ValueError(f"{source} is the weights file of the HF model directory {folder}; "
                       "pass the directory")
    return f"openai:{source}"
  raise FileNotFoundError(f"no such file or directory: {source} (expected an HF model directory "
                          "or a .pt/.bin/.safetensors file)")


def check_output(out: str, overwrite: bool, source_path: str | None = None) -> None:
  """Refuses, before any work, an output that is not empty (unless `overwrite`) or not a folder."""
  if source_path is not None and os.path.abspath(out) == os.path.abspath(source_path):
    raise ValueError(f"the output {out} is the source; write elsewhere")
  if not os.path.exists(out):
    return
  if not os.path.isdir(out):
    raise ValueError(f"output {out} exists and is not a directory")
  if os.listdir(out) and not overwrite:
    raise ValueError(f"output {out} is not empty; pass --overwrite to replace it")


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    source = resolve_source(args.source)
    check_output(args.out, args.overwrite, source.partition(":")[2])
    params, config = convert_lib.convert(
        source, text_context=args.text_context, scan=args.scan, variant=args.variant,
        vision_heads=args.vision_heads, text_heads=args.text_heads, activation=args.activation)
  except (FileNotFoundError, ValueError) as e:  # a bad source or output: no traceback needed
    raise SystemExit(f"error: {e}") from e
  checkpoint.save_model(args.out, params, config, overwrite=args.overwrite)
  print(f"wrote {args.out}: {config}")


if __name__ == "__main__":
  main()
