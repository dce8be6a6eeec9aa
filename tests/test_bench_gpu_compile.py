"""`bench.gpu_compile`: a training step compiled for an H100 on a machine without a GPU."""
import importlib.util
import os
import subprocess
import sys

import pytest

from goal_jax.bench import gpu_compile

HLO = """HloModule jit_train_step

%fused_add (p0: bf16[248,512,64]) -> bf16[248,512,64] {
  ROOT %p0 = bf16[248,512,64]{2,1,0} parameter(0)
}

ENTRY %main (a: bf16[248,512,64]) -> bf16[64,248,512] {
  %a = bf16[248,512,64]{2,1,0} parameter(0)
  %loop_add_fusion = bf16[248,512,64]{2,1,0} fusion(%a), kind=kLoop, calls=%fused_add
  %custom-call.1 = (bf16[64,8,248,64]{3,1,2,0}, u8[0]{0}) custom-call(%a), custom_call_target="__cudnn$fmhaSoftmax"
  %custom-call.2 = (bf16[64,8,248,64]{3,1,2,0}, u8[0]{0}) custom-call(%a), custom_call_target="__cudnn$fmhaSoftmax"
  %bitcast.1 = bf16[64,248,512]{2,1,0} bitcast(%loop_add_fusion)
  ROOT %copy.1 = bf16[64,248,512]{2,1,0} copy(%bitcast.1)
}
"""


def _has_cuda_compiler() -> bool:
  try:
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  except ModuleNotFoundError:  # no jax_plugins package at all
    return False


HAS_CUDA_COMPILER = _has_cuda_compiler()


def test_describe_counts_kernels_custom_calls_and_matching_arrays():
  d = gpu_compile.describe(HLO, r"\[248,\d+,64\]")
  # The one memory-bound kernel (the fusion, a copy) reads and writes 248 x 512 x 64 bf16.
  assert d == dict(kernels=3, custom_calls={"__cudnn$fmhaSoftmax": 2}, matching=6,
                   memory_bound_gb=pytest.approx(2 * 248 * 512 * 64 * 2 / 1e9))
  assert gpu_compile.describe(HLO)["matching"] is None


def _run(*args, **env):
  return subprocess.run([sys.executable, "-m", "goal_jax.bench.gpu_compile", *args],
                        capture_output=True, text=True, timeout=900,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", **env})


@pytest.mark.skipif(HAS_CUDA_COMPILER, reason="JAX's CUDA plugin is installed here")
def test_without_the_cuda_plugin_it_says_what_to_install():
  proc = _run("--methods=global", "--variant=tiny/8", "--batch=8")
  assert proc.returncode == 1
  assert "error: no CUDA compiler: pip install jax-cuda12-plugin and jax-cuda12-pjrt" in proc.stderr


@pytest.mark.skipif(not HAS_CUDA_COMPILER, reason="needs JAX's CUDA plugin (module docstring)")
@pytest.mark.parametrize("method, extra", [("global", ()), ("mulclip", ("--notriton_gemm",))])
def test_the_layout_pin_keeps_the_text_tower_row_major_on_an_h100(method, extra):
  """Without the pin XLA lays the text tower out batch-innermost (README, Measurements).
  MulCLIP's step compiles without a GPU only with every product through cuBLAS."""
  proc = _run(f"--methods={method}", "--variant=B/16", "--batch=64", "--candidates=free_layout",
              r"--match=\[(248|80),\d+,(64|576)\]", *extra, JAX_SKIP_CUDA_CONSTRAINTS_CHECK="1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  built, free = [line.split() for line in proc.stdout.splitlines()]
  assert built[1] == "goal_jax" and int(built[built.index("matching") + 1]) == 0
  assert free[1] == "goal_jax+free_layout" and int(free[free.index("matching") + 1]) > 100


@pytest.mark.skipif(not HAS_CUDA_COMPILER, reason="needs JAX's CUDA plugin (module docstring)")
def test_xla_plans_less_memory_the_more_is_recomputed_on_an_h100():
  """What `--remat=auto` reads (`remat.planned_bytes`), for the GPU it decides for; on a CPU the
  plans hardly differ."""
  planned = {}
  for option in ("", "dots", "full"):
    proc = _run("--methods=global", "--variant=B/16", "--batch=64", f"--remat={option}",
                JAX_SKIP_CUDA_CONSTRAINTS_CHECK="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    words = proc.stdout.split()
    planned[option] = float(words[words.index("planned") + 2])
  assert planned[""] > planned["dots"] > planned["full"] > 1.0  # GiB
