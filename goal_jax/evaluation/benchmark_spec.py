"""Which benchmarks a user named: a spec (`goal`, `goal/DOCCI`, `DCI`, `docci:test`) -> a
profile to report under and its benchmarks.

Profile and benchmark names match in any case (`GOAL/urban1k` is `goal/Urban1k`). A bare name
that two profiles share (`Urban1k`, `DOCCI`: their protocols differ in splits, cut-offs and
column order) is refused with both `profile/name` spellings rather than picking one silently; an
unknown name lists the valid ones.

The `evaluate` command, the trainer's periodic evaluation and `runner.evaluate_benchmarks` all
resolve a spec here, so the profile a results file is written under always follows from the
benchmarks (the trainer's config names only the benchmarks).
"""
import dataclasses
import difflib
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


def _profile_named(name):
  """The registered profile called `name`, in any case; None if there is none."""
  found = [p for p in profiles.PROFILES if p.lower() == name.lower()]
  return found[0] if found else None


def _same_name(a, b):
  return a.casefold() == b.casefold()


def _valid_names():
  """What a spec item may name: the profiles, then each benchmark by name (`profile/name` where
  two profiles share it)."""
  counts = {}
  for _, b in _find(lambda b: True):
    counts[b.name] = counts.get(b.name, 0) + 1
  names = [f"{p}/{b.name}" if counts[b.name] > 1 else b.name for p, b in _find(lambda b: True)]
  return sorted(profiles.PROFILES), names


def _did_you_mean(item, candidates):
  """`did you mean <the closest candidate, in any case>? `, or '' when none is close."""
  folded = {c.casefold(): c for c in candidates}
  close = difflib.get_close_matches(item.casefold(), list(folded), n=1, cutoff=0.6)
  return f"did you mean {folded[close[0]]!r}? " if close else ""


def _resolve_item(item):
  """One spec item -> [(profile name or None, Benchmark)]. Names match in any case."""
  if (profile := _profile_named(item)) is not None:
    return [(profile, b) for b in profiles.get_profile(profile).benchmarks]
  if "/" in item and (profile := _profile_named(item.split("/", 1)[0])) is not None:
    name = item.split("/", 1)[1]
    have = [b for b in profiles.get_profile(profile).benchmarks if _same_name(b.name, name)]
    if not have:
      names = [b.name for b in profiles.get_profile(profile).benchmarks]
      raise ValueError(f"profile {profile!r} has no benchmark {name!r}: "
                       f"{_did_you_mean(name, names)}it has {', '.join(names)}")
    return [(profile, have[0])]
  found = _find(lambda b: _same_name(b.name, item))  # before `dataset:split`: names hold ':'
  if len(found) == 1:
    return found
  if found:
    spelled = " or ".join(f"`{p}/{b.name}` ({b.dataset}:{b.split}, {_protocol(b)})"
                          for p, b in found)
    raise ValueError(f"benchmark {item!r} is in {len(found)} profiles, whose protocols differ: "
                     f"name one, {spelled}")
  if ":" in item:
    dataset, split = item.split(":", 1)
    if not dataset or not split:
      raise ValueError(f"benchmark {item!r}: expected `dataset:split`")
    found = _find(lambda b: b.task == "retrieval" and (b.dataset, b.split) == (dataset, split))
    return found[:1] or [(None, _adhoc_retrieval(dataset, split))]
  profile_names, benchmark_names = _valid_names()
  raise ValueError(f"unknown benchmark {item!r}: "
                   f"{_did_you_mean(item, profile_names + benchmark_names)}"
                   f"profiles: {', '.join(profile_names)}; benchmarks: "
                   f"{', '.join(benchmark_names)}; or `dataset:split` of a prepared split")


def _protocol(benchmark):
  """What sets a benchmark apart from its namesake in another profile, in a few words."""
  ks = "/".join(map(str, benchmark.ks))
  order = "T2I first" if benchmark.columns and benchmark.columns[0].startswith("t2i") else \
      "I2T first"
  return f"R@{ks}, {order}" if benchmark.task == "retrieval" else benchmark.task


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
