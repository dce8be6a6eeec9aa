"""What every `python -m goal_jax.<command>` shares: absl flags, quiet logs, one-line errors.

One flag library (absl: `train` needs it for `ml_collections` configs) and one word per concept,
listed in the README's "Command reference": `--checkpoint` is a model directory a command reads,
`--out` a path it writes, `--data_dir` the prepared shards (default `~/tensorflow_datasets`),
`--text_context` a token count, `--threads` threads and `--workers` processes.

An expected failure (bad input, a missing file, a typo in a flag or config field) prints one
`error: ...` line with the fix and exits 1 (2 for a command-line mistake); a traceback means a
bug. Libraries' chatter (TFDS's download banner, Orbax's INFO lines, JAX's backend probing) is
silenced unless `--verbosity` is given.

Paths are local: locks, atomic renames, ArrayRecord and Orbax go through the file system, so a
`gs://` (or any URL) value of a flag or config field is refused before any work, with the gcsfuse
mount that serves it (`files.url_path_error`; `launch/tpu_vm.sh` mounts them on every worker).
"""
from __future__ import annotations

import logging as py_logging
import os
import sys
from typing import Any, Callable, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import jax

from goal_jax import constants
from goal_jax import files

DEFAULT_DATA_DIR = constants.DEFAULT_DATA_DIR


class Error(Exception):
  """An expected failure of a command: its message (with the fix) is all the user sees."""


# The shared flags' one wording (README "Command reference"); a command adds what is its own.
CHECKPOINT_HELP = ("A goal_jax model: a `convert` or `train` output (a run's W/model), or any "
                   "W/checkpoints/<step>.")
DATA_DIR_HELP = "Where the prepared datasets are (`prepare` and `lism` write them there)."


def _help(text: str, suffix: str) -> str:
  return f"{text} {suffix}" if suffix else text


def define_checkpoint_flag(help_suffix: str = "") -> flags.FlagHolder:
  """`--checkpoint`, the model a command reads; `help_suffix` says what this command does with
  it. Like the other `define_*` here, the flag is the calling command's (its --help lists it)."""
  return flags.DEFINE_string("checkpoint", None, _help(CHECKPOINT_HELP, help_suffix))


def define_data_dir_flag(default: str | None = DEFAULT_DATA_DIR,
                         help_suffix: str = "") -> flags.FlagHolder:
  """`--data_dir`, the prepared datasets; `help_suffix` says this command's use (or default)."""
  return flags.DEFINE_string("data_dir", default, _help(DATA_DIR_HELP, help_suffix))


def define_bench_data_flags() -> None:
  """`--data_dir`, `--dataset`, `--split` of the measurement commands: a prepared split to read,
  by default the embedded `synthetic` test split prepared into a temporary folder."""
  define_data_dir_flag(None, "Default: `synthetic` prepared into a temporary folder.")
  flags.DEFINE_string("dataset", "synthetic", "dataset name under data_dir")
  flags.DEFINE_string("split", "test", "split to read")


def default_compilation_cache() -> str:
  """`$GOAL_JAX_COMPILATION_CACHE` if set ('' turns the cache off), else <cache>/jax."""
  return os.environ.get("GOAL_JAX_COMPILATION_CACHE", os.path.join(files.cache_dir(), "jax"))


# Every command has it: one definition, when any command imports this module.
flags.DEFINE_string("compilation_cache", default_compilation_cache(),
                    "folder of JAX's persistent compilation cache (a second run of the same "
                    "program skips compiling it); '' turns it off")


def enable_compilation_cache(path: str, min_compile_s: float = 1.0) -> None:
  """JAX's persistent compilation cache in `path` ('' leaves it off): a second run of the same
  program loads what took over `min_compile_s` to compile instead of compiling it again (a
  training step: 32-55 s cold on an H200, 2-3 s from the cache)."""
  if not path:
    return
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class PlainFormatter(py_logging.Formatter):
  """`warning: message`, as the commands' own `error:` lines read, instead of absl's
  `W1204 12:00:00.123 4567 runner.py:72] message` prefix."""

  def format(self, record: py_logging.LogRecord) -> str:
    message = record.getMessage()
    if record.levelno >= py_logging.WARNING:
      return f"{record.levelname.lower()}: {message}"
    return message


