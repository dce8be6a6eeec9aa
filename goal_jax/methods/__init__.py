"""The training methods, one module each; `get(name)` is all the trainer, the benchmark and
evaluation know of them (`goal_jax/methods/base.py` says what a method holds)."""
from goal_jax.methods import fgclip, finelip, global_ft, goal, longclip, mulclip
from goal_jax.methods.base import Method

REGISTRY: dict[str, Method] = {
    m.METHOD.name: m.METHOD for m in (global_ft, goal, mulclip, longclip, finelip, fgclip)}


def get(name: str) -> Method:
  """The method `config.method` names; an unknown name lists the known ones."""
  if name not in REGISTRY:
    raise ValueError(f"unknown method {name!r}; known: {sorted(REGISTRY)}")
  return REGISTRY[name]
