"""Export a goal_jax model checkpoint as a Hugging Face `CLIPModel` (or `SiglipModel`) directory.

  python -m goal_jax.export_hf --checkpoint=/ckpt/goal_b16 --out=/export/goal_b16_hf

Writes config.json (by hand, so no transformers import), model.safetensors, the image processor's
preprocessor_config.json and the CLIP tokenizer files, so `CLIPModel.from_pretrained(OUT)` with
`CLIPProcessor.from_pretrained(OUT)` (or the Auto classes) gives `python -m goal_jax.embed`'s
embeddings to 1e-5 (both default to the `center_crop` geometry; `--geometry=squash` exports the
other). Pixels match with the processor's PIL backend, which transformers picks when torchvision
is not installed; with torchvision, pass `backend="pil"` to `from_pretrained`, since the default
torchvision resize resamples a few pixels one or more uint8 levels off PIL's. Text pooling matches
as long as each sequence holds one EOT token (HF takes the first EOT, goal_jax the argmax). An
output that is not empty is refused before any work unless `--overwrite`, which replaces an
earlier export and nothing else: a folder holding any file the exporter does not write (a model
card, the user's notes) is refused, so `--overwrite` never deletes what it did not write.
"""
import json
import math
import os

from absl import flags
from safetensors.numpy import save_file

from goal_jax import cli
from goal_jax import files
from goal_jax.models import checkpoint
from goal_jax.models import clip
from goal_jax.models import families
from goal_jax.models import siglip
from goal_jax.models import siglip_weights
from goal_jax.models import state_dicts
from goal_jax.text import tokenizer

GEOMETRIES = ("center_crop", "squash")
_PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, what `geometry.resize_image` resizes with
# `images.MEAN_RGB` / `STD_RGB` as OpenAI writes them (a test checks they agree in float32).
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
FLAGS = flags.FLAGS
EXPECTED = (FileNotFoundError, ValueError)  # a bad checkpoint or output: one `error:` line
# Every file an export writes (CLIP: the first three and the CLIPTokenizer's four; SigLIP: the
# first three, spiece.model and tokenizer_config.json): all that `--overwrite` may replace.
EXPORT_FILES = frozenset({"config.json", "model.safetensors", "preprocessor_config.json",
                          "vocab.json", "merges.txt", "special_tokens_map.json",
                          "tokenizer_config.json", "spiece.model"})
_LISTED = 3  # foreign files named in the refusal


def hf_config(config: clip.CLIPConfig) -> dict:
  """The config.json of an HF CLIPModel with this architecture."""
  shared = dict(hidden_act=config.activation, layer_norm_eps=config.layer_norm_eps,
                projection_dim=config.embed_dim, attention_dropout=0.0, dropout=0.0,
                initializer_range=0.02, initializer_factor=1.0)
  text = dict(model_type="clip_text_model", vocab_size=config.vocab_size,
              hidden_size=config.text_width, intermediate_size=config.text_mlp_dim,
              num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
              max_position_embeddings=config.context_length, bos_token_id=tokenizer.SOT_ID,
              eos_token_id=tokenizer.EOT_ID, pad_token_id=tokenizer.EOT_ID, **shared)
  vision = dict(model_type="clip_vision_model", hidden_size=config.vision_width,
                intermediate_size=config.vision_mlp_dim, num_hidden_layers=config.vision_layers,
                num_attention_heads=config.vision_heads, image_size=config.image_size,
                patch_size=config.patch_size, num_channels=3, **shared)
  return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=config.embed_dim,
              logit_scale_init_value=math.log(1 / 0.07), initializer_factor=1.0,
              torch_dtype="float32", text_config=text, vision_config=vision)


def preprocessor_config(config: clip.CLIPConfig, geometry: str = "center_crop") -> dict:
  """The preprocessor_config.json of a `CLIPImageProcessor` that makes goal_jax's model input.

  `center_crop` is `geometry.resize_image`'s: shortest edge to S, the long edge to
  `int(S * long / short)`, PIL bicubic, the central window at offset `(resized - S) // 2`; HF's
  processor computes both the same way. `squash` resizes straight to S x S.
  """
  if geometry not in GEOMETRIES:
    raise ValueError(f"unknown geometry {geometry!r}; expected one of {GEOMETRIES}")
  side = config.image_size
  square = {"height": side, "width": side}
  return dict(image_processor_type="CLIPImageProcessor", processor_class="CLIPProcessor",
              do_convert_rgb=True, do_resize=True,
              size={"shortest_edge": side} if geometry == "center_crop" else square,
              resample=_PIL_BICUBIC, do_center_crop=geometry == "center_crop", crop_size=square,
              do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
              image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)


def siglip_preprocessor_config(config) -> dict:
  """A `SiglipImageProcessor`: bicubic resize straight to S x S, pixels to [-1, 1] (what
  `embed` does for a SigLIP model)."""
  family = families.of(config)
  return dict(image_processor_type="SiglipImageProcessor", processor_class="SiglipProcessor",
              do_convert_rgb=True, do_resize=True,
              size={"height": config.image_size, "width": config.image_size},
              resample=_PIL_BICUBIC, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
              image_mean=list(family.image_mean), image_std=list(family.image_std))


