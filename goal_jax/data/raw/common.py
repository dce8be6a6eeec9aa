r"""Helpers shared by the raw readers: JSON streaming, typed field access, paths, text files.

Text rules shared by every reader: files are decoded as UTF-8 (a BOM is dropped) with
`surrogateescape`, so a byte that is not UTF-8 reaches `records.make_record`, which makes the
record bad (`not_utf8`, naming the file) instead of the whole file failing with a bare
`UnicodeDecodeError`. Lines end at `\n` only (`\r\n` too): a bare `\r` inside a caption is kept
(the caption normaliser makes it a space) rather than cutting the caption, and JSON strings may
hold raw control characters (`strict=False`) for the same reason. File names taken from metadata
go through `inside`: absolute paths and `..` are refused as bad records.
"""
import json
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator

from goal_jax.data import records

_CHUNK = 1 << 20
# How every text file is opened (see the module docstring): BOM dropped, bad bytes kept, no
# newline translation.
TEXT_ENCODING = {"encoding": "utf-8-sig", "errors": "surrogateescape", "newline": ""}


class FieldError(ValueError):
  """An annotation entry with a missing field, a field of the wrong type, or a bad value."""

  def __init__(self, detail: str, record_id: str = "", reason: str = records.WRONG_FIELD_TYPE):
    super().__init__(detail)
    self.record_id, self.reason = record_id, reason


def get(entry: Any, key: str | int, types, record_id: str = "") -> Any:
  """`entry[key]`, checked to be of `types`; raises `FieldError` otherwise."""
  container_ok = isinstance(entry, dict) if isinstance(key, str) else isinstance(entry, list)
  if not container_ok:
    raise FieldError(f"expected a {'JSON object' if isinstance(key, str) else 'list'} holding "
                     f"{key!r}, got {type(entry).__name__}", record_id)
  try:
    value = entry[key]
  except (KeyError, IndexError):
    raise FieldError(f"missing field {key!r}", record_id) from None
  if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
    raise FieldError(f"field {key!r} should be {_type_names(types)}, got "
                     f"{type(value).__name__} {str(value)[:60]!r}", record_id)
  return value


def _as_tuple(types):
  return types if isinstance(types, tuple) else (types,)


def _type_names(types) -> str:
  return " or ".join(t.__name__ for t in _as_tuple(types))


def read_entries(entries: Iterable[tuple[str, Any]],
                 parse: Callable[[Any, str], records.RawExample | records.BadRecord | None],
                 ) -> Iterator[records.RawExample | records.BadRecord]:
  """Parses (location, entry) pairs; `None` drops an entry, a `FieldError` becomes a BadRecord."""
  for where, entry in entries:
    try:
      example = parse(entry, where)
    except FieldError as e:
      yield records.BadRecord(id=e.record_id or where, origin=where, reason=e.reason,
                              detail=str(e))
      continue
    if example is not None:
      yield example


def load_json(path: pathlib.Path) -> Any:
  """The parsed file, with the path in the error when it does not parse."""
  try:
    with open(path, **TEXT_ENCODING) as f:
      return json.load(f, strict=False)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON: {e}") from e


def iter_json_array(path: pathlib.Path) -> Iterator[Any]:
  """Streams the items of a (possibly GB-sized) top-level JSON array without loading it whole."""
  decoder = json.JSONDecoder(strict=False)
  with open(path, **TEXT_ENCODING) as f:
    buffer, position, eof = f.read(_CHUNK), 0, False

    def fill(position):
      nonlocal buffer, eof
      more = f.read(_CHUNK)
      eof = not more
      buffer = buffer[position:] + more
      return 0

    def skip_space(position):
      while True:
        while position < len(buffer) and buffer[position].isspace():
          position += 1
        if position < len(buffer) or eof:
          return position
        position = fill(position)

    position = skip_space(position)
    if position >= len(buffer) or buffer[position] != "[":
      raise ValueError(f"{path}: expected a JSON array")
    position = skip_space(position + 1)
    if position < len(buffer) and buffer[position] == "]":
      return
    while True:
      while True:
        try:
          item, end = decoder.raw_decode(buffer, position)
          after = end
          while after < len(buffer) and buffer[after].isspace():
            after += 1
          # Only a delimiter proves the item complete: "-2.5e" cut at a chunk end parses short.
          if eof or (after < len(buffer) and buffer[after] in ",]"):
            break
        except json.JSONDecodeError as e:
          if eof:
            raise ValueError(f"{path}: not valid JSON near item: {e}") from e
        position = fill(position)
      yield item
      position = skip_space(end)
      if position >= len(buffer):
        raise ValueError(f"{path}: the JSON array is not closed")
      if buffer[position] == "]":
        return
      if buffer[position] != ",":
        raise ValueError(f"{path}: expected ',' or ']' between items, got {buffer[position]!r}")
      position = skip_space(position + 1)


