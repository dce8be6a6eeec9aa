"""Jitted, batch-sharded embedding of images and token ids over every device of a mesh.

Evaluation embeds thousands of images and captions with frozen params. `Embedder` cuts the rows
into fixed-size batches (the last one zero-padded), shards each batch's rows over all devices of
the mesh and gathers the embeddings back replicated, so:
- one compiled program serves a whole dataset (and every later call: the jitted encoders are
  cached per (model config, mesh), so the trainer's periodic evaluation never recompiles);
- every process ends with every embedding (multi-host: each feeds its slice of the batch rows);
- host<->device copies are explicit, so it runs under `jax.transfer_guard("disallow")`.

Embeddings are the model's `embedding` outputs: L2-normalised in float32 whatever the compute
dtype (DESIGN.md model contract), returned as float32 numpy arrays. An embedder given `features`
(a method's scorer, `scoring.MethodScoring`) returns that method's per-row features instead, a
dict of float32 arrays, from params `{"clip": ..., **the method's}`; every function here takes
either.

The compute dtype is the command's choice, not the checkpoint's: a model trained in bfloat16 saves
`dtype: bfloat16` in its config, yet `embed`, `evaluate` and `visualize` compute in float32 unless
told otherwise (`--dtype`, `load_model`), so their outputs match the float32 HF export.
"""
import dataclasses
import functools
import math
from typing import Any, Iterable, Mapping

from absl import flags
import jax
import numpy as np
from jax.sharding import NamedSharding

from goal_jax import sharding as sharding_lib
from goal_jax.models import checkpoint
from goal_jax.models import clip
from goal_jax.models import families
from goal_jax.models import param_tree

TOWERS = ("image", "text")  # batch keys that are encoded; every other key passes through
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = "float32"


def define_dtype_flag() -> None:
  """The `--dtype` flag every inference command shares (one help text, one default)."""
  flags.DEFINE_enum("dtype", DEFAULT_DTYPE, COMPUTE_DTYPES,
                    "Compute dtype (default float32, whatever dtype the checkpoint was trained in; "
                    "float32 matches the HF export).")


def load_model(directory: str, dtype: str = DEFAULT_DTYPE) -> tuple[dict, clip.CLIPConfig]:
  """`checkpoint.load_model` computing in `dtype`: the saved config's dtype is a training knob."""
  if dtype not in COMPUTE_DTYPES:
    raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
  params, config = checkpoint.load_model(directory)
  return params, dataclasses.replace(config, dtype=dtype)


@functools.lru_cache(maxsize=None)
def _encode_fn(config: clip.CLIPConfig, mesh: jax.sharding.Mesh, features=None):
  """`fn(params, batch) -> batch` with `image`/`text` replaced by embeddings (or by
  `features.of(kind, tower_out, params)`, params then holding `clip`), all replicated."""
  model_class = families.of(config).model_class
  model = model_class(config)
  methods = {"image": model_class.encode_image, "text": model_class.encode_text}

  def encode(params, batch):
    clip_params = params if features is None else param_tree.clip_of(params)
    out = dict(batch)
    for key in TOWERS:
      if key in batch:
        tower_out = model.apply({"params": clip_params}, batch[key], method=methods[key])
        out[key] = (tower_out["embedding"] if features is None
                    else features.of(key, tower_out, params))
    return out

  return jax.jit(encode, out_shardings=sharding_lib.replicated(mesh))


def concatenate_rows(*parts):
  """Row blocks (arrays, or trees of arrays such as a method's features) joined along rows."""
  return jax.tree.map(lambda *rows: np.concatenate(rows), *parts)


def mesh_of(params) -> jax.sharding.Mesh | None:
  """The mesh the params already live on (a trainer's state), or None for host/unsharded params."""
  leaves = jax.tree.leaves(params)
  if leaves and isinstance(leaves[0], jax.Array):
    sharding = leaves[0].sharding
    if isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, jax.sharding.Mesh):
      return sharding.mesh
  return None


