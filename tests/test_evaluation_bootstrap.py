"""The paired seed x group bootstrap: coverage on a known distribution, exact degenerate cases,
pairing, reproducibility, speed and refused inputs."""
import time

import numpy as np
import pytest

from goal_jax.evaluation import bootstrap


def simulated_study(rng, true_difference, seeds=3, groups=100):
  """Two runs' [seeds, groups] outcomes whose difference has mean `true_difference`.

  The reference has a large group effect (hard and easy groups, shared by both runs) and seed
  noise; the difference adds its own seed effect (sd 1), group effect (sd 5) and seed-by-group
  noise (sd 5), so all three terms of the bootstrap matter.
  """
  reference = 50 + rng.normal(0, 10, (1, groups)) + rng.normal(0, 5, (seeds, groups))
  difference = (true_difference + rng.normal(0, 1, (seeds, 1)) + rng.normal(0, 5, (1, groups))
                + rng.normal(0, 5, (seeds, groups)))
  return reference + difference, reference


def test_95_percent_interval_covers_the_true_difference_about_95_percent_of_the_time():
  rng = np.random.default_rng(0)
  covered, widths = [], []
  for repetition in range(200):
    method, reference = simulated_study(rng, 3.0)
    result = bootstrap.paired_difference(method, reference, resamples=2000, seed=repetition)
    covered.append(result.low <= 3.0 <= result.high)
    widths.append(result.high - result.low)
  assert 0.88 <= np.mean(covered) <= 0.99, np.mean(covered)
  # True sd of the mean difference: sqrt(1/3 + 25/100 + 25/300) = 0.816; 95 %: +-1.96 sd.
  assert np.median(widths) == pytest.approx(2 * 1.96 * 0.816, rel=0.25)


def test_identical_runs_give_zero_and_a_constant_shift_gives_exactly_the_shift():
  rng = np.random.default_rng(1)
  reference = rng.integers(0, 9, (3, 50)) * 12.5  # per-group accuracies of groups of 4
  same = bootstrap.paired_difference(reference, reference.copy())
  assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
  shifted = bootstrap.paired_difference(reference + 6.25, reference)
  assert (shifted.difference, shifted.low, shifted.high) == (6.25, 6.25, 6.25)
  odd = bootstrap.paired_difference(reference + 3.9, reference)  # not exact in binary: rounding
  assert (odd.difference, odd.low, odd.high) == pytest.approx((3.9, 3.9, 3.9), abs=1e-12)
  assert (same.seeds, same.groups) == (3, 50)


def test_difference_is_the_mean_and_pairing_removes_shared_noise():
  rng = np.random.default_rng(2)
  reference = rng.normal(50, 20, (3, 200))  # large seed/group noise shared by both runs
  method = reference + 2.0 + rng.normal(0, 1, (3, 200))
  result = bootstrap.paired_difference(method, reference)
  assert result.difference == pytest.approx(np.mean(method - reference))
  assert result.low < result.difference < result.high
  assert result.high - result.low < 1.0  # unpaired, the +-20 noise would make it ~5 wide
  narrow = bootstrap.paired_difference(method, reference, level=0.5)
  assert result.low < narrow.low < narrow.high < result.high


def test_same_seed_same_interval_other_seed_close():
  rng = np.random.default_rng(3)
  method, reference = simulated_study(rng, 1.0)
  first = bootstrap.paired_difference(method, reference, seed=7)
  assert bootstrap.paired_difference(method, reference, seed=7) == first
  other = bootstrap.paired_difference(method, reference, seed=8)
  assert other != first and other.low == pytest.approx(first.low, abs=0.1)
  assert first.as_dict() == {"difference": first.difference, "low": first.low,
                             "high": first.high, "seeds": 3, "groups": 100}


def test_one_seed_resamples_groups_only():
  rng = np.random.default_rng(4)
  reference = rng.normal(50, 10, (1, 100))
  method = reference + rng.normal(2, 5, (1, 100))
  result = bootstrap.paired_difference(method, reference)
  sd = np.std(method - reference) / np.sqrt(100)
  assert result.high - result.low == pytest.approx(2 * 1.96 * sd, rel=0.1)


def test_ten_thousand_resamples_of_3_by_100_take_under_a_second():
  rng = np.random.default_rng(5)
  method, reference = simulated_study(rng, 0.0, groups=100)
  began = time.perf_counter()
  bootstrap.paired_difference(method, reference, resamples=10_000)
  assert time.perf_counter() - began < 1.0


def test_bad_inputs():
  ones = np.ones((3, 4))
  with pytest.raises(ValueError, match=r"one shape, got \(3, 4\) and \(2, 4\)"):
    bootstrap.paired_difference(ones, ones[:2])
  with pytest.raises(ValueError, match="one shape"):
    bootstrap.paired_difference(ones[0], ones[0])
  with pytest.raises(ValueError, match="one shape"):
    bootstrap.paired_difference(ones[:0], ones[:0])
  with pytest.raises(ValueError, match="finite"):
    bootstrap.paired_difference(ones * np.nan, ones)
  with pytest.raises(ValueError, match="level"):
    bootstrap.paired_difference(ones, ones, level=95)
  with pytest.raises(ValueError, match="resamples"):
    bootstrap.paired_difference(ones, ones, resamples=0)
