r"""Pictures of a model and a run: GOAL's attention map, sentence heat maps, training curves.

  python -m goal_jax.visualize attention --checkpoint=CKPT --image=cat.jpg --out=cat_attn.png
  python -m goal_jax.visualize sentences --checkpoint=CKPT --image=cat.jpg \
      --caption="A cat sleeps on a sofa. A red cushion lies beside it." --out=cat_sentences.png
  python -m goal_jax.visualize curves --workdir=/runs/goal_b16 --out=curves.png

`attention`: GOAL's map (last vision block, heads averaged, CLS removed, mean attention each
patch receives; a SigLIP model, which has no class token, shows its pooling head's attention over
the patches instead), bicubic to the image, 'jet' at alpha 0.5 over the image; the PNG has the size of
the part of the image the model sees: by default as `evaluate` and `embed` show it images, the
geometry its family was trained with (CLIP: the central square, `center_crop`; SigLIP: the whole
image, `squash`); `--geometry=squash` maps a CLIP over the whole image, squashed. `--heatmap_out`
also writes the bare colour map.
`sentences`: per sentence of the caption, the softmax over patches of cos(sentence, patch) /
temperature (what MulCLIP's SAP aggregates): a grid at `--out` plus one PNG per sentence
(`<out>_s<i>.png`). `curves`: every scalar of `metrics.jsonl` against the step (or `--keys`).
The maps of an untrained model are noise. The model computes in float32 whatever dtype it was
trained in (`--dtype` to change).
"""
import functools
import math
import os
import re
import textwrap

from absl import flags
import jax
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from goal_jax import cli
from goal_jax import figures
from goal_jax.data import images as images_lib
from goal_jax.evaluation import attention_maps
from goal_jax.evaluation import embedding
from goal_jax.models import families
from goal_jax.text import sentences
from goal_jax.text import tokenizer as text_tokenizer
from goal_jax.training import metric_log

COMMANDS = ("attention", "sentences", "curves")
FLAGS = flags.FLAGS
EXPECTED = (FileNotFoundError, ValueError, UnidentifiedImageError)  # one `error:` line


@functools.lru_cache(maxsize=None)
def _image_fn(config):
  model_class = families.of(config).model_class
  model = model_class(config)
  return jax.jit(lambda params, images: model.apply(
      {"params": params}, images, True, method=model_class.encode_image))


def geometry_of(config, geometry: str | None) -> str:
  """`geometry`, or the one the model's family was trained with (as `evaluate` and `embed`)."""
  return geometry or families.of(config).geometry


def encode_image(params, config, image: Image.Image, geometry: str | None = None) -> dict:
  """One image through the vision tower with its attention (CLIP: the last block's; SigLIP: the
  pooling head's); host numpy outputs."""
  family = families.of(config)
  pixels = images_lib.model_image(image, config.image_size, geometry_of(config, geometry),
                                  family.image_mean, family.image_std)
  out = _image_fn(config)(params, jax.device_put(pixels[None]))
  return {k: np.asarray(v)[0] for k, v in jax.device_get(out).items()}


def model_view(image: Image.Image, config, geometry: str | None) -> np.ndarray:
  """The part of the image the model sees, in the image's own pixels (uint8 RGB)."""
  box = attention_maps.model_view_box((image.height, image.width), config.image_size,
                                      geometry_of(config, geometry))
  return np.asarray(image.crop(box).convert("RGB"))


