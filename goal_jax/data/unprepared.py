"""Why a dataset split cannot be opened, in one line with the fix that works for that case.

`train` and `evaluate` open prepared splits by name. When one is not there the fix depends on why,
and `explain` tells the cases apart:
- a name no reader, LISM output or prepared folder has: "did you mean ...?", and no command;
- a split the dataset does not have: the splits it has (a test-only dataset says so);
- a data_dir that does not exist: says so, and how to fill it;
- `<name>_lism` (or any LISM output): the `lism` command (after `prepare` of its source where
  that is missing too), never `prepare --dataset=<name>_lism`, which has no reader;
- a real split of a real dataset not prepared yet: the `prepare` command of only the missing
  splits (preparing some splits keeps the others).
Commands are suggested only for names and splits that exist.
"""
from __future__ import annotations

import difflib
import os

from goal_jax.data import builder
from goal_jax.data import raw

LISM_SUFFIX = "_lism"  # `python -m goal_jax.lism` writes `<dataset>_lism` by default
RAW_FILES = "<raw files>"
SCORER = "<converted CLIP>"  # LISM's scorer; GOAL's is openai/clip-vit-large-patch14-336


class NotPreparedError(FileNotFoundError):
  """A split that exists but is not under the data_dir; `commands` make it, in order."""

  def __init__(self, message: str, commands: tuple[str, ...]):
    super().__init__(message)
    self.commands = tuple(commands)


def _is_local(data_dir) -> bool:
  return "://" not in os.fspath(data_dir)


def prepared_datasets(data_dir) -> list[str]:
  """The dataset names prepared under `data_dir` (a version folder with dataset_info.json)."""
  if not _is_local(data_dir) or not os.path.isdir(data_dir):
    return []
  names = []
  for name in sorted(os.listdir(data_dir)):
    try:
      builder.dataset_dir(name, data_dir)
    except (FileNotFoundError, OSError):
      continue
    names.append(name)
  return names


def _prepared_splits(dataset: str, data_dir) -> list[str]:
  try:
    return builder.prepared_splits(dataset, data_dir)
  except (FileNotFoundError, OSError, ValueError):
    return []


def _lism_source(dataset: str, data_dir) -> str | None:
  """The dataset LISM mined `dataset` from (a prepared output records it), else None."""
  try:
    source = builder.prepared_metadata(dataset, data_dir).get("source_dataset")
  except (FileNotFoundError, OSError, ValueError):
    source = None
  if source:
    return source
  return dataset[:-len(LISM_SUFFIX)] if dataset.endswith(LISM_SUFFIX) else None


def known_datasets(data_dir) -> list[str]:
  """Every name a split could be opened under: the readers', their `_lism` outputs, and what is
  prepared under `data_dir`."""
  prepared = prepared_datasets(data_dir)
  bases = set(raw.READERS) | {p for p in prepared if not p.endswith(LISM_SUFFIX)}
  return sorted(bases | {f"{b}{LISM_SUFFIX}" for b in bases} | set(prepared))


def splits_of(dataset: str, data_dir) -> tuple[str, ...]:
  """The splits `dataset` has: its reader's, its LISM source's, or (neither) those prepared."""
  if dataset in raw.READERS:
    return raw.READERS[dataset].splits
  source = _lism_source(dataset, data_dir)
  if source is not None and source != dataset:
    return splits_of(source, data_dir)
  return tuple(_prepared_splits(dataset, data_dir))


def prepare_command(dataset: str, data_dir, splits=()) -> str:
  """`python -m goal_jax.prepare` of `splits` (all present when empty) of a reader's dataset."""
  manual = f" --manual_dir={RAW_FILES}" if raw.get_reader(dataset).needs_manual_dir else ""
  split_flag = f" --split={','.join(splits)}" if splits else ""
  return (f"python -m goal_jax.prepare --dataset={dataset}{manual} --data_dir={data_dir}"
          f"{split_flag}")


def lism_command(source: str, split: str, data_dir, out: str | None = None) -> str:
  """`python -m goal_jax.lism` mining `source`'s `split` into `out` (default `<source>_lism`)."""
  out_flag = f" --out_dataset={out}" if out and out != f"{source}{LISM_SUFFIX}" else ""
  return (f"python -m goal_jax.lism --dataset={source} --split={split} --data_dir={data_dir} "
          f"--checkpoint={SCORER}{out_flag}")


def make_commands(dataset: str, splits, data_dir) -> tuple[str, ...]:
  """The commands that make `splits` of `dataset` under `data_dir`, in order (none when no
  command can: a dataset that neither a reader nor LISM makes)."""
  splits = list(splits)
  if dataset in raw.READERS:
    return (prepare_command(dataset, data_dir, splits),)
  source = _lism_source(dataset, data_dir)
  if source is None or source == dataset or (
      source not in raw.READERS and source not in prepared_datasets(data_dir)):
    return ()
  have = _prepared_splits(source, data_dir)
  unprepared = [s for s in splits if s not in have]
  first = make_commands(source, unprepared, data_dir) if unprepared else ()
  if unprepared and not first:
    return ()
  return first + tuple(lism_command(source, s, data_dir, dataset) for s in splits)


