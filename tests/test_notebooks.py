"""notebooks/: generated from make_notebooks.py, commands match the CLIs, the quickstart runs."""
import ast
import importlib.util
import os
import subprocess
import sys

import nbformat
import pytest

from goal_jax.configs import common

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO_ROOT, "notebooks")
BYO = os.path.join(NOTEBOOKS, "byo_checkpoint_docci.ipynb")


def _generator():
  spec = importlib.util.spec_from_file_location("make_notebooks",
                                                os.path.join(NOTEBOOKS, "make_notebooks.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _read(path):
  with open(path, encoding="utf-8") as f:
    return nbformat.read(f, as_version=4)


def test_committed_notebooks_match_the_generator(tmp_path):
  generator = _generator()
  generator.main(str(tmp_path))
  for name in generator.NOTEBOOKS:
    committed, fresh = _read(os.path.join(NOTEBOOKS, name)), _read(tmp_path / name)
    nbformat.validate(committed)
    assert committed == fresh, f"{name} is stale: run python notebooks/make_notebooks.py"
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")
    assert committed.cells[0].cell_type == "markdown"
    assert any("parameters" in c.metadata.get("tags", []) for c in committed.cells)


def _template(node):
  """An argument's text with `X` for every interpolated value: f"--a={b}" -> "--a=X"."""
  if isinstance(node, ast.Constant):
    return str(node.value)
  if isinstance(node, ast.JoinedStr):
    return "".join(_template(v) if isinstance(v, ast.Constant) else "X" for v in node.values)
  return "X"


def _run_calls(notebook):
  """(module, flag names, argument templates) of every `run("module", ...)` in the code cells."""
  calls = []
  for cell in notebook.cells:
    if cell.cell_type != "code":
      continue
    for node in ast.walk(ast.parse(cell.source)):
      if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run":
        args = [_template(arg) for arg in node.args]
        flags = [a.split("=")[0] for a in args[1:] if a.startswith("--")]
        calls.append((args[0], flags, args))
  return calls


def test_byo_notebook_walks_the_users_path():
  calls = _run_calls(_read(BYO))
  assert [module for module, _, _ in calls] == [
      "goal_jax.convert", "goal_jax.prepare", "goal_jax.lism", "goal_jax.train",
      "goal_jax.evaluate", "goal_jax.export_hf"]
  for module, _, _ in calls:
    assert importlib.util.find_spec(module) is not None, module
  train_args = next(args for module, _, args in calls if module == "goal_jax.train")
  assert train_args[1:] == ["--config=configs/X.py:init=X,dataset=X,data_dir=X,batch=X,epochs=X",
                            "--workdir=X"]  # resolved from any directory (config_utils)
  keys = [part.split("=")[0] for part in train_args[1].split(":", 1)[1].split(",")]
  assert set(keys) <= set(common.ARG_DEFAULTS)  # knobs every method config accepts


@pytest.mark.slow
def test_byo_notebook_flags_exist():
  """Every `--flag` the notebook passes is one its command knows (from the command's help)."""
  for module, flags, _ in _run_calls(_read(BYO)):
    help_text = ""
    for option in ("--help", "--helpfull"):
      proc = subprocess.run([sys.executable, "-m", module, option], capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=300)
      help_text += proc.stdout + proc.stderr
      if all(flag in help_text for flag in flags):
        break
    missing = [flag for flag in flags if flag not in help_text]
    assert not missing, f"python -m {module} does not know {missing}"


def _wheel_install(tmp_path):
  """A non-editable install of a wheel built from the checkout, in its own folder: what a user
  who installed the package has (no `configs/` link, no checkout on the path)."""
  wheels, site = tmp_path / "wheels", tmp_path / "site"
  pip = lambda *args: subprocess.run([sys.executable, "-m", "pip", *args], check=True,
                                     capture_output=True, timeout=600)
  pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), REPO_ROOT)
  pip("install", "-q", "--no-deps", "--no-compile", "--target", str(site),
      *map(str, wheels.glob("goal_jax-*.whl")))
  return site


