"""Finds and loads the method configs, and parses the `:arg` suffix of a config file.

The method configs ship inside the package (`goal_jax/configs/`; a checkout's `configs/` links
there), so an installed goal_jax finds them too. The library loads them by path, as
`--config=<file>` does, and never imports them; they import only this module and
`goal_jax.constants` (the defaults they start from), so a recipe loads without JAX.

`--config=configs/goal.py:demo,batch=8,variant=B/16` hands `"demo,batch=8,variant=B/16"`
to `get_config(arg)`. Each config declares its knobs once, with defaults, and `parse_arg` types what
the command line says by those defaults, so a typo or a bad value fails at start-up, not hours later.
"""
import importlib.util
import os
from typing import Any

import ml_collections

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def recipe_path(config_file: str) -> str:
  """The path of a method config shipped with goal_jax, e.g. `recipe_path("goal.py")`."""
  return os.path.join(CONFIGS_DIR, config_file)


def shipped_recipes() -> list[str]:
  """The method configs shipped with goal_jax (`goal.py`, ...)."""
  return sorted(n for n in os.listdir(CONFIGS_DIR)
                if n.endswith(".py") and n not in ("__init__.py", "common.py"))


def resolve_config_file(value: str) -> str:
  """`--config`'s value with its file found from any directory: a path that exists is kept;
  otherwise `configs/goal.py`, `goal.py` or `goal_jax/configs/goal.py` name the shipped recipe
  (the README's paths, which a pip-installed user has no checkout for). An unknown file is a
  `ValueError` listing the shipped ones."""
  path, sep, arg = value.partition(":")
  if os.path.isfile(path):
    return value
  name = os.path.basename(path)
  if name in shipped_recipes():
    return recipe_path(name) + sep + arg
  raise ValueError(f"--config={path}: no such file, and no shipped recipe is called {name!r}; "
                   f"shipped: {', '.join(shipped_recipes())} (e.g. --config=configs/goal.py:demo)")


def resolve_config_argv(argv: list[str]) -> list[str]:
  """`argv` with `--config=<file>[:arg]` (or `--config <file>...`) resolved as above."""
  out = list(argv)
  for i, word in enumerate(out):
    if word.startswith("--config="):
      out[i] = "--config=" + resolve_config_file(word[len("--config="):])
    elif word == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_config_file(out[i + 1])
  return out


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path`, loaded as `--config=path:arg` loads it."""
  name = "_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _to_bool(key: str, text: str) -> bool:
  if text.lower() in _TRUE:
    return True
  if text.lower() in _FALSE:
    return False
  raise ValueError(f"config arg {key}={text!r}: expected a boolean ({'/'.join(_TRUE + _FALSE)})")


def _infer(text: str) -> Any:
  """Types a value whose key has no default (or a None default): int, float, bool, else str."""
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  if text.lower() == "none":
    return None
  return text


def _typed(key: str, text: str, default: Any) -> Any:
  """Casts `text` to the type of `default` (bool before int: bool is an int subclass)."""
  if default is None:
    return _infer(text)
  if isinstance(default, bool):
    return _to_bool(key, text)
  if isinstance(default, (int, float, str)):
    try:
      return type(default)(text)
    except ValueError:
      raise ValueError(f"config arg {key}={text!r}: expected {type(default).__name__} "
                       f"(default {default!r})") from None
  raise TypeError(f"config arg {key}: defaults of type {type(default).__name__} cannot be set "
                  "from the command line; use --config.{key}=... instead")


def parse_arg(arg: str | None, *, lazy: bool = False, **defaults) -> ml_collections.ConfigDict:
  """Turns `"demo,batch=8,variant=B/16"` into a ConfigDict typed by `defaults`.

  A bare `name` means `name=True`. Keys must appear in `defaults` (so typos are errors) unless
  `lazy`, in which case unknown keys are typed by their text (int, float, bool, else str).

  Args:
    arg: the text after `:` in `--config file.py:arg`, or None/"" for all defaults.
    lazy: accept keys that have no default.
    **defaults: every knob and its default value; the default's type types the parsed value.

  Returns:
    A ConfigDict with every default, overridden by what `arg` sets.
  """
  fields = dict(defaults)
  for token in (arg or "").split(","):
    token = token.strip()
    if not token:
      continue
    key, has_value, text = token.partition("=")
    key = key.strip()
    if not key.isidentifier():
      raise ValueError(f"config arg {token!r}: {key!r} is not a valid field name")
    if key not in defaults and not lazy:
      raise ValueError(f"config arg {token!r}: unknown field {key!r}; known: {sorted(defaults)}")
    if not has_value:
      if key in defaults and defaults[key] is not None and not isinstance(defaults[key], bool):
        raise ValueError(f"config arg {key!r} needs a value: it is a "
                         f"{type(defaults[key]).__name__} (default {defaults[key]!r}), not a flag")
      fields[key] = True
    else:
      fields[key] = _typed(key, text.strip(), defaults.get(key))
  return ml_collections.ConfigDict(fields)
