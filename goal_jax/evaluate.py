r"""Evaluate a model checkpoint on named benchmarks: results JSON and a Markdown table.

  python -m goal_jax.evaluate --checkpoint=/ckpt/goal_b16 --benchmarks=goal --data_dir=/data/shards
  python -m goal_jax.evaluate --checkpoint=CKPT --benchmarks=docci:test,urban1k:test \
      --data_dir=/data/shards --out=results.json
  python -m goal_jax.evaluate --checkpoint=CKPT --zeroshot_folder=/data/cifar10_test \
      --zeroshot_classes=cifar10

`--benchmarks` takes a profile (goal, longclip, synthetic, zeroshot), `profile/benchmark`,
benchmark names (in any case; a name two profiles share needs its profile: `goal/Urban1k`), or
`dataset:split` of any prepared split (`evaluation/benchmark_spec.py`). The benchmarks whose
data is prepared run; the others are listed after the results (and in the JSON's `not_run`) with
the `prepare` command that makes each; `--require_all` makes any of them an error, one line each,
as is a run where none is prepared.
Zero-shot classification reads an ImageFolder (`DIR/<class>/<image>`, class folders named by label
number, class name, or WordNet id for ImageNet) with the shipped class names and prompts.
The model computes in float32 whatever dtype it was trained in (`--dtype` to change; the results'
metadata records it). A model trained by a method with its own test-time score (FineLIP: 0.8·cosine
+ 0.2·CLIM) is ranked by it in retrieval, the joint test and hard groups (zero-shot: embeddings);
`--scoring=embedding` ranks by the embeddings' cosine instead. The metadata and each entry say
which (`evaluation/scoring.py`).
"""
import os

from absl import flags
import jax

from goal_jax import cli
from goal_jax import files
from goal_jax.evaluation import benchmark_spec
from goal_jax.evaluation import embedding
from goal_jax.evaluation import profiles
from goal_jax.evaluation import report
from goal_jax.evaluation import runner
from goal_jax.evaluation import scoring
from goal_jax.evaluation import zeroshot
from goal_jax.models import checkpoint
from goal_jax.models import families


FLAGS = flags.FLAGS
EXPECTED = (FileNotFoundError, ValueError)  # bad names, missing data: one `error:` line


def define_flags() -> None:
  """The command's flags, defined when it runs: commands share flag names, absl's are global."""
  cli.define_checkpoint_flag()
  flags.DEFINE_string("benchmarks", "",
                      "Profile, benchmark names or dataset:split, joined by ','.")
  flags.DEFINE_bool("require_all", False,
                    "Fail (one line per benchmark) if any named benchmark is not prepared, "
                    "instead of running the prepared ones and listing the others.")
  cli.define_data_dir_flag()
  flags.DEFINE_string("out", None, "Results JSON to write.")
  flags.DEFINE_integer("batch_size", 64, "Rows per embedding batch.", lower_bound=1)
  flags.DEFINE_enum("geometry", None, ("center_crop", "squash"),
                    "How images become the model's square input (default: as its family was "
                    "trained, center_crop for CLIP, squash for SigLIP).")
  flags.DEFINE_string("zeroshot_folder", None, "ImageFolder for zero-shot.")
  flags.DEFINE_enum("zeroshot_classes", None, sorted(zeroshot.ZEROSHOT_SETS),
                    "Class names and prompts of --zeroshot_folder.")
  flags.DEFINE_enum("scoring", None, scoring.CHOICES,
                    "Rank by the training method's own score or by the embeddings' cosine "
                    "(default: the method's when it has one).")
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
  if FLAGS.out:  # before anything is computed: a result that cannot be written is lost work
    files.check_writable(FLAGS.out, "--out", "pass --out=<a file in a writable folder>",
                         renamed_in=True)
  if not checkpoint.is_model(FLAGS.checkpoint):  # before the data: the first thing named
    raise FileNotFoundError(checkpoint.not_a_model(FLAGS.checkpoint))
  profile, chosen = benchmark_spec.resolve_benchmarks(items)
  data_dir = os.path.expanduser(FLAGS.data_dir)
  not_run = runner.missing_data(chosen, data_dir, folders)
  if not_run and (FLAGS.require_all or len(not_run) == len(chosen)):
    raise cli.Error(cli.error_lines([n.message for n in not_run.values()]))
  if not_run and jax.process_index() == 0:
    print(f"not prepared, left out: {', '.join(not_run)} (the commands that prepare them follow "
          "the results; --require_all makes this an error)", flush=True)
  params, config = embedding.load_model(FLAGS.checkpoint, FLAGS.dtype)
  method_scoring, params = scoring.for_model(FLAGS.checkpoint, params, config, FLAGS.scoring)
  family = families.of(config)
  geometry = FLAGS.geometry or family.geometry
  results = runner.evaluate_benchmarks(
      params, config, [b for b in chosen if b.name not in not_run], data_dir,
      batch_size=FLAGS.batch_size, tokenizer=family.tokenizer(FLAGS.checkpoint),
      geometry=geometry, zeroshot_folders=folders, scoring=method_scoring, verbose=True)
  metadata = {"checkpoint": FLAGS.checkpoint, "benchmarks": ",".join(items),
              "geometry": geometry, "model": families.config_to_dict(config),
              "scoring": scoring.label(method_scoring)}
  if jax.process_index() != 0:
    return
  missing = {name: n.as_dict() for name, n in not_run.items()}
  if FLAGS.out:
    document = report.write_results(FLAGS.out, profile, results, metadata, missing)
    print(f"wrote {FLAGS.out}")
  else:
    document = report.results_document(profile, results, metadata, missing)
  print(report.markdown_table(document, profile), end="")


if __name__ == "__main__":
  define_flags()
  cli.run(main, expected=EXPECTED)
