"""PyTorch CLIP state dicts (HF, OpenAI/Long-CLIP, open_clip) <-> Flax params, strictly.

Every source is first brought to the HF `CLIPModel` layout (separate q/k/v, torch Linear weights),
the richest naming, and that maps one tensor to one Flax leaf. Loading is strict: a key that maps
to nothing, a param nobody provided or a shape that disagrees with the inferred config is an
error that names the file and the key (in the source's own naming). Only known buffers are dropped.

Layer counts come from the weights, so a file that lost its last layer would silently convert to a
shallower model. They are therefore checked against what else the source states: HF's
config.json (`num_hidden_layers`, widths), the named variant if any, and, always, that the layer
indices run 0..L-1 without a gap.

Sources are strings: `hf:<dir>`, `openai:<file.pt>`, `open_clip:<file.pt|.bin|.safetensors>`.
Reading needs no torch except for `.pt`/`.bin` files (imported lazily).
"""
import dataclasses
import json
import os
import re
import warnings
import zipfile

from flax import traverse_util
import jax
import numpy as np
from safetensors.numpy import load_file

from goal_jax.models import clip
from goal_jax.models import positions

FORMATS = ("hf", "openai", "open_clip")
DROPPED_BUFFERS = {"position_ids", "attn_mask", "input_resolution", "context_length",
                   "vocab_size", "num_batches_tracked"}
TOWERS = {"vision_model": "visual", "text_model": "text"}

# --- HF <-> Flax: one tensor <-> one leaf. A transform is (to_flax, to_torch); both only transpose
# and reshape, with head counts taken from the target shape.

_COPY = (lambda x, shape: x, lambda x: x)
_LINEAR = (lambda x, shape: x.T, lambda x: x.T)
_CONV = (lambda x, shape: x.transpose(2, 3, 1, 0), lambda x: x.transpose(3, 2, 0, 1))
_HEADS_IN = (lambda x, shape: x.T.reshape(shape), lambda x: x.reshape(x.shape[0], -1).T)
_HEADS_BIAS = (lambda x, shape: x.reshape(shape), lambda x: x.reshape(-1))
_HEADS_OUT = (lambda x, shape: x.T.reshape(shape), lambda x: x.reshape(-1, x.shape[-1]).T)

_BLOCK_RULES = [  # (HF name inside encoder.layers.{i}, Flax path inside resblocks_{i}, transform)
    *[(f"self_attn.{p}_proj.weight", f"attn/{f}/kernel", _HEADS_IN)
      for p, f in (("q", "query"), ("k", "key"), ("v", "value"))],
    *[(f"self_attn.{p}_proj.bias", f"attn/{f}/bias", _HEADS_BIAS)
      for p, f in (("q", "query"), ("k", "key"), ("v", "value"))],
    ("self_attn.out_proj.weight", "attn/out/kernel", _HEADS_OUT),
    ("self_attn.out_proj.bias", "attn/out/bias", _COPY),
    ("layer_norm1.weight", "ln_1/scale", _COPY), ("layer_norm1.bias", "ln_1/bias", _COPY),
    ("layer_norm2.weight", "ln_2/scale", _COPY), ("layer_norm2.bias", "ln_2/bias", _COPY),
    ("mlp.fc1.weight", "mlp/c_fc/kernel", _LINEAR), ("mlp.fc1.bias", "mlp/c_fc/bias", _COPY),
    ("mlp.fc2.weight", "mlp/c_proj/kernel", _LINEAR), ("mlp.fc2.bias", "mlp/c_proj/bias", _COPY),
]
_TOP_RULES = [  # (HF name, Flax path, transform)
    ("vision_model.embeddings.patch_embedding.weight", "visual/conv1/kernel", _CONV),
    ("vision_model.embeddings.class_embedding", "visual/class_embedding", _COPY),
    ("vision_model.embeddings.position_embedding.weight", "visual/positional_embedding", _COPY),
    ("vision_model.pre_layrnorm.weight", "visual/ln_pre/scale", _COPY),
    ("vision_model.pre_layrnorm.bias", "visual/ln_pre/bias", _COPY),
    ("vision_model.post_layernorm.weight", "visual/ln_post/scale", _COPY),
    ("vision_model.post_layernorm.bias", "visual/ln_post/bias", _COPY),
    ("visual_projection.weight", "visual/proj", _LINEAR),
    ("text_model.embeddings.token_embedding.weight", "text/token_embedding/embedding", _COPY),
    ("text_model.embeddings.position_embedding.weight", "text/positional_embedding", _COPY),
    ("text_model.final_layer_norm.weight", "text/ln_final/scale", _COPY),
    ("text_model.final_layer_norm.bias", "text/ln_final/bias", _COPY),
    ("text_projection.weight", "text/text_projection", _LINEAR),
    ("logit_scale", "logit_scale", _COPY),
]
_HF_BLOCK = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)$")