class Embedder:
  """Embeds images / token ids of one model config in padded, sharded batches.

  Args:
    config: the model config.
    mesh: devices to shard the batch rows over; default the params' own mesh if they carry one
      (see `place`), else all devices on one `data` axis.
    batch_size: global rows per step, rounded up to a multiple of the mesh size.
    features: what rows become instead of embeddings (`scoring.MethodScoring`: a method's
      features, from params `{"clip": ..., **extras}`); hashable, the compiled step's cache key.
  """

  def __init__(self, config: clip.CLIPConfig, mesh: jax.sharding.Mesh | None = None,
               batch_size: int = 64, features=None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.config = config
    self.mesh = mesh if mesh is not None else sharding_lib.make_mesh()
    self.batch_axes = tuple(self.mesh.axis_names)  # rows over every device: pure inference
    devices = self.mesh.size
    self.batch_size = math.ceil(batch_size / devices) * devices
    if self.batch_size % jax.process_count():
      raise ValueError(f"batch size {self.batch_size} does not divide over "
                       f"{jax.process_count()} processes")
    self.local_batch_size = self.batch_size // jax.process_count()
    self._encode = _encode_fn(config, self.mesh, features)

  @classmethod
  def for_params(cls, params, config, mesh=None, batch_size=64) -> "Embedder":
    """An embedder on `mesh`, else on the params' mesh, else on all devices."""
    return cls(config, mesh if mesh is not None else mesh_of(params), batch_size)

  def place(self, params):
    """Params on this mesh: kept if already spread over its devices, else replicated (explicit)."""
    devices = set(self.mesh.devices.flat)
    leaves = jax.tree.leaves(params)
    if all(isinstance(x, jax.Array) and set(x.sharding.device_set) == devices for x in leaves):
      return params
    return jax.device_put(params, sharding_lib.replicated(self.mesh))

  def encode_local_batch(self, params, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One step on this process's `local_batch_size` rows -> the global batch's outputs on host.

    `image` [b, S, S, 3] float and/or `text` [b, L] int32 become [B, E] embeddings (or the
    `features`' dicts of [B, ...]); any other key
    (e.g. `record_index`, `valid`) comes back gathered, so rows keep their identity across hosts.
    `params` must come from `place` (placing them once, not every step).
    """
    rows = {np.shape(v)[0] for v in batch.values()}
    if rows != {self.local_batch_size}:
      raise ValueError(f"every batch entry needs {self.local_batch_size} rows on this process, "
                       f"got {sorted(rows)}")
    global_batch = sharding_lib.make_global_batch(dict(batch), self.mesh, self.batch_axes)
    return jax.device_get(self._encode(params, global_batch))

  def embed(self, params, kind: str, chunks: Iterable[np.ndarray]) -> np.ndarray:
    """Embeddings [N, E] float32 (or features) of the rows of `chunks` (arrays of at most
    `batch_size` rows).

    Every process passes the same global rows; each sends its own slice of every batch.
    `kind` is `image` (normalised pixels [n, S, S, 3]) or `text` (token ids [n, L]).
    """
    if kind not in TOWERS:
      raise ValueError(f"kind must be one of {TOWERS}, got {kind!r}")
    params = self.place(params)
    start = jax.process_index() * self.local_batch_size
    out = []
    for chunk in chunks:
      chunk = np.asarray(chunk)
      count = chunk.shape[0]
      if not 0 < count <= self.batch_size:
        raise ValueError(f"a chunk must have 1..{self.batch_size} rows, got {count}")
      padded = np.concatenate([chunk, np.zeros((self.batch_size - count,) + chunk.shape[1:],
                                                chunk.dtype)])
      local = {kind: padded[start:start + self.local_batch_size]}
      encoded = self.encode_local_batch(params, local)[kind]
      out.append(jax.tree.map(lambda x, n=count: np.asarray(x, np.float32)[:n], encoded))
    if not out:
      raise ValueError(f"no {kind} rows to embed")
    return concatenate_rows(*out)

  def embed_array(self, params, kind: str, rows: np.ndarray) -> np.ndarray:
    """`embed` over an in-memory array of any number of rows."""
    rows = np.asarray(rows)
    return self.embed(params, kind, (rows[i:i + self.batch_size]
                                     for i in range(0, rows.shape[0], self.batch_size)))

  def text_encoder(self, params):
    """`ids [n, L] -> [n, E]` for callers that take a function (zero-shot classifier)."""
    return lambda ids: self.embed_array(params, "text", ids)


def chunked(items: list[Any], size: int) -> Iterable[list[Any]]:
  """Consecutive slices of `items` of `size` (the last may be shorter)."""
  for start in range(0, len(items), size):
    yield items[start:start + size]
