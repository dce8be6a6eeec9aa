"""Runs a `python -m goal_jax.<command>` in the test's process, as the shell would run it.

Commands define their absl flags when they run (`define_flags`), not on import, because they
share flag names and absl's flags are global: `run_command` sets aside the flags other goal_jax
modules defined (one imported by another test, say), defines the command's for one call, then
removes them and restores the others, so tests can run several commands in one process.

  code = run_command(convert, "--source=...", "--out=...")  # 0, 1 (expected error) or 2 (flags)
"""
from __future__ import annotations

from types import ModuleType

from absl import flags

from goal_jax import cli


def run_command(module: ModuleType, *args) -> int:
  """Runs `module.main` under `cli.run` with `args`; returns the exit code."""
  fv = flags.FLAGS
  aside = [(module_name, flag) for module_name, module_flags in fv.flags_by_module_dict().items()
           if module_name.startswith("goal_jax") for flag in module_flags]
  for _, flag in aside:
    delattr(fv, flag.name)
  before = set(fv)
  module.define_flags()
  ours = [name for name in fv if name not in before]
  code = 0
  try:
    cli.run(module.main, expected=getattr(module, "EXPECTED", ()),
            argv=[module.__name__, *map(str, args)])
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    for name in ours:
      delattr(fv, name)
    for module_name, flag in aside:
      fv[flag.name] = flag
      fv.register_flag_by_module(module_name, flag)
  return code
