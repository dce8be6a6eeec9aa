"""Benchmark specs: profiles, `profile/name`, bare names and `dataset:split` -> (profile, rows)."""
import pytest

from goal_jax.evaluation import benchmark_spec, profiles


def test_resolve_benchmarks():
  profile, chosen = benchmark_spec.resolve_benchmarks("goal")
  assert profile.name == "goal" and chosen == profiles.get_profile("goal").benchmarks
  profile, chosen = benchmark_spec.resolve_benchmarks("docci:test+qual_test,urban1k:test")
  assert profile.name == "goal" and [b.name for b in chosen] == ["DOCCI", "Urban1k"]
  profile, chosen = benchmark_spec.resolve_benchmarks(
      ["goal/DOCCI", "longclip/DOCCI", "photos:test"])
  assert profile.name == "custom"
  assert [b.name for b in chosen] == ["goal/DOCCI", "longclip/DOCCI", "photos:test"]
  assert [b.split for b in chosen] == ["test+qual_test", "test", "test"]
  with pytest.raises(ValueError, match="in 2 profiles, whose protocols differ: name one, "
                                      "`goal/DOCCI`"):
    benchmark_spec.resolve_benchmarks("DOCCI")
  with pytest.raises(ValueError, match="unknown benchmark"):
    benchmark_spec.resolve_benchmarks("nonsense")
  # Names with a ':' are names, not `dataset:split`; `synthetic:test_hard` is the R@K benchmark.
  profile, chosen = benchmark_spec.resolve_benchmarks(
      "Synthetic hard: within group,synthetic:test_hard")
  assert profile.name == "synthetic"
  assert [b.name for b in chosen] == ["Synthetic hard: within group",
                                      "Synthetic hard: R@K over split"]
