"""Pictures of a model and a run: GOAL's attention map, sentence heat maps, training curves.

  python -m goal_jax.visualize attention --checkpoint=CKPT --image=cat.jpg --out=cat_attn.png
  python -m goal_jax.visualize sentences --checkpoint=CKPT --image=cat.jpg \
      --caption="A cat sleeps on a sofa. A red cushion lies beside it." --out=cat_sentences.png
  python -m goal_jax.visualize curves --workdir=/runs/goal_b16 --out=curves.png

`attention`: GOAL's map (last vision block, heads averaged, CLS removed, mean attention each
patch receives), bicubic to the image, 'jet' at alpha 0.5 over the image; the PNG has the size of
the part of the image the model sees: the whole image with the default `--geometry=squash`, the
central square with `center_crop`. `--heatmap_out` also writes the bare colour map.
`sentences`: per sentence of the caption, the softmax over patches of cos(sentence, patch) /
temperature (what MulCLIP's SAP aggregates): a grid at `--out` plus one PNG per sentence
(`<out>_s<i>.png`). `curves`: every scalar of `metrics.jsonl` against the step (or `--keys`).
The maps of an untrained model are noise. The model computes in float32 whatever dtype it was
trained in (`--dtype` to change).
"""
import argparse
import functools
import math
import os
import re
import sys
import textwrap

import jax
import numpy as np
from PIL import Image

from goal_jax import figures
from goal_jax.data import geometry as geometry_lib
from goal_jax.data import images as images_lib
from goal_jax.data import pipeline
from goal_jax.evaluation import attention_maps
from goal_jax.evaluation import embedding
from goal_jax.models import clip
from goal_jax.text import tokenizer as text_tokenizer
from goal_jax.training import metrics as metrics_lib

DEFAULT_GEOMETRY = "squash"


@functools.lru_cache(maxsize=None)
def _image_fn(config: clip.CLIPConfig):
  model = clip.CLIP(config)
  return jax.jit(lambda params, images: model.apply(
      {"params": params}, images, True, method=clip.CLIP.encode_image))


def encode_image(params, config, image: Image.Image, geometry: str = DEFAULT_GEOMETRY) -> dict:
  """One image through the vision tower with the last block's attention; host numpy outputs."""
  pixels = pipeline.normalize_image(geometry_lib.resize_image(image, config.image_size, geometry))
  out = _image_fn(config)(params, jax.device_put(pixels[None]))
  return {k: np.asarray(v)[0] for k, v in jax.device_get(out).items()}


def model_view(image: Image.Image, config, geometry: str) -> np.ndarray:
  """The part of the image the model sees, in the image's own pixels (uint8 RGB)."""
  box = attention_maps.model_view_box((image.height, image.width), config.image_size, geometry)
  return np.asarray(image.crop(box).convert("RGB"))


def attention_overlay(params, config, image: Image.Image, geometry: str = DEFAULT_GEOMETRY,
                      alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """(overlay, heat map), uint8 RGB of the model view's size, of GOAL's attention map."""
  out = encode_image(params, config, image, geometry)
  grid_map = attention_maps.goal_attention_map(out["attention"])
  view = model_view(image, config, geometry)
  heat = attention_maps.heat_image(
      attention_maps.min_max(attention_maps.bicubic_resize(grid_map, view.shape[:2])))
  return attention_maps.overlay(view, heat, alpha), heat


def split_caption(caption: str, splitter: str = "sentencex") -> list[str]:
  """The caption's sentences (normalised as the records store them)."""
  from goal_jax.text import sentences  # pylint: disable=g-import-not-at-top
  caption = text_tokenizer.normalize_text(caption)
  found = [caption[s:e] for s, e in sentences.split_sentences(caption, splitter)]
  if not found:
    raise ValueError(f"no sentence found in caption {caption[:80]!r}")
  return found


def sentence_overlays(params, config, image: Image.Image, sentences: list[str], *,
                      geometry: str = DEFAULT_GEOMETRY, temperature: float = 0.07,
                      alpha: float = 0.5) -> tuple[np.ndarray, list[np.ndarray]]:
  """(weights [M, G, G], one overlay per sentence) of the sentence-conditioned patch maps."""
  patches = encode_image(params, config, image, geometry)["tokens_projected"][1:]
  ids = text_tokenizer.get_tokenizer()(sentences, context_length=config.context_length).ids
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


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m goal_jax.visualize", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  for name in ("attention", "sentences"):
    sub = commands.add_parser(name)
    sub.add_argument("--checkpoint", required=True, help="model checkpoint directory")
    sub.add_argument("--image", required=True, help="image file")
    sub.add_argument("--out", required=True, help="output PNG")
    sub.add_argument("--geometry", choices=("squash", "center_crop"), default=DEFAULT_GEOMETRY)
    sub.add_argument("--alpha", type=float, default=0.5, help="heat map opacity")
    embedding.add_dtype_argument(sub)
  commands.choices["attention"].add_argument("--heatmap_out", help="also write the bare heat map")
  sentences = commands.choices["sentences"]
  text = sentences.add_mutually_exclusive_group(required=True)
  text.add_argument("--caption", help="the caption")
  text.add_argument("--caption_file", help="file holding the caption")
  sentences.add_argument("--temperature", type=float, default=0.07)
  sentences.add_argument("--splitter", default="sentencex", help="sentencex or goal")
  curves = commands.add_parser("curves")
  source = curves.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="training workdir holding metrics.jsonl")
  source.add_argument("--metrics", help="a metrics.jsonl file")
  curves.add_argument("--out", required=True, help="output PNG")
  curves.add_argument("--keys", default=None, help="regex selecting the scalars to plot")
  return parser.parse_args(argv)


def _stem(path: str) -> str:
  return path[:-4] if path.lower().endswith(".png") else path


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.command == "curves":
    path = args.metrics or os.path.join(args.workdir, "metrics.jsonl")
    keys = plot_curves(metrics_lib.read_metrics(path), args.out, args.keys)
    print(f"wrote {args.out}: {len(keys)} curves")
    return
  params, config = embedding.load_model(args.checkpoint, args.dtype)
  image = images_lib.open_rgb(args.image)
  if args.command == "attention":
    overlaid, heat = attention_overlay(params, config, image, args.geometry, args.alpha)
    save_png(overlaid, args.out)
    if args.heatmap_out:
      save_png(heat, args.heatmap_out)
    print(f"wrote {args.out}: {overlaid.shape[1]}x{overlaid.shape[0]}")
    return
  caption = args.caption
  if caption is None:
    with open(args.caption_file, encoding="utf-8") as f:
      caption = f.read()
  sentences = split_caption(caption, args.splitter)
  _, overlays = sentence_overlays(params, config, image, sentences, geometry=args.geometry,
                                  temperature=args.temperature, alpha=args.alpha)
  for index, panel in enumerate(overlays):
    save_png(panel, f"{_stem(args.out)}_s{index}.png")
  save_grid(overlays, [f"{i}: {s}" for i, s in enumerate(sentences)], args.out)
  print(f"wrote {args.out} and {len(overlays)} per-sentence PNGs")


if __name__ == "__main__":
  main()
