"""Atomic whole-file writes and directory swaps leave the complete new content and no temporary."""
from goal_jax import files


def test_write_atomic_replaces_text_and_bytes_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "sub" / "results.json"
  files.write_atomic(path, "first ü\n")
  assert path.read_text(encoding="utf-8") == "first ü\n"
  files.write_atomic(path, b"\x00second")
  assert path.read_bytes() == b"\x00second"
  assert not list(path.parent.glob(files.TEMPORARY_GLOB))


def test_replace_directory_swaps_in_the_staged_copy(tmp_path):
  target = str(tmp_path / "model")
  for content in ("old", "new"):
    staged = files.staging_directory(target)
    (tmp_path / "model.tmp" / "stale_or_fresh.txt").write_text(content)
    files.replace_directory(staged, target)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
  assert (tmp_path / "model" / "stale_or_fresh.txt").read_text() == "new"
