"""`--remat=auto`: the least rematerialisation whose kept activations fit the device.

Recomputation costs time (about one more forward for `full`, less for `dots`), so the best
choice is the first of `""`, `dots`, `full` whose activations, with the training state beside
them, fit the device's memory. The activations a step keeps are JAX's saved residuals
(`steps.saved_activation_bytes`, counted before XLA on any platform); the state is the params,
their gradients and AdamW's two moments, all float32 (4 x the params).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax

ORDER = ("", "dots", "full")  # least recomputation first
USABLE = 0.85  # of the device's memory: XLA's temporaries and fragmentation need the rest
STATE_COPIES = 4  # params, gradients, AdamW's mu and nu


def device_memory(device: jax.Device | None = None) -> int | None:
  """Bytes the allocator may use on `device` (default the first), None where it does not say
  (a CPU)."""
  device = device or jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def choose(kept_bytes: Mapping[str, int], param_bytes: int, device_bytes: int | None,
           usable: float = USABLE) -> str:
  """The first remat option of `ORDER` whose kept activations per device (`kept_bytes`) fit
  beside the state in `usable` of `device_bytes`; without a known memory size, none."""
  if device_bytes is None:
    return ORDER[0]
  budget = usable * device_bytes - STATE_COPIES * param_bytes
  for option in ORDER:
    if kept_bytes[option] <= budget:
      return option
  gib = 2 ** 30
  raise ValueError(f"even --remat=full keeps {kept_bytes['full'] / gib:.1f} GiB of activations "
                   f"per device, over the {max(budget, 0) / gib:.1f} GiB left beside the training "
                   f"state on a {device_bytes / gib:.0f} GiB device: lower the batch")
