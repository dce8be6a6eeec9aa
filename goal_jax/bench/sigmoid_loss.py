r"""The sigmoid loss's two sharded forms, measured in one run: the chunked ring (`ppermute`)
against all-gathering the texts, value and gradients, on every device of this machine.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m goal_jax.bench.sigmoid_loss \
      --batch=4096 --dim=768

Prints per form the compiled step's temporary memory per device (XLA's memory analysis) and its
time, then ring/gather ratios; a ratio is what the table in the README reports, not a timing
to assert in a test.
"""
from __future__ import annotations

import functools
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from goal_jax import cli
from goal_jax import sharding
from goal_jax.losses import contrastive
from goal_jax.losses import sigmoid

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_integer("batch", 4096, "Global batch (pairs).", lower_bound=1)
  flags.DEFINE_integer("dim", 768, "Embedding width.", lower_bound=1)
  flags.DEFINE_integer("steps", 5, "Timed calls.", lower_bound=1)


def measure(batch: int, dim: int, steps: int = 5) -> dict[str, dict[str, float]]:
  """{form: {temp_bytes, seconds}} of `value_and_grad` of the sharded loss at `batch`."""
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  image, text = (jax.device_put(unit(rng.normal(size=(batch, dim)).astype(np.float32)),
                                sharding.batch_sharding(mesh)) for _ in range(2))
  out = {}
  for form in sigmoid.FORMS:
    def loss(i, t, form=form):
      return contrastive.data_parallel(functools.partial(
          sigmoid.sigmoid_loss, logit_scale=jnp.log(10.0), logit_bias=-10.0, form=form),
          mesh)(i, t)
    with jax.set_mesh(mesh):
      compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(image, text).compile()
      jax.block_until_ready(compiled(image, text))
      start = time.perf_counter()
      for _ in range(steps):
        result = compiled(image, text)
      jax.block_until_ready(result)
    memory = compiled.memory_analysis()
    out[form] = {"temp_bytes": float(getattr(memory, "temp_size_in_bytes", float("nan"))),
                 "seconds": (time.perf_counter() - start) / steps}
  return out


def main(argv):
  cli.check_args(argv)
  devices = jax.device_count()
  if FLAGS.batch % devices:
    cli.fail(f"--batch={FLAGS.batch} must be a multiple of the {devices} devices", code=2)
  result = measure(FLAGS.batch, FLAGS.dim, FLAGS.steps)
  print(f"{devices} x {jax.devices()[0].device_kind}, batch {FLAGS.batch}, dim {FLAGS.dim}")
  for form, values in result.items():
    print(f"  {form:<6} temp {values['temp_bytes'] / 2**20:8.1f} MiB per device, "
          f"{1e3 * values['seconds']:8.1f} ms per value_and_grad")
  ring, gather = result["ring"], result["gather"]
  print(f"  ring/gather: memory {ring['temp_bytes'] / gather['temp_bytes']:.2f}, "
        f"time {ring['seconds'] / gather['seconds']:.2f}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
