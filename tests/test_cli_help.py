"""Every command's --help reads as written: no docstring line joined by a backslash continuation
(a non-raw docstring turns `\\` + newline into nothing, and `--help` prints one long line), and
warnings as plain lines."""
import ast
import glob
import io
import os
import re
import subprocess
import sys
import tokenize

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "goal_jax")


def _module_docstring_token(path):
  """The source text of a module's docstring literal (prefix and quotes included), or None."""
  with open(path, encoding="utf-8") as f:
    source = f.read()
  tree = ast.parse(source)
  if not (tree.body and isinstance(tree.body[0], ast.Expr)
          and isinstance(tree.body[0].value, ast.Constant)):
    return None
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.STRING:
      return token.string
  return None


def joined_docstrings(paths):
  """The files whose module docstring is not raw and holds a backslash at a line's end."""
  joined = []
  for path in paths:
    literal = _module_docstring_token(path)
    if literal and not literal.lower().startswith(("r", "br", "rb")) and "\\\n" in literal:
      joined.append(path)
  return joined


def test_no_docstring_joins_lines_with_a_backslash():
  joined = joined_docstrings(glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True))
  assert not joined, f"make these docstrings raw (r\"\"\"), their --help joins lines: {joined}"


def test_the_check_sees_what_evaluate_help_printed_before(tmp_path):
  before, raw = tmp_path / "before.py", tmp_path / "raw.py"
  text = '"""Evaluate.\n\n  python -m goal_jax.evaluate --a=1 \\\n      --b=2\n"""\nX = 1\n'
  before.write_text(text)
  raw.write_text("r" + text)
  assert joined_docstrings([str(before), str(raw)]) == [str(before)]


_WARNING_PROBE = """
from absl import logging
from goal_jax import cli
def main(argv):
  logging.warning("Benchmark %s has no split %s", "urban1k", "train")
cli.run(main)
"""


def test_warnings_print_as_plain_lines_and_verbosity_keeps_absls_format(tmp_path):
  """The README promises quiet logs: `warning: ...`, not `W1204 12:00:00 ... runner.py:72] ...`."""
  probe = tmp_path / "probe.py"
  probe.write_text(_WARNING_PROBE)
  quiet = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
  assert quiet.returncode == 0 and quiet.stdout == ""
  assert quiet.stderr == "warning: Benchmark urban1k has no split train\n"
  verbose = subprocess.run([sys.executable, str(probe), "--verbosity=0"], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path)
  assert re.match(r"W\d{4} [\d:.]+ +\d+ probe.py:5\] Benchmark urban1k", verbose.stderr)
