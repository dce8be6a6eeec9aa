r"""A method's training step compiled for an H100 on a machine without one (no autotuning).

  pip install "jax-cuda12-plugin==$V" "jax-cuda12-pjrt==$V"   # V: the installed jax's version
  JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 JAX_PLATFORMS=cpu python -m goal_jax.bench.gpu_compile \
      --methods=global,goal --batch=64 --candidates=free_layout --match='\[248,\d+,(64|128)\]'

JAX's CUDA plugin compiles for a GPU described by its target config (`h100_target.txtpb`, the
H100 SXM's published figures) through a compile-only device
(`jax.experimental.topologies.get_topology_desc(platform="cuda", ...)`), with no CUDA library or
GPU. What XLA decides there is what it decides on the GPU (fusions, layouts, custom calls),
except each matrix product's kernel, which the GPU's autotuner picks; timing needs a GPU.
MulCLIP's step compiles with `--notriton_gemm` (cuBLAS for every product) only. JAX's
cuDNN attention asks the installed cuDNN and the device for their versions, so those two answers
are given as an H100's (cuDNN 9.10, sm_90) and the rest is JAX's own code.

For each method (and each `--candidates`, beside the step as built) it prints the kernels the
step launches, the device memory XLA plans for it (how `--remat=auto` decides, here for an H100
without one), the GB its memory-bound kernels move per step (each kernel's results and
distinct operands, `profile`'s count: what a candidate saves in traffic, not in time), the
custom calls by target, and how many arrays in the compiled HLO match `--match` (a layout
question, e.g. the text tower's batch-innermost arrays that this found: README,
Measurements); `--hlo_dir` keeps each compiled HLO.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
from typing import Any

from absl import flags
import jax

from goal_jax import cli
from goal_jax import methods
from goal_jax import sharding
from goal_jax.bench import candidates as candidates_lib
from goal_jax.bench import profile
from goal_jax.bench import remat as remat_lib
from goal_jax.bench import steps as steps_lib
from goal_jax.models import attention as attention_lib
from goal_jax.models import families
from goal_jax.models import param_tree
from goal_jax.training import loop

FLAGS = flags.FLAGS
TARGET_CONFIG = os.path.join(os.path.dirname(__file__), "h100_target.txtpb")
_KERNEL = re.compile(r"^\s+%\S+ = .*? (fusion|custom-call)\(")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def define_flags() -> None:
  flags.DEFINE_list("methods", ["global"], f"Of {sorted(methods.REGISTRY)}.")
  flags.DEFINE_string("variant", "B/16", "Model variant.")
  flags.DEFINE_integer("batch", 64, "Global batch.", lower_bound=1)
  flags.DEFINE_list("candidates", [], "Also compile these (bench/candidates.py), or all.")
  flags.DEFINE_string("match", "", "Count the compiled HLO's arrays whose shape matches this "
                      r"regular expression (e.g. '\[248,\d+,64\]').")
  flags.DEFINE_string("hlo_dir", None, "Write each compiled HLO here.")
  flags.DEFINE_enum("remat", "", ("", "dots", "full"), "The steps' rematerialisation; each line "
                    "prints the device memory XLA plans for the step (`remat.planned_bytes`).")
  flags.DEFINE_bool("triton_gemm", True, "False: every matrix product through cuBLAS "
                    "(`xla_gpu_enable_triton_gemm`). Without a GPU's autotuner MulCLIP's step "
                    "stops in a Triton tiling check (its token aggregation's [*, 102] products).")


def compile_only_device() -> jax.Device:
  """An H100 to compile for; needs JAX's CUDA plugin (see the module docstring)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  with open(TARGET_CONFIG) as f:
    target = f.read()
  try:
    return topologies.get_topology_desc("h100", "cuda", target_config=target,
                                        topology="1x1x1").devices[0]
  except (NotImplementedError, RuntimeError) as e:
    raise cli.Error("no CUDA compiler: pip install jax-cuda12-plugin and jax-cuda12-pjrt at "
                    f"jax {jax.__version__}, and set JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 "
                    f"JAX_PLATFORMS=cpu ({type(e).__name__}: {str(e)[:80]})") from None