def quiet_logs() -> None:
  """Warnings and errors only, as plain `warning:` lines, unless the user asked for
  `--verbosity` (then absl's full format, with file and line)."""
  if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
    return
  logging.get_absl_handler().setFormatter(PlainFormatter())
  logging.set_verbosity(logging.WARNING)
  for name in ("jax._src.xla_bridge", "absl", "orbax", "tensorflow_datasets"):
    py_logging.getLogger(name).setLevel(py_logging.WARNING)
  py_logging.getLogger("jax._src.xla_bridge").setLevel(py_logging.ERROR)  # "Unable to init tpu"


def fail(message: str, code: int = 1):
  """Prints `error: message` to stderr and exits with `code`."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  raise SystemExit(code)


def error_lines(messages: Sequence[str]) -> str:
  """Several failures as one message that prints one `error:` line each (`fail` prefixes the
  first), e.g. every benchmark that is not prepared, each with its command."""
  return "\nerror: ".join(messages)


def check_args(argv: Sequence[str], required: Sequence[str] = (),
               hint: str = "every option is a --flag") -> None:
  """Exits 2 on positional values (`hint` says what to pass instead) or a missing required flag.

  Flags are checked here rather than with absl's `required=True`, whose message is a multi-line
  'FATAL Flags parsing error'.
  """
  if len(argv) > 1:
    fail(f"unexpected arguments {list(argv[1:])}: {hint}", code=2)
  for name in required:
    if flags.FLAGS[name].value is None:
      fail(f"--{name} is required (--help lists the flags)", code=2)


def _flag_error_message(error: Exception) -> str:
  """absl wraps a config file's exception (with its traceback) in the flag error: keep its
  last line, which names what is wrong."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  last = lines[-1] if lines else str(error)
  return last.split(": ", 1)[1] if last.split(":", 1)[0].endswith("Error") else last


def _parse_flags(argv: Sequence[str]) -> list[str]:
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{_flag_error_message(e)} (--help lists the flags)", code=2)
  except (AttributeError, KeyError) as e:  # a --config.<field> override naming no field
    text = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
    fail(f"unknown config field {text} (--print_config lists the fields)", code=2)
  for name, value in _flag_strings():
    if files.is_url(value):
      fail(files.url_path_error(f"--{name}", value), code=2)
  return rest


def _flag_strings() -> Iterator[tuple[str, str]]:
  """(name, value) of every string flag, and of every string field of a config flag
  (`config.input.data_dir`), as parsed."""
  for name in flags.FLAGS:
    value = flags.FLAGS[name].value
    if isinstance(value, str):
      yield name, value
    elif hasattr(value, "to_dict"):  # an ml_collections config
      yield from _config_strings(name, value.to_dict())


def _config_strings(prefix: str, tree: dict) -> Iterator[tuple[str, str]]:
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _config_strings(f"{prefix}.{key}", value)
    elif isinstance(value, str):
      yield f"{prefix}.{key}", value


def run(main: Callable[[list[str]], Any], *, expected: tuple[type[BaseException], ...] = (),
        argv: Sequence[str] | None = None) -> None:
  """Runs `main(argv)` under absl with quiet logs; `Error` and the `expected` exception types
  become one `error:` line (exit 1) instead of a traceback."""

  def wrapped(args):
    quiet_logs()
    # A command run by tests' `run_command` may have it set aside: then the default.
    cache = (flags.FLAGS.compilation_cache if "compilation_cache" in flags.FLAGS
             else default_compilation_cache())
    enable_compilation_cache(cache)
    try:
      return main(args)
    except (Error, *expected) as e:  # noqa: B030 - a tuple of types built at run time
      fail(str(e) or type(e).__name__)
    except KeyboardInterrupt:
      fail("interrupted (Ctrl-C)", code=130)

  app.run(wrapped, argv=list(argv) if argv is not None else None, flags_parser=_parse_flags)


def check_output_dir(out: str, overwrite: bool, source_path: str | None = None) -> None:
  """Refuses, before any work, an output that is not empty (unless `overwrite`) or not a folder."""
  if source_path is not None and os.path.abspath(out) == os.path.abspath(source_path):
    raise ValueError(f"the output {out} is the source; write elsewhere")
  if not os.path.exists(out):
    return
  if not os.path.isdir(out):
    raise ValueError(f"output {out} exists and is not a directory")
  if os.listdir(out) and not overwrite:
    raise ValueError(f"output {out} is not empty; pass --overwrite to replace it")


# The flags that the `define_*` functions above define belong to the command module calling them,
# so its --help lists them with its own: once this line has run, absl attributes any flag defined
# from this module to its caller. This module's own flags are defined at import, above it.
flags.disclaim_key_flags()
