"""Significance tests, multiple-comparison correction and power (tcav.stats)."""
from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np
import pytest
from scipy import stats as sps

from conceptgen.errors import ConfigError
from tcav import stats


def _tcav_like(rng, n, p=0.5, n_examples=20):
    """N TCAV scores: fractions of n_examples, as the sign count produces."""
    return rng.binomial(n_examples, p, size=n) / n_examples


def _brute_force_permutation_p(a, b):
    pooled = np.concatenate([a, b])
    observed = a.mean() - b.mean()
    diffs = []
    for idx in combinations(range(len(pooled)), len(a)):
        mask = np.zeros(len(pooled), bool)
        mask[list(idx)] = True
        diffs.append(pooled[mask].mean() - pooled[~mask].mean())
    diffs = np.array(diffs)
    # two-sided as scipy.stats.permutation_test: twice the smaller one-sided tail
    greater = np.mean(diffs >= observed - 1e-12)
    less = np.mean(diffs <= observed + 1e-12)
    return min(1.0, 2 * min(greater, less))


def test_exact_permutation_matches_brute_force_enumeration():
    rng = np.random.default_rng(3)
    a, b = _tcav_like(rng, 5, 0.7), _tcav_like(rng, 5, 0.4)
    got = stats.permutation_test(a, b, seed=0).p_value
    assert got == pytest.approx(_brute_force_permutation_p(a, b), abs=1e-9)


def test_exact_counting_handles_unequal_sizes_and_off_grid_values():
    rng = np.random.default_rng(9)
    a, b = _tcav_like(rng, 6, 0.8), _tcav_like(rng, 4, 0.3)
    assert stats.exact_permutation_p(a, b) == pytest.approx(_brute_force_permutation_p(a, b), abs=1e-9)
    x, y = rng.normal(size=5), rng.normal(size=5) + 1
    assert stats.exact_permutation_p(x, y) is None           # not on a grid: enumeration instead
    assert stats.permutation_test(x, y, seed=0).p_value == pytest.approx(_brute_force_permutation_p(x, y))


def test_permutation_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(11)
    ps = [stats.permutation_test(_tcav_like(rng, 10), _tcav_like(rng, 10), seed=i, n_resamples=999).p_value
          for i in range(150)]
    ks = sps.kstest(ps, "uniform")
    # Discrete scores make p super-uniform (conservative), never anti-conservative.
    assert ks.statistic < 0.2
    assert np.mean(np.array(ps) <= 0.05) <= 0.1


def test_permutation_detects_a_real_shift_and_is_seeded():
    rng = np.random.default_rng(5)
    a, b = _tcav_like(rng, 20, 0.9), _tcav_like(rng, 20, 0.5)
    first = stats.permutation_test(a, b, seed=7)
    assert first.p_value < 1e-3
    assert stats.permutation_test(a, b, seed=7) == first


def test_ttest_matches_scipy_and_handles_constant_samples():
    rng = np.random.default_rng(2)
    a, b = _tcav_like(rng, 10, 0.6), _tcav_like(rng, 10, 0.5)
    assert stats.ttest_two_sided(a, b).p_value == pytest.approx(sps.ttest_ind(a, b).pvalue)
    assert stats.ttest_two_sided(np.ones(10), np.zeros(10)).p_value == 0.0
    assert stats.ttest_two_sided(np.ones(10), np.ones(10)).p_value == 1.0


def test_bonferroni_and_holm_control_the_family_and_keep_order():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, size=12)
    bonf = stats.correct_p_values(p, "bonferroni")
    holm = stats.correct_p_values(p, "holm")
    assert np.allclose(bonf, np.minimum(1, p * len(p)))
    assert np.all(holm <= bonf + 1e-12) and np.all(holm >= p)
    # Holm by its definition: step-down with running maximum.
    order = np.argsort(p)
    running, expected = 0.0, np.empty_like(p)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        expected[i] = running
    assert np.allclose(holm, expected)
    with pytest.raises(ConfigError):
        stats.correct_p_values(p, "fdr")


def test_min_achievable_p_is_reached_by_perfect_separation():
    n = 4
    assert stats.min_achievable_p(n, n, test="permutation") == pytest.approx(2 / comb(2 * n, n))
    p = stats.permutation_test(np.ones(n), np.zeros(n), seed=0).p_value
    assert p == pytest.approx(stats.min_achievable_p(n, n, test="permutation"))


def test_power_warning_fires_when_bonferroni_makes_significance_impossible():
    small = stats.power_check(3, 10, test="permutation")   # min p = 0.1 -> 1.0 after x10
    assert not small.possible and "raise --random-sets" in small.warning
    enough = stats.power_check(10, 10, test="permutation")
    assert enough.possible and enough.warning is None
    # More hypotheses need more random sets.
    assert not stats.power_check(10, 10_000, test="permutation").possible


def test_derived_seed_streams_are_stable_and_independent():
    assert stats.derive_seed(0, "null", 1) == stats.derive_seed(0, "null", 1)
    assert len({stats.derive_seed(0, "null", i) for i in range(50)}) == 50
    assert stats.derive_seed(0, "null", 1) != stats.derive_seed(0, "random-sets", 1)
    assert 0 <= stats.derive_seed(123, "x") < 2 ** 32
