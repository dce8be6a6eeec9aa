"""The records a benchmark reads: prepared splits, decoded, and GOAL's test-time local pairs.

`open_split` fails with the command to run when a split is missing (`data.unprepared`), so an
evaluation stops, or leaves the benchmark out, before any embedding is spent. `LocalPairSource`
turns each record's best local pair into a record of its own (the crop and its sentence), which
GOAL's joint test adds to the gallery.
"""
from typing import Any, Mapping, Sequence

import numpy as np

from goal_jax.data import builder
from goal_jax.data import detail as detail_lib
from goal_jax.data import images
from goal_jax.data import unprepared


class DecodedSource:
  """Random access to decoded records of one or more prepared splits (`a+b` concatenates)."""

  def __init__(self, sources: Sequence[Any]):
    self._sources = list(sources)
    self._offsets = np.cumsum([0] + [len(s) for s in self._sources])

  def __len__(self):
    return int(self._offsets[-1])

  def __getitem__(self, index):
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)})")
    part = int(np.searchsorted(self._offsets, index, side="right")) - 1
    return builder.decode_record(self._sources[part][index - int(self._offsets[part])])


def open_split(dataset: str, split: str, data_dir,
               data_dir_option: str = "--data_dir") -> DecodedSource:
  """Decoded records of a prepared `dataset` split (TFDS `a+b` syntax), or the error that says
  what is missing and the command that makes it (`data.unprepared.explain`; `data_dir_option`
  is the option that set `data_dir`, named when it does not exist)."""
  if data_dir is None:
    raise ValueError(f"dataset {dataset!r} needs --data_dir: where `prepare` wrote the shards")
  try:
    return DecodedSource([builder.load_source(dataset, part, data_dir)
                          for part in split.split("+")])
  except (FileNotFoundError, ValueError) as e:
    raise unprepared.explain(dataset, split, data_dir, data_dir_option=data_dir_option,
                             cause=e) from e


def best_local_pair(record: Mapping[str, Any]) -> int | None:
  """GOAL's test-time local pair: the highest-scoring pair, full-image matches included."""
  scores = np.asarray(record["pair_score"], np.float32)
  return int(np.argmax(scores)) if scores.size else None


def local_pair_record(record: Mapping[str, Any]) -> dict[str, Any] | None:
  """A record whose image is its best local pair's crop and whose caption is that sentence.

  The crop comes from the record's detail copy when it has one (the original pixels, as GOAL's
  test crops), else from its stored image (`goal_jax.data.detail`).
  """
  best = best_local_pair(record)
  if best is None:
    return None
  image = images.open_rgb(record["image"])
  if not record["pair_is_full_image"][best]:
    image = detail_lib.local_crop(record, record["pair_box"][best], image)
  sentence = int(record["pair_sentence"][best])
  text = record["caption"][record["sentence_starts"][sentence]:record["sentence_ends"][sentence]]
  return {**record, "image": np.asarray(image), "original_size": np.array(image.size[::-1]),
          "detail_tiles": [], "detail_layout": detail_lib.NO_DETAIL,
          "caption": text, "extra_captions": [], "summary": text,
          "sentence_starts": np.array([0], np.int32),
          "sentence_ends": np.array([len(text)], np.int32),
          "pair_sentence": np.zeros((0,), np.int32), "pair_box": np.zeros((0, 4), np.float32),
          "pair_score": np.zeros((0,), np.float32), "pair_is_full_image": np.zeros((0,), bool),
          "pair_hard_negatives": [], "pair_hard_negative_count": np.zeros((0,), np.int32)}


class LocalPairSource:
  """The local pairs of the records that have one, as records (decoded lazily, in order)."""

  def __init__(self, source):
    self._source = source
    self.owners = np.array([i for i in range(len(source))
                            if np.size(source[i]["pair_score"])], np.int64)

  def __len__(self):
    return len(self.owners)

  def __getitem__(self, index):
    return local_pair_record(self._source[int(self.owners[index])])
