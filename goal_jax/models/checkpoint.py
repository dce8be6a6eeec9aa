"""A model checkpoint: Orbax params in `<dir>/params` plus `<dir>/model_config.json`.

This is what `convert` writes, what the trainer loads as its initialisation and what `export_hf`
reads. The config travels with the weights so no command has to guess the architecture.

The trainer's model also keeps the method that trained it, so evaluation can rank pairs as that
method does (`methods.base.Scorer`): `<dir>/method.json` (its name and `config.loss`) and, when
the method trains modules beside CLIP, their params in `<dir>/method_params`. CLIP's params stay
alone in `<dir>/params`, so every reader of a CLIP loads them strictly, as before.

A trainer's intermediate checkpoint, `<workdir>/checkpoints/<step>`, reads as a model too: its
CLIP params come out of the train state, and its architecture from `<workdir>/model_config.json`,
which the trainer writes at start. So `evaluate`, `embed`, `visualize` and `export_hf` take any
step of a run, not only its final `<workdir>/model`; the trainer's `init` takes only a model
(a step would start from weights its run has not finished with). A folder that is not a model
(a Hugging Face folder, a workdir) gets an error naming the fix (`not_a_model`).
"""
import dataclasses
import json
import os

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from goal_jax import files
from goal_jax.models import clip
from goal_jax.models import families
from goal_jax.models import param_tree

CONFIG_FILE = "model_config.json"
INFO_FILE = "model_info.json"
METHOD_FILE = "method.json"
PARAMS_DIR = "params"
METHOD_PARAMS_DIR = "method_params"
TRAIN_STATE_DIR = "state"  # a trainer checkpoint step: <workdir>/checkpoints/<step>/state


def save_model(directory: str, params: dict, config: clip.CLIPConfig, *,
               info: dict | None = None, method: dict | None = None,
               method_params: dict | None = None, overwrite: bool = False,
               extra_files: dict[str, bytes] | None = None) -> None:
  """Writes params (either layout; must match `config.scan`), the config and optional `info`.

  `method`: `{"name": config.method, "loss": config.loss as a dict}` of the method that trained
  the params; `method_params`: its params beside CLIP (`{}` or None: it has none);
  `extra_files`: `{name: bytes}` kept beside them (a SigLIP model's SentencePiece model).

  Everything goes to `<directory>.tmp` first, which is renamed into place when complete, so a
  crash never leaves a half-written model where commands look for one. `overwrite` replaces an
  existing model (the trainer's, when a finished run is extended); otherwise one is an error.
  On several processes every process must call it (Orbax saves collectively); process 0 writes
  the JSON files and renames.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory) and not overwrite:
    raise FileExistsError(f"{directory} already holds a model checkpoint (or other files)")
  main = jax.process_index() == 0
  tmp = files.staging_directory(directory, create=main)
  _barrier(f"model tmp ready: {directory}")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(tmp, PARAMS_DIR), params)
    if method_params:
      checkpointer.save(os.path.join(tmp, METHOD_PARAMS_DIR), method_params)
    checkpointer.wait_until_finished()
  if main:
    _write_json(os.path.join(tmp, CONFIG_FILE), families.config_to_dict(config))
    if info is not None:
      _write_json(os.path.join(tmp, INFO_FILE), info)
    if method is not None:
      _write_json(os.path.join(tmp, METHOD_FILE), method)
    for name, data in (extra_files or {}).items():
      files.write_atomic(os.path.join(tmp, name), data)
    files.replace_directory(tmp, directory)
  _barrier(f"model saved: {directory}")


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _write_json(path: str, value: dict) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)


def load_info(directory: str) -> dict:
  """What the writer recorded about the model (the trainer: `{"step": N}`); {} if nothing."""
  return _read_json(os.path.join(directory, INFO_FILE)) or {}


def load_method(directory: str) -> dict | None:
  """`{"name", "loss"}` of the method that trained the model; None if none was recorded (a
  converted model, a trainer's checkpoint step, a model from before this version)."""
  return _read_json(os.path.join(directory, METHOD_FILE))


def load_method_params(directory: str, abstract_params) -> dict:
  """The method's params beside CLIP, restored strictly onto `abstract_params` (a tree of
  `jax.ShapeDtypeStruct`, e.g. `jax.eval_shape` of the method's `init_extra_params`)."""
  if not jax.tree.leaves(abstract_params):
    return {}
  path = os.path.join(os.path.abspath(directory), METHOD_PARAMS_DIR)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{directory} has no {METHOD_PARAMS_DIR}: the params of the method "
                            "that trained it were not saved with it")
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(path, abstract_params)
  # Orbax checks the tree, not the shapes: a method config that changed a module's size must fail.
  for (key, leaf), want in zip(jax.tree_util.tree_leaves_with_path(params),
                               jax.tree.leaves(abstract_params)):
    if leaf.shape != want.shape:
      raise ValueError(f"{path}: {jax.tree_util.keystr(key)} has shape {leaf.shape}, the "
                       f"method's config makes {want.shape}")
  return params


