r"""Convert a PyTorch CLIP, or a SigLIP / SigLIP 2, checkpoint into a goal_jax model checkpoint.

  python -m goal_jax.convert --source=/models/clip-vit-base-patch16 --out=/ckpt/b16_248 \
      --text_context=248
  python -m goal_jax.convert --source=/models/siglip2-base-patch16-256 --out=/ckpt/siglip2_b16 \
      --text_context=196
  python -m goal_jax.convert --source=siglip2_b16_256.npz --out=/ckpt/siglip2_b16_npz
  python -m goal_jax.convert --source=ViT-L-14.pt --out=/ckpt/l14 --scan
  python -m goal_jax.convert --source=open_clip_model.safetensors --out=/ckpt/oc --activation=gelu

`--source` is an HF `CLIPModel` directory (it holds `config.json`) or one OpenAI / Long-CLIP /
open_clip weights file (`.pt`, `.bin`, `.safetensors`; the weights file of an HF directory is
refused: pass the directory); the prefixes `hf:`, `openai:` and `open_clip:` say the same
explicitly. The output (Orbax params + model_config.json) is what training starts from; an
output that is not empty is refused before any work unless `--overwrite`. `--text_context`
applies Long-CLIP stretching of the text positions (77 -> 248). OpenAI/open_clip files carry no
head count, so it defaults to width // 64 (every released model); override it if yours differs.
SigLIP comes as a transformers `SiglipModel` directory (SigLIP, and SigLIP 2 at a fixed
resolution) or a big_vision `.npz` (`two_towers`; its architecture is read from the shapes);
`--text_context` stretches its 64 positions the same way (196: 20 kept, x4 after them).
"""
import json
import os

from absl import flags

from goal_jax import cli
from goal_jax.models import checkpoint
from goal_jax.models import siglip_weights
from goal_jax.models import state_dicts

# What an HF directory keeps its weights in: such a file is only convertible with its config.json.
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


FLAGS = flags.FLAGS
EXPECTED = (FileNotFoundError, ValueError)  # WeightsError is a ValueError  # a bad source or output: one `error:` line


def define_flags() -> None:
  """The command's flags, defined when it runs: commands share flag names, absl's are global."""
  flags.DEFINE_string("source", None, "HF model directory (CLIPModel or SiglipModel), big_vision "
                      "SigLIP .npz, or OpenAI/open_clip weights file (optionally prefixed "
                      "hf: | openai: | open_clip:).")
  flags.DEFINE_string("out", None, "Model checkpoint directory to write.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing output.")
  flags.DEFINE_integer("text_context", None,
                       "Stretch the text position table to this many rows, Long-CLIP's way "
                       "(e.g. 248 for CLIP, 196 for SigLIP's 64).")
  flags.DEFINE_bool("scan", False, "Stack layers for nn.scan.")
  flags.DEFINE_string("tokenizer", None, "SigLIP: the SentencePiece model (or tokenizer.json) "
                      "to keep with the checkpoint (default: the folder's spiece.model, "
                      "tokenizer.model or tokenizer.json; an "
                      ".npz: the one .model file beside it).")
  flags.DEFINE_bool("lowercase", None, "SigLIP: lowercase texts before tokenising (default: as "
                    "the folder's tokenizer_config.json says; an .npz: yes, as SigLIP 2's authors "
                    "recommend).")
  flags.DEFINE_string("variant", None, "What the file should be (e.g. B/16, L/14): files without "
                      "a config are then checked for a lost last layer or another architecture.")
  flags.DEFINE_integer("vision_heads", None, "Vision attention heads (default: width // 64).")
  flags.DEFINE_integer("text_heads", None, "Text attention heads (default: width // 64).")
  flags.DEFINE_enum("activation", None, ("quick_gelu", "gelu"),
                    "MLP activation (default: from config.json, else quick_gelu).")


def resolve_source(source: str) -> str:
  """A source as the library reads it (`fmt:path`); a bare path gets its format from what it is.

  A directory is an HF model when it holds `config.json`. A bare file is read as an OpenAI-layout
  state dict: OpenAI, Long-CLIP and open_clip files share that layout and one reader, so nothing
  is guessed. The one ambiguous file, the weights of an HF directory, is refused with the directory
  to pass instead (its config.json states what the weights alone cannot).
  """
  fmt, sep, _ = source.partition(":")
  if sep and fmt in state_dicts.FORMATS:
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


def _siglip_source(source: str) -> bool:
  """A SigLIP checkpoint: a `SiglipModel` folder or a big_vision `.npz`."""
  return source.endswith(".npz") or (os.path.isdir(source)
                                     and siglip_weights.is_siglip_hf_dir(source))


def main(argv):
  cli.check_args(argv, ("source", "out"), hint="pass --source=... --out=...")
  if _siglip_source(FLAGS.source):
    cli.check_output_dir(FLAGS.out, FLAGS.overwrite, FLAGS.source)
    if FLAGS.scan:
      raise ValueError("--scan: SigLIP models have no scanned layout")
    load = siglip_weights.load_npz if FLAGS.source.endswith(".npz") else siglip_weights.load_hf_dir
    params, config = load(FLAGS.source, text_context=FLAGS.text_context)
    tokenizer = siglip_weights.find_tokenizer(FLAGS.source, FLAGS.tokenizer)
    lowercase = (siglip_weights.lowercase_of(FLAGS.source) if FLAGS.lowercase is None
                 else FLAGS.lowercase)
    extra = {siglip_weights.TEXT_FILE: json.dumps({"lowercase": lowercase}).encode()}
    if tokenizer:
      extra[tokenizer[0]] = tokenizer[1]
    checkpoint.save_model(FLAGS.out, params, config, overwrite=FLAGS.overwrite,
                          extra_files=extra)
    print(f"wrote {FLAGS.out}: {config}")
    if tokenizer is None:
      print(f"warning: no SentencePiece model kept with {FLAGS.out}; texts cannot be embedded "
            "with it until it is converted again with --tokenizer=<.model file>")
    return
  source = resolve_source(FLAGS.source)
  cli.check_output_dir(FLAGS.out, FLAGS.overwrite, source.partition(":")[2])
  params, config = state_dicts.convert(
      source, text_context=FLAGS.text_context, scan=FLAGS.scan, variant=FLAGS.variant,
      vision_heads=FLAGS.vision_heads, text_heads=FLAGS.text_heads, activation=FLAGS.activation)
  checkpoint.save_model(FLAGS.out, params, config, overwrite=FLAGS.overwrite)
  print(f"wrote {FLAGS.out}: {config}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
