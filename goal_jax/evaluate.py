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
import argparse
import sys

import jax

from goal_jax.evaluation import embedding
from goal_jax.evaluation import profiles
from goal_jax.evaluation import report
from goal_jax.evaluation import runner
from goal_jax.evaluation import zeroshot


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m goal_jax.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="model checkpoint directory")
  parser.add_argument("--benchmarks", default="",
                      help="profile, benchmark names or dataset:split, joined by ','")
  parser.add_argument("--data_dir", default=None, help="where `prepare` wrote the shards")
  parser.add_argument("--out", default=None, help="results JSON to write")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--geometry", choices=("center_crop", "squash"),
                      default=runner.DEFAULT_GEOMETRY)
  parser.add_argument("--zeroshot_folder", default=None, help="ImageFolder for zero-shot")
  parser.add_argument("--zeroshot_classes", default=None, choices=sorted(zeroshot.ZEROSHOT_SETS),
                      help="class names and prompts of --zeroshot_folder")
  embedding.add_dtype_argument(parser)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  items = [s for s in args.benchmarks.split(",") if s.strip()]
  folders = {}
  if bool(args.zeroshot_folder) != bool(args.zeroshot_classes):
    raise SystemExit("--zeroshot_folder and --zeroshot_classes go together")
  if args.zeroshot_folder:
    folders[args.zeroshot_classes] = args.zeroshot_folder
    items.append(f"zeroshot/{args.zeroshot_classes}")
  if not items:
    raise SystemExit("nothing to evaluate: give --benchmarks and/or --zeroshot_folder; "
                     f"profiles: {sorted(profiles.PROFILES)}")
  try:
    profile, _ = runner.resolve_benchmarks(items)
    params, config = embedding.load_model(args.checkpoint, args.dtype)
    results = runner.evaluate_benchmarks(
        params, config, items, args.data_dir, batch_size=args.batch_size,
        geometry=args.geometry, zeroshot_folders=folders, verbose=True)
  except (FileNotFoundError, ValueError) as e:  # bad names, missing data: no traceback needed
    raise SystemExit(f"error: {e}") from e
  metadata = {"checkpoint": args.checkpoint, "benchmarks": ",".join(items),
              "geometry": args.geometry, "model": config.to_dict()}
  if jax.process_index() != 0:
    return
  if args.out:
    document = runner.write_results(args.out, profile, results, metadata)
    print(f"wrote {args.out}")
  else:
    document = report.results_document(profile, results, metadata)
  print(runner.markdown_table(document, profile), end="")


if __name__ == "__main__":
  main()
