"""Which benchmarks a user named: a spec (`goal`, `goal/DOCCI`, `DOCCI`, `docci:test`) -> a
profile to report under and its benchmarks.

The `evaluate` command, the trainer's periodic evaluation and `runner.evaluate_benchmarks` all
resolve a spec here, so the profile a results file is written under always follows from the
benchmarks (the trainer's config names only the benchmarks).
"""
import dataclasses
from typing import Sequence

from goal_jax.evaluation import metrics
from goal_jax.evaluation import profiles

CUSTOM_PROFILE = "custom"
# Profiles searched, in order, for a benchmark named by `dataset:split` or by its bare name.
_SEARCH_ORDER = ("goal", "longclip", "synthetic", "zeroshot")


def _adhoc_retrieval(dataset, split):
  return profiles.Benchmark(f"{dataset}:{split}", "retrieval", dataset, split, metrics.RECALL_KS,
                            profiles.recall_columns(metrics.RECALL_KS, "t2i"))


def _find(predicate):
  return [(p, b) for p in _SEARCH_ORDER for b in profiles.get_profile(p).benchmarks
          if predicate(b)]


def _resolve_item(item):
  """One spec item -> [(profile name or None, Benchmark)]."""
  if item in profiles.PROFILES:
    return [(item, b) for b in profiles.get_profile(item).benchmarks]
  if "/" in item and item.split("/", 1)[0] in profiles.PROFILES:
    profile, name = item.split("/", 1)
    return [(profile, profiles.get_profile(profile).benchmark(name))]
  found = _find(lambda b: b.name == item)  # before `dataset:split`: names may hold a ':'
  if len(found) == 1:
    return found
  if found:
    raise ValueError(f"benchmark {item!r} is in several profiles; name one of "
                     f"{[f'{p}/{b.name}' for p, b in found]}")
  if ":" in item:
    dataset, split = item.split(":", 1)
    if not dataset or not split:
      raise ValueError(f"benchmark {item!r}: expected `dataset:split`")
    found = _find(lambda b: b.task == "retrieval" and (b.dataset, b.split) == (dataset, split))
    return found[:1] or [(None, _adhoc_retrieval(dataset, split))]
  raise ValueError(f"unknown benchmark {item!r}: use a profile {sorted(profiles.PROFILES)}, "
                   "`profile/benchmark`, a benchmark name or `dataset:split`")


def resolve_benchmarks(spec: str | Sequence[str]) -> tuple[profiles.Profile, tuple]:
  """A benchmark spec -> (profile to report under, its benchmarks in order).

  `spec` is a profile name, or items (a list, or one string joined by ",") each of which is a
  profile, `profile/benchmark name`, a benchmark name found in one profile, or `dataset:split`
  (the profile benchmark of that prepared split, else Recall@1/5/10/25/50 on it). When every
  benchmark comes from one profile the results are reported under it; otherwise under a
  `custom` profile (names that clash get their profile as a prefix).
  """
  items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
  items = [s for s in items if s]
  if not items:
    raise ValueError("no benchmark given")
  chosen = []
  for item in items:
    for profile_name, benchmark in _resolve_item(item):
      if (profile_name, benchmark) not in chosen:
        chosen.append((profile_name, benchmark))
  owners = {p for p, _ in chosen}
  if len(owners) == 1 and None not in owners:
    profile = profiles.get_profile(owners.pop())
    return profile, tuple(b for _, b in chosen)
  counts = {}
  for _, b in chosen:
    counts[b.name] = counts.get(b.name, 0) + 1
  benchmarks = tuple(dataclasses.replace(b, name=f"{p}/{b.name}") if counts[b.name] > 1 else b
                     for p, b in chosen)
  return profiles.Profile(CUSTOM_PROFILE, "benchmarks chosen by name", benchmarks), benchmarks
