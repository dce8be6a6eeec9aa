r"""List the prepared datasets under a data_dir: splits, sizes, splitter and local pairs.

  python -m goal_jax.datasets --data_dir=/tfds

One row per split: the dataset and its version, the records, the sentence splitter that segmented
the captions (GOAL's reproduction needs `goal`), where local crops come from (`full`: original
pixels, from the detail copy or an image stored at full size; `small`: the 256 px copy of shards
prepared without one), and the share of records with a usable local pair (GOAL's local terms need
them; `python -m goal_jax.lism` mines them into `<dataset>_lism`). Both are read from up to
`--sample` records spread over the split. Nothing is written.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from absl import flags

from goal_jax import cli
from goal_jax.data import builder
from goal_jax.data import detail


def inventory(data_dir: str, sample: int = 64) -> list[dict[str, Any]]:
  """A dict per prepared split: dataset, version, split, records, splitter, local pairs."""
  rows = []
  for name in sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []:
    try:
      version_dir = builder.dataset_dir(name, data_dir)
    except FileNotFoundError:
      continue  # not a prepared dataset (LISM work folders, other files)
    metadata = builder.prepared_metadata(name, data_dir)
    for split in builder.prepared_splits(name, data_dir, version_dir.name):
      options = metadata.get("split_options", {}).get(split, metadata).get("options", {})
      row = {"dataset": name, "version": version_dir.name, "split": split, "records": None,
             "splitter": options.get("splitter", "?"), "local_pairs": 0.0, "sampled": 0,
             "crops": "?", "source_dataset": metadata.get("source_dataset", ""), "error": ""}
      try:
        source = builder.load_source(name, split, data_dir)
        row["records"] = len(source)
        found = detail.survey(source, max_records=sample)
      except builder.CorruptShardError as e:  # the other splits are still listed
        row["error"] = str(e)
      else:
        row.update(local_pairs=found.with_pair / found.seen if found.seen else 0.0,
                   sampled=found.seen,
                   crops=("full" if not found.small_copy else
                          "small" if found.small_copy == found.seen else "mixed"))
      rows.append(row)
  return rows


def format_rows(rows: list[dict[str, Any]], data_dir: str) -> str:
  if not rows:
    return (f"no prepared dataset under {data_dir}; make one with\n"
            f"  python -m goal_jax.prepare --dataset=NAME --manual_dir=/raw/NAME "
            f"--data_dir={data_dir}")
  header = (f"{'dataset':<20} {'version':<8} {'split':<18} {'records':>8}  {'splitter':<10} "
            f"{'crops':<6} local pairs")
  lines = [f"prepared datasets under {data_dir}:", header]
  for r in rows:
    pairs = ("CORRUPT (below)" if r["error"] else "none" if not r["local_pairs"] else
             f"{100 * r['local_pairs']:.0f}% of {r['sampled']} read")
    mined = f" (LISM on {r['source_dataset']})" if r["source_dataset"] else ""
    records = "?" if r["records"] is None else r["records"]
    lines.append(f"{r['dataset']:<20} {r['version']:<8} {r['split']:<18} {records:>8}  "
                 f"{r['splitter']:<10} {r['crops']:<6} {pairs}{mined}")
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs: commands share flag names, absl's are global."""
  cli.define_data_dir_flag()
  flags.DEFINE_integer("sample", 64, "Records read per split to count local pairs.",
                       lower_bound=1)


def main(argv):
  cli.check_args(argv)
  data_dir = os.path.expanduser(FLAGS.data_dir)
  if not os.path.isdir(data_dir):
    cli.fail(f"--data_dir={FLAGS.data_dir} is not a directory")
  rows = inventory(data_dir, FLAGS.sample)
  print(format_rows(rows, data_dir), flush=True)
  errors = [r["error"] for r in rows if r["error"]]
  if errors:  # each names the shard and the command that prepares the split again
    for error in errors[:-1]:
      print(f"error: {error}", file=sys.stderr)
    cli.fail(errors[-1])


if __name__ == "__main__":
  define_flags()
  cli.run(main)
