"""Significance of TCAV scores against a random-versus-random null. Pure numpy/scipy.

Which test, and why:

* ``pseudo`` (default): the calibrated null. M pseudo-concepts, sets of the
  concept's size drawn from the random pool (own seeded stream, independent of
  the concept list), are scored against the SAME N random sets exactly as the
  concept, and the concept's statistic is ranked among theirs. Under "the concept
  is just more pool clips" the concept and the M pseudo-concepts are
  exchangeable, which the two-sample tests below are not (see Known limit).
  Two-sided rule: c = median of all M + 1 values (concept's included, a symmetric
  function, so exchangeability survives), p = (1 + #{j : |null_j - c| >= |obs - c|})
  / (M + 1): exact (ties counted against the concept), smallest p 1 / (M + 1).
  Its statistic (``TcavConfig.statistic``):
  - ``logit-change`` (default with pseudo): the mean over the N random sets of the
    first-order class-logit change from the random set's mean activation to the
    concept's (tcav.scoring.logit_changes). It needs no CAV fit, so M x N
    pseudo-concepts cost two matrix products. Why it and not the TCAV score:
    measured on the synthetic benchmark's demo model, whose class gradients are
    alike (cosine 0.86-0.96), 2-12 % of plain pool sets already reach TCAV >= 0.99
    for a class, so a planted 1.0 is not extreme among them and the sign count
    has no power; the logit change puts the planted concepts 11-15 null standard
    deviations out and the distractors within 3.4 (benchmarks/tcav_synthetic.py).
  - ``tcav``: the mean TCAV score. Nearly free with mean-difference CAVs (scored
    from gradient . activation projections), M x N classifier fits otherwise.
* ``permutation``: a two-sided test of the difference of means of the
  N concept scores and the N null scores. Exact whenever the scores lie on a
  grid (TCAV scores are k / |class examples|): every one of the C(2N, N)
  relabellings is counted by dynamic programming over group sums, so its
  smallest p is 2 / C(2N, N) (1.1e-5 for N = 10). Otherwise exact by enumeration
  up to ``EXACT_LIMIT`` relabellings, else seeded Monte Carlo with
  ``n_resamples`` (p = (count + 1) / (n_resamples + 1), doubled for two sides). It does not assume normal scores, which suits TCAV scores: they are
  bounded in [0, 1], discrete (multiples of 1/|class examples|) and often pile
  up at 0 or 1, where a t-test's variance estimate collapses.
* ``ttest``: the two-sided Student t-test (``scipy.stats.ttest_ind``) of
  tensorflow/tcav and the Video-TCAV paper, kept for comparability. When both
  samples are constant it returns 0 if their means differ, 1 otherwise: the
  t statistic is infinite or undefined there, which is exactly the
  all-or-nothing regime of degenerate layers.

Correction families (``TcavConfig.family``). By default each target class at each
layer is its own family: its testable hypotheses (concepts x variants, less pairs
outside ``TcavConfig.hypotheses``; a degenerate layer has none) are corrected
together, Bonferroni by default or Holm (step-down, same family-wise error). So a
concept's verdict for a class does not change when other classes or layers join
the run; ``family="target"`` corrects over all layers of a class and
``family="experiment"`` over everything, as before.

Resolution. With the pseudo test the smallest p is 1 / (M + 1), so M decides how far
below the threshold a clear effect can go. :func:`auto_null_sets` picks M from the
family size m so that the smallest corrected p is at most alpha / ``RESOLUTION``
(alpha / 100): m = 12 gives M = 23,999. Each effect is also reported as z, its
distance from the pseudo-null's median in pseudo-null standard deviations.

Ties with the threshold (:func:`is_significant`): a result is significant when its
corrected p is strictly below alpha. A corrected p equal to alpha (within float
rounding, relative 1e-9) is not significant, so a value printed as "0.05" is never
significant against alpha 0.05 by rounding either way.

Known limit (the two-sample tests, and tensorflow/tcav's and Captum's protocol): the N
concept scores share one concept set, while the N null scores come from N
independent random pairs, so under "the concept is just pool clips" the two are
not exchangeable. Where the class gradients are alike (cosine ~0.9), a set of
pool clips used as a concept scores 0 or 1 on most random sets, and the test is
anti-conservative: on the synthetic benchmark's demo model 12 of 48 such
pseudo-concept hypotheses had raw p < 0.05 at N = 10. The diagnostics' all-or-
nothing null warning marks such layers. The ``pseudo`` test is the valid null:
it scores M pool sets against the same N random sets.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np
from scipy import stats as sps

from conceptgen.errors import ConfigError
from conceptgen.hashing import sha256_json

TESTS = ("pseudo", "permutation", "ttest")
STATISTICS = ("logit-change", "tcav")   # what the pseudo test ranks; the two-sample tests use tcav
CORRECTIONS = ("bonferroni", "holm")
DEFAULT_ALPHA = 0.05
DEFAULT_RESAMPLES = 9999
EXACT_LIMIT = 20_000  # relabellings enumerated by scipy up to this count (N<=8 per side)
MAX_GRID_DENOMINATOR = 1000  # scores k/n with n up to this are counted exactly by DP
DP_COST = 100_000_000        # cap on DP work: items x subset size x sum range
RESOLUTION = 100             # "auto" M: the smallest corrected p is at most alpha / RESOLUTION
MAX_AUTO_NULL_SETS = 199_999  # "auto" M for the logit change (sums over projections: cheap)
MAX_AUTO_NULL_SETS_SET_BY_SET = 4999  # "auto" M for TCAV scores of mean-difference CAVs (M x N scores)
MAX_AUTO_NULL_SETS_FITTED = 199  # "auto" M when every pseudo CAV is a classifier fit
FAMILIES = ("target-layer", "target", "experiment")
TIE_TOLERANCE = 1e-9         # relative: a corrected p this close to alpha is a tie (not significant)


def derive_seed(seed: int, *stream: object) -> int:
    """An independent, reproducible seed for a named stream (e.g. ``"null"``),
    so adding a concept never moves another stream's draws."""
    return int(sha256_json([int(seed), *[str(s) for s in stream]])[:8], 16)


