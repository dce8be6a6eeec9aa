"""Runs a command as N cooperating JAX processes on this machine (a localhost coordinator).

Each process gets `GOAL_JAX_COORDINATOR`/`GOAL_JAX_NUM_PROCESSES`/`GOAL_JAX_PROCESS_ID`, so any
command that calls `goal_jax.distributed.initialize()` first (the trainer, a test worker) joins the
same job, and `--xla_force_host_platform_device_count` fakes its CPU devices: 2 processes x 2
devices behave like one 2-host job with 4 devices. For example:

  results = run_processes([sys.executable, "-m", "goal_jax.train", "--config=...", ...])
  results = run_python(WORKER_SOURCE, num_processes=2, devices_per_process=2)
"""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class ProcessResult:
  process_id: int
  returncode: int
  stdout: str
  stderr: str


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, port: int, devices_per_process: int,
                extra: Mapping[str, str] | None = None) -> dict[str, str]:
  """This process's environment: the cluster variables, CPU only, its own fake device count."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GOAL_JAX_"))}
  env.update({
      "GOAL_JAX_COORDINATOR": f"localhost:{port}",
      "GOAL_JAX_NUM_PROCESSES": str(num_processes),
      "GOAL_JAX_PROCESS_ID": str(process_id),
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
      "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
  })
  env.update(extra or {})
  return env


def run_processes(command: Sequence[str] | Callable[[int], Sequence[str]], *,
                  num_processes: int = 2, devices_per_process: int = 2,
                  env: Mapping[str, str] | None = None, timeout: float = 180,
                  cwd: str = REPO_ROOT, check: bool = True) -> list[ProcessResult]:
  """Starts `command` (or `command(process_id)`) once per process and waits for all of them.

  With `check`, any failure raises an AssertionError holding every process's output (a process
  whose peer died usually fails too, so the first error is what matters).
  """
  port = free_port()
  procs = []
  for i in range(num_processes):
    argv = list(command(i) if callable(command) else command)
    procs.append(subprocess.Popen(
        argv, cwd=cwd, env=process_env(i, num_processes, port, devices_per_process, env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  results = []
  try:
    for i, proc in enumerate(procs):
      stdout, stderr = proc.communicate(timeout=timeout)
      results.append(ProcessResult(i, proc.returncode, stdout, stderr))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  if check and any(r.returncode for r in results):
    report = "\n".join(f"--- process {r.process_id}: exit {r.returncode}\nstdout:\n{r.stdout}\n"
                       f"stderr (tail):\n{r.stderr[-4000:]}" for r in results)
    raise AssertionError(f"a process of the {num_processes}-process job failed:\n{report}")
  return results


def run_python(source: str, **kwargs) -> list[ProcessResult]:
  """`run_processes` of `python -c source`."""
  return run_processes([sys.executable, "-c", source], **kwargs)