def answer_cudnn_as_on_h100() -> None:
  """JAX's cuDNN attention checks: the installed cuDNN's version and the device's compute
  capability, answered as an H100's (nothing else of JAX's code is replaced)."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn  # pylint: disable=g-import-not-at-top
  sm = lambda capability: tuple(int(x) for x in capability.split("."))
  cudnn.check_cudnn_version = lambda: 91000
  cudnn.check_compute_capability = lambda capability: sm(capability) <= (9, 0)
  cudnn.is_cuda_compute_capability_equal = lambda capability: sm(capability) == (9, 0)


def compile_step(method: str, variant: str, batch: int, device: jax.Device,
                 candidate: candidates_lib.Candidate | None = None,
                 compiler_options: dict[str, Any] | None = None,
                 remat: str = "") -> jax.stages.Compiled:
  """`method`'s training step (cuDNN attention, bf16, `remat`) compiled for `device`, with the
  candidate's compiler options over `compiler_options`."""
  config = steps_lib.method_config(method, variant, batch, attention="cudnn", dtype="bfloat16",
                                   remat=remat)
  c = loop.model_config_from(config, None)
  if candidate is not None:
    c = dataclasses.replace(c, **candidate.model_overrides)
    config.input.update(candidate.input_overrides)
  mesh = jax.sharding.Mesh([device], (attention_lib.BATCH_AXIS,))
  method_ = methods.get(method)
  params = param_tree.merge(families.of(c).abstract_params(c),
                            method_.abstract_extra_params(config.loss, c))
  training = loop.build_training(config, c, params, mesh, config.optim.warmup_steps + 2)
  host = steps_lib.host_batch_for(config, c, batch)
  on_mesh = sharding.batch_sharding(mesh)
  batch_shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=on_mesh)
                  for k, v in host.items()}
  with jax.set_mesh(mesh):
    lowered = training.step_fn.lower(training.abstract_state, batch_shapes)
    options = {**(compiler_options or {}), **(candidate.compiler_options if candidate else {})}
    return lowered.compile(compiler_options=options or None)


def describe(hlo_text: str, match: str = "") -> dict[str, Any]:
  """Kernels the entry computation launches, custom calls by target, arrays matching `match`,
  and the GB the memory-bound kernels move (`profile`'s bytes and categories: layer norm,
  elementwise, optimizer update, copy/transpose, loss), the time they take at a bandwidth."""
  entry = hlo_text[hlo_text.index("\nENTRY"):].splitlines()[1:]
  kernels = [line for line in entry if _KERNEL.match(line)]
  targets = collections.Counter(t for line in kernels for t in _TARGET.findall(line))
  matching = len(re.findall(match, hlo_text)) if match else None
  ops = profile.parse_hlo(hlo_text)
  moved = collections.Counter()
  for line in kernels:
    op = ops[profile.INSTRUCTION.match(line).group("name")]
    moved[profile.categorise(op)] += op.bytes / 1e9
  return dict(kernels=len(kernels), custom_calls=dict(sorted(targets.items())),
              matching=matching,
              memory_bound_gb=sum(moved[c] for c in profile.MEMORY_BOUND))


def main(argv) -> None:
  cli.check_args(argv)
  chosen = [None, *candidates_lib.parse(FLAGS.candidates)] if FLAGS.candidates else [None]
  answer_cudnn_as_on_h100()
  device = compile_only_device()
  for method in FLAGS.methods:
    for candidate in (c for c in chosen if c is None or c.applies_to(method)):
      name = candidates_lib.impl_name(candidate)
      compiled = compile_step(method, FLAGS.variant, FLAGS.batch, device, candidate,
                              None if FLAGS.triton_gemm else {"xla_gpu_enable_triton_gemm": False},
                              remat=FLAGS.remat)
      text = compiled.as_text()
      if FLAGS.hlo_dir:
        os.makedirs(FLAGS.hlo_dir, exist_ok=True)
        path = os.path.join(FLAGS.hlo_dir, f"{method}_{name}.hlo.txt")
        with open(path, "w") as f:
          f.write(text)
      d = describe(text, FLAGS.match)
      calls = ", ".join(f"{k} {v}" for k, v in d["custom_calls"].items())
      print(f"{method:8} {name:28} kernels {d['kernels']:5d}"
            + f"  memory-bound GB {d['memory_bound_gb']:6.2f}"
            + f"  planned GiB {remat_lib.planned_bytes(compiled) / 2 ** 30:6.1f}"
            + ("" if d["matching"] is None else f"  matching {d['matching']:5d}")
            + f"  custom calls: {calls}", flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