def _read_json(path: str):
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def save_config(directory: str, config: clip.CLIPConfig) -> None:
  """Writes `<directory>/model_config.json` (the trainer: its workdir's, for its checkpoints)."""
  _write_json(os.path.join(directory, CONFIG_FILE), families.config_to_dict(config))


def _train_workdir(directory: str) -> str | None:
  """The workdir of a trainer checkpoint step `<workdir>/checkpoints/<step>`, else None."""
  parent = os.path.dirname(os.path.abspath(directory))
  if os.path.isdir(os.path.join(directory, TRAIN_STATE_DIR)) and \
      os.path.basename(parent) == "checkpoints":
    return os.path.dirname(parent)
  return None


# What a Hugging Face model folder keeps its weights in (`convert` reads such a folder).
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                   "pytorch_model.bin.index.json")


def is_model(directory: str, steps: bool = True) -> bool:
  """Whether `load_model` reads `directory`: a model checkpoint, or (`steps`) a trainer's
  checkpoint step whose workdir holds the architecture."""
  if os.path.isfile(os.path.join(directory, CONFIG_FILE)) and \
      os.path.isdir(os.path.join(directory, PARAMS_DIR)):
    return True
  workdir = _train_workdir(directory) if steps else None
  return workdir is not None and os.path.isfile(os.path.join(workdir, CONFIG_FILE))


def _is_hf_folder(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, "config.json")) and any(
      os.path.isfile(os.path.join(directory, name)) for name in HF_WEIGHT_FILES)


def _converted_name(source: str) -> str:
  """A new folder beside `source` for its conversion (`<source>_goal_jax`), or that folder if a
  conversion is already there."""
  base = os.path.splitext(os.path.abspath(source))[0] if os.path.isfile(source) else \
      os.path.abspath(source)
  candidate, n = f"{base}_goal_jax", 1
  while os.path.exists(candidate) and not is_model(candidate, steps=False):
    n += 1
    candidate = f"{base}_goal_jax{n}"
  return candidate


def _checkpoint_steps(workdir: str) -> list[int]:
  return sorted(int(name) for name in _listdir(os.path.join(workdir, "checkpoints"))
                if name.isdigit())


def _finished_model(workdir: str, option: str) -> str:
  """Where a run's trained model is, or how to finish the run that makes it."""
  model = os.path.join(workdir, "model")
  if is_model(model, steps=False):
    return f"its trained model is {model}: pass {option}={model}"
  steps = _checkpoint_steps(workdir)
  last = f" (last checkpoint: step {steps[-1]})" if steps else ""
  return (f"its run has not finished{last}, so there is no {model} yet: rerun the "
          f"`python -m goal_jax.train` command that started it (its config is "
          f"{os.path.join(workdir, 'config.json')}) with --workdir={workdir} to finish it, then "
          f"pass {option}={model}")