def attention_overlay(params, config, image: Image.Image, geometry: str | None = None,
                      alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """(overlay, heat map), uint8 RGB of the model view's size, of GOAL's attention map."""
  out = encode_image(params, config, image, geometry)
  grid_map = attention_maps.attention_map(out)
  view = model_view(image, config, geometry)
  heat = attention_maps.heat_image(
      attention_maps.min_max(attention_maps.bicubic_resize(grid_map, view.shape[:2])))
  return attention_maps.overlay(view, heat, alpha), heat


def split_caption(caption: str, splitter: str = "sentencex") -> list[str]:
  """The caption's sentences (normalised as the records store them)."""
  caption = text_tokenizer.normalize_text(caption)
  found = [caption[s:e] for s, e in sentences.split_sentences(caption, splitter)]
  if not found:
    raise ValueError(f"no sentence found in caption {caption[:80]!r}")
  return found


def sentence_overlays(params, config, image: Image.Image, sentences: list[str], *,
                      geometry: str | None = None, temperature: float = 0.07,
                      alpha: float = 0.5, tokenizer=None) -> tuple[np.ndarray, list[np.ndarray]]:
  """(weights [M, G, G], one overlay per sentence) of the sentence-conditioned patch maps;
  `tokenizer`: the model's (None: CLIP's)."""
  patches = encode_image(params, config, image, geometry)["patch_tokens_projected"]
  tokenizer = tokenizer or text_tokenizer.get_tokenizer()
  ids = tokenizer(sentences, context_length=config.context_length).ids
  text = embedding.Embedder(config, batch_size=8).embed_array(params, "text", ids)
  weights = attention_maps.sentence_patch_weights(text, patches, temperature)
  grid = config.grid_size
  weights = weights.reshape(len(sentences), grid, grid)
  view = model_view(image, config, geometry)
  return weights, [attention_maps.map_overlay(w, view, alpha) for w in weights]


def save_png(pixels: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(pixels).save(path, format="PNG")


def save_grid(panels: list[np.ndarray], titles: list[str], path: str, columns: int = 3) -> None:
  """Images in a grid with wrapped titles (matplotlib, Agg)."""
  columns = min(columns, len(panels))
  rows = math.ceil(len(panels) / columns)
  aspect = panels[0].shape[0] / panels[0].shape[1]
  fig, axes = figures.new_figure(rows, columns, (4 * columns, (4 * aspect + 0.8) * rows))
  for ax in axes.flat:
    ax.axis("off")
  for ax, panel, title in zip(axes.flat, panels, titles):
    ax.imshow(panel)
    ax.set_title("\n".join(textwrap.wrap(title, 40)[:4]), fontsize=9)
  figures.save_figure(fig, path)


def curve_keys(records: list[dict], pattern: str | None = None) -> list[str]:
  """Scalar names in order of first appearance (not `step`), those matching `pattern` if given."""
  keys = []
  for record in records:
    keys.extend(k for k in record if k != "step" and k not in keys)
  if pattern:
    keys = [k for k in keys if re.search(pattern, k)]
  return keys


def plot_curves(records: list[dict], path: str, pattern: str | None = None,
                columns: int = 3) -> list[str]:
  """One panel per scalar against `step`; returns the plotted names."""
  keys = curve_keys(records, pattern)
  if not keys:
    raise ValueError("no metric to plot" + (f" matches {pattern!r}" if pattern else ""))
  columns = min(columns, len(keys))
  rows = math.ceil(len(keys) / columns)
  fig, axes = figures.new_figure(rows, columns, (4.5 * columns, 3 * rows))
  for ax in axes.flat[len(keys):]:
    ax.axis("off")
  for ax, key in zip(axes.flat, keys):
    points = [(r["step"], r[key]) for r in records if key in r]
    steps, values = zip(*points)
    ax.plot(steps, values, marker="." if len(points) < 30 else None)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  figures.save_figure(fig, path)
  return keys


def define_flags() -> None:
  """Every verb's flags (absl has no subcommands), defined when the command runs: commands share
  flag names and absl's are global."""
  cli.define_checkpoint_flag("Read by attention and sentences.")
  flags.DEFINE_string("image", None, "attention, sentences: image file.")
  flags.DEFINE_string("out", None, "Output PNG.")
  flags.DEFINE_enum("geometry", None, ("squash", "center_crop"),
                    "attention, sentences: the part of the image the model sees (default: as "
                    "its family was trained, center_crop for CLIP, squash for SigLIP, as "
                    "evaluate and embed).")
  flags.DEFINE_float("alpha", 0.5, "attention, sentences: heat map opacity.")
  embedding.define_dtype_flag()
  flags.declare_key_flag("dtype")  # listed by --help with the command's own flags
  flags.DEFINE_string("heatmap_out", None, "attention: also write the bare heat map.")
  flags.DEFINE_string("caption", None, "sentences: the caption (or --caption_file).")
  flags.DEFINE_string("caption_file", None, "sentences: file holding the caption.")
  flags.DEFINE_float("temperature", 0.07, "sentences: softmax temperature over patches.")
  flags.DEFINE_string("splitter", "sentencex", "sentences: sentencex or goal.")
  flags.DEFINE_string("workdir", None, "curves: training workdir holding metrics.jsonl.")
  flags.DEFINE_string("metrics", None, "curves: a metrics.jsonl file (or --workdir).")
  flags.DEFINE_string("keys", None, "curves: regex selecting the scalars to plot.")


# The flags only one verb reads; giving one to another verb is a mistake worth naming.
_VERB_FLAGS = {"attention": ("checkpoint", "image", "geometry", "alpha", "dtype", "heatmap_out"),
               "sentences": ("checkpoint", "image", "geometry", "alpha", "dtype", "caption",
                             "caption_file", "temperature", "splitter"),
               "curves": ("workdir", "metrics", "keys")}


def _check_flags(command: str) -> None:
  """Fails (exit 2) on a missing flag, a flag of another verb, or an either/or given twice."""
  required = {"attention": ("checkpoint", "image", "out"),
              "sentences": ("checkpoint", "image", "out"), "curves": ("out",)}[command]
  for name in required:
    if FLAGS[name].value is None:
      cli.fail(f"{command} needs --{name} (--help lists the flags)", code=2)
  every = {name for names in _VERB_FLAGS.values() for name in names}
  foreign = sorted(n for n in every - set(_VERB_FLAGS[command]) if FLAGS[n].present)
  if foreign:
    cli.fail(f"{command} takes no {', '.join('--' + n for n in foreign)}", code=2)
  either = {"sentences": ("caption", "caption_file"), "curves": ("workdir", "metrics")}
  if command in either:
    first, second = either[command]
    if (FLAGS[first].value is None) == (FLAGS[second].value is None):
      cli.fail(f"{command} needs one of --{first} or --{second}", code=2)


def _stem(path: str) -> str:
  return path[:-4] if path.lower().endswith(".png") else path


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    cli.fail(f"give one command, {' | '.join(COMMANDS)}, then --flags; got {argv[1:]}", code=2)
  command = argv[1]
  _check_flags(command)
  if command == "curves":
    path = FLAGS.metrics or os.path.join(FLAGS.workdir, "metrics.jsonl")
    keys = plot_curves(metric_log.read_metrics(path), FLAGS.out, FLAGS.keys)
    print(f"wrote {FLAGS.out}: {len(keys)} curves")
    return
  params, config = embedding.load_model(FLAGS.checkpoint, FLAGS.dtype)
  image = images_lib.open_rgb(FLAGS.image)
  if command == "attention":
    overlaid, heat = attention_overlay(params, config, image, FLAGS.geometry, FLAGS.alpha)
    save_png(overlaid, FLAGS.out)
    if FLAGS.heatmap_out:
      save_png(heat, FLAGS.heatmap_out)
    print(f"wrote {FLAGS.out}: {overlaid.shape[1]}x{overlaid.shape[0]}")
    return
  caption = FLAGS.caption
  if caption is None:
    with open(FLAGS.caption_file, encoding="utf-8") as f:
      caption = f.read()
  sentences = split_caption(caption, FLAGS.splitter)
  _, overlays = sentence_overlays(params, config, image, sentences, geometry=FLAGS.geometry,
                                  temperature=FLAGS.temperature, alpha=FLAGS.alpha,
                                  tokenizer=families.of(config).tokenizer(FLAGS.checkpoint))
  for index, panel in enumerate(overlays):
    save_png(panel, f"{_stem(FLAGS.out)}_s{index}.png")
  save_grid(overlays, [f"{i}: {s}" for i, s in enumerate(sentences)], FLAGS.out)
  print(f"wrote {FLAGS.out} and {len(overlays)} per-sentence PNGs")


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
