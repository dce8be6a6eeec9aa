"""Whether a prepared split has what FG-CLIP's region terms read, checked before training starts.

The region term reads boxed local pairs, from any source (FineHARD's boxes, the synthetic
generator's cells, LISM's mined pairs); the hard-negative term reads the pairs' hard negatives
(`pair_hard_negatives`), which only FineHARD (`prepare --dataset=finehard`) and the synthetic
generator's `train` split write. Shards prepared before that field existed read as having none.
Without this check such a split would train with the terms silently at 0.
"""
import dataclasses

import numpy as np

from goal_jax.data import builder

_FINEHARD = ("python -m goal_jax.prepare --dataset=finehard --manual_dir=/path/to/FineHARD "
             "--data_dir={data_dir}")


@dataclasses.dataclass(frozen=True)
class Survey:
  """Counts over the records read.

  Attributes:
    seen: records read.
    with_region: records with a boxed pair (one not matched to the whole image).
    with_negatives: records with a boxed pair that has hard negatives.
    negatives_per_pair: mean hard negatives of the boxed pairs that have some (0 if none).
  """
  seen: int
  with_region: int
  with_negatives: int
  negatives_per_pair: float


def survey(source, max_records: int = 128) -> Survey:
  """Counts over up to `max_records` records spread evenly through `source` (raw shard items or
  decoded records); only array fields are read, so it is cheap at start-up."""
  count = len(source)
  indices = np.unique(np.linspace(0, count - 1, min(count, max_records)).astype(int))
  with_region = with_negatives = 0
  negatives = []
  for index in indices:
    record = source[int(index)]
    boxed = ~np.asarray(record["pair_is_full_image"], bool).reshape(-1)
    counts = record.get("pair_hard_negative_count")
    counts = np.zeros(boxed.shape, np.int32) if counts is None else np.asarray(counts).reshape(-1)
    with_region += bool(boxed.any())
    with_negatives += bool(np.any(boxed & (counts > 0)))
    negatives += counts[boxed & (counts > 0)].tolist()
  return Survey(len(indices), with_region, with_negatives,
                float(np.mean(negatives)) if negatives else 0.0)


def check(source, *, dataset: str, split: str, data_dir, hard_negatives: bool = True,
          max_records: int = 128) -> Survey:
  """The survey of `source`; a `ValueError` with the command that fixes it when it has no boxed
  pairs, or (`hard_negatives`) no hard negatives."""
  found = survey(source, max_records)
  where = f"dataset {dataset!r} split {split!r} (none in {found.seen} records read)"
  if not found.with_region:
    raise ValueError(
        f"{where} has no boxed local pairs, so FG-CLIP's region terms would all be 0. Mine them "
        f"with LISM:\n  python -m goal_jax.lism --data_dir={data_dir} --dataset={dataset} "
        f"--split={split} --checkpoint=/path/to/converted_clip\nand train on "
        f"dataset={dataset}_lism, or prepare FineHARD:\n  {_FINEHARD.format(data_dir=data_dir)}")
  if hard_negatives and not found.with_negatives:
    raise ValueError(f"{where} has no hard negatives, so FG-CLIP's hard-negative term would be "
                     f"0. {_negatives_fix(dataset, split, data_dir)}")
  return found


def _negatives_fix(dataset: str, split: str, data_dir) -> str:
  if dataset == "synthetic" and split == "train":
    return ("Its shards predate them: prepare it again (the generator writes them for `train`):"
            f"\n  python -m goal_jax.prepare --dataset=synthetic --data_dir={data_dir}"
            + _generator_flags(dataset, data_dir))
  if dataset == "synthetic":
    return "The generator writes them for the `train` split only: train on split=train."
  return (f"Prepare FineHARD, which has them:\n  {_FINEHARD.format(data_dir=data_dir)}\n"
          "or train without the term: --config.loss.weights.hard_negative=0")


def _generator_flags(dataset: str, data_dir) -> str:
  """`--seed=N --version=V` of the prepared data, so it is prepared again the same way."""
  try:
    generator = builder.prepared_metadata(dataset, data_dir).get("options", {}).get("generator")
  except (OSError, ValueError):
    return ""
  return "".join(f" --{key}={value}" for key, value in sorted((generator or {}).items()))
