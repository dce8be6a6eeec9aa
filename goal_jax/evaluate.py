"""Evaluate a model checkpoint on named benchmarks: results JSON and a Markdown table.

  python -m goal_jax.evaluate --checkpoint=/ckpt/goal_b16 --benchmarks=goal --data_dir=/data/shards
  python -m goal_jax.evaluate --checkpoint=CKPT --benchmarks=docci:test,urban1k:test \
      --data_dir=/data/shards --out=results.json
  python -m goal_jax.evaluate --checkpoint=CKPT --zeroshot_folder=/data/cifar10_test \
      --zeroshot_classes=cifar10

`--benchmarks` takes a profile (goal, longclip, synthetic, zeroshot), `profile/benchmark`,
benchmark names, or `dataset:split` of any prepared split (see `evaluation/runner.py`). Datasets
must be prepared first (`python -m goal_jax.data.prepare ...`; the error names the command).
Zero-shot classification reads an ImageFolder (`DIR/<class>/<image>`, class folders named by label
number, class name, or WordNet id for ImageNet) with the shipped class names and prompts.
The model computes in float32 whatever dtype it was trained in (`--dtype` to change; the results'
metadata records it).
"""
import os

from absl import flags
import jax

from goal_jax import cli
from goal_jax.evaluation import embedding
from goal_jax.evaluation import profiles
from goal_jax.evaluation import report
from goal_jax.evaluation import runner
from goal_jax.evaluation import zeroshot


FLAGS = flags.FLAGS
EXPECTED = (FileNotFoundError, ValueError)  # bad names, missing data: one `error:` line


def define_flags() -> None:
  """The command's flags, defined when it runs: commands share flag names, absl's are global."""
  flags.DEFINE_string("checkpoint", None, "Model checkpoint directory.")
  flags.DEFINE_string("benchmarks", "",
                      "Profile, benchmark names or dataset:split, joined by ','.")
  flags.DEFINE_string("data_dir", cli.DEFAULT_DATA_DIR, "Where `prepare` wrote the shards.")
  flags.DEFINE_string("out", None, "Results JSON to write.")
  flags.DEFINE_integer("batch_size", 64, "Rows per embedding batch.", lower_bound=1)
  flags.DEFINE_enum("geometry", runner.DEFAULT_GEOMETRY, ("center_crop", "squash"),
                    "How images become the model's square input.")
  flags.DEFINE_string("zeroshot_folder", None, "ImageFolder for zero-shot.")
  flags.DEFINE_enum("zeroshot_classes", None, sorted(zeroshot.ZEROSHOT_SETS),
                    "Class names and prompts of --zeroshot_folder.")
  embedding.define_dtype_flag()
  flags.declare_key_flag("dtype")  # listed by --help with the command's own flags


def main(argv):
  cli.check_args(argv)
  if FLAGS.checkpoint is None:
    cli.fail("--checkpoint is required: the model directory to evaluate", code=2)
  items = [s for s in FLAGS.benchmarks.split(",") if s.strip()]
  folders = {}
  if bool(FLAGS.zeroshot_folder) != bool(FLAGS.zeroshot_classes):
    cli.fail("--zeroshot_folder and --zeroshot_classes go together", code=2)
  if FLAGS.zeroshot_folder:
    folders[FLAGS.zeroshot_classes] = FLAGS.zeroshot_folder
    items.append(f"zeroshot/{FLAGS.zeroshot_classes}")
  if not items:
    cli.fail("nothing to evaluate: give --benchmarks and/or --zeroshot_folder; "
             f"profiles: {sorted(profiles.PROFILES)}", code=2)
  profile, _ = runner.resolve_benchmarks(items)
  params, config = embedding.load_model(FLAGS.checkpoint, FLAGS.dtype)
  results = runner.evaluate_benchmarks(
      params, config, items, os.path.expanduser(FLAGS.data_dir), batch_size=FLAGS.batch_size,
      geometry=FLAGS.geometry, zeroshot_folders=folders, verbose=True)
  metadata = {"checkpoint": FLAGS.checkpoint, "benchmarks": ",".join(items),
              "geometry": FLAGS.geometry, "model": config.to_dict()}
  if jax.process_index() != 0:
    return
  if FLAGS.out:
    document = runner.write_results(FLAGS.out, profile, results, metadata)
    print(f"wrote {FLAGS.out}")
  else:
    document = report.results_document(profile, results, metadata)
  print(runner.markdown_table(document, profile), end="")


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