@dataclass(frozen=True)
class TestOutcome:
    """``p_value`` two-sided, ``statistic`` mean(scores) - mean(null), ``test`` its name."""

    p_value: float
    statistic: float
    test: str


def ttest_two_sided(scores: np.ndarray, null: np.ndarray) -> TestOutcome:
    """Student's two-sided t-test (equal variances, as tensorflow/tcav)."""
    a, b = np.asarray(scores, float), np.asarray(null, float)
    diff = float(a.mean() - b.mean())
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return TestOutcome(0.0 if diff != 0 else 1.0, diff, "ttest")
    p = float(sps.ttest_ind(a, b).pvalue)
    return TestOutcome(1.0 if np.isnan(p) else p, diff, "ttest")


def _mean_difference(x, y, axis):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _on_grid(values: np.ndarray, max_denominator: int = MAX_GRID_DENOMINATOR) -> np.ndarray | None:
    """``values`` as integers on a common grid (e.g. TCAV scores k/n -> k), or None."""
    from fractions import Fraction
    from math import lcm

    denominators = {Fraction(float(v)).limit_denominator(max_denominator).denominator for v in np.unique(values)}
    scale = lcm(*denominators)
    scaled = values * scale
    if scale > max_denominator or not np.allclose(scaled, np.round(scaled), atol=1e-6):
        return None
    return np.round(scaled).astype(np.int64)


