r"""Offline questions to a profiled row: which ops match, and how much device time they take.

  python -m goal_jax.bench.profile_ops --dir=docs/profiles/h200_2026-12-04/goal_B16_b64 \
      --match='\[248,512,128\]'           # the text tower's batch-minor layout (README)
  python -m goal_jax.bench.profile_ops --dir=DIR --category='optimizer update' --top=40

A `bench --profile_dir` row keeps the device trace and the compiled HLO (`profile.capture`);
this joins them as the summary does and lists every op whose name, shapes or JAX source match
`--match` (a regular expression) and whose category is `--category`, most expensive first, with
their total. The summary's top 20 answer "where does the time go"; this answers "how much do
these ops cost", which is how the text tower's layout and the optimizer's small kernels were
found in the H200 lease's traces.
"""
from __future__ import annotations

import os
import re

from absl import flags

from goal_jax import cli
from goal_jax.bench import profile

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("dir", None, "A profiled row's folder (perfetto_trace.json.gz, hlo.txt.gz).")
  flags.DEFINE_string("match", "", "Regular expression over an op's name, shapes and source.")
  flags.DEFINE_enum("category", None, profile.CATEGORIES, "Only ops of this category.")
  flags.DEFINE_integer("steps", 3, "Steps in the trace (bench --profile_steps).", lower_bound=1)
  flags.DEFINE_integer("top", 30, "Ops listed (the total counts every match).", lower_bound=0)


def matching_ops(summary: dict, match: str = "", category: str | None = None) -> list[dict]:
  """The summary's ops (most expensive first) whose name, shape or source match `match` and
  whose category is `category` (any when None)."""
  pattern = re.compile(match)
  return [o for o in summary["top_ops"]
          if (category is None or o["category"] == category)
          and pattern.search(f"{o['op']} {o['shape']} {o['source']}")]


def format_ops(ops: list[dict], total_ms: float, top: int) -> str:
  lines = [f"{'ms/step':>8} {'calls':>6} {'MB/call':>8} {'TB/s':>5} {'category':<16} "
           f"{'op':<40} {'shape':<60} source"]
  for o in ops[:top]:
    megabytes = o.get("mb_per_call")
    rate = None if megabytes is None else megabytes * o["calls_per_step"] / o["ms_per_step"] / 1e3
    traffic = f"{'':>8} {'':>5}" if rate is None else f"{megabytes:>8.1f} {rate:>5.2f}"
    lines.append(f"{o['ms_per_step']:>8.3f} {o['calls_per_step']:>6g} {traffic} "
                 f"{o['category']:<16} {o['op'][:40]:<40} {o['shape'][:60]:<60} "
                 f"{o['source'][-70:]}")
  matched = sum(o["ms_per_step"] for o in ops)
  lines.append(f"{len(ops)} ops match: {matched:.3f} ms of {total_ms:.3f} ms per step "
               f"({100 * matched / total_ms if total_ms else 0:.1f} %)")
  return "\n".join(lines)


def main(argv) -> None:
  cli.check_args(argv, required=("dir",))
  missing = [name for name in (profile.TRACE_NAME, profile.HLO_NAME)
             if not os.path.exists(os.path.join(FLAGS.dir, name))]
  if missing:
    cli.fail(f"--dir={FLAGS.dir}: no {' or '.join(missing)}; pass a folder that "
             "`bench --profile_dir` wrote for one row")
  try:
    re.compile(FLAGS.match)
  except re.error as e:
    cli.fail(f"--match={FLAGS.match!r} is not a regular expression: {e}", code=2)
  summary = profile.summarise(*profile.read_capture(FLAGS.dir), steps=FLAGS.steps, top=None)
  print(format_ops(matching_ops(summary, FLAGS.match, FLAGS.category),
                   summary["device_ms_per_step"], FLAGS.top))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
