"""Embed a folder of images or a file of texts with a model checkpoint -> `.npy`.

  python -m goal_jax.embed --checkpoint=/ckpt/b16_248 --images=/data/photos --out=img.npy
  python -m goal_jax.embed --checkpoint=/ckpt/b16_248 --texts=captions.txt --out=txt.npy

Rows are L2-normalised float32 embeddings. Images: every image file directly in the folder, in
sorted name order; the names are written next to the output (`img_files.txt`, one per line) so
row i is named. Texts: one per line (blank lines are an error), tokenised at the model's context
or `--text_context` (longer texts are truncated, keeping EOT). A SigLIP checkpoint resizes and
normalises images as SigLIP does and tokenises with the SentencePiece model it carries. Batches are sharded over all
devices (`jax.devices()`). The model computes in float32 whatever dtype it was trained in, so the
rows match the HF export's (`--dtype=bfloat16` for speed).
"""
import os

from absl import flags
import jax
import numpy as np

from goal_jax import cli
from goal_jax.evaluation import embedding
from goal_jax.evaluation import inputs
from goal_jax.evaluation import zeroshot
from goal_jax.models import families


FLAGS = flags.FLAGS
EXPECTED = (FileNotFoundError, ValueError)  # missing inputs, blank lines: one `error:` line


def define_flags() -> None:
  """The command's flags, defined when it runs: commands share flag names, absl's are global."""
  cli.define_checkpoint_flag()
  flags.DEFINE_string("images", None, "Folder of images (or --texts).")
  flags.DEFINE_string("texts", None, "Text file, one text per line (or --images).")
  flags.DEFINE_string("out", None, "Output .npy file.")
  flags.DEFINE_integer("batch_size", 64, "Rows per batch.", lower_bound=1)
  flags.DEFINE_integer("text_context", None,
                       "Text tokens per row (default: the model's context).")
  flags.DEFINE_enum("geometry", None, ("center_crop", "squash"),
                    "How images become the model's square input (default: as its family was "
                    "trained, center_crop for CLIP, squash for SigLIP).")
  embedding.define_dtype_flag()
  flags.declare_key_flag("dtype")  # listed by --help with the command's own flags


def list_images(folder: str) -> list[str]:
  """Image files directly in `folder`, sorted by name."""
  if not os.path.isdir(folder):
    raise ValueError(f"--images={folder!r} is not a directory")
  names = zeroshot.image_files(folder)
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


def embed_texts(embedder, params, texts, text_context=None, tokenizer=None) -> np.ndarray:
  """[N, E] embeddings of raw texts (normalised like the data pipeline, then tokenised)."""
  model_context = embedder.config.context_length
  context = text_context or model_context
  if not 2 <= context <= model_context:
    raise ValueError(f"--text_context must be in [2, {model_context}] (the model's context), "
                     f"got {context}")
  return inputs.embed_texts(embedder, params, texts, normalize=True, context_length=context,
                            tokenizer=tokenizer)


def files_list_path(out: str) -> str:
  return os.path.splitext(out)[0] + "_files.txt"


def main(argv):
  cli.check_args(argv, ("checkpoint", "out"))
  if (FLAGS.images is None) == (FLAGS.texts is None):
    cli.fail("give one of --images=FOLDER or --texts=FILE", code=2)
  params, config = embedding.load_model(FLAGS.checkpoint, FLAGS.dtype)
  embedder = embedding.Embedder(config, batch_size=FLAGS.batch_size)
  if FLAGS.images:
    names = list_images(FLAGS.images)
    paths = [os.path.join(FLAGS.images, n) for n in names]
    out = inputs.embed_image_files(embedder, params, paths, geometry=FLAGS.geometry)
  else:
    tokenizer = families.of(config).tokenizer(FLAGS.checkpoint)
    out = embed_texts(embedder, params, read_texts(FLAGS.texts), FLAGS.text_context, tokenizer)
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  np.save(FLAGS.out, out)
  if FLAGS.images:
    with open(files_list_path(FLAGS.out), "w", encoding="utf-8") as f:
      f.write("".join(n + "\n" for n in names))
  print(f"wrote {FLAGS.out}: {out.shape[0]} x {out.shape[1]} embeddings")


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
