"""AdamW with regex parameter groups, a per-step schedule, clipping and gradient accumulation.

Groups are big_vision-style `(regex, multiplier-or-None)` pairs over 'a/b/c' param names: `None`
freezes the match (no update, no Adam state, no weight decay), a float multiplies its learning rate
(e.g. a freshly initialised head at 10x). The first matching regex wins; unmatched params train at
1x. Each group gets its own AdamW whose schedule is the base one with peak and floor scaled, so a
group at multiplier m updates exactly as a run whose learning rate is m times larger.

Steps count optimizer updates: with `grad_accum_steps=k` the schedule advances once per k batches.
"""
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from goal_jax import constants
from goal_jax import tree_paths as paths

# The fields of `config.optim` and the values of those a recipe may leave out.
DEFAULTS = constants.OPTIMIZER

FROZEN = "frozen"
Schedule = Callable[[Any], Any]


def make_schedule(kind: str, lr: float, *, total_steps: int | None = None, warmup_steps: int = 0,
                  lr_floor: float = 0.0) -> Schedule:
  """Learning rate per optimizer step (traceable).

  Warmup ramps `lr * (t + 1) / warmup_steps`, so the first update is not wasted at lr 0. The
  cosine then runs `lr_floor + (lr - lr_floor) * (1 + cos(pi * s / S)) / 2` with `s = t - warmup`,
  `S = total - warmup`, and stays at `lr_floor` after `total_steps`.
  """
  if kind == "cosine":
    if total_steps is None or total_steps <= warmup_steps:
      raise ValueError(f"cosine schedule needs total_steps > warmup_steps, got total_steps="
                       f"{total_steps}, warmup_steps={warmup_steps}")
    decay_steps = total_steps - warmup_steps

    def main(t):
      progress = jnp.clip(t - warmup_steps, 0, decay_steps) / decay_steps
      return lr_floor + (lr - lr_floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  elif kind == "constant":
    main = lambda t: jnp.full(jnp.shape(t), lr, jnp.float32)
  else:
    raise ValueError(f"unknown schedule {kind!r}; use 'cosine' or 'constant'")
  if warmup_steps <= 0:
    return main
  return lambda t: jnp.where(t < warmup_steps, lr * (t + 1) / warmup_steps, main(t))


def _group_label(multiplier: float) -> str:
  return f"lr_x{float(multiplier)!r}"


def group_labels(params: Any, param_groups: Sequence[tuple[str, float | None]]) -> Any:
  """Labels every param `FROZEN` or `lr_x<multiplier>` (`lr_x1.0` when no regex matches)."""
  rules = [(regex, FROZEN if m is None else _group_label(m)) for regex, m in param_groups]
  return paths.match_rules(params, rules, what="optimizer param_groups", default=_group_label(1.0))


def summarize_groups(params: Any, param_groups: Sequence[tuple[str, float | None]]
                     ) -> dict[str, int]:
  """Parameter count per group label, for the start-of-run log (e.g. to see what is frozen)."""
  counts = {}
  for label, x in zip(jax.tree.leaves(group_labels(params, param_groups)), jax.tree.leaves(params)):
    counts[label] = counts.get(label, 0) + int(np.prod(x.shape))
  return counts


def _read_config(config: Mapping[str, Any] | Any) -> dict[str, Any]:
  given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  unknown = sorted(set(given) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"optimizer config: unknown fields {unknown}; known: {sorted(DEFAULTS)}")
  return {**DEFAULTS, **given}


def make_optimizer(config: Mapping[str, Any] | Any, params: Any,
                   extra_transforms: Sequence[optax.GradientTransformation] = ()
                   ) -> tuple[optax.GradientTransformation, Schedule]:
  """Builds the training optimizer from the `config.optim` fields (see `DEFAULTS`).

  Args:
    config: a ConfigDict or mapping with fields from `DEFAULTS`; unknown fields are errors.
    params: the param pytree (arrays or `jax.ShapeDtypeStruct`s); only names and structure are read.
    extra_transforms: applied last to the updates, in order (e.g. a frozen-prefix transform).

  Returns:
    `(tx, schedule)`: the transformation and the base (1x) learning rate per optimizer step.
  """
  c = _read_config(config)
  labels = group_labels(params, c["param_groups"])
  if c["lr"] is None:
    raise ValueError("optimizer config: lr is required (the method's config sets its recipe)")
  schedule_of = lambda scale: make_schedule(
      c["schedule"], c["lr"] * scale, total_steps=c["total_steps"],
      warmup_steps=c["warmup_steps"], lr_floor=c["lr_floor"] * scale)
  decay_mask = None
  if c["decay_regex"] is not None:
    decay_mask = lambda p: paths.match_rules(p, [(c["decay_regex"], True)], what="decay_regex",
                                             default=False, allow_unused=True)
  groups = {FROZEN: optax.set_to_zero()}
  for label in sorted(set(jax.tree.leaves(labels)) - {FROZEN}):
    groups[label] = optax.adamw(schedule_of(float(label.removeprefix("lr_x"))), b1=c["b1"],
                                b2=c["b2"], eps=c["eps"], weight_decay=c["weight_decay"],
                                mask=decay_mask)
  steps = []
  frozen = jax.tree.map(lambda label: label == FROZEN, labels)
  if any(jax.tree.leaves(frozen)):  # Zero frozen grads first so they do not count in the clip norm.
    steps.append(optax.masked(optax.set_to_zero(), frozen))
  if c["grad_clip_norm"] is not None:
    steps.append(optax.clip_by_global_norm(c["grad_clip_norm"]))
  steps.append(optax.multi_transform(groups, labels))
  steps.extend(extra_transforms)
  tx = optax.chain(*steps)
  if c["grad_accum_steps"] > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=c["grad_accum_steps"]).gradient_transformation()
  elif c["grad_accum_steps"] < 1:
    raise ValueError(f"grad_accum_steps must be >= 1, got {c['grad_accum_steps']}")
  return tx, schedule_of(1.0)