def exact_permutation_p(scores: np.ndarray, null: np.ndarray) -> float | None:
    """Exact two-sided permutation p of the difference of means, by counting every
    relabelling's group sum with dynamic programming (scores on a grid, as TCAV
    scores k/n are); None when the values are not on a small grid."""
    a, b = np.asarray(scores, float), np.asarray(null, float)
    pooled = _on_grid(np.concatenate([a, b]))
    if pooled is None:
        return None
    pooled = pooled - pooled.min()
    n_a, top = len(a), int(pooled.sum())
    if len(pooled) * n_a * (top + 1) > DP_COST:
        return None
    # counts[k, s]: number of k-subsets of the items seen so far whose values sum to s
    counts = np.zeros((n_a + 1, top + 1))
    counts[0, 0] = 1.0
    for v in pooled:
        shifted = np.zeros_like(counts)
        shifted[1:, v:] = counts[:-1, :top + 1 - v]
        counts += shifted
    dist = counts[n_a]
    observed = int(pooled[:n_a].sum())  # mean(A) - mean(B) increases with sum(A)
    total = dist.sum()
    greater, less = dist[observed:].sum() / total, dist[:observed + 1].sum() / total
    return float(min(1.0, 2 * min(greater, less)))


def permutation_test(scores: np.ndarray, null: np.ndarray, *, seed: int,
                     n_resamples: int = DEFAULT_RESAMPLES) -> TestOutcome:
    """Two-sided permutation test of the difference of means: exact (all
    C(n_a + n_b, n_a) relabellings counted) when the scores lie on a grid such as
    TCAV's k/n or the count is small, else seeded Monte Carlo."""
    a, b = np.asarray(scores, float), np.asarray(null, float)
    diff = float(a.mean() - b.mean())
    if np.ptp(np.concatenate([a, b])) == 0:
        return TestOutcome(1.0, diff, "permutation")
    exact = exact_permutation_p(a, b)
    if exact is not None:
        return TestOutcome(exact, diff, "permutation")
    small = comb(len(a) + len(b), len(a)) <= EXACT_LIMIT
    result = sps.permutation_test(
        (a, b), _mean_difference, permutation_type="independent", alternative="two-sided",
        vectorized=True, n_resamples=np.inf if small else n_resamples,
        rng=np.random.default_rng(seed))
    return TestOutcome(float(min(1.0, result.pvalue)), diff, "permutation")


def compare_to_null(scores: np.ndarray, null: np.ndarray, *, test: str, seed: int,
                    n_resamples: int = DEFAULT_RESAMPLES) -> TestOutcome:
    if test == "permutation":
        return permutation_test(scores, null, seed=seed, n_resamples=n_resamples)
    if test == "ttest":
        return ttest_two_sided(scores, null)
    raise ConfigError(f"unknown test {test!r}: use one of {', '.join(TESTS)}")


def pseudo_concept_p(observed: float, null_means: np.ndarray) -> TestOutcome:
    """Two-sided exact p of a concept's statistic (mean TCAV score or logit change)
    among M pseudo-concepts' (see the module docstring): distance from the median
    of all M + 1 values."""
    null = np.asarray(null_means, float)
    if not len(null):  # no pseudo-concept could be scored (see tcav.experiment): no evidence
        return TestOutcome(1.0, 0.0, "pseudo")
    centre = float(np.median(np.append(null, observed)))
    extreme = int(np.sum(np.abs(null - centre) >= abs(observed - centre) - 1e-12))
    return TestOutcome(float((1 + extreme) / (len(null) + 1)), float(observed - null.mean()), "pseudo")


def auto_null_sets(n_hypotheses: int, alpha: float = DEFAULT_ALPHA, *, cap: int = MAX_AUTO_NULL_SETS,
                   resolution: float = RESOLUTION) -> int:
    """M pseudo-concepts so that the smallest p, 1 / (M + 1), is alpha / ``resolution``
    after Bonferroni over ``n_hypotheses``, at least 99, at most ``cap``."""
    return int(min(cap, max(99, np.ceil(resolution * max(1, n_hypotheses) / alpha - 1e-9) - 1)))


def leave_one_out_pseudo_p(null_means: np.ndarray) -> np.ndarray:
    """Each of M pseudo-concepts' p among the other M - 1, as :func:`pseudo_concept_p`
    gives it (the centre, the median of all M values, is the same for every one):
    O(M log M), for the calibration of large nulls."""
    m = np.asarray(null_means, float)
    if len(m) < 2:
        return np.zeros(0)
    distance = np.abs(m - np.median(m))
    ordered = np.sort(distance)
    at_least = len(m) - np.searchsorted(ordered, distance - 1e-12, side="left")  # itself included
    return at_least / len(m)   # (1 + others at least as far) / ((M - 1) + 1)


