"""Whole files and whole directories written so that a crash never leaves half of one in place.

A file goes to a temporary sibling (`<name>.tmp-<pid>`: two processes never share one), is synced,
then renamed over the target: `os.replace` is atomic on POSIX, so a reader sees the old file or
the new one. A directory is built in `staging_directory` and swapped in by `replace_directory`.
"""
import os
import shutil

TEMPORARY_GLOB = "*.tmp-*"  # what `write_atomic` leaves behind when killed mid-write


def cache_dir() -> str:
  """The project's cache (`$GOAL_JAX_CACHE`, default ~/.cache/goal_jax): demo data, the demo's
  pretrained start, JAX's compiled programs."""
  return os.path.expanduser(os.environ.get("GOAL_JAX_CACHE", "~/.cache/goal_jax"))


def write_atomic(path, data: str | bytes) -> None:
  """Writes `data` (str as UTF-8) to `path` all at once, creating its folder if needed."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data.encode("utf-8") if isinstance(data, str) else data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def staging_directory(directory: str, *, create: bool = True) -> str:
  """`<directory>.tmp`, where `directory` is built before `replace_directory` moves it in.

  With `create` it is made empty (one left by a crash is discarded); without, only named (the
  processes that write into it while another one creates it).
  """
  tmp = directory + ".tmp"
  if create:
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
  return tmp


def replace_directory(tmp: str, directory: str) -> None:
  """Moves the finished `tmp` to `directory`, replacing (and deleting) any directory there.

  The old one is first renamed to `<directory>.old`, so at every moment `directory` is either
  absent or complete.
  """
  old = directory + ".old"
  shutil.rmtree(old, ignore_errors=True)
  if os.path.exists(directory):
    os.rename(directory, old)
  os.rename(tmp, directory)
  shutil.rmtree(old, ignore_errors=True)
