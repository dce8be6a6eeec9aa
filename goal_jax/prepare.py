r"""Prepare a dataset: raw layout -> pre-segmented ArrayRecord shards, with a summary.

  python -m goal_jax.prepare --dataset=docci --manual_dir=/data/docci --data_dir=/data/shards
  python -m goal_jax.prepare --dataset=dci --manual_dir=/data/dci --data_dir=/data/shards \
      --split=goal_test --splitter=goal --skip_bad
  python -m goal_jax.prepare --dataset=synthetic [--seed=1] [--version=1]

`--data_dir` defaults to ~/tensorflow_datasets, where training reads by default. Without `--split`,
every split whose raw files are present is prepared. A bad record stops the run with one `error:`
line naming the dataset, the record and the file; `--skip_bad` skips it and counts it in the
summary. `--nodetail` skips the full-resolution detail copy that GOAL's local crops and LISM read,
for data that only MulCLIP or global fine-tuning reads. Images under `--min_image_side` are bad
records; a JPEG over `--max_image_pixels` is decoded at 1/2..1/8 size, another image over it is a
bad record. Preparing again is safe: a failed or killed run leaves the earlier shards as they were
(the next run removes what it left), and a second run into the same dataset stops at once, naming
the first. What a record holds, which splits are kept and compared: `goal_jax.data.prepare`, the
library function this command calls.
"""
import json
import os

from absl import flags

from goal_jax import cli
from goal_jax import files
from goal_jax.data import images
from goal_jax.data import prepare as prepare_lib
from goal_jax.data import raw
from goal_jax.data import records

FLAGS = flags.FLAGS
# Bad options, missing raw files, unwritable output, a dataset another run is writing: one
# `error:` line each (`cli.run`).
EXPECTED = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
            files.FolderBusyError)


def define_flags() -> None:
  """The command's flags, defined when it runs: commands share flag names, absl's are global."""
  flags.DEFINE_string("dataset", None, f"dataset to prepare: {', '.join(sorted(raw.READERS))}")
  cli.define_data_dir_flag()
  flags.DEFINE_string("manual_dir", None, "folder with the raw dataset files")
  flags.DEFINE_list("split", [], "splits to prepare (default: all present)")
  flags.DEFINE_integer("image_short_side", 256, "pre-resize short side; 0 keeps the original. "
                       "The model's input side (224 for B/16 and L/14) spares the trainer a "
                       "resize per record; never below it (stored images are not upscaled).")
  flags.DEFINE_bool("detail", True, "also store the full-resolution detail copy that GOAL's "
                    "local crops and LISM read (--nodetail: none, for MulCLIP/global only)")
  flags.DEFINE_integer("detail_short_side", 0, "detail copy short side; 0 keeps the original")
  flags.DEFINE_integer("min_image_side", records.MIN_IMAGE_SIDE,
                       "an image with a side under this many pixels is a bad record; 0: none")
  flags.DEFINE_integer("max_image_pixels", images.MAX_PIXELS,
                       "a JPEG with more pixels is decoded at 1/2..1/8 size, another image is a "
                       "bad record; 0: no limit")
  flags.DEFINE_string("splitter", "sentencex", "sentence splitter: sentencex, or goal")
  flags.DEFINE_enum("summary", "auto", ["auto", "first_sentence", "field", "none"],
                    "how each record's short summary caption is chosen")
  flags.DEFINE_bool("skip_bad", False, "skip and count bad records instead of stopping")
  flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the stored images")
  flags.DEFINE_integer("threads", 0, "threads decoding and resizing images (0: up to 8)")
  flags.DEFINE_string("summary_out", None, "also write the preparation summary to this JSON file")
  flags.DEFINE_integer("seed", None, "generated datasets: generator seed (default 0)")
  flags.DEFINE_integer("version", None, "generated datasets: generator version (default latest)")


def main(argv):
  """Prepares `--dataset`, prints the summary; expected failures become one `error:` line."""
  example = argv[1] if len(argv) > 1 else "NAME"
  cli.check_args(argv, hint=f"every option is a --flag, e.g. --dataset={example}")
  if FLAGS.dataset is None:
    cli.fail(f"--dataset is required: one of {', '.join(sorted(raw.READERS))}", code=2)
  manual_dir = os.path.expanduser(FLAGS.manual_dir) if FLAGS.manual_dir else None
  try:
    result = prepare_lib.prepare(
        FLAGS.dataset, os.path.expanduser(FLAGS.data_dir), manual_dir, splits=FLAGS.split or None,
        image_short_side=FLAGS.image_short_side, splitter=FLAGS.splitter, summary=FLAGS.summary,
        skip_bad=FLAGS.skip_bad, jpeg_quality=FLAGS.jpeg_quality, num_workers=FLAGS.threads,
        seed=FLAGS.seed, version=FLAGS.version, detail=FLAGS.detail,
        detail_short_side=FLAGS.detail_short_side, min_image_side=FLAGS.min_image_side,
        max_image_pixels=FLAGS.max_image_pixels, verbose=True)
  except records.BadRecordError as e:
    raise cli.Error(f"{e}. Fix or remove the record, or pass --skip_bad to skip it and count it "
                    "in the summary; earlier shards (if any) are left as they were") from None
  if FLAGS.summary_out:
    with open(FLAGS.summary_out, "w", encoding="utf-8") as out:
      json.dump(result, out, indent=2)


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