def quoted(commands) -> str:
  """Commands to run in order, as a user reads them: `a`, then `b`."""
  return ", then ".join(f"`{c}`" for c in commands)


def _names(values) -> str:
  return ", ".join(repr(v) for v in values)


def explain(dataset: str, split: str, data_dir, *, split_option: str = "{dataset}:{split}",
            data_dir_option: str = "--data_dir", cause: BaseException | None = None
            ) -> Exception:
  """The error to raise for a split of `dataset` that did not open under `data_dir`.

  Args:
    dataset, split: as the user named them (`split` may join several with `+`).
    data_dir: where the split was looked for.
    split_option: how the user names a split in this command, a format string of `dataset` and
      `split` (`evaluate`: `{dataset}:{split}`; the trainer: `--config.input.split={split}`).
    data_dir_option: the option that sets the data_dir in this command.
    cause: the error opening it raised, told when the split is prepared yet did not open.

  Returns:
    `NotPreparedError` (the split exists and `commands` make it), ValueError (no such dataset
    or split: nothing to prepare) or FileNotFoundError (no such data_dir).
  """
  data_dir = os.fspath(data_dir)
  parts = split.split("+")
  known = known_datasets(data_dir)
  if dataset not in known:
    close = difflib.get_close_matches(dataset, known, n=1, cutoff=0.6) or [
        name for name in known if name.lower() == dataset.lower()]
    prepared = set(prepared_datasets(data_dir))
    shown = [n for n in known if n in prepared or not n.endswith(LISM_SUFFIX)]
    hint = (f"did you mean {close[0]!r}?" if close else f"known datasets: {', '.join(shown)}, "
            f"and `<name>{LISM_SUFFIX}`, LISM's output, of each")
    return ValueError(f"unknown dataset {dataset!r}: {hint}")
  splits = splits_of(dataset, data_dir) or tuple(_prepared_splits(dataset, data_dir))
  wrong = [p for p in parts if p not in splits] if splits else []
  if wrong:
    if len(splits) == 1:
      message = (f"dataset {dataset!r} has only a {splits[0]!r} split, not {wrong[0]!r}: use "
                 f"{split_option.format(dataset=dataset, split=splits[0])}")
      commands = () if splits[0] in _prepared_splits(dataset, data_dir) else \
          make_commands(dataset, splits, data_dir)
      return ValueError(message + (f" (not prepared yet: run {quoted(commands)})"
                                   if commands else ""))
    close = difflib.get_close_matches(wrong[0], splits, n=1)
    example = split_option.format(dataset=dataset, split=close[0] if close else splits[0])
    hint = f"did you mean {example}? " if close else ""
    return ValueError(f"dataset {dataset!r} has no split {wrong[0]!r}: {hint}its splits are "
                      f"{', '.join(splits)}")
  if _is_local(data_dir) and not os.path.isdir(data_dir):
    commands = make_commands(dataset, parts, data_dir)
    made = f", or make {dataset} {split} in it: {quoted(commands)}" if commands else ""
    return FileNotFoundError(f"data_dir {data_dir} does not exist: pass the folder that holds "
                             f"the prepared datasets ({data_dir_option}=...){made}")
  have = _prepared_splits(dataset, data_dir)
  missing = [p for p in parts if p not in have]
  source = _lism_source(dataset, data_dir) if dataset not in raw.READERS else None
  if not missing:  # prepared, yet it did not open
    commands = make_commands(dataset, parts, data_dir)
    again = f"; make it again: {quoted(commands)}" if commands else ""
    why = f" ({cause})" if cause is not None else ""
    return ValueError(f"dataset {dataset!r} split {split!r} under {data_dir} cannot be "
                      f"read{why}{again}")
  commands = make_commands(dataset, missing, data_dir)
  what = (f"split {_names(missing)} is" if len(missing) == 1 else
          f"splits {_names(missing)} are")
  if commands and source is not None:
    return NotPreparedError(f"dataset {dataset!r} {what} not under {data_dir}; it is LISM's "
                            f"output from {source}: run {quoted(commands)}", commands)
  if commands:
    return NotPreparedError(f"dataset {dataset!r} {what} not prepared under {data_dir}; run "
                            f"{quoted(commands)}", commands)
  origin = (f"LISM's output from {source!r}, which is not prepared there" if source is not None
            else "not a dataset `prepare` makes")
  return ValueError(f"dataset {dataset!r} {what} not under {data_dir} ({origin}); it has "
                    f"{_names(have) or 'no split'} there")
