"""`--remat=auto`: the least rematerialisation whose compiled step fits the device.

Recomputation costs time (about one more forward for `full`, less for `dots`), so the best
choice is the first of `""`, `dots`, `full` whose step fits the device's memory. What fits is
read from XLA's own plan for the compiled step (`planned_bytes`: per device, its arguments, the
outputs not aliased to them and its temporaries), not from JAX's saved residuals
(`steps.saved_activation_bytes`), which are counted before XLA fuses and frees: for B/16 at batch
256 compiled for an H100 (`gpu_compile`), the residuals of GOAL's step without remat come to
110.8 GiB and XLA plans 52.3 GiB of temporaries (global: 55.5 and 26.3), so the count would have
chosen `dots` on an 80 GB device where the step fits as it is. Options are compiled least
recomputation first and only until one fits: a step that fits as it is costs one compilation,
which the timing run then reads from JAX's persistent compilation cache.
"""
from __future__ import annotations

from collections.abc import Callable

import jax

ORDER = ("", "dots", "full")  # least recomputation first
# Of the allocator's limit (`bytes_limit`, itself a fraction of the device's memory): XLA's plan
# holds the step's temporaries, so only fragmentation needs the rest.
USABLE = 0.95


def device_memory(device: jax.Device | None = None) -> int | None:
  """Bytes the allocator may use on `device` (default the first), None where it does not say
  (a CPU)."""
  device = device or jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def planned_bytes(compiled: jax.stages.Compiled) -> int:
  """The device memory XLA plans for one run of `compiled`, per device: its arguments, its
  outputs less those that reuse an argument's buffer, and its temporaries."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def choose(plan_of: Callable[[str], int], device_bytes: int | None,
           usable: float = USABLE) -> tuple[str, dict[str, int]]:
  """The first option of `ORDER` whose planned bytes (`plan_of(option)`, called in that order
  and only until one fits) are within `usable` of `device_bytes`, and the plans it read;
  without a known memory size (a CPU), none and no plan."""
  if device_bytes is None:
    return ORDER[0], {}
  plans = {}
  for option in ORDER:
    plans[option] = plan_of(option)
    if plans[option] <= usable * device_bytes:
      return option, plans
  gib = 2 ** 30
  raise ValueError(f"even --remat=full needs {plans['full'] / gib:.1f} GiB per device by XLA's "
                   f"plan, over {usable * device_bytes / gib:.1f} GiB usable of the "
                   f"{device_bytes / gib:.0f} GiB the device allows: lower the batch")
