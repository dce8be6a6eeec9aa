r"""Urban1k (Long-CLIP): `caption/<k>.txt` (the caption is its first line) <-> `image/<k>.jpg`.

The manual dir is the unzipped `Urban1k/` folder or the folder holding it. Records come in numeric
order of k (1..1000), the order of GOAL's `urban_dataset_test.json`. The first line ends at the
first `\n` (`\r\n` too): a bare `\r` inside the caption is kept (the normaliser makes it a space).
A file that is not UTF-8 is a `not_utf8` bad record (see `common`).
"""
import pathlib
from typing import Iterator

from goal_jax.data import records
from goal_jax.data.raw import common

SPLITS = ("test",)


def dataset_root(manual_dir) -> pathlib.Path:
  root = common.require_dir(manual_dir)
  nested = root / "Urban1k"
  return nested if nested.is_dir() else root


def read_examples(manual_dir, split: str = "test") -> Iterator[records.RawExample]:
  if split not in SPLITS:
    raise ValueError(f"Urban1k has no split {split!r}; splits: {SPLITS}")
  root = dataset_root(manual_dir)
  captions = root / "caption"
  if not captions.is_dir():
    raise FileNotFoundError(f"Urban1k: no caption/ folder in {root}")
  files = sorted(captions.glob("*.txt"), key=_numeric_key)
  for path in files:
    first_line = common.decode_text(path.read_bytes()).split("\n", 1)[0].removesuffix("\r")
    yield records.RawExample(
        id=path.stem, image=str(root / "image" / f"{path.stem}.jpg"), caption=first_line,
        source=f"image/{path.stem}.jpg", origin=str(path))


def count(manual_dir, split: str = "test") -> int | None:
  """Caption files, one per image, listed without being read."""
  del split
  captions = dataset_root(manual_dir) / "caption"
  return len(list(captions.glob("*.txt"))) if captions.is_dir() else None


def _numeric_key(path: pathlib.Path):
  return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)