def _export_siglip(checkpoint_dir, tmp, params, config, with_tokenizer) -> list[str]:
  """A `SiglipModel` folder: config.json, model.safetensors, preprocessor_config.json and, from
  the checkpoint's SentencePiece model, a `SiglipTokenizer` (spiece.model + its config).

  transformers' SiglipTokenizer lowercases and drops ASCII punctuation before tokenising (as
  big_vision's zero-shot prompts); `embed` tokenises the text as given, so their ids agree on
  lowercase text without punctuation.
  """
  files.write_json(os.path.join(tmp, "config.json"),
                   {**siglip_weights.config_to_hf(config), "torch_dtype": "float32"})
  save_file(siglip_weights.to_hf_state_dict(params, config),
            os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
  files.write_json(os.path.join(tmp, "preprocessor_config.json"),
                   siglip_preprocessor_config(config))
  names = ["config.json", "model.safetensors", "preprocessor_config.json"]
  if with_tokenizer:
    spiece = os.path.join(checkpoint_dir, siglip_weights.TOKENIZER_FILE)
    if not os.path.isfile(spiece):
      raise FileNotFoundError(f"{checkpoint_dir} keeps no {siglip_weights.TOKENIZER_FILE} (a "
                              "SiglipTokenizer needs the SentencePiece model): convert it again "
                              "with --tokenizer=<.model>, or pass --no_tokenizer")
    with open(spiece, "rb") as f:
      files.write_atomic(os.path.join(tmp, "spiece.model"), f.read())
    lowercase = families.of(config).tokenizer(checkpoint_dir).lowercase
    files.write_json(os.path.join(tmp, "tokenizer_config.json"), dict(
        tokenizer_class="SiglipTokenizer", processor_class="SiglipProcessor",
        model_max_length=config.context_length, do_lower_case=lowercase, eos_token="</s>",
        pad_token="</s>", unk_token="<unk>"))
    names += ["spiece.model", "tokenizer_config.json"]
  return names


def export(checkpoint_dir: str, out_dir: str, with_tokenizer: bool = True,
           overwrite: bool = False, geometry: str = "center_crop") -> list[str]:
  """Writes the HF directory (complete, or not at all); returns the written file paths.

  The files go to `<out_dir>.tmp`, renamed into place at the end, so `overwrite` replaces an old
  export wholesale (no stale shard or tokenizer file survives) and a crash leaves none half-done.
  An output holding anything but an earlier export's files (`EXPORT_FILES`) is refused before
  any work, `overwrite` or not. A SigLIP checkpoint becomes a `SiglipModel` folder
  (`_export_siglip`).
  """
  cli.check_output_dir(out_dir, overwrite, checkpoint_dir)
  check_only_export_files(out_dir)
  files.check_writable(out_dir, "--out", "pass --out=<a path in a writable folder>",
                       renamed_in=True)  # built as <out>.tmp, renamed into place
  if geometry not in GEOMETRIES:
    raise ValueError(f"unknown geometry {geometry!r}; expected one of {GEOMETRIES}")
  params, config = checkpoint.load_model(checkpoint_dir)
  out_dir = os.path.abspath(out_dir)
  tmp = files.staging_directory(out_dir)
  if families.of(config).name == siglip.FAMILY:
    names = _export_siglip(checkpoint_dir, tmp, params, config, with_tokenizer)
    files.replace_directory(tmp, out_dir)
    return [os.path.join(out_dir, n) for n in names]
  names = ["config.json", "model.safetensors", "preprocessor_config.json"]
  with open(os.path.join(tmp, names[0]), "w") as f:
    json.dump(hf_config(config), f, indent=2)
  save_file(state_dicts.params_to_hf(params), os.path.join(tmp, names[1]),
            metadata={"format": "pt"})
  with open(os.path.join(tmp, names[2]), "w") as f:
    json.dump(preprocessor_config(config, geometry), f, indent=2)
  if with_tokenizer:
    names += [os.path.basename(p) for p in tokenizer.get_tokenizer().write_hf_tokenizer_files(
        tmp, model_max_length=config.context_length)]
  files.replace_directory(tmp, out_dir)
  return [os.path.join(out_dir, n) for n in names]


def check_only_export_files(out_dir: str) -> None:
  """Refuses an existing `out_dir` holding anything an export does not write."""
  if not os.path.isdir(out_dir):
    return
  foreign = sorted(name for name in os.listdir(out_dir)
                   if name not in EXPORT_FILES or not os.path.isfile(os.path.join(out_dir, name)))
  if foreign:
    named = ", ".join(foreign[:_LISTED]) + (f" and {len(foreign) - _LISTED} more"
                                            if len(foreign) > _LISTED else "")
    raise ValueError(f"--out {out_dir} holds {len(foreign)} file(s) an export does not write "
                     f"({named}), which --overwrite would delete; choose an empty --out, or "
                     "remove them")


def define_flags() -> None:
  """The command's flags, defined when it runs: commands share flag names, absl's are global."""
  cli.define_checkpoint_flag()
  flags.DEFINE_string("out", None, "HF directory to write.")
  flags.DEFINE_bool("no_tokenizer", False, "Skip the tokenizer files.")
  flags.DEFINE_bool("overwrite", False, "Replace an earlier export (an output holding other "
                    "files is refused).")
  flags.DEFINE_enum("geometry", "center_crop", GEOMETRIES,
                    "The image geometry the processor reproduces (as `embed --geometry`).")


def main(argv):
  cli.check_args(argv, ("checkpoint", "out"), hint="pass --checkpoint=... --out=...")
  paths = export(FLAGS.checkpoint, FLAGS.out, with_tokenizer=not FLAGS.no_tokenizer,
                 overwrite=FLAGS.overwrite, geometry=FLAGS.geometry)
  for path in paths:
    print(f"wrote {path}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
