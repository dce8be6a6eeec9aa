"""SigLIP weights in and out: transformers' `SiglipModel` state dicts and big_vision `.npz` trees.

Both directions are strict: every source tensor must land on a param and every param must be
filled, with the shape the config implies; a mismatch names the key. The param tree is
big_vision's (`goal_jax.models.siglip`), so an `.npz` maps by name (`t`, `b` -> `logit_scale`,
`logit_bias`, `(1,)` there, scalars here), and transformers' names map by the table below:
attention kernels `[D, H, Dh]` are its `[D, D]` Linear weights transposed and split by head, and
the pooling head's packed `in_proj` is split into query, key and value.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np

from goal_jax.models import positions
from goal_jax.models import siglip
from goal_jax.models import state_dicts

_BLOCK = {  # transformers' encoder layer -> big_vision's encoder block
    "layer_norm1": "LayerNorm_0", "layer_norm2": "LayerNorm_1",
    "self_attn.q_proj": "MultiHeadDotProductAttention_0/query",
    "self_attn.k_proj": "MultiHeadDotProductAttention_0/key",
    "self_attn.v_proj": "MultiHeadDotProductAttention_0/value",
    "self_attn.out_proj": "MultiHeadDotProductAttention_0/out",
    "mlp.fc1": "MlpBlock_0/Dense_0", "mlp.fc2": "MlpBlock_0/Dense_1",
}
_NPZ_SCALARS = {"t": "logit_scale", "b": "logit_bias"}
TOKENIZER_FILE = "spiece.model"  # the SentencePiece model a converted checkpoint keeps
TEXT_FILE = "text_processing.json"  # how texts are prepared for it: {"lowercase": bool}


class WeightsError(ValueError):
  """Weights that do not fit the model: the message names the key and what is wrong."""


def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> siglip.SigLIPConfig:
  """A `SigLIPConfig` from a transformers `SiglipConfig` dict (`config.json`)."""
  vision, text = hf_config["vision_config"], hf_config["text_config"]
  for tower, values in (("vision", vision), ("text", text)):
    act = values.get("hidden_act", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
      raise WeightsError(f"{tower}_config.hidden_act={act!r}: SigLIP towers use "
                         "gelu_pytorch_tanh (big_vision's tanh GELU)")
  if not vision.get("vision_use_head", True):
    raise WeightsError("vision_config.vision_use_head=false: a SigLIP model needs its "
                       "attention-pooling head")
  eps = {vision.get("layer_norm_eps", 1e-6), text.get("layer_norm_eps", 1e-6)}
  if len(eps) != 1:
    raise WeightsError(f"the towers' layer_norm_eps differ ({sorted(eps)}); one is supported")
  return siglip.SigLIPConfig(
      image_size=vision["image_size"], patch_size=vision["patch_size"],
      vision_width=vision["hidden_size"], vision_layers=vision["num_hidden_layers"],
      vision_heads=vision["num_attention_heads"], vision_mlp_dim=vision["intermediate_size"],
      text_width=text["hidden_size"], text_layers=text["num_hidden_layers"],
      text_heads=text["num_attention_heads"], text_mlp_dim=text["intermediate_size"],
      embed_dim=text.get("projection_size") or text["hidden_size"],
      context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"],
      layer_norm_eps=eps.pop(), **overrides)


def config_to_hf(config: siglip.SigLIPConfig) -> dict[str, Any]:
  """The transformers `SiglipConfig` dict of `config` (what `export_hf` writes)."""
  common = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=config.layer_norm_eps,
                attention_dropout=0.0)
  return dict(
      architectures=["SiglipModel"], model_type="siglip",
      vision_config=dict(common, model_type="siglip_vision_model",
                         hidden_size=config.vision_width, intermediate_size=config.vision_mlp_dim,
                         num_hidden_layers=config.vision_layers,
                         num_attention_heads=config.vision_heads, image_size=config.image_size,
                         patch_size=config.patch_size, num_channels=3, vision_use_head=True),
      text_config=dict(common, model_type="siglip_text_model", hidden_size=config.text_width,
                       intermediate_size=config.text_mlp_dim,
                       num_hidden_layers=config.text_layers,
                       num_attention_heads=config.text_heads, vocab_size=config.vocab_size,
                       max_position_embeddings=config.context_length,
                       projection_size=config.embed_dim))


def _hf_names(config: siglip.SigLIPConfig) -> dict[str, str]:
  """transformers key prefix (no `.weight`/`.bias`) -> our param path, for Linear/LayerNorm."""
  names = {}
  for tower, hf, ours, layers in (("vision", "vision_model.encoder.layers", "img/Transformer",
                                   config.vision_layers),
                                  ("text", "text_model.encoder.layers", "txt/Encoder_0",
                                   config.text_layers)):
    del tower
    for i in range(layers):
      for hf_part, our_part in _BLOCK.items():
        names[f"{hf}.{i}.{hf_part}"] = f"{ours}/encoderblock_{i}/{our_part}"
  names.update({
      "vision_model.post_layernorm": "img/Transformer/encoder_norm",
      "vision_model.head.layernorm": "img/MAPHead_0/LayerNorm_0",
      "vision_model.head.mlp.fc1": "img/MAPHead_0/MlpBlock_0/Dense_0",
      "vision_model.head.mlp.fc2": "img/MAPHead_0/MlpBlock_0/Dense_1",
      "vision_model.head.attention.out_proj": "img/MAPHead_0/MultiHeadDotProductAttention_0/out",
      "text_model.final_layer_norm": "txt/Encoder_0/encoder_norm",
      "text_model.head": "txt/head",
  })
  return names


def from_hf_state_dict(state_dict: Mapping[str, Any], config: siglip.SigLIPConfig,
                       source: str = "state dict") -> dict:
  """Our params from a `SiglipModel` state dict (tensors or arrays), strictly."""
  target = flax.traverse_util.flatten_dict(siglip.abstract_params(config), sep="/")
  values = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
            for k, v in state_dict.items()}
  values = {k: v for k, v in values.items() if not k.endswith("position_ids")}  # buffers
  out: dict[str, np.ndarray] = {}
  used: set[str] = set()

  def put(path, value, key):
    if path not in target:
      raise WeightsError(f"{source}: {key} maps to {path}, which this model does not have")
    if tuple(target[path].shape) != tuple(value.shape):
      raise WeightsError(f"{source}: {key} has shape {tuple(value.shape)} after conversion, the "
                         f"model's {path} is {tuple(target[path].shape)} (wrong config?)")
    out[path] = value.astype(np.float32)
    used.add(key)

  def take(key):
    if key not in values:
      raise WeightsError(f"{source}: missing {key}; is it a SiglipModel (fixed resolution)?")
    return values[key]

  put("img/embedding/kernel",
      take("vision_model.embeddings.patch_embedding.weight").transpose(2, 3, 1, 0),
      "vision_model.embeddings.patch_embedding.weight")
  put("img/embedding/bias", take("vision_model.embeddings.patch_embedding.bias"),
      "vision_model.embeddings.patch_embedding.bias")
  for key, path in (("vision_model.embeddings.position_embedding.weight", "img/pos_embedding"),
                    ("text_model.embeddings.position_embedding.weight", "txt/pos_embedding")):
    put(path, take(key)[None], key)
  put("txt/Embed_0/embedding", take("text_model.embeddings.token_embedding.weight"),
      "text_model.embeddings.token_embedding.weight")
  put("img/MAPHead_0/probe", take("vision_model.head.probe"), "vision_model.head.probe")
  packed_w = take("vision_model.head.attention.in_proj_weight")
  packed_b = take("vision_model.head.attention.in_proj_bias")
  attention = "img/MAPHead_0/MultiHeadDotProductAttention_0"
  for part, w, b in zip(("query", "key", "value"), np.split(packed_w, 3), np.split(packed_b, 3)):
    put(f"{attention}/{part}/kernel", w.T.reshape(target[f"{attention}/{part}/kernel"].shape),
        "vision_model.head.attention.in_proj_weight")
    put(f"{attention}/{part}/bias", b.reshape(target[f"{attention}/{part}/bias"].shape),
        "vision_model.head.attention.in_proj_bias")
  for prefix, path in _hf_names(config).items():
    weight, bias = take(f"{prefix}.weight"), take(f"{prefix}.bias")
    if _is_norm(path):
      put(f"{path}/scale", weight, f"{prefix}.weight")
    else:  # Linear [out, in] -> kernel [in, out], split by head where ours is [D, H, Dh]
      put(f"{path}/kernel", _fit(weight.T, target.get(f"{path}/kernel")), f"{prefix}.weight")
    put(f"{path}/bias", _fit(bias, target.get(f"{path}/bias")), f"{prefix}.bias")
  for name in ("logit_scale", "logit_bias"):
    put(name, take(name).reshape(()), name)
  unused = sorted(set(values) - used)
  if unused:
    raise WeightsError(f"{source}: {len(unused)} tensors the model has no place for, e.g. "
                       f"{unused[:3]}")
  missing = sorted(set(target) - set(out))
  if missing:
    raise WeightsError(f"{source}: params not filled: {missing[:3]}")
  return flax.traverse_util.unflatten_dict(out, sep="/")


def _fit(value: np.ndarray, target) -> np.ndarray:
  """`value` in the target's shape when it holds as many numbers (heads split), else as is, so
  that `put` reports the mismatch."""
  if target is not None and value.size == int(np.prod(target.shape)):
    return value.reshape(target.shape)
  return value


def _is_norm(path: str) -> bool:
  return path.rsplit("/", 1)[-1].startswith(("LayerNorm", "encoder_norm", "layernorm"))


def to_hf_state_dict(params: dict, config: siglip.SigLIPConfig) -> dict[str, np.ndarray]:
  """The `SiglipModel` state dict of our params (float32 arrays), the inverse of
  `from_hf_state_dict`."""
  flat = {k: np.asarray(v, np.float32)
          for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  out = {
      "vision_model.embeddings.patch_embedding.weight":
          flat["img/embedding/kernel"].transpose(3, 2, 0, 1),
      "vision_model.embeddings.patch_embedding.bias": flat["img/embedding/bias"],
      "vision_model.embeddings.position_embedding.weight": flat["img/pos_embedding"][0],
      "text_model.embeddings.position_embedding.weight": flat["txt/pos_embedding"][0],
      "text_model.embeddings.token_embedding.weight": flat["txt/Embed_0/embedding"],
      "vision_model.head.probe": flat["img/MAPHead_0/probe"],
      "logit_scale": flat["logit_scale"].reshape(1),
      "logit_bias": flat["logit_bias"].reshape(1),
  }
  attention = "img/MAPHead_0/MultiHeadDotProductAttention_0"
  width = config.vision_width
  out["vision_model.head.attention.in_proj_weight"] = np.concatenate(
      [flat[f"{attention}/{p}/kernel"].reshape(width, width).T for p in ("query", "key", "value")])
  out["vision_model.head.attention.in_proj_bias"] = np.concatenate(
      [flat[f"{attention}/{p}/bias"].reshape(-1) for p in ("query", "key", "value")])
  for prefix, path in _hf_names(config).items():
    if _is_norm(path):
      out[f"{prefix}.weight"], out[f"{prefix}.bias"] = flat[f"{path}/scale"], flat[f"{path}/bias"]
      continue
    kernel = flat[f"{path}/kernel"]  # [in, out], [D, H, Dh] or `out`'s [H, Dh, D] -> [out, in]
    rows = kernel.reshape(-1, kernel.shape[-1]) if path.endswith("/out") else kernel.reshape(
        kernel.shape[0], -1)
    out[f"{prefix}.weight"] = rows.T
    out[f"{prefix}.bias"] = flat[f"{path}/bias"].reshape(-1)
  # Contiguous: safetensors writes an array's buffer, not its strides (a transpose is a view).
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def from_big_vision(tree: Mapping[str, Any], config: siglip.SigLIPConfig,
                    source: str = ".npz") -> dict:
  """Our params from big_vision's `two_towers` tree (an `.npz`'s `params/...` keys flattened by
  '/', or the nested tree), strictly."""
  flat = dict(tree) if all(isinstance(v, np.ndarray) for v in tree.values()) and any(
      "/" in k for k in tree) else flax.traverse_util.flatten_dict(tree, sep="/")
  flat = {k.removeprefix("params/"): np.asarray(v) for k, v in flat.items()}
  target = flax.traverse_util.flatten_dict(siglip.abstract_params(config), sep="/")
  out = {}
  for key, value in flat.items():
    path = _NPZ_SCALARS.get(key, key)
    if path not in target:
      raise WeightsError(f"{source}: {key} has no place in the model (a two_towers SigLIP "
                         "checkpoint with a MAP head and a text head is expected)")
    want = tuple(target[path].shape)
    if path in _NPZ_SCALARS.values():
      value = value.reshape(())
    if tuple(value.shape) != want:
      raise WeightsError(f"{source}: {key} has shape {tuple(value.shape)}, the model's {path} is "
                         f"{want} (wrong config?)")
    out[path] = value.astype(np.float32)
  missing = sorted(set(target) - set(out))
  if missing:
    raise WeightsError(f"{source}: missing {len(missing)} params, e.g. {missing[:3]}")
  return flax.traverse_util.unflatten_dict(out, sep="/")


def to_big_vision(params: dict) -> dict[str, np.ndarray]:
  """big_vision's `two_towers` tree flattened as an `.npz` stores it (`params/img/...`)."""
  inverse = {v: k for k, v in _NPZ_SCALARS.items()}
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  return {f"params/{inverse.get(k, k)}": (np.asarray(v).reshape(1) if k in inverse
                                          else np.asarray(v)) for k, v in flat.items()}


