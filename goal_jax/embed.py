"""Embed a folder of images or a file of texts with a model checkpoint -> `.npy`.

  python -m goal_jax.embed --checkpoint=/ckpt/b16_248 --images=/data/photos --out=img.npy
  python -m goal_jax.embed --checkpoint=/ckpt/b16_248 --texts=captions.txt --out=txt.npy

Rows are L2-normalised float32 embeddings. Images: every image file directly in the folder, in
sorted name order; the names are written next to the output (`img_files.txt`, one per line) so
row i is named. Texts: one per line (blank lines are an error), tokenised at the model's context
or `--context_length` (longer texts are truncated, keeping EOT). Batches are sharded over all
devices (`jax.devices()`). The model computes in float32 whatever dtype it was trained in, so the
rows match the HF export's (`--dtype=bfloat16` for speed).
"""
import argparse
import os
import sys

import jax
import numpy as np

from goal_jax.evaluation import embedding
from goal_jax.evaluation import runner
from goal_jax.evaluation import zeroshot


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m goal_jax.embed", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="model checkpoint directory")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--images", help="folder of images")
  source.add_argument("--texts", help="text file, one text per line")
  parser.add_argument("--out", required=True, help="output .npy file")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--context_length", type=int, default=None,
                      help="text tokens per row (default: the model's context)")
  parser.add_argument("--geometry", choices=("center_crop", "squash"),
                      default=runner.DEFAULT_GEOMETRY)
  embedding.add_dtype_argument(parser)
  return parser.parse_args(argv)


def list_images(folder: str) -> list[str]:
  """Image files directly in `folder`, sorted by name."""
  if not os.path.isdir(folder):
    raise ValueError(f"--images={folder!r} is not a directory")
  names = sorted(n for n in os.listdir(folder)
                 if n.lower().endswith(zeroshot.IMAGE_EXTENSIONS)
                 and os.path.isfile(os.path.join(folder, n)))
  if not names:
    raise ValueError(f"{folder!r} holds no image ({', '.join(zeroshot.IMAGE_EXTENSIONS)})")
  return names


def read_texts(path: str) -> list[str]:
  """Lines of a text file; a blank line is an error naming its number."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  for number, line in enumerate(lines, 1):
    if not line.strip():
      raise ValueError(f"{path}:{number}: blank line (one text per line expected)")
  if not lines:
    raise ValueError(f"{path} holds no text")
  return lines


def embed_texts(embedder, params, texts, context_length=None) -> np.ndarray:
  """[N, E] embeddings of raw texts (normalised like the data pipeline, then tokenised)."""
  model_context = embedder.config.context_length
  context = context_length or model_context
  if not 2 <= context <= model_context:
    raise ValueError(f"--context_length must be in [2, {model_context}] (the model's context), "
                     f"got {context}")
  return runner.embed_texts(embedder, params, texts, normalize=True, context_length=context)


def files_list_path(out: str) -> str:
  return os.path.splitext(out)[0] + "_files.txt"


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  params, config = embedding.load_model(args.checkpoint, args.dtype)
  embedder = embedding.Embedder(config, batch_size=args.batch_size)
  if args.images:
    names = list_images(args.images)
    paths = [os.path.join(args.images, n) for n in names]
    out = runner.embed_image_files(embedder, params, paths, geometry=args.geometry)
  else:
    out = embed_texts(embedder, params, read_texts(args.texts), args.context_length)
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.save(args.out, out)
  if args.images:
    with open(files_list_path(args.out), "w", encoding="utf-8") as f:
      f.write("".join(n + "\n" for n in names))
  print(f"wrote {args.out}: {out.shape[0]} x {out.shape[1]} embeddings")


if __name__ == "__main__":
  main()
