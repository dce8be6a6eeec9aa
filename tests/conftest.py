"""Test-wide setup: 4 fake CPU devices for mesh tests, a compilation cache per test process,
and the `slow`/`gpu` markers."""
import atexit
import os
import shutil
import tempfile

# Must happen before JAX initialises its backend: every test process sees 4 CPU devices, so
# sharded-versus-dense checks need no special runner. Single-device code still runs on device 0.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests compile in parallel processes: no shared persistent cache (its own test passes a folder).
os.environ.setdefault("GOAL_JAX_COMPILATION_CACHE", "")

import pytest  # noqa: E402


def _cache_compilations_in_this_process():
  """Many tests compile the same program (the tiny recipes' steps, run after run): JAX's
  persistent cache in a folder of this process's own (xdist's workers write at once, and a
  cache entry is not written atomically) loads it instead, which the results cannot tell apart.
  `GOAL_JAX_TEST_CACHE=0` turns it off. Commands the tests start keep the cache off
  (`GOAL_JAX_COMPILATION_CACHE`, above) unless a test gives them one."""
  if os.environ.get("GOAL_JAX_TEST_CACHE", "1") == "0":
    return
  import jax  # pylint: disable=g-import-not-at-top
  folder = tempfile.mkdtemp(prefix="goal_jax_test_cache_")
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_cache_compilations_in_this_process()


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
  skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
  has_gpu = False
  try:
    import jax
    has_gpu = any(d.platform == "gpu" for d in jax.devices())
  except Exception:  # pragma: no cover - JAX missing or broken is reported by the tests themselves
    pass
  skip_gpu = pytest.mark.skip(reason="needs a GPU")
  for item in items:
    if "slow" in item.keywords and not config.getoption("--runslow"):
      item.add_marker(skip_slow)
    if "gpu" in item.keywords and not has_gpu:
      item.add_marker(skip_gpu)
