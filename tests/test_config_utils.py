"""parse_arg: the `:arg` suffix of `--config file.py:arg` into typed fields; recipes load without
the library."""
import os
import subprocess
import sys

import pytest

from goal_jax import constants
from goal_jax import config_utils
from goal_jax.config_utils import parse_arg


def test_defaults_when_empty():
  for arg in (None, "", " , "):
    c = parse_arg(arg, demo=False, batch=16, variant="B/16", lr=5e-6)
    assert c.to_dict() == {"demo": False, "batch": 16, "variant": "B/16", "lr": 5e-6}


def test_flag_and_typed_values():
  c = parse_arg("demo,batch=8,variant=L/14,lr=1e-5", demo=False, batch=16, variant="B/16", lr=5e-6)
  assert c.demo is True
  assert c.batch == 8 and type(c.batch) is int
  assert c.variant == "L/14"
  assert c.lr == 1e-5 and type(c.lr) is float


def test_float_default_accepts_integer_text():
  assert type(parse_arg("lr=1", lr=0.5).lr) is float


def test_bool_spellings():
  assert parse_arg("demo=false", demo=True).demo is False
  assert parse_arg("demo=Yes", demo=False).demo is True
  assert parse_arg("demo=0", demo=True).demo is False
  with pytest.raises(ValueError, match="demo='maybe'.*boolean"):
    parse_arg("demo=maybe", demo=False)


def test_unknown_key_is_an_error_unless_lazy():
  with pytest.raises(ValueError, match="unknown field 'bacth'.*batch"):
    parse_arg("bacth=8", batch=16)
  c = parse_arg("steps=10,scale=0.5,name=x,flag,off=false", lazy=True, batch=16)
  assert c.to_dict() == {"batch": 16, "steps": 10, "scale": 0.5, "name": "x", "flag": True,
                         "off": False}


def test_bad_values_name_the_field():
  with pytest.raises(ValueError, match="batch='eight': expected int"):
    parse_arg("batch=eight", batch=16)
  with pytest.raises(ValueError, match="'batch' needs a value"):
    parse_arg("batch", batch=16)
  with pytest.raises(ValueError, match="not a valid field name"):
    parse_arg("a-b=1", lazy=True)


def test_none_default_is_inferred():
  assert parse_arg("init=ckpts/b16", init=None).init == "ckpts/b16"
  assert parse_arg("seed=3", seed=None).seed == 3


def test_recipes_load_without_the_library():
  """As big_vision's configs: a recipe imports config helpers and constants only, so it can be
  read, loaded and copied without JAX, Flax or any other goal_jax module."""
  script = (
      "import glob, os, sys\n"
      "from goal_jax import config_utils\n"
      "for path in sorted(glob.glob(os.path.join(config_utils.CONFIGS_DIR, '*.py'))):\n"
      "  if os.path.basename(path) not in ('__init__.py', 'common.py'):\n"
      "    for arg in ('', 'demo'):\n"
      "      config_utils.load_config(path, arg)\n"
      "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
      "('jax', 'flax', 'goal_jax'))))\n")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  loaded = proc.stdout.split()
  assert not [m for m in loaded if m.split(".")[0] in ("jax", "flax")], loaded
  assert "goal_jax.configs.goal" in loaded
  allowed = {"goal_jax", "goal_jax.config_utils", "goal_jax.constants", "goal_jax.configs"}
  assert [m for m in loaded if m not in allowed and not m.startswith("goal_jax.configs.")] == []


def test_the_library_uses_the_constants_the_recipes_read():
  """One source of truth: the library's defaults are the recipes' constants."""
  from goal_jax.data import pipeline  # noqa: PLC0415 - the library, only for this check
  from goal_jax.data import reproduction  # noqa: PLC0415
  from goal_jax.training import optimizer  # noqa: PLC0415
  assert pipeline.default_config().to_dict() == constants.INPUT
  assert reproduction.COMPAT == constants.COMPAT
  assert optimizer.DEFAULTS is constants.OPTIMIZER


@pytest.mark.parametrize("method, weights, options", [
    ("goal", "GOAL_WEIGHTS", None), ("longclip", "LONGCLIP_WEIGHTS", None),
    ("mulclip", "MULCLIP_WEIGHTS", "MulCLIPOptions"),
    ("finelip", "FINELIP_WEIGHTS", "FineLIPOptions"), ("fgclip", "FGCLIP_WEIGHTS", None)])
def test_recipes_write_their_objective_s_defaults(method, weights, options):
  """A recipe writes its weights and options out (so it reads without the library); they are
  the objective's own defaults, which the paper's values are."""
  import dataclasses  # noqa: PLC0415
  import importlib  # noqa: PLC0415
  loss = importlib.import_module(f"goal_jax.losses.{method}")
  config = config_utils.load_config(config_utils.recipe_path(f"{method}.py"), "")
  assert config.loss.weights.to_dict() == getattr(loss, weights)
  if options:
    defaults = {f.name: f.default for f in dataclasses.fields(getattr(loss, options))}
    assert {k: config.loss[k] for k in defaults} == defaults


@pytest.mark.parametrize("given", ["configs/goal.py", "goal.py", "goal_jax/configs/goal.py"])
def test_config_paths_resolve_from_any_directory(given, tmp_path):
  """The README's `--config=configs/goal.py:...` works where there is no checkout (a pip
  install, another directory); an unknown file is one line listing the shipped recipes."""
  run = lambda value: subprocess.run(
      [sys.executable, "-m", "goal_jax.train", f"--config={value}", "--print_config"],
      cwd=tmp_path, capture_output=True, text=True, timeout=120)
  proc = run(f"{given}:demo,backbone=siglip")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "variant: siglip-demo" in proc.stdout and "method: goal" in proc.stdout
  resolved, _, arg = config_utils.resolve_config_file(f"{given}:demo").partition(":")
  assert arg == "demo"
  assert os.path.samefile(resolved, config_utils.recipe_path("goal.py"))


def test_an_unknown_config_file_lists_the_shipped_ones(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "goal_jax.train", "--config=configs/gaol.py:demo",
                         "--workdir=/tmp/x"], cwd=tmp_path, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "gaol.py" in lines[0] and "goal.py" in lines[0] and "fgclip.py" in \
      lines[0], proc.stderr