def _hf_rule(name: str):
  """(Flax path, transform) for an HF key, or None if it is not a CLIPModel param."""
  for hf_name, path, transform in _TOP_RULES:
    if name == hf_name:
      return path, transform
  match = _HF_BLOCK.match(name)
  if match:
    tower, layer, inner = match.groups()
    for hf_inner, flax_inner, transform in _BLOCK_RULES:
      if inner == hf_inner:
        return f"{TOWERS[tower]}/transformer/resblocks_{int(layer)}/{flax_inner}", transform
  return None


def _hf_names(config: clip.CLIPConfig) -> list[str]:
  """Every HF key a CLIPModel of `config` has (its params, no buffers)."""
  names = [name for name, _, _ in _TOP_RULES]
  for tower, layers in (("vision_model", config.vision_layers),
                        ("text_model", config.text_layers)):
    names += [f"{tower}.encoder.layers.{i}.{inner}" for i in range(layers)
              for inner, _, _ in _BLOCK_RULES]
  return names


class SourceNames(dict):
  """HF key -> the key it came from; keys the source lacks are named by `fallback`.

  `file` names where the weights came from, so errors can say which file to fix.
  """

  def __init__(self, fallback=lambda name: name, file: str = "checkpoint"):
    super().__init__()
    self.fallback = fallback
    self.file = file

  def __call__(self, hf_name: str) -> str:
    return self[hf_name] if hf_name in self else self.fallback(hf_name)

  def layer_prefix(self, tower: str, layer: int) -> str:
    """The source's name prefix for a layer of `tower` ("vision_model"/"text_model")."""
    name = self(f"{tower}.encoder.layers.{layer}.layer_norm1.weight")
    cut = name.rfind(f".{layer}.")
    return name[:cut + len(f".{layer}.")] if cut >= 0 else name


# --- OpenAI / open_clip / Long-CLIP -> HF layout.

_OPENAI_TOP = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "visual.proj": "visual_projection.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection": "text_projection.weight",
    "logit_scale": "logit_scale",
}
_OPENAI_TRANSPOSED = {"visual.proj", "text_projection"}  # raw (in, out) params, not Linear
_OPENAI_BLOCK_INNER = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_OPENAI_FUSED = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}
_OPENAI_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def openai_name(hf_name: str) -> str:
  """The OpenAI key an HF key comes from (q/k/v name the fused in_proj), for error messages."""
  top = {hf: openai for openai, hf in _OPENAI_TOP.items()}
  if hf_name in top:
    return top[hf_name]
  match = _HF_BLOCK.match(hf_name)
  if not match:
    return hf_name
  tower, layer, inner = match.groups()
  fused = re.match(r"self_attn\.[qkv]_proj\.(weight|bias)$", inner)
  block = {hf: openai for openai, hf in _OPENAI_BLOCK_INNER.items()}
  inner = f"attn.in_proj_{fused.group(1)}" if fused else block.get(inner, inner)
  prefix = "visual." if tower == "vision_model" else ""
  return f"{prefix}transformer.resblocks.{layer}.{inner}"


