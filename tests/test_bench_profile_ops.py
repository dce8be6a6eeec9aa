"""`bench.profile_ops` on the H200 lease's own traces (docs/profiles/h200_2026-12-04)."""
import gzip
import json
import os

import pytest

from _cli import run_command
from goal_jax.bench import gpu_compile, profile, profile_ops, report, timing

H200 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                    "profiles", "h200_2026-12-04")
TEXT_BATCH_MINOR = r"\[248,512,128\]|\[512,128,248\]|\[248,128\]|\[248,512\]\{"


@pytest.fixture(scope="module")
def goal_summary():
  return profile.summarise(*profile.read_capture(os.path.join(H200, "goal_B16_b64")), steps=3,
                           top=None)


def test_the_committed_summaries_come_again_from_the_committed_traces(goal_summary):
  with open(os.path.join(H200, "goal_B16_b64.json")) as f:
    committed = json.load(f)
  assert goal_summary["categories"] == committed["categories"]
  assert goal_summary["top_ops"][:20] == committed["top_ops"]
  assert sum(o["ms_per_step"] for o in goal_summary["top_ops"]) == pytest.approx(
      goal_summary["device_ms_per_step"])  # top=None: every op


def test_matching_ops_by_shape_and_category(goal_summary):
  text = profile_ops.matching_ops(goal_summary, TEXT_BATCH_MINOR)
  assert sum(o["ms_per_step"] for o in text) == pytest.approx(6.012, abs=5e-4)  # README
  assert all("CLIP.encode_image" not in o["source"] for o in text)
  norms = profile_ops.matching_ops(goal_summary, "encode_text", "layer norm")
  assert norms and {o["category"] for o in norms} == {"layer norm"}
  assert profile_ops.matching_ops(goal_summary, r"\[200,768,128\]") == []  # vision: row-major


def test_command(capsys):
  assert run_command(profile_ops, f"--dir={os.path.join(H200, 'global_B16_b64')}",
                     "--category=optimizer update", "--top=3") == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 5 and lines[-1].startswith("56 ops match: 2.892 ms of 34.007 ms")
  assert run_command(profile_ops, f"--dir={H200}") == 1
  assert "no perfetto_trace.json.gz or hlo.txt.gz" in capsys.readouterr().err


def test_the_traffic_of_the_traced_kernels_equals_the_compiled_programs(goal_summary):
  """The memory-bound kernels the H200 ran in a step move what `gpu_compile` counts in the same
  program statically (within 0.01 %: 5 MB of 64 GB); the bench's table prints it with its
  bandwidth."""
  with gzip.open(os.path.join(H200, "goal_B16_b64", profile.HLO_NAME), "rt") as f:
    static = gpu_compile.describe(f.read())["memory_bound_gb"]
  gigabytes, seconds = report.memory_traffic(goal_summary)
  assert gigabytes == pytest.approx(static, rel=1e-4)
  assert gigabytes == pytest.approx(64.3, abs=0.05)
  assert gigabytes / seconds / 1e3 == pytest.approx(2.9, abs=0.1)  # TB/s, on 4.8 at the peak
  row = timing.Row("goal_jax", "goal", "B/16", 64, profile=goal_summary)
  line = report.format_profiles([row]).splitlines()[-1]
  assert line.split()[-2:] == [f"{gigabytes:.2f}", f"{gigabytes / seconds / 1e3:.2f}"]
  assert report.memory_traffic({"categories": [{"category": "layer norm", "ms_per_step": 1.0,
                                                "share": 1.0}]}) == (None, 0.0)
