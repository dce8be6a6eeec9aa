"""Whole files and whole directories written so that a crash never leaves half of one in place.

A file goes to a temporary sibling (`<name>.tmp-<pid>`: two processes never share one), is synced,
then renamed over the target: `os.replace` is atomic on POSIX, so a reader sees the old file or
the new one. A directory is built in `staging_directory` and swapped in by `replace_directory`.

Before any work a command checks that it can write where it will (`check_writable`), and a folder
that two runs must not write at once (a run's workdir, a dataset being prepared or mined) is held
by a `FolderLock`.
"""
import ctypes
import errno
import json
import os
import re
import shutil
import socket
import sys
import time

from absl import logging

TEMPORARY_GLOB = "*.tmp-*"  # what `write_atomic` leaves behind when killed mid-write
LOCK_FILE = "RUNNING.lock"  # `FolderLock`'s file: `{host, pid, started, command}` of its holder
_UNREADABLE_LOCK_S = 10  # an unreadable lock older than this was left by a run killed taking it


class NotWritableError(ValueError):
  """A path a command must write (`--out`, `--data_dir`, `--workdir`) that it cannot: a bad
  value for that flag, so a `ValueError` (every command's `EXPECTED` has it)."""


class FolderBusyError(RuntimeError):
  """Another live run holds the folder (`FolderLock`)."""


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Where launch/tpu_vm.sh mounts a bucket on every worker (gcsfuse), and the paths it passes.
GCS_MOUNT_ROOT = "/mnt/gcs"


def is_url(path: str) -> bool:
  """`gs://...`, `s3://...`, `https://...`: a location the local file system does not reach."""
  return bool(_URL.match(path))


def url_path_error(option: str, url: str) -> str:
  """One line: the commands read and write through the local file system (locks, atomic
  renames, TFDS and ArrayRecord files, Orbax), so a bucket is mounted, not named by URL."""
  scheme, rest = url.split("://", 1)
  if scheme == "gs":
    bucket = rest.split("/", 1)[0]
    return (f"{option}={url}: goal_jax reads and writes through the local file system, not gs:// "
            f"URLs; mount the bucket (gcsfuse --implicit-dirs {bucket} "
            f"{GCS_MOUNT_ROOT}/{bucket}; launch/tpu_vm.sh mounts the gs:// paths of its "
            f"arguments on every worker) and pass {GCS_MOUNT_ROOT}/{rest}")
  return (f"{option}={url}: goal_jax reads and writes through the local file system, not "
          f"{scheme}:// URLs; copy or mount it locally and pass that path")


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


def check_writable(path, what: str, fix: str, *, renamed_in: bool = False) -> None:
  """Refuses, before any work, a path this process cannot create or write into.

  `path` is a folder, created if missing; with `renamed_in`, a file or folder that is written
  next to it and renamed into place (`write_atomic`, `replace_directory`), so its parent folder
  must take a new entry. The nearest existing folder on the way decides: it must be a folder
  this process may write (`os.access`; a read-only file system counts). A URL (`gs://...`) is
  not checked.

  Args:
    path: the path the command writes.
    what: how the message names it, e.g. `--data_dir`.
    fix: what to pass instead, e.g. `pass --data_dir=<a writable folder>`.
    renamed_in: check the folder that takes `path` rather than `path` itself.

  Raises:
    NotWritableError: one line: the path, what blocks it, `fix`, and the `chmod` that would do.
  """
  path = os.fspath(path)
  if "://" in path:
    return
  path = os.path.abspath(os.path.expanduser(path))
  blocker = os.path.dirname(path) if renamed_in else path
  while not os.path.lexists(blocker):
    blocker = os.path.dirname(blocker)
  if not os.path.isdir(blocker):
    where = "is" if blocker == path else f"cannot be created: {blocker} is"
    raise NotWritableError(f"{what} {path} {where} a file, not a folder; {fix}")
  if os.access(blocker, os.W_OK | os.X_OK):
    return
  where = ("" if blocker == path else f" (its folder {blocker})" if os.path.lexists(path)
           else f" ({blocker}, where it would be created)")
  if _read_only_file_system(blocker):
    raise NotWritableError(f"{what} {path} is not writable: {blocker} is on a read-only file "
                           f"system; {fix}")
  raise NotWritableError(f"{what} {path} is not writable{where}: the folder is read-only for "
                         f"this user; {fix}, or make it writable: chmod u+w {blocker}")