def openai_to_hf(state: dict[str, np.ndarray],
                 file: str = "checkpoint") -> tuple[dict[str, np.ndarray], "SourceNames"]:
  """OpenAI/open_clip/Long-CLIP keys -> HF keys. Returns (HF dict, HF key -> source key).

  Unknown keys pass through unchanged, so the strict check reports them by their own name.
  Long-CLIP's `positional_embedding_res` is merged into one table (see positions.py).
  """
  state = dict(state)
  if "positional_embedding_res" in state:
    residual = state.pop("positional_embedding_res")
    if "positional_embedding" not in state:
      raise ValueError("positional_embedding_res without positional_embedding")
    state["positional_embedding"] = positions.merge_longclip_positions(
        state["positional_embedding"], residual)
  out, origin = {}, SourceNames(fallback=openai_name, file=file)

  def put(hf_name, value, source):
    out[hf_name], origin[hf_name] = value, source

  for name, value in state.items():
    if name in _OPENAI_TOP:
      put(_OPENAI_TOP[name], value.T if name in _OPENAI_TRANSPOSED else value, name)
      continue
    match = _OPENAI_BLOCK.match(name)
    inner = match.group(3) if match else None
    if match and (inner in _OPENAI_BLOCK_INNER or inner in _OPENAI_FUSED):
      tower = "vision_model" if match.group(1) else "text_model"
      prefix = f"{tower}.encoder.layers.{int(match.group(2))}."
      if inner in _OPENAI_BLOCK_INNER:
        put(prefix + _OPENAI_BLOCK_INNER[inner], value, name)
      else:
        if value.shape[0] % 3:
          raise ValueError(f"{name}: shape {value.shape} does not split into q, k, v")
        for part, chunk in zip("qkv", np.split(value, 3, axis=0)):
          put(f"{prefix}self_attn.{part}_proj.{_OPENAI_FUSED[inner]}", chunk, name)
      continue
    put(name, value, name)
  return out, origin


# --- Reading files.

def _require_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading .pt/.bin checkpoints needs PyTorch: pip install torch "
                      "(the CPU wheel is enough), or convert the file to .safetensors") from e
  return torch


def _to_numpy(state: dict, path: str) -> dict[str, np.ndarray]:
  torch = _require_torch()
  out = {}
  for name, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
    if value.is_floating_point():
      value = value.float()
    out[name] = value.detach().cpu().numpy()
  return out


def _is_torchscript(path: str) -> bool:
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def _load_failure(error: Exception) -> str:
  """torch's reason, on one line, without its advice to retry with `weights_only=False`: that
  runs the file's pickled code, the one thing to never do with a file of unknown origin."""
  text = str(error)
  if "weights_only" in text:
    detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
    detail = detail.split("Check the documentation", 1)[0]
    text = "torch's safe loader found no tensors it may read" + (
        f" ({' '.join(detail.split())})" if detail.strip() else "")
    return (f"{text}; it is not a weights file (or holds pickled objects): convert from the "
            "model's .safetensors, or a state dict saved with torch.save(model.state_dict())")
  return f"{type(error).__name__}: {' '.join(text.split())}"


def read_torch_file(path: str) -> dict[str, np.ndarray]:
  """A `.pt`/`.bin` state dict or OpenAI TorchScript archive as numpy; never runs pickled code."""
  torch = _require_torch()
  try:
    if _is_torchscript(path):
      state = torch.jit.load(path, map_location="cpu").state_dict()
    else:
      with warnings.catch_warnings():  # its pickle-protocol note would precede our one line
        warnings.simplefilter("ignore", UserWarning)
        state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for bad files; all mean "cannot read".
    raise ValueError(f"cannot read {path} as a PyTorch checkpoint (state dicts and TorchScript "
                     f"archives only; pickled objects are refused): {_load_failure(e)}") from e
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise ValueError(f"{path}: expected a state dict, found a {type(state).__name__}")
  return _to_numpy(state, path)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    state = load_file(path)
  except Exception as e:  # safetensors raises its own error types for corrupt headers.
    raise ValueError(f"cannot read {path} as safetensors: {type(e).__name__}: {e}") from e
  # Integer entries are buffers (position_ids), dropped later; floats (fp16/bf16 too) become fp32.
  return {k: v if v.dtype.kind in "iub" else v.astype(np.float32) for k, v in state.items()}


