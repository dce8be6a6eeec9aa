"""Multi-process start-up: `initialize()` first thing in a command, before any JAX computation.

One process per host (TPU VM worker, GPU node or SLURM task) joins the others through
`jax.distributed.initialize`; after it, `jax.devices()` lists every device of the job and the mesh
spans all hosts. Where the cluster comes from, first match wins:

1. explicit arguments (a command's flags);
2. `GOAL_JAX_COORDINATOR` (host:port), `GOAL_JAX_NUM_PROCESSES`, `GOAL_JAX_PROCESS_ID` and
   optionally `GOAL_JAX_LOCAL_DEVICE_IDS` (comma list), for any GPU cluster;
3. SLURM (`srun`): `SLURM_NTASKS`, `SLURM_PROCID`, the first host of `SLURM_STEP_NODELIST`; the
   port is `GOAL_JAX_COORDINATOR_PORT` or derived from `SLURM_JOB_ID`;
4. a Cloud TPU VM (libtpu installed and TPU chips present): JAX asks the TPU metadata itself;
5. `GOAL_JAX_DISTRIBUTED=auto`: let JAX detect any cluster it knows (Open MPI, Kubernetes, ...).

Otherwise, and always on Colab, the job is one process and nothing happens (a bare
`jax.distributed.initialize()` on a single GPU host raises "coordinator_address should be
defined"). `GOAL_JAX_DISTRIBUTED=0` turns every case off. Detection only reads the environment
and files, so it never starts a JAX backend (that would make initialisation impossible).
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
import sys
from collections.abc import Mapping, Sequence

from absl import logging
import jax

ENV_COORDINATOR = "GOAL_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "GOAL_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "GOAL_JAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "GOAL_JAX_LOCAL_DEVICE_IDS"
ENV_COORDINATOR_PORT = "GOAL_JAX_COORDINATOR_PORT"
ENV_MODE = "GOAL_JAX_DISTRIBUTED"  # "0": never; "auto": JAX's own cluster detection
_OFF = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """How this process joins the job; `None` fields are left to JAX's cluster detection."""
  source: str  # "args", "env", "slurm", "tpu" or "auto"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None

  def initialize_kwargs(self) -> dict:
    """Arguments of `jax.distributed.initialize`.

    A fully resolved spec turns JAX's own detection off: under SLURM it would otherwise restrict
    each process to the GPU numbered by its local task id, i.e. one GPU per node here.
    """
    if self.coordinator_address is None:
      return {}
    kwargs = dict(coordinator_address=self.coordinator_address, num_processes=self.num_processes,
                  process_id=self.process_id, cluster_detection_method="deactivate")
    if self.local_device_ids is not None:
      kwargs["local_device_ids"] = list(self.local_device_ids)
    return kwargs


def on_colab(env: Mapping[str, str] | None = None) -> bool:
  env = os.environ if env is None else env
  return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in env


def on_cloud_tpu_vm(env: Mapping[str, str] | None = None) -> bool:
  """libtpu is installed and the host has TPU chips (device files), or GKE names the workers."""
  env = os.environ if env is None else env
  if importlib.util.find_spec("libtpu") is None:
    return False
  has_chips = bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))
  return has_chips or "TPU_WORKER_HOSTNAMES" in env or "TPU_PROCESS_ADDRESSES" in env


def first_slurm_host(nodelist: str) -> str:
  """The first host of a SLURM host list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
  match = re.match(r"([^,\[]+)(?:\[([^,\-\]]+))?", nodelist.strip())
  if not match:
    raise ValueError(f"cannot read a host from SLURM node list {nodelist!r}")
  prefix, first_index = match.groups()
  return prefix + (first_index or "")


def _int(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env[name])
  except ValueError:
    raise ValueError(f"${name}={env[name]!r} must be an integer") from None


def _device_ids(text: str | None) -> tuple[int, ...] | None:
  if not text:
    return None
  try:
    return tuple(int(x) for x in text.split(","))
  except ValueError:
    raise ValueError(f"${ENV_LOCAL_DEVICE_IDS}={text!r} must be integers joined by ','") from None


def _from_env(env: Mapping[str, str]) -> ClusterSpec | None:
  names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
  given = [n for n in names if env.get(n)]
  if not given:
    return None
  if len(given) != len(names):
    missing = sorted(set(names) - set(given))
    raise ValueError(f"{', '.join('$' + n for n in given)} set but {', '.join(missing)} not: "
                     "set all three (coordinator host:port, process count, this process's id)")
  return ClusterSpec("env", env[ENV_COORDINATOR], _int(env, ENV_NUM_PROCESSES),
                     _int(env, ENV_PROCESS_ID), _device_ids(env.get(ENV_LOCAL_DEVICE_IDS)))


def _from_slurm(env: Mapping[str, str]) -> ClusterSpec | None:
  tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
  if not tasks or "SLURM_PROCID" not in env or int(tasks) <= 1:
    return None  # not under srun, or a single task
  nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
  if not nodelist:
    raise ValueError("SLURM_PROCID is set but neither SLURM_STEP_NODELIST nor "
                     "SLURM_JOB_NODELIST is: cannot find the coordinator host")
  # A port both derived from the job (two jobs on one node do not collide) and ephemeral.
  port = env.get(ENV_COORDINATOR_PORT) or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
  device_ids = _device_ids(env.get(ENV_LOCAL_DEVICE_IDS))
  tasks_per_node = int(env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0] or 1)
  if device_ids is None and tasks_per_node > 1 and "SLURM_LOCALID" in env:
    device_ids = (_int(env, "SLURM_LOCALID"),)  # one GPU per task
  return ClusterSpec("slurm", f"{first_slurm_host(nodelist)}:{port}", int(tasks),
                     _int(env, "SLURM_PROCID"), device_ids)


def cluster_spec(coordinator_address: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
                 env: Mapping[str, str] | None = None) -> ClusterSpec | None:
  """How to join the job (see the module docstring), or None for a single process."""
  env = os.environ if env is None else env
  if env.get(ENV_MODE, "").lower() in _OFF or on_colab(env):
    return None
  if num_processes is not None:
    if num_processes <= 1:
      return None
    if coordinator_address is None or process_id is None:
      raise ValueError(f"num_processes={num_processes} needs coordinator_address and process_id")
    return ClusterSpec("args", coordinator_address, num_processes, process_id,
                       None if local_device_ids is None else tuple(local_device_ids))
  spec = _from_env(env) or _from_slurm(env)
  if spec is not None:
    return spec if spec.num_processes > 1 else None
  if on_cloud_tpu_vm(env):
    return ClusterSpec("tpu")
  if env.get(ENV_MODE, "").lower() == "auto":
    return ClusterSpec("auto")
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               env: Mapping[str, str] | None = None) -> ClusterSpec | None:
  """Joins the multi-process job if there is one; returns how, or None for a single process.

  Idempotent: a second call (e.g. the demo's nested runs) does nothing.
  """
  spec = cluster_spec(coordinator_address, num_processes, process_id, local_device_ids, env)
  if spec is None or jax.distributed.is_initialized():
    return spec
  logging.info("jax.distributed.initialize from %s: %s", spec.source, spec)
  try:
    jax.distributed.initialize(**spec.initialize_kwargs())
  except RuntimeError as e:
    raise RuntimeError(f"joining the {spec.source} cluster {spec} failed: {e}. "
                       "goal_jax.distributed.initialize() must run before any JAX computation "
                       "(jax.devices(), jnp arrays, jit).") from e
  logging.info("process %d of %d; %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return spec