def decode_text(data: bytes) -> str:
  """File bytes as text by the rules above (BOM dropped, undecodable bytes kept as surrogates)."""
  return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")


def iter_lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
  r"""(line number, text) of a text file split at `\n` only (a bare `\r` stays in its line)."""
  with open(path, "rb") as f:
    for number, line in enumerate(f, 1):
      yield number, decode_text(line)


def inside(root: pathlib.Path, recorded: str, what: str, record_id: str = "") -> pathlib.Path:
  r"""`root / recorded` for a file name taken from metadata; refuses one that leaves `root`.

  Why: a metadata file must not make preparation read (and store in a shard) a file outside the
  dataset. Refused, as a `path_outside_dataset` bad record: absolute (`/x`, `C:\x`,
  `\\host\x`, `C:x`), or with a `..` part, `/` or `\` being separators. Symlinks under
  `root` are followed: they are the documented way to put image folders there. An empty name
  is a `wrong_field_type` bad record.
  """
  posix, windows = pathlib.PurePosixPath(recorded), pathlib.PureWindowsPath(recorded)
  if not recorded or posix.parts in ((), (".",)):
    raise FieldError(f"{what} is empty", record_id)
  absolute = posix.is_absolute() or bool(windows.drive or windows.root)
  if absolute or ".." in windows.parts:
    raise FieldError(
        f"{what} {recorded!r} leaves the dataset folder {root} "
        f"({'an absolute path' if absolute else 'a `..` part'}): file names in the metadata must "
        "be relative to it; fix the entry, or pass --skip_bad to skip the record",
        record_id, records.PATH_OUTSIDE_DATASET)
  return root.joinpath(*posix.parts)


def find_file(manual_dir: pathlib.Path, names: Iterable[str], what: str) -> pathlib.Path:
  """The first of `names` present in `manual_dir`; the error lists what was expected."""
  names = tuple(names)
  for name in names:
    if (manual_dir / name).is_file():
      return manual_dir / name
  raise FileNotFoundError(f"{what}: expected one of {names} in {manual_dir}")


def require_dir(manual_dir) -> pathlib.Path:
  if manual_dir is None:
    raise ValueError("this dataset needs --manual_dir (the folder holding the raw files)")
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(f"manual_dir {manual_dir} is not a directory")
  return manual_dir


def remap_path(recorded: str, root: pathlib.Path) -> pathlib.Path:
  """Maps a path recorded elsewhere (e.g. GOAL's `../DCI/photos/sa_1.jpg`) into `root`.

  Rule: the longest trailing part of the recorded path that exists under `root` wins
  (`DCI/photos/sa_1.jpg`, then `photos/sa_1.jpg`, then `sa_1.jpg`). When none exists, the
  basename under `root` is returned, so the missing file is named in the error. The result never
  leaves `root`: the recorded path's root, `.` and `..` parts are dropped before the lookup.
  """
  parts = [p for p in pathlib.PurePosixPath(recorded.replace("\\", "/")).parts
           if p not in ("/", ".", "..")]
  if not parts:
    raise FieldError(f"empty image path {recorded!r}")
  for i in range(len(parts)):
    candidate = root.joinpath(*parts[i:])
    if candidate.is_file():
      return candidate
  return root / parts[-1]


def relative(path: pathlib.Path, root: pathlib.Path) -> str:
  """`path` relative to `root` as a posix string (the record's `source`)."""
  return pathlib.PurePath(os.path.relpath(path, root)).as_posix()
