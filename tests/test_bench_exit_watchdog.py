"""The bench's exit watchdog: a process held at exit by a library ends, telling what held it."""
import os
import subprocess
import sys
import textwrap
import time

HELD = textwrap.dedent("""
    import sys, threading
    from goal_jax.bench import exit_watchdog

    def pool_manager_of_some_library():
      threading.Event().wait()  # joined at exit, never done

    threading.Thread(target=pool_manager_of_some_library).start()  # not a daemon: exit waits
    print("results written", flush=True)
    exit_watchdog.arm(float(sys.argv[1]))
""")
FREE = textwrap.dedent("""
    import sys
    from goal_jax.bench import exit_watchdog
    print("results written", flush=True)
    exit_watchdog.arm(float(sys.argv[1]))
""")


def _run(script, seconds):
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-c", script, str(seconds)], capture_output=True,
                        text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return proc, time.monotonic() - start


def test_a_process_held_at_exit_ends_with_the_stacks_that_held_it():
  proc, elapsed = _run(HELD, 2)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == "results written\n"
  assert "had not exited 2 s later" in proc.stderr
  assert "in pool_manager_of_some_library" in proc.stderr  # the thread that held the exit
  assert elapsed < 60


def test_a_process_that_exits_is_not_kept_by_the_watchdog():
  proc, elapsed = _run(FREE, 30)
  assert (proc.returncode, proc.stdout, proc.stderr) == (0, "results written\n", "")
  assert elapsed < 30  # neither timer outlives the process