def test_quickstart_executes(tmp_path, monkeypatch):
  """Runs the quickstart with FAST = True (8 pretraining and 6 fine-tuning steps) in a fresh
  kernel, so the notebook cannot rot: install check, demo training, retrieval, curves, maps.
  It runs where users run it: in a scratch folder, against a wheel installed without `-e`."""
  import nbclient  # noqa: PLC0415
  site = _wheel_install(tmp_path)
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  monkeypatch.setenv("PYTHONPATH", str(site))
  monkeypatch.setenv("GOAL_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("XLA_FLAGS", "")
  notebook = _read(os.path.join(NOTEBOOKS, "quickstart.ipynb"))
  parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
  parameters.source = (f'FAST = True\nMETHOD = "goal"\nWORKDIR = {str(tmp_path / "run")!r}\n'
                       'GOAL_JAX_SOURCE = ""')
  notebook.cells.insert(0, nbformat.v4.new_code_cell(
      "import goal_jax\nprint(goal_jax.__file__)"))
  nbclient.NotebookClient(notebook, timeout=1200, kernel_name="python3",
                          resources={"metadata": {"path": str(scratch)}}).execute()
  assert notebook.cells[0].outputs[0]["text"].startswith(str(site))  # the wheel, not the checkout
  outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
  markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
  assert any("| Benchmark |" in m for m in markdown)
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 2  # training curves and the attention figure
  assert os.path.isdir(tmp_path / "run" / "model")


_INSTALL_PROBE = """
import importlib.metadata, importlib.util, json, subprocess, sys
calls = []
real_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "goal_jax" else real_find_spec(name, *a)
def fake_run(args, **kwargs):
  calls.append(list(args[4:]) if args[1:3] == ["-m", "pip"] else ["which"])
  return subprocess.CompletedProcess(args, 1)
subprocess.run = fake_run
real_version = importlib.metadata.version
importlib.metadata.version = lambda name: JAX if name == "jax" else real_version(name)
importlib.metadata.requires = lambda name: ["jax==0.10.2", "flax==0.12.8", 'torch; extra == "torch"']
GOAL_JAX_SOURCE = "/content/drive/MyDrive/goal_jax"
exec(compile(SOURCE.split("import jax\\n")[0], "install", "exec"))
print(json.dumps(calls))
"""


@pytest.mark.parametrize("runtime_jax, last_call", [
    ("0.11.2", ["-q", "flax==0.12.8"]),  # Colab's newer jax is kept
    ("0.9.0", ["-q", "jax==0.10.2"]),  # too old: the pinned one (no GPU/TPU here)
])
def test_install_cell_keeps_a_new_enough_preinstalled_jax(runtime_jax, last_call):
  source = _generator().INSTALL
  script = f"JAX = {runtime_jax!r}\nSOURCE = {source!r}\n" + _INSTALL_PROBE
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  calls = __import__("json").loads(proc.stdout.splitlines()[-1])
  pips = [c for c in calls if c != ["which"]]
  assert pips[0] == ["-q", "--no-deps", "/content/drive/MyDrive/goal_jax"]
  assert pips[1] == ["-q", "flax==0.12.8"]  # the requirements but jax, extras left out
  assert pips[-1] == last_call and len(pips) == (2 if runtime_jax == "0.11.2" else 3)


def test_install_cell_refuses_in_one_line_while_the_source_is_unset():
  script = ("import importlib.util\n"
            "importlib.util.find_spec = lambda name, *a: None\n"
            f"GOAL_JAX_SOURCE = ''\nexec({_generator().INSTALL.split('import jax')[0]!r})\n")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 1 and proc.stdout == ""
  assert proc.stderr.strip() == ("goal_jax is not installed: set GOAL_JAX_SOURCE in the first "
                                 "cell to a git URL, a wheel or a folder holding a checkout, then "
                                 "run this cell again")


def test_every_notebook_has_the_source_parameter():
  for name in _generator().NOTEBOOKS:
    notebook = _read(os.path.join(NOTEBOOKS, name))
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    assert 'GOAL_JAX_SOURCE = ""' in parameters.source
    assert not any("github.com/goal-jax" in c.source for c in notebook.cells)
