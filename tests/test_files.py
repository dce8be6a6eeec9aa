"""Atomic whole-file writes and directory swaps leave the complete new content and no temporary."""
import pytest

from goal_jax import files


def test_write_atomic_replaces_text_and_bytes_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "sub" / "results.json"
  files.write_atomic(path, "first ü\n")
  assert path.read_text(encoding="utf-8") == "first ü\n"
  files.write_atomic(path, b"\x00second")
  assert path.read_bytes() == b"\x00second"
  assert not list(path.parent.glob(files.TEMPORARY_GLOB))


def test_write_json_is_indented_and_ends_in_a_newline(tmp_path):
  path = tmp_path / "value.json"
  files.write_json(path, {"b": "ü", "a": [1]}, sort_keys=True, ensure_ascii=False)
  assert path.read_text(encoding="utf-8") == '{\n  "a": [\n    1\n  ],\n  "b": "ü"\n}\n'
  assert not list(tmp_path.glob(files.TEMPORARY_GLOB))


@pytest.mark.parametrize("atomic_exchange", [True, False])
def test_replace_directory_swaps_in_the_staged_copy(tmp_path, monkeypatch, atomic_exchange):
  if not atomic_exchange:  # a filesystem without renameat2: two renames
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
  target = str(tmp_path / "model")
  for content in ("old", "new"):
    staged = files.staging_directory(target)
    (tmp_path / "model.tmp" / "stale_or_fresh.txt").write_text(content)
    files.replace_directory(staged, target)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
  assert (tmp_path / "model" / "stale_or_fresh.txt").read_text() == "new"


def test_replace_directory_puts_the_old_one_back_when_the_swap_fails(tmp_path, monkeypatch):
  target = tmp_path / "model"
  target.mkdir()
  (target / "kept.txt").write_text("old")
  staged = files.staging_directory(str(target))
  monkeypatch.setattr(files, "_exchange", lambda a, b: False)
  renames = []

  def rename(source, destination):
    renames.append(destination)
    if len(renames) == 2:  # the staged copy into place
      raise OSError("disk gone")
    os_rename(source, destination)

  os_rename = files.os.rename
  monkeypatch.setattr(files.os, "rename", rename)
  with pytest.raises(OSError, match="disk gone"):
    files.replace_directory(staged, str(target))
  monkeypatch.undo()
  assert (target / "kept.txt").read_text() == "old"