def not_a_model(directory: str, label: str | None = None, option: str = "--checkpoint",
                steps: bool = True) -> str:
  """Why `directory` is not a model checkpoint, and the fix for what it is instead.

  A Hugging Face folder or a weights file: the `convert` command into a new folder beside it.
  A training workdir (or, where `steps` is False, one of its checkpoint steps): the run's final
  `model/`, or how to finish the run. `label` starts the message (default `directory`); `option`
  is how the caller names a model (`--checkpoint`, the trainer's `init`).
  """
  message = f"{label or directory} is not a model checkpoint"
  if os.path.isfile(directory) or _is_hf_folder(directory):
    out = _converted_name(directory)
    what = "a weights file" if os.path.isfile(directory) else "a Hugging Face model folder"
    if is_model(out, steps=False):
      return f"{message} but {what}; its conversion is {out}: pass {option}={out}"
    return (f"{message} but {what}; convert it into a new folder with `python -m "
            f"goal_jax.convert --source={directory} --out={out}` and pass {option}={out}")
  workdir = _train_workdir(directory)
  if workdir is not None and not steps:
    return (f"{message} but a checkpoint step of the training run in {workdir}, which holds "
            f"its optimizer state; {_finished_model(workdir, option)}")
  if workdir is not None:
    return (f"{message}: a training checkpoint whose workdir {workdir} has no {CONFIG_FILE} "
            "(runs from before this version do not write it); use that run's final "
            f"{workdir}/model")
  is_workdir = os.path.isdir(os.path.join(directory, "checkpoints")) or \
      os.path.isdir(os.path.join(directory, "model"))
  if is_workdir and not steps:
    return f"{message} but a training workdir; {_finished_model(directory, option)}"
  hints = []
  if os.path.isfile(os.path.join(directory, "model", CONFIG_FILE)):
    hints.append(f"its final model is {os.path.join(directory, 'model')}")
  found = _checkpoint_steps(directory)
  if found:
    hints.append(f"a checkpoint of it is {os.path.join(directory, 'checkpoints', str(found[-1]))} "
                 f"(steps {', '.join(map(str, found))})")
  if hints:
    return f"{message}. It is a training workdir: {'; '.join(hints)}"
  if not os.path.exists(directory):
    return (f"{message}: it does not exist. Convert a pretrained CLIP into it with `python -m "
            f"goal_jax.convert --source=/path/to/clip-vit-base-patch16 --out={directory}`")
  return (f"{message} (it has no {CONFIG_FILE} and {PARAMS_DIR}/): pass {option}=<a `convert` "
          f"output or a run's W/model>, or convert a pretrained CLIP with `python -m "
          f"goal_jax.convert --source=/path/to/clip-vit-base-patch16 --out=<a new folder>`")


def _listdir(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


def load_config(directory: str) -> clip.CLIPConfig:
  """The architecture of a model checkpoint, or of a trainer checkpoint step (its workdir's)."""
  path = os.path.join(directory, CONFIG_FILE)
  workdir = _train_workdir(directory)
  if not os.path.isfile(path) and workdir is not None:
    path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(not_a_model(directory))
  with open(path) as f:
    return families.config_from_dict(json.load(f))


def load_model(directory: str, scan: bool | None = None,
               abstract_params=None) -> tuple[dict, clip.CLIPConfig]:
  """Reads (params, config). `scan` re-lays the params (and sets config.scan) if given.

  `abstract_params` (a tree of `jax.ShapeDtypeStruct`, possibly with shardings, in the saved
  layout) restores straight onto devices; without it the params come back as host arrays.
  """
  directory = os.path.abspath(directory)
  config = load_config(directory)
  if abstract_params is None:
    abstract_params = families.of(config).abstract_params(config)
  if os.path.isdir(os.path.join(directory, PARAMS_DIR)):
    with ocp.StandardCheckpointer() as checkpointer:
      params = checkpointer.restore(os.path.join(directory, PARAMS_DIR), abstract_params)
  elif _train_workdir(directory) is not None:
    params = _restore_train_params(os.path.join(directory, TRAIN_STATE_DIR), abstract_params)
  else:  # e.g. a training workdir, which holds the model_config.json of its checkpoints
    raise FileNotFoundError(not_a_model(directory))
  if scan is not None and scan != getattr(config, "scan", False):
    if not hasattr(config, "scan"):
      raise ValueError(f"{directory}: a {families.of(config).name} model has no scanned layout")
    params = clip.to_param_layout(jax.device_get(params), scan)
    config = dataclasses.replace(config, scan=scan)
  return params, config


def _restore_train_params(state_dir: str, abstract_params) -> dict:
  """The CLIP params out of a trainer's train state, reading nothing else (optimizer moments
  are twice the params' size)."""
  target = {"params": param_tree.merge(abstract_params, {})}
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  return param_tree.clip_of(restored["params"])
