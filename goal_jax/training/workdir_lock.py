"""One run per workdir: a lock file naming its holder, taken at start and dropped on every exit.

Two trainers in one workdir interleave `metrics.jsonl`, overwrite each other's `config.json` and
collide at their first checkpoint. The lock is a file created exclusively (`O_EXCL`, atomic on
local and network file systems) that holds `{host, pid, started}`, so the refusal can say who
holds it. A lock left by a killed run (`kill -9`, a lost VM) is stale: on the same host its pid
is gone, and it is taken over with a warning; from another host liveness cannot be checked, so
the message says which file to delete. On several processes only process 0 takes it.
"""
from __future__ import annotations

import json
import os
import socket
import time

from absl import logging

LOCK_FILE = "RUNNING.lock"


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir."""


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
      return json.load(f)
  except (OSError, ValueError):
    return {}  # half-written by a run killed while taking it: treated as stale below


class WorkdirLock:
  """`with WorkdirLock(workdir):` — refuses to enter while another live run holds `workdir`."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.enabled = enabled
    self._held = False

  def acquire(self) -> None:
    if not self.enabled:
      return
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):  # the second try follows the removal of a stale lock
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read_holder(self.path)
        if not self._stale(holder):
          raise WorkdirBusyError(self._busy_message(holder)) from None
        logging.warning("Removing a stale workdir lock %s (%s)", self.path,
                        _describe(holder) or "unreadable")
        os.remove(self.path)
        continue
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)
      self._held = True
      return
    raise WorkdirBusyError(f"could not take {self.path}: another run took it at the same time")

  def release(self) -> None:
    if self._held:
      self._held = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  @staticmethod
  def _stale(holder: dict) -> bool:
    if not holder:
      return True
    if holder.get("host") == socket.gethostname():
      return not _alive(int(holder.get("pid", -1)))
    return False

  def _busy_message(self, holder: dict) -> str:
    workdir = os.path.dirname(self.path)
    return (f"workdir {workdir} is in use by another run ({_describe(holder)}). Wait for it, "
            f"use another --workdir, or, if that run is dead (another host cannot be checked "
            f"from here), delete {self.path}")

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


def _describe(holder: dict) -> str:
  if not holder:
    return ""
  return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