def _read_only_file_system(path: str) -> bool:
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except (OSError, AttributeError):
    return False


class FolderLock:
  """`with FolderLock(folder):` — refuses to enter while another live run holds `folder`.

  The lock is `<folder>/RUNNING.lock`, created exclusively (`O_EXCL`, atomic on local and network
  file systems) and holding `{host, pid, started, command}`, so a refusal says who holds it. A
  lock left by a killed run (`kill -9`, a lost VM) is stale: on the same host its pid is gone, and
  it is taken over with a warning; from another host liveness cannot be checked, so the message
  says which file to delete. `folder` is created if missing (and removed on release if the lock
  was all it held). `what` names the folder in messages (`workdir`, `dataset folder`), `advice`
  says what to do instead of waiting (`use another --workdir`).
  """

  def __init__(self, folder, *, what: str = "folder", advice: str = "",
               enabled: bool = True, error: type[FolderBusyError] = FolderBusyError):
    self.folder = os.fspath(folder)
    self.path = os.path.join(self.folder, LOCK_FILE)
    self.what, self.advice, self.enabled, self.error = what, advice, enabled, error
    self._held = self._created = False

  def acquire(self) -> None:
    if not self.enabled:
      return
    self._created = not os.path.isdir(self.folder)
    os.makedirs(self.folder, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": _command()}
    for _ in range(2):  # the second try follows the removal of a stale lock
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read_holder(self.path)
        if not _stale(holder, self.path):
          raise self.error(self._busy_message(holder)) from None
        logging.warning("Removing a stale lock %s (%s)", self.path,
                        describe_holder(holder) or "unreadable")
        os.remove(self.path)
        continue
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)
      self._held = True
      return
    raise self.error(f"could not take {self.path}: another run took it at the same time")

  def check_free(self) -> None:
    """Raises as `acquire` would if a live run holds the folder now, taking nothing: a command's
    early refusal, before its slow start-up (the lock itself is taken later)."""
    if os.path.exists(self.path) and not _stale(holder := _read_holder(self.path), self.path):
      raise self.error(self._busy_message(holder))

  def release(self) -> None:
    if not self._held:
      return
    self._held = False
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass
    if self._created:
      try:
        os.rmdir(self.folder)  # only when the lock was all it held
      except OSError:
        pass

  def _busy_message(self, holder: dict) -> str:
    advice = f", {self.advice}" if self.advice else ""
    who = describe_holder(holder) or "its lock file is being written"
    return (f"{self.what} {self.folder} is in use by another run ({who}). "
            f"Wait for it{advice}, or, if that run is dead (another host cannot be checked from "
            f"here), delete {self.path}")

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


def _command() -> str:
  """`python -m goal_jax.<command>` of this process, for the holder's description."""
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  name = getattr(spec, "name", "") or ""
  return f"python -m {name.removesuffix('.__main__')}" if name.startswith("goal_jax") else ""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _read_holder(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      holder = json.load(f)
  except (OSError, ValueError):
    return {}  # half-written by a run killed while taking it: treated as stale
  return holder if isinstance(holder, dict) else {}


def _stale(holder: dict, path: str) -> bool:
  if not holder:  # half-written: by a run killed while taking it, or one taking it right now
    try:
      return time.time() - os.path.getmtime(path) > _UNREADABLE_LOCK_S
    except OSError:
      return True
  if holder.get("host") == socket.gethostname():
    try:
      pid = int(holder.get("pid", -1))
    except (TypeError, ValueError):
      return True
    return pid <= 0 or not _alive(pid)  # kill(-1, 0) would ask about every process
  return False


def describe_holder(holder: dict) -> str:
  """`<command>, pid P on HOST, started T` of a lock's holder ('' when unreadable)."""
  if not holder:
    return ""
  command = f"{holder['command']}, " if holder.get("command") else ""
  return (f"{command}pid {holder.get('pid')} on {holder.get('host')}, started "
          f"{holder.get('started')}")
