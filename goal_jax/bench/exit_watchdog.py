"""A bench process ends once its results are written, whatever it imported.

On an H200 on 2026-11-25 a bench process printed its tables and wrote its JSON, then had not
exited 200 s later, holding the device lease. Exit hangs of this kind live in other libraries'
shutdown (a thread or worker pool joined at exit, e.g. `torch.compile`'s compile workers), which
this project cannot fix and a CPU cannot reproduce. So once the results are out, `arm` starts a
watchdog: if the process is still alive `seconds` later, it prints every thread's stack (what
held the exit, for the next lease to read) and ends the process with status 0, the results being
complete. A C-level timer (`faulthandler`) does the same with status 1 should Python itself be
stuck holding the GIL.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time

EXIT_GRACE_S = 60.0


def arm(seconds: float = EXIT_GRACE_S) -> None:
  """Call when the results are written; returns at once."""

  def end() -> None:
    time.sleep(seconds)
    print(f"bench: the results are written, but the process had not exited {seconds:.0f} s "
          "later; the threads' stacks follow, then it ends (status 0)", file=sys.stderr,
          flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(0)  # pylint: disable=protected-access

  threading.Thread(target=end, name="exit-watchdog", daemon=True).start()
  faulthandler.dump_traceback_later(seconds + 30, exit=True, file=sys.stderr)
