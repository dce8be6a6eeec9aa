"""`python -m goal_jax.datasets`: what is prepared under a data_dir, as a user reads it."""
import dataclasses
import os
import subprocess
import sys

from goal_jax.data import synthetic
from test_train import REPO, prepare_synthetic


def test_lists_splits_sizes_splitter_and_local_pairs(tmp_path, monkeypatch):
  data_dir = prepare_synthetic(str(tmp_path / "tfds"), 8)
  original = synthetic.read_examples
  monkeypatch.setattr(synthetic, "read_examples", lambda *a, **k: (
      dataclasses.replace(e, local_pairs=()) for e in original(*a, **k)))
  prepare_synthetic(str(tmp_path / "other"), 8)
  os.rename(tmp_path / "other" / "synthetic", tmp_path / "tfds" / "plain")
  (tmp_path / "tfds" / "notes.txt").write_text("not a dataset")
  proc = subprocess.run([sys.executable, "-m", "goal_jax.datasets", f"--data_dir={data_dir}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [line.split() for line in proc.stdout.splitlines()[2:]]
  splits = ("train", "test", "test_hard", "test_transfer", "test_transfer_hard")
  assert rows == (
      [["plain", "3.0.0", split, "8", "sentencex", "full", "none"] for split in splits]
      + [["synthetic", "3.0.0", split, "8", "sentencex", "full", "100%", "of", "8", "read"]
         for split in splits])


def test_empty_or_missing_data_dir(tmp_path):
  run = lambda d, *args: subprocess.run(
      [sys.executable, "-m", "goal_jax.datasets", f"--data_dir={d}", *args], cwd=REPO,
      capture_output=True, text=True, timeout=300)
  empty = run(tmp_path)
  assert empty.returncode == 0 and "no prepared dataset under" in empty.stdout
  missing = run(tmp_path / "nope")
  assert (missing.returncode, missing.stderr.strip().splitlines()) == (
      1, [f"error: --data_dir={tmp_path / 'nope'} is not a directory"])
  positional = run(tmp_path, "extra")
  assert (positional.returncode, positional.stderr.strip().splitlines()) == (
      2, ["error: unexpected arguments ['extra']: every option is a --flag"])


def test_a_corrupt_split_is_listed_and_named_with_its_fix(tmp_path):
  """A split whose shard no longer reads is listed as corrupt beside the others, and the command
  ends with the shard's one line (the prepare command of that split) and exit status 1."""
  data_dir = prepare_synthetic(str(tmp_path / "tfds"), 8)
  (shard,) = (tmp_path / "tfds" / "synthetic").glob("*/synthetic-train.array_record-*")
  data = bytearray(shard.read_bytes())
  data[2000:2400] = bytes(b ^ 0xFF for b in data[2000:2400])  # inside the first record's chunk
  shard.write_bytes(bytes(data))
  proc = subprocess.run([sys.executable, "-m", "goal_jax.datasets", f"--data_dir={data_dir}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  rows = [line.split() for line in proc.stdout.splitlines()[2:]]
  assert rows[0] == ["synthetic", "3.0.0", "train", "8", "sentencex", "?", "CORRUPT", "(below)"]
  assert [row[2] for row in rows[1:]] == ["test", "test_hard", "test_transfer",
                                          "test_transfer_hard"]
  (line,) = proc.stderr.strip().splitlines()
  assert line.startswith(f"error: shard {shard} is corrupt: record 0 of synthetic/train does "
                         "not read")
  assert line.endswith(f"python -m goal_jax.prepare --dataset=synthetic --data_dir={data_dir} "
                       "--split=train --seed=0 --version=3")
