"""A model checkpoint: Orbax params in `<dir>/params` plus `<dir>/model_config.json`.

This is what `convert` writes, what the trainer loads as its initialisation and what `export_hf`
reads. The config travels with the weights so no command has to guess the architecture.
"""
import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp

from goal_jax.models import clip

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def save_model(directory: str, params: dict, config: clip.CLIPConfig) -> None:
  """Writes params (either layout; must match `config.scan`) and the config.

  On several processes every process must call it (Orbax saves collectively); only process 0
  writes the config, which comes last, so its presence marks a complete checkpoint.
  """
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  if os.path.exists(os.path.join(directory, PARAMS_DIR)):
    raise FileExistsError(f"{directory} already holds a model checkpoint")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, PARAMS_DIR), params)
    checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
      json.dump(config.to_dict(), f, indent=2)


def load_config(directory: str) -> clip.CLIPConfig:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{directory} is not a model checkpoint: no {CONFIG_FILE}")
  with open(path) as f:
    return clip.CLIPConfig.from_dict(json.load(f))


def load_model(directory: str, scan: bool | None = None,
               abstract_params=None) -> tuple[dict, clip.CLIPConfig]:
  """Reads (params, config). `scan` re-lays the params (and sets config.scan) if given.

  `abstract_params` (a tree of `jax.ShapeDtypeStruct`, possibly with shardings, in the saved
  layout) restores straight onto devices; without it the params come back as host arrays.
  """
  directory = os.path.abspath(directory)
  config = load_config(directory)
  if abstract_params is None:
    abstract_params = clip.abstract_params(config)
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(os.path.join(directory, PARAMS_DIR), abstract_params)
  if scan is not None and scan != config.scan:
    params = clip.to_param_layout(jax.device_get(params), scan)
    config = dataclasses.replace(config, scan=scan)
  return params, config