def is_siglip_hf_dir(directory: str) -> bool:
  """Whether an HF model directory holds a `SiglipModel` (its config.json's `model_type`)."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    return False
  with open(path, encoding="utf-8") as f:
    return json.load(f).get("model_type") == "siglip"


def load_hf_dir(directory: str, text_context: int | None = None):
  """(params, config) of a transformers `SiglipModel` folder (SigLIP, or SigLIP 2 at a fixed
  resolution), the text positions stretched to `text_context` rows when given."""
  state, hf_config, weights = state_dicts.read_hf_dir(directory)
  if hf_config.get("model_type") != "siglip":
    raise WeightsError(f"{directory}: model_type {hf_config.get('model_type')!r}, not 'siglip' "
                       "(NaFlex SigLIP 2 checkpoints, `siglip2`, are not supported)")
  config = config_from_hf(hf_config)
  return _with_context(from_hf_state_dict(state, config, source=weights), config, text_context)


def config_from_big_vision(flat: Mapping[str, np.ndarray]) -> siglip.SigLIPConfig:
  """The architecture a `two_towers` tree implies (big_vision's `.npz` carries no config): sizes
  from the shapes, heads from the attention kernels `[D, H, Dh]`; the image size of the
  published variant with that tower and grid (So400m/14 at 384 px has a 27 x 27 grid, 378 px
  of it), else grid x patch."""
  def get(key):
    if key not in flat:
      raise WeightsError(f".npz: no {key}; not a big_vision two_towers SigLIP checkpoint")
    return flat[key]

  def layers(prefix):
    return len({k.split("/")[len(prefix.split("/"))] for k in flat
                if k.startswith(prefix + "/encoderblock_")})

  patch, _, _, width = get("img/embedding/kernel").shape
  grid = round(math.sqrt(get("img/pos_embedding").shape[1]))
  vocab, text_width = get("txt/Embed_0/embedding").shape
  block = "img/Transformer/encoderblock_0"
  fields = dict(
      patch_size=patch, vision_width=width, vision_layers=layers("img/Transformer"),
      vision_heads=get(f"{block}/MultiHeadDotProductAttention_0/query/kernel").shape[1],
      vision_mlp_dim=get(f"{block}/MlpBlock_0/Dense_0/kernel").shape[1],
      text_width=text_width, text_layers=layers("txt/Encoder_0"),
      text_heads=get("txt/Encoder_0/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"
                     ).shape[1],
      text_mlp_dim=get("txt/Encoder_0/encoderblock_0/MlpBlock_0/Dense_0/kernel").shape[1],
      embed_dim=get("txt/head/kernel").shape[1], context_length=get("txt/pos_embedding").shape[1],
      vocab_size=vocab)
  image_size = next((v["image_size"] for v in siglip.VARIANTS.values()
                     if v["patch_size"] == patch and v["vision_width"] == width
                     and v["image_size"] // patch == grid), grid * patch)
  return siglip.SigLIPConfig(image_size=image_size, **fields)


def load_npz(path: str, text_context: int | None = None):
  """(params, config) of a big_vision SigLIP / SigLIP 2 `.npz` (`params/img/...` keys)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such file: {path}")
  try:
    with np.load(path) as archive:
      flat = {k.removeprefix("params/"): archive[k] for k in archive.files}
  except (OSError, ValueError) as e:
    raise WeightsError(f"cannot read {path} as an .npz: {e}") from e
  config = config_from_big_vision(flat)
  return _with_context(from_big_vision(flat, config, source=path), config, text_context)


def _with_context(params, config, text_context):
  if text_context is None or text_context == config.context_length:
    return params, config
  return (positions.stretch_text_positions(params, text_context),
          dataclasses.replace(config, context_length=text_context))


def find_tokenizer(source: str, given: str | None = None) -> tuple[str, bytes] | None:
  """`(file name to keep it under, contents)` of the tokenizer to keep with a converted SigLIP:
  `given` (a `.model`, or a `tokenizer.json`), else the source folder's `spiece.model` /
  `tokenizer.model` / `tokenizer.json`, else the one `.model` file beside an `.npz`; None when
  there is none."""
  if given is not None:
    if not os.path.isfile(given):
      raise FileNotFoundError(f"--tokenizer={given}: no such file")
    path = given
  elif os.path.isdir(source):
    path = next((os.path.join(source, n) for n in ("spiece.model", "tokenizer.model",
                                                  "tokenizer.json")
                 if os.path.isfile(os.path.join(source, n))), None)
  else:
    folder = os.path.dirname(os.path.abspath(source))
    beside = sorted(n for n in os.listdir(folder) if n.endswith(".model"))
    path = os.path.join(folder, beside[0]) if len(beside) == 1 else None
  if path is None:
    return None
  name = "tokenizer.json" if path.endswith(".json") else TOKENIZER_FILE
  with open(path, "rb") as f:
    return name, f.read()


def lowercase_of(source: str) -> bool:
  """Whether the checkpoint's texts are lowercased before tokenising: a transformers folder's
  `tokenizer_config.json` says (`do_lower_case`; SiglipTokenizer lowercases unless told not
  to); a big_vision `.npz` has no such file, and SigLIP 2's authors recommend lowercase text."""
  path = os.path.join(source, "tokenizer_config.json") if os.path.isdir(source) else None
  if path is None or not os.path.isfile(path):
    return not os.path.isdir(source)
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  return bool(config.get("do_lower_case", config.get("tokenizer_class") == "SiglipTokenizer"))
