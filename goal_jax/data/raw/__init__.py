"""Readers of raw dataset layouts, by dataset name.

A reader turns a manual dir (the raw files as their authors release them) and a split name into
`RawExample`s; a `BadRecord` stands for an entry it could not parse, so `--skip_bad` can count
it. Reader modules are imported on first use: one missing or broken module (say, the synthetic
dataset while it is being written) leaves the others working.
"""
import dataclasses
import importlib
import pathlib
from typing import Callable, Iterator

from goal_jax.data import records

# `read(manual_dir, split, **generator)`: embedded datasets take generator options (seed, version).
ReadFn = Callable[..., Iterator[records.RawExample | records.BadRecord]]


@dataclasses.dataclass(frozen=True)
class DatasetReader:
  """How to read one dataset.

  Attributes:
    splits: every split the reader knows.
    read: `read(manual_dir, split)` -> iterator of `RawExample` (or `BadRecord`).
    needs_manual_dir: False for embedded datasets (`synthetic`, `photos`).
    available: `available(manual_dir)` -> the splits whose raw files are present (default: all);
      `prepare` without `--split` prepares these.
    generator: for generated datasets, the generator options `read` takes and their defaults
      (`prepare --seed/--version`); None for datasets read from files.
    contains: split -> the splits that share its images by design (a union split and its
      parts, two views of the same images); `prepare` warns about an image id in two splits
      (train/test leakage) for every other pair.
    count: `count(manual_dir, split, **generator)` -> the split's raw entries, where they can be
      counted without parsing them (the progress bar's total); None: the bar has none.
  """
  splits: tuple[str, ...]
  read: ReadFn
  needs_manual_dir: bool = True
  available: Callable[[pathlib.Path | None], tuple[str, ...]] | None = None
  generator: dict | None = None
  contains: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  count: ReadFn | None = None

  def share_images(self, a: str, b: str) -> bool:
    """Whether splits `a` and `b` hold the same images by design (no leakage warning)."""
    return a in self.contains.get(b, ()) or b in self.contains.get(a, ())

  def available_splits(self, manual_dir) -> tuple[str, ...]:
    return self.available(manual_dir) if self.available else self.splits

  def count_entries(self, manual_dir, split: str, **generator) -> int | None:
    """The split's raw entries (bad ones included), or None where counting means parsing."""
    return self.count(manual_dir, split, **generator) if self.count else None


def _lazy(module: str, function: str = "read_examples") -> ReadFn:
  """`read` that imports `goal_jax.data.<module>` on first call."""
  def read(manual_dir, split, **generator):
    return getattr(importlib.import_module(f"goal_jax.data.{module}"), function)(
        manual_dir, split, **generator)
  read.__qualname__ = f"{module}.{function}"
  return read


def _lazy_available(module: str) -> Callable[[pathlib.Path | None], tuple[str, ...]]:
  def available(manual_dir):
    return importlib.import_module(f"goal_jax.data.{module}").available_splits(manual_dir)
  return available


READERS: dict[str, DatasetReader] = {
    "docci": DatasetReader(("train", "test", "test_qual", "qual_dev", "qual_test"),
                           _lazy("raw.docci"), contains={"test_qual": ("test", "qual_test")},
                           count=_lazy("raw.docci", "count")),
    "dci": DatasetReader(("train", "valid", "test", "goal_test", "full"), _lazy("raw.dci"),
                         available=_lazy_available("raw.dci"), count=_lazy("raw.dci", "count"),
                         contains={"full": ("train", "valid", "test", "goal_test")}),
    "urban1k": DatasetReader(("test",), _lazy("raw.urban1k"),
                             count=_lazy("raw.urban1k", "count")),
    "sharegpt4v": DatasetReader(("train", "test"), _lazy("raw.sharegpt4v")),
    "coco_karpathy": DatasetReader(("train", "val", "test", "restval"),
                                   _lazy("raw.karpathy", "read_coco")),
    "flickr30k_karpathy": DatasetReader(("train", "val", "test"),
                                        _lazy("raw.karpathy", "read_flickr30k")),
    "goal_json": DatasetReader(
        ("docci_test", "dci_test", "urban1k_test", "sharegpt4v_test", "coco_test",
         "flickr30k_test", "dci_train", "docci_train", "dci_train_global", "docci_train_global"),
        _lazy("raw.goal_json"), available=_lazy_available("raw.goal_json"),
        contains={"dci_train_global": ("dci_train",), "docci_train_global": ("docci_train",)}),
    "finehard": DatasetReader(("train",), _lazy("raw.finehard"),
                              available=_lazy_available("raw.finehard")),
    # Embedded datasets (no manual dir).
    "synthetic": DatasetReader(("train", "test", "test_hard", "test_transfer",
                                "test_transfer_hard"), _lazy("synthetic"),
                               needs_manual_dir=False, generator={"seed": 0, "version": 3},
                               count=_lazy("synthetic", "count")),
    "photos": DatasetReader(("test",), _lazy("photos"), needs_manual_dir=False,
                            count=_lazy("photos", "count")),
}


def get_reader(name: str) -> DatasetReader:
  if name not in READERS:
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(READERS)}")
  return READERS[name]
