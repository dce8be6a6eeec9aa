"""One run per workdir: a lock file naming its holder, taken at start and dropped on every exit.

Two trainers in one workdir interleave `metrics.jsonl`, overwrite each other's `config.json` and
collide at their first checkpoint. The lock is `files.FolderLock` (`<workdir>/RUNNING.lock`,
holding `{host, pid, started, command}`): a live holder is named in the refusal, a stale one (a
killed run on this host) is taken over with a warning. On several processes only process 0 takes
it.
"""
from __future__ import annotations

from goal_jax import files

LOCK_FILE = files.LOCK_FILE


class WorkdirBusyError(files.FolderBusyError):
  """Another live run holds the workdir."""


class WorkdirLock(files.FolderLock):
  """`with WorkdirLock(workdir):` — refuses to enter while another live run holds `workdir`."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    super().__init__(workdir, what="workdir", advice="use another --workdir", enabled=enabled,
                     error=WorkdirBusyError)