def pseudo_z(observed: float, null_means: np.ndarray) -> float | None:
    """The effect in pseudo-null standard deviations from the null's median (None: no spread)."""
    null = np.asarray(null_means, float)
    if len(null) < 2 or np.std(null) == 0:
        return None
    return float((observed - np.median(null)) / np.std(null))


def is_significant(p_corrected: float | None, alpha: float) -> bool:
    """Strictly below alpha; a tie with alpha (within float rounding) is not significant."""
    return p_corrected is not None and p_corrected < alpha * (1 - TIE_TOLERANCE)


def correct_p_values(p_values: np.ndarray, method: str = "bonferroni") -> np.ndarray:
    """Family-wise corrected p-values (same order as given), each in [0, 1]."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if method == "bonferroni":
        return np.minimum(1.0, p * m)
    if method == "holm":
        order = np.argsort(p, kind="stable")
        stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
        out = np.empty(m)
        out[order] = stepped
        return out
    raise ConfigError(f"unknown correction {method!r}: use one of {', '.join(CORRECTIONS)}")


def exact_is_feasible(n_scores: int, n_null: int, grid: int) -> bool:
    """Whether scores k/``grid`` of these sample sizes get the exact DP test."""
    n = n_scores + n_null
    return comb(n, n_scores) <= EXACT_LIMIT or n * n_scores * (n * grid + 1) <= DP_COST


def min_achievable_p(n_scores: int, n_null: int, *, test: str, grid: int = 100,
                     n_resamples: int = DEFAULT_RESAMPLES, n_null_sets: int = 0) -> float:
    """The smallest two-sided p-value ``test`` can return for these sample sizes.

    Pseudo: 1 / (``n_null_sets`` + 1).
    Permutation: 2 / C(n_scores + n_null, n_scores) when exact (the two most
    extreme relabellings; scores on a grid of 1/``grid``, i.e. ``grid`` class
    examples), else 2 / (n_resamples + 1). The t-test has no floor above 0 (see
    the module docstring), so it returns 0.0."""
    if test == "ttest":
        return 0.0
    if test == "pseudo":
        return 1.0 / (n_null_sets + 1)
    relabellings = comb(n_scores + n_null, n_scores)
    if exact_is_feasible(n_scores, n_null, grid):
        return min(1.0, 2.0 / relabellings)
    return max(2.0 / relabellings, 2.0 / (n_resamples + 1))


@dataclass(frozen=True)
class PowerCheck:
    """``min_p``: smallest raw p; ``min_p_corrected`` after correcting over
    ``n_hypotheses``; ``possible``: whether any test can reach ``alpha``."""

    min_p: float
    min_p_corrected: float
    n_hypotheses: int
    possible: bool
    warning: str | None


def power_check(n_random_sets: int, n_hypotheses: int, *, test: str, alpha: float = DEFAULT_ALPHA,
                grid: int = 100, n_resamples: int = DEFAULT_RESAMPLES, n_null_sets: int = 0) -> PowerCheck:
    """Whether N random sets can ever give a significant verdict after correction.

    Both Bonferroni and Holm multiply the smallest p by the number of hypotheses."""
    min_p = min_achievable_p(n_random_sets, n_random_sets, test=test, grid=grid, n_resamples=n_resamples,
                             n_null_sets=n_null_sets)
    corrected = min(1.0, min_p * max(1, n_hypotheses))
    possible = corrected <= alpha
    if test == "pseudo":
        what, fix = f"{n_null_sets} pseudo-concept null sets", "raise --null-sets"
    else:
        what, fix = f"{n_random_sets} random sets", "raise --random-sets or use --random-sets auto"
    warning = None if possible else (
        f"power: with {what} the {test} test's smallest p-value is "
        f"{min_p:.3g}, which is {corrected:.3g} after correcting over {n_hypotheses} hypotheses "
        f"(> alpha {alpha}); no result can be significant: {fix}")
    return PowerCheck(min_p, corrected, n_hypotheses, possible, warning)