def read_file(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such checkpoint file: {path}")
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  return read_torch_file(path)


def read_hf_dir(directory: str) -> tuple[dict[str, np.ndarray], dict, str]:
  """(state dict, config.json, which weights file(s)) of an HF CLIPModel directory."""
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{directory} is not an HF model directory: no config.json")
  with open(config_path) as f:
    hf_config = json.load(f)
  index = os.path.join(directory, "model.safetensors.index.json")
  single = os.path.join(directory, "model.safetensors")
  if os.path.isfile(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for shard in shards:
      state.update(read_safetensors(os.path.join(directory, shard)))
    weights = f"{directory}/{{{','.join(shards)}}}" if len(shards) > 1 else \
        os.path.join(directory, shards[0])
  elif os.path.isfile(single):
    state, weights = read_safetensors(single), single
  elif os.path.isfile(os.path.join(directory, "pytorch_model.bin")):
    weights = os.path.join(directory, "pytorch_model.bin")
    state = read_torch_file(weights)
  else:
    raise FileNotFoundError(f"{directory}: no model.safetensors, safetensors index or "
                            "pytorch_model.bin")
  return state, hf_config, weights


def parse_source(source: str) -> tuple[str, str]:
  """'fmt:path' -> (fmt, path), checking the format."""
  fmt, sep, path = source.partition(":")
  if not sep or fmt not in FORMATS:
    raise ValueError(f"unknown checkpoint source {source!r}: expected one of "
                     f"{', '.join(f + ':<path>' for f in FORMATS)}")
  return fmt, path


def read_source(source: str) -> tuple[dict[str, np.ndarray], "SourceNames", dict, list]:
  """Reads a source into the HF layout.

  Returns:
    (state, HF key -> source key, config fields the source states that shapes cannot tell,
    architecture facts the source states, as `(CLIPConfig field, value, where)`, to check the
    weights against).
  """
  fmt, path = parse_source(source)
  if fmt == "hf":
    state, hf_config, weights = read_hf_dir(path)
    return (_drop_buffers(state), SourceNames(file=weights), _fields_from_hf_config(hf_config),
            _stated_by_hf_config(hf_config, os.path.join(path, "config.json")))
  state = read_file(path)
  state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
  state, origin = openai_to_hf(_drop_buffers(state), file=path)
  return state, origin, {}, []


def _drop_buffers(state: dict) -> dict:
  return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in DROPPED_BUFFERS}


# --- Config inference and the checks against what the source states.

# transformers' CLIP defaults: they apply where a config.json leaves a field out.
_HF_DEFAULTS = {
    "vision_config": dict(num_hidden_layers=12, hidden_size=768, intermediate_size=3072,
                          patch_size=32),
    "text_config": dict(num_hidden_layers=12, hidden_size=512, intermediate_size=2048),
    "": dict(projection_dim=512),
}
_HF_STATED = [  # (CLIPConfig field, config.json section ("" = top level), key)
    ("vision_layers", "vision_config", "num_hidden_layers"),
    ("text_layers", "text_config", "num_hidden_layers"),
    ("vision_width", "vision_config", "hidden_size"),
    ("text_width", "text_config", "hidden_size"),
    ("vision_mlp_dim", "vision_config", "intermediate_size"),
    ("text_mlp_dim", "text_config", "intermediate_size"),
    ("patch_size", "vision_config", "patch_size"),
    ("embed_dim", "", "projection_dim"),
]
# Fields a named variant fixes that the weights' shapes show (heads and activation they do not).
_VARIANT_CHECKED = ("embed_dim", "image_size", "patch_size", "vision_width", "vision_layers",
                    "vision_mlp_dim", "text_width", "text_layers", "text_mlp_dim")
_LAYERS = (("vision_model", "vision_layers", "vision"), ("text_model", "text_layers", "text"))


def _stated_by_hf_config(hf_config: dict, config_path: str) -> list[tuple[str, int, str]]:
  """The architecture a config.json states, as (CLIPConfig field, value, where)."""
  stated = []
  for field, section, key in _HF_STATED:
    values = (hf_config.get(section) or {}) if section else hf_config
    if not isinstance(values, dict):
      continue
    value = values.get(key, _HF_DEFAULTS[section][key])
    shown = f"{section}.{key}" if section else key
    if key not in values:
      shown += " (transformers' default)"
    stated.append((field, int(value), f"{config_path} says {shown}={value}"))
  return stated


def _stated_by_variant(variant: str) -> list[tuple[str, int, str]]:
  if variant not in clip.VARIANTS:
    raise ValueError(f"unknown model variant {variant!r}; known: {sorted(clip.VARIANTS)}")
  return [(field, clip.VARIANTS[variant][field], f"variant {variant!r} has {field}="
           f"{clip.VARIANTS[variant][field]}") for field in _VARIANT_CHECKED]


def _listing(numbers: list[int]) -> str:
  return ", ".join(map(str, numbers))


def check_layers(state: dict[str, np.ndarray], origin: "SourceNames",
                 stated: list[tuple[str, int, str]] = ()) -> None:
  """Each tower's layers must be 0..L-1 with no gap, L as the source states it (if it does).

  Only whole layers are checked here; a layer missing some of its weights is reported key by
  key by `hf_to_params`.
  """
  problems, fixes = [], set()
  for tower, field, label in _LAYERS:
    found = sorted({int(m.group(2)) for m in map(_HF_BLOCK.match, state)
                    if m and m.group(1) == tower})
    claims = [(value, where) for name, value, where in stated if name == field]
    if not claims and not found:
      problems.append(f"the {label} tower has no layers ({origin.layer_prefix(tower, 0)}*)")
    for count, where in claims or [(found[-1] + 1 if found else 0, None)]:
      absent = [i for i in range(count) if i not in found]
      extra = [i for i in found if i >= count]
      if absent:
        i = absent[0]
        text = f"{label} layer {i} of {count} has no weights ({origin.layer_prefix(tower, i)}*)"
        if absent[1:]:
          text += f", nor layers {_listing(absent[1:])}"
        if where:
          text += f"; {where}"
          fixes.add(where)
        else:  # a gap: a later layer has weights
          text += f" although layer {found[-1]} has"
        problems.append(text)
      if extra:
        layers = f"layers {_listing(extra)} have" if extra[1:] else f"layer {extra[0]} has"
        problems.append(f"{label} {layers} weights ({origin.layer_prefix(tower, extra[0])}*) "
                        f"but {where}")
        fixes.add(where)
  if problems:
    if any("config.json" in where for where in fixes):
      fix = ("the weights and config.json disagree: re-download or re-export the model, or "
             "correct config.json if the weights are complete")
    elif fixes:
      fix = ("it is not a complete checkpoint of that variant: re-download or re-export it, or "
             "name the variant it is")
    else:
      fix = "the file is incomplete (cut download or partial export): re-download or re-export it"
    raise ValueError(f"{origin.file}: {'; '.join(problems)}. Fix: {fix}")


def check_stated(config: clip.CLIPConfig, origin: "SourceNames",
                 stated: list[tuple[str, int, str]]) -> None:
  """Widths, MLP sizes, patch and embedding size from the shapes must match what the source states.

  Layer counts are `check_layers`' job.
  """
  problems = [f"the weights give {field}={getattr(config, field)} but {where}"
              for field, value, where in stated
              if not field.endswith("_layers") and getattr(config, field) != value]
  if problems:
    raise ValueError(f"{origin.file}: {'; '.join(problems)}. Fix: use the config (or variant) "
                     "that belongs to these weights")


def _fields_from_hf_config(hf_config: dict) -> dict:
  """Fields the shapes cannot tell: heads, activation, LayerNorm epsilon."""
  fields, per_tower = {}, {}
  for tower, prefix in (("vision_config", "vision"), ("text_config", "text")):
    sub = hf_config.get(tower, {})
    if "num_attention_heads" in sub:
      fields[f"{prefix}_heads"] = sub["num_attention_heads"]
    for key, field in (("hidden_act", "activation"), ("layer_norm_eps", "layer_norm_eps")):
      if key in sub:
        per_tower.setdefault(field, set()).add(sub[key])
  for field, values in per_tower.items():
    if len(values) > 1:
      raise ValueError(f"config.json: towers differ in {field} {sorted(values)}; goal_jax "
                       "supports one value for both")
    fields[field] = values.pop()
  return fields


def infer_config(state: dict[str, np.ndarray], origin: "SourceNames | None" = None,
                 **overrides) -> clip.CLIPConfig:
  """Architecture from HF-layout shapes; heads default to width // 64 (OpenAI's rule)."""
  origin = SourceNames() if origin is None else origin

  def shape(name):
    if name not in state:
      raise ValueError(f"cannot infer the model config: missing {_source_name(name, origin)}")
    return state[name].shape

  def layers(tower):
    found = {int(m.group(2)) for m in map(_HF_BLOCK.match, state) if m and m.group(1) == tower}
    return max(found) + 1 if found else 0

  v_width, _, patch, _ = shape("vision_model.embeddings.patch_embedding.weight")
  grid = int(round((shape("vision_model.embeddings.position_embedding.weight")[0] - 1) ** 0.5))
  vocab, t_width = shape("text_model.embeddings.token_embedding.weight")
  fields = dict(
      embed_dim=shape("visual_projection.weight")[0], image_size=grid * patch, patch_size=patch,
      vision_width=v_width, vision_layers=layers("vision_model"), vision_heads=v_width // 64,
      vision_mlp_dim=shape("vision_model.encoder.layers.0.mlp.fc1.weight")[0],
      text_width=t_width, text_layers=layers("text_model"), text_heads=t_width // 64,
      text_mlp_dim=shape("text_model.encoder.layers.0.mlp.fc1.weight")[0],
      context_length=shape("text_model.embeddings.position_embedding.weight")[0],
      vocab_size=vocab)
  fields.update({k: v for k, v in overrides.items() if v is not None})
  try:
    config = clip.CLIPConfig(**fields)
  except ValueError as e:
    raise ValueError(f"{e} (heads default to width // 64; set vision_heads / text_heads)") from e
  if config.activation not in clip.ACTIVATIONS:
    raise ValueError(f"unsupported activation {config.activation!r}; "
                     f"supported: {sorted(clip.ACTIVATIONS)}")
  return config


def _source_name(hf_name: str, origin: "SourceNames") -> str:
  return repr(origin(hf_name))


# --- Strict HF-layout <-> Flax.

def hf_to_params(state: dict[str, np.ndarray], config: clip.CLIPConfig,
                 origin: "SourceNames | None" = None) -> dict:
  """Strict conversion of an HF-layout state dict to (loop-layout) Flax params, fp32 numpy."""
  origin = SourceNames() if origin is None else origin
  expected = traverse_util.flatten_dict(
      clip.abstract_params(dataclasses.replace(config, scan=False)), sep="/")
  flat, problems = {}, []
  unexpected = sorted({origin(k) for k in state if _hf_rule(k) is None
                       or _hf_rule(k)[0] not in expected})
  fixes = []
  if unexpected:
    problems.append(f"unexpected keys {_some(unexpected)}")
    fixes.append("unexpected keys mean another architecture (or a wrapper prefix): convert a "
                 "CLIP ViT in one of the formats " + ", ".join(FORMATS))
  missing = sorted({origin(k) for k in _hf_names(config) if k not in state})
  if missing:
    problems.append(f"missing keys {_some(missing)}")
    fixes.append("missing keys mean an incomplete file: re-download or re-export it")
  for name, value in state.items():
    rule = _hf_rule(name)
    if rule is None or rule[0] not in expected:
      continue
    path, (to_flax, to_torch) = rule
    target = expected[path].shape
    want = jax.eval_shape(to_torch, jax.ShapeDtypeStruct(target, np.float32)).shape
    if value.shape != want:
      problems.append(f"{_source_name(name, origin)} has shape {tuple(value.shape)}, expected "
                      f"{tuple(want)} for {path}")
      continue
    flat[path] = np.asarray(to_flax(np.asarray(value, np.float32), target))
  if problems:
    fix = f". Fix: {'; '.join(fixes)}" if fixes else ""
    raise ValueError(f"{origin.file}: checkpoint does not match the CLIP model "
                     f"({_describe(config)}): " + "; ".join(problems) + fix)
  return traverse_util.unflatten_dict(flat, sep="/")


def _some(names: list[str], limit: int = 10) -> str:
  """The first `limit` names (a list repr), and how many more."""
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return f"{names[:limit]}{more}"


def params_to_hf(params: dict) -> dict[str, np.ndarray]:
  """Flax params (either layout) -> HF CLIPModel state dict (fp32 numpy, contiguous)."""
  flat = traverse_util.flatten_dict(clip.to_param_layout(params, scan=False), sep="/")
  out = {}
  for name, path, transform in _all_rules(flat):
    out[name] = np.array(transform[1](np.asarray(flat[path], np.float32)), order="C")
  return out


def _all_rules(flat: dict):
  for hf_name, path, transform in _TOP_RULES:
    yield hf_name, path, transform
  for tower_hf, tower in TOWERS.items():
    blocks = sorted({int(p.split("/")[2].split("_")[1]) for p in flat
                     if p.startswith(f"{tower}/transformer/")})
    for i in blocks:
      for hf_inner, flax_inner, transform in _BLOCK_RULES:
        yield (f"{tower_hf}.encoder.layers.{i}.{hf_inner}",
               f"{tower}/transformer/resblocks_{i}/{flax_inner}", transform)


def _describe(config: clip.CLIPConfig) -> str:
  return (f"vision {config.vision_layers}x{config.vision_width}, text {config.text_layers}x"
          f"{config.text_width}, embed {config.embed_dim}")


def convert(source: str, text_context: int | None = None, scan: bool = False,
            variant: str | None = None, **overrides) -> tuple[dict, clip.CLIPConfig]:
  """Reads `source` ('hf:dir', 'openai:file', 'open_clip:file') into (params, config).

  `text_context` stretches the text position table (Long-CLIP, keep 20) when it is longer than
  the checkpoint's; `variant` (e.g. "B/16") names what the file should be, so a file with a lost
  layer or another architecture is an error (files without a config cannot tell otherwise);
  `overrides` set config fields the shapes cannot tell (e.g. `text_heads`, `activation="gelu"`
  for open_clip models trained without QuickGELU).
  """
  state, origin, fields, stated = read_source(source)
  if variant is not None:
    stated = stated + _stated_by_variant(variant)
  overrides = {k: v for k, v in overrides.items() if v is not None}
  try:
    config = infer_config(state, origin, **{**fields, **overrides})
  except ValueError:
    check_layers(state, origin, stated)  # e.g. layer 0 missing: say so rather than which key
    raise
  check_stated(config, origin, stated)  # another model entirely: say that before its layers
  check_layers(state, origin, stated)
  params = hf_to_params(state, config, origin)
  if text_context is not None and text_context != config.context_length:
    if text_context < config.context_length:
      raise ValueError(f"text_context {text_context} is shorter than the checkpoint's "
                       f"{config.context_length}; only stretching is supported")
    params = positions.stretch_text_positions(params, text_context)
    config = dataclasses.replace(config, context_length=text_context)
  if scan:
    params = clip.to_param_layout(params, scan=True)
  return params, dataclasses.replace(config, scan=scan)
