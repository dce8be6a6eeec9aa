"""Test-wide setup: 4 fake CPU devices for mesh tests, and the `slow`/`gpu` markers."""
import os

# Must happen before JAX initialises its backend: every test process sees 4 CPU devices, so
# sharded-versus-dense checks need no special runner. Single-device code still runs on device 0.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests compile in parallel processes: no shared persistent cache (its own test passes a folder).
os.environ.setdefault("GOAL_JAX_COMPILATION_CACHE", "")

import pytest  # noqa: E402


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
