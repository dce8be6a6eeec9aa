"""Device mesh, parameter sharding rules and sharded init, and batches placed on the mesh.

One module for every package that puts arrays on devices (training, evaluation, LISM, the
benchmark), so none of them imports another's sharding.

The strategy is big_vision-style `(regex, rule)` pairs over 'a/b/c' state names, first match wins:
`replicate` (plain data parallelism) or `fsdp(axis="data", min_size_mb=4)`, which shards each large
tensor's largest divisible dimension over `axis`. FSDP is thus a one-line config change, e.g.
`[(".*", 'fsdp(axis="data")')]`, and GSPMD inserts the gathers (the mesh axes are `Auto`).
Batches split their leading (row) dimension over the batch axes (`make_global_batch`).
"""
import ast
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from goal_jax import tree_paths as paths

DEFAULT_MESH = (("data", -1),)
DEFAULT_STRATEGY = ((".*", "replicate"),)


def make_mesh(axes: Sequence[tuple[str, int]] = DEFAULT_MESH,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh from `[(name, size), ...]`; one size may be -1, meaning the rest of the devices.

  Axes are `AxisType.Auto` so plain jitted model code works on sharded inputs (with the default
  `Explicit` axes, e.g. a contrastive `zi @ zt.T` raises a ShardingTypeError).
  """
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {list(axes)}: at most one axis may have size -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh {list(axes)}: {len(devices)} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {list(axes)} needs {math.prod(sizes)} devices, have {len(devices)}")
  return jax.make_mesh(tuple(sizes), names, axis_types=(AxisType.Auto,) * len(names),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device of `mesh` holds the whole array."""
  return NamedSharding(mesh, P())


def _replicate(shape, dtype, mesh):
  del shape, dtype, mesh
  return P()


def _fsdp(shape, dtype, mesh, axis: str | tuple[str, ...] = "data", min_size_mb: float = 4.0):
  """Shards the largest dimension divisible by the axis size; small/indivisible ones replicate."""
  axis_size = math.prod(mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis))
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) or not shape:
    return P()
  if math.prod(shape) * np.dtype(dtype).itemsize < min_size_mb * 2**20:
    return P()
  divisible = [d for d in range(len(shape)) if shape[d] % axis_size == 0]
  if not divisible:
    return P()
  dim = max(divisible, key=lambda d: (shape[d], -d))  # the largest; the first on ties
  return P(*(axis if d == dim else None for d in range(len(shape))))


RULES: dict[str, Callable[..., P]] = {"replicate": _replicate, "fsdp": _fsdp}


def parse_rule(rule: str) -> tuple[Callable[..., P], dict[str, Any]]:
  """`'fsdp(axis="data", min_size_mb=1)'` -> (the rule function, its keyword arguments)."""
  try:
    node = ast.parse(rule.strip(), mode="eval").body
    if isinstance(node, ast.Name):
      name, kwargs = node.id, {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
      name = node.func.id
      kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    else:
      raise ValueError("expected name or name(key=literal, ...)")
  except (SyntaxError, ValueError) as e:
    raise ValueError(f"sharding rule {rule!r}: {e}") from None
  if name not in RULES:
    raise ValueError(f"sharding rule {rule!r}: unknown rule {name!r}; known: {sorted(RULES)}")
  return RULES[name], kwargs


def infer_sharding(tree: Any, mesh: Mesh, strategy: Sequence[tuple[str, str]] = DEFAULT_STRATEGY,
                   allow_unused: bool = False) -> Any:
  """A `NamedSharding` per leaf of `tree` (arrays or ShapeDtypeStructs); unmatched ones replicate."""
  rules = [(regex, parse_rule(rule)) for regex, rule in strategy]
  chosen = paths.match_rules(tree, rules, what="sharding strategy",
                             default=(_replicate, {}), allow_unused=allow_unused)
  leaves, treedef = jax.tree.flatten(tree)
  specs = [fn(tuple(x.shape), x.dtype, mesh, **kwargs)
           for x, (fn, kwargs) in zip(leaves, treedef.flatten_up_to(chosen))]
  return jax.tree.unflatten(treedef, [NamedSharding(mesh, spec) for spec in specs])


def sharded_init(init_fn: Callable[..., Any], *args: Any, mesh: Mesh,
                 strategy: Sequence[tuple[str, str]] = DEFAULT_STRATEGY
                 ) -> tuple[Callable[[], Any], Any]:
  """Plans a sharded `init_fn(*args)` without running it.

  `eval_shape` gives names and shapes without allocating; the returned `init()` runs
  `jit(init_fn, out_shardings=...)`, which writes each shard straight to its device, so a model that
  fits only when sharded never exists whole on one. `args` go to it as they are: jit moves host
  arrays (pretrained params) straight into the shardings it propagates to them, on every process
  (under a transfer guard, pass device arrays already on the mesh). The abstract state
  (ShapeDtypeStructs with shardings) is also the restore target, so a resumed run need not
  initialise at all.

  Returns:
    `(init, abstract)`: `init()` builds the state; `abstract` holds each leaf's shape, dtype and
    sharding (`shardings_of(abstract)` are the train step's in/out shardings).
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = infer_sharding(abstract, mesh, strategy)
  init = lambda: jax.jit(init_fn, out_shardings=shardings)(*args)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  return init, abstract


def shardings_of(tree: Any) -> Any:
  """The `.sharding` of every leaf (arrays or abstract ShapeDtypeStructs)."""
  return jax.tree.map(lambda x: x.sharding, tree)


def batch_sharding(mesh: Mesh, batch_axes: str | Sequence[str] = "data") -> NamedSharding:
  """Sharding of a batch whose leading dim is split over `batch_axes` of the mesh."""
  axes = batch_axes if isinstance(batch_axes, str) else tuple(batch_axes)
  return NamedSharding(mesh, P(axes))


def make_global_batch(batch: Any, mesh: Mesh, batch_axes: str | Sequence[str] = "data") -> Any:
  """Joins each process's host batch into global `jax.Array`s, rows split over `batch_axes`.

  Every process passes its own rows (numpy); the global batch is their concatenation in process
  order, as `jax.make_array_from_process_local_data` defines it. The trainer, evaluation and LISM
  all place their batches with this.
  """
  sharding = batch_sharding(mesh, batch_axes)
  axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  local_devices = max(math.prod(mesh.shape[a] for a in axes) // jax.process_count(), 1)

  def put(name, x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % local_devices:
      raise ValueError(f"batch[{name!r}] has shape {x.shape}: its leading (batch) dimension must "
                       f"divide evenly over the {local_devices} local devices of mesh axis "
                       f"{batch_axes!r}")
    return jax.make_array_from_process_local_data(sharding, x)

  return paths.map_with_names(put, batch)
