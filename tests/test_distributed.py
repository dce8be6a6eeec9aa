"""`goal_jax.distributed`: detection rules, and a real 2-process job on a localhost coordinator."""
import json
import subprocess
import sys

import numpy as np
import pytest

from goal_jax import distributed
import _multiprocess as multiprocess  # tests/ is on sys.path under pytest.

# Each process holds half of a global batch of 8 pairs on its 2 devices; the job's mesh spans all
# 4 devices. The data is a function of the seed, so the test can rebuild it whole.
_WORKER = r"""
import json
import numpy as np
from goal_jax import distributed
spec = distributed.initialize()  # from GOAL_JAX_* (tests/_multiprocess.py)
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from goal_jax.losses import contrastive
from goal_jax import sharding

rng = np.random.default_rng(0)
unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
image, text = unit(rng.normal(size=(8, 16))), unit(rng.normal(size=(8, 16)))
values = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
mesh = sharding.make_mesh((("data", -1),))
rows = slice(jax.process_index() * 4, (jax.process_index() + 1) * 4)
put = lambda x: jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), x[rows])
logit_scale = jnp.log(jnp.float32(10.0))

psum = jax.jit(jax.shard_map(lambda x: jax.lax.psum(jnp.sum(x), "data"), mesh=mesh,
                             in_specs=P("data"), out_specs=P()))(put(values))
objective = lambda i, t, axis_name: contrastive.infonce(i, t, logit_scale, axis_name=axis_name)
sharded = jax.jit(contrastive.data_parallel(objective, mesh))(put(image), put(text))
with jax.set_mesh(mesh):
  gspmd = jax.jit(lambda i, t: contrastive.infonce(i, t, logit_scale),
                  out_shardings=sharding.replicated(mesh))(put(image), put(text))
local = lambda x: float(np.asarray(x.addressable_data(0)))
print(json.dumps(dict(source=spec.source, process_index=jax.process_index(),
                      process_count=jax.process_count(), device_count=jax.device_count(),
                      local_device_count=jax.local_device_count(), psum=local(psum),
                      sharded_infonce=local(sharded), gspmd_infonce=local(gspmd))))
"""


def _numpy_infonce(image, text, scale):
  """Symmetric InfoNCE by hand: mean cross-entropy of both directions, diagonal targets."""
  image = image / np.linalg.norm(image, axis=1, keepdims=True)
  text = text / np.linalg.norm(text, axis=1, keepdims=True)
  logits = scale * image.astype(np.float64) @ text.T.astype(np.float64)

  def ce(x):
    x = x - x.max(axis=1, keepdims=True)
    return np.mean(np.log(np.exp(x).sum(axis=1)) - np.diag(x))

  return (ce(logits) + ce(logits.T)) / 2


def test_two_processes_match_one():
  results = multiprocess.run_python(_WORKER, num_processes=2, devices_per_process=2, timeout=240)
  outputs = [json.loads(r.stdout.strip().splitlines()[-1]) for r in results]
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
  expected_loss = _numpy_infonce(image, text, 10.0)
  assert [o["process_index"] for o in outputs] == [0, 1]
  for o in outputs:
    assert o["source"] == "env"
    assert (o["process_count"], o["device_count"], o["local_device_count"]) == (2, 4, 2)
    assert o["psum"] == float(np.arange(24).sum())
    np.testing.assert_allclose(o["sharded_infonce"], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(o["gspmd_infonce"], expected_loss, rtol=1e-5)


def test_single_process_is_a_no_op():
  env = {"PATH": "/usr/bin"}
  assert distributed.initialize(env=env) is None
  assert distributed.initialize(num_processes=1, env=env) is None
  import jax  # noqa: PLC0415
  assert not jax.distributed.is_initialized()


def test_initialize_after_backend_use_names_the_fix():
  source = ("import jax; jax.devices()\n"
            "from goal_jax import distributed\n"
            "distributed.initialize('localhost:1', 2, 0)\n")
  proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                        cwd=multiprocess.REPO_ROOT, timeout=120,
                        env=multiprocess.process_env(0, 1, 1, 1))
  assert proc.returncode != 0
  assert "must run before any JAX computation" in proc.stderr


@pytest.mark.parametrize("nodelist, host", [
    ("node7", "node7"), ("node7,other2", "node7"), ("gpu[003-005,9],cpu1", "gpu003"),
    ("a-b[12,14]", "a-b12"), ("x[0001]", "x0001")])
def test_first_slurm_host(nodelist, host):
  assert distributed.first_slurm_host(nodelist) == host


def test_slurm_spec():
  env = {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_JOB_ID": "20123",
         "SLURM_STEP_NODELIST": "gpu[010-013]", "SLURM_LOCALID": "0"}
  spec = distributed.cluster_spec(env=env)
  assert spec == distributed.ClusterSpec("slurm", "gpu010:20123", 4, 3, None)
  assert spec.initialize_kwargs() == dict(coordinator_address="gpu010:20123", num_processes=4,
                                          process_id=3, cluster_detection_method="deactivate")
  per_gpu = {**env, "SLURM_NTASKS_PER_NODE": "2", "SLURM_LOCALID": "1",
             "GOAL_JAX_COORDINATOR_PORT": "7777"}
  spec = distributed.cluster_spec(env=per_gpu)
  assert (spec.coordinator_address, spec.local_device_ids) == ("gpu010:7777", (1,))
  assert spec.initialize_kwargs()["local_device_ids"] == [1]
  assert distributed.cluster_spec(env={**env, "SLURM_NTASKS": "1"}) is None  # one task: no job


def test_env_spec_and_precedence():
  env = {"GOAL_JAX_COORDINATOR": "10.0.0.1:1234", "GOAL_JAX_NUM_PROCESSES": "2",
         "GOAL_JAX_PROCESS_ID": "1", "GOAL_JAX_LOCAL_DEVICE_IDS": "0,1",
         "SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_STEP_NODELIST": "n1"}
  assert distributed.cluster_spec(env=env) == distributed.ClusterSpec(
      "env", "10.0.0.1:1234", 2, 1, (0, 1))
  spec = distributed.cluster_spec("h:1", 3, 2, env=env)  # explicit arguments win
  assert (spec.source, spec.coordinator_address, spec.num_processes) == ("args", "h:1", 3)
  assert distributed.cluster_spec(env={**env, "GOAL_JAX_DISTRIBUTED": "0"}) is None
  assert distributed.cluster_spec(env={**env, "COLAB_RELEASE_TAG": "release-colab"}) is None
  auto = distributed.cluster_spec(env={"GOAL_JAX_DISTRIBUTED": "auto"})
  assert (auto.source, auto.initialize_kwargs()) == ("auto", {})  # JAX detects everything


def test_bad_environment_is_named():
  with pytest.raises(ValueError, match="GOAL_JAX_PROCESS_ID"):
    distributed.cluster_spec(env={"GOAL_JAX_COORDINATOR": "h:1", "GOAL_JAX_NUM_PROCESSES": "2"})
  with pytest.raises(ValueError, match=r"GOAL_JAX_NUM_PROCESSES='two'"):
    distributed.cluster_spec(env={"GOAL_JAX_COORDINATOR": "h:1", "GOAL_JAX_NUM_PROCESSES": "two",
                                  "GOAL_JAX_PROCESS_ID": "0"})
  with pytest.raises(ValueError, match="coordinator_address"):
    distributed.cluster_spec(num_processes=2, env={})
