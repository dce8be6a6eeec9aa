"""Whole files and whole directories written so that a crash never leaves half of one in place.

A file goes to a temporary sibling (`<name>.tmp-<pid>`: two processes never share one), is synced,
then renamed over the target: `os.replace` is atomic on POSIX, so a reader sees the old file or
the new one. A directory is built in `staging_directory` and swapped in by `replace_directory`.
"""
import ctypes
import errno
import json
import os
import shutil
import sys

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


def write_json(path, value, *, indent: int = 2, **dumps_options) -> None:
  """`value` as indented JSON ending in a newline, written by `write_atomic`; `dumps_options`
  go to `json.dumps` (`sort_keys`, `ensure_ascii`)."""
  write_atomic(path, json.dumps(value, indent=indent, **dumps_options) + "\n")


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


def replace_directory(tmp, directory) -> None:
  """Moves the finished `tmp` to `directory`, replacing (and deleting) any directory there.

  Where the OS can (Linux `renameat2`), the two are exchanged in one step, so a reader of
  `directory` sees the old or the new one, never none. Elsewhere the old one is first renamed to
  `<directory>.old` (and put back if the second rename fails), so at every moment `directory` is
  either absent or complete.
  """
  tmp, directory = os.fspath(tmp), os.fspath(directory)
  old = directory + ".old"
  shutil.rmtree(old, ignore_errors=True)
  if not os.path.exists(directory):
    os.rename(tmp, directory)
    return
  if _exchange(tmp, directory):
    shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
    return
  os.rename(directory, old)
  try:
    os.rename(tmp, directory)
  except BaseException:
    os.rename(old, directory)
    raise
  shutil.rmtree(old, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
  """Swaps two folders in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`).

  False where the OS or the filesystem has no such call (the caller then renames twice).
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
  except (OSError, AttributeError):
    return False
  renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                        ctypes.c_uint]
  renameat2.restype = ctypes.c_int
  at_fdcwd, rename_exchange = -100, 2
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  error = ctypes.get_errno()
  if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
    return False
  raise OSError(error, os.strerror(error), b)
