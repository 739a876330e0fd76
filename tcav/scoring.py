"""TCAV scores from directional derivatives. Pure numpy; no model, no files.

For class k, concept C and layer l, with a = f_l(x) the layer's activation:

    S_C,k(x) = grad_a logit_k(a) . v_C                      (directional derivative)
    TCAV     = |{x in class-k examples : S > 0}| / |class-k examples|
    magnitude = sum of positive S / sum of |S|               (bounded to [0, 1])
    logit change = mean over x of grad_a logit_k(a) . (mean_C a - mean_R a)

The logit change is the first-order change of the class logit when a class
example's activation moves from the random set's mean to the concept's mean: the
mean directional derivative along the un-normalised mean-difference direction, in
logit units. Unlike the sign count it does not saturate at 0 or 1 where the class
gradients are alike, so it is the statistic of the pseudo-concept test (tcav.stats).

Captum's ``magnitude`` is the unbounded mean of S; ``mean_derivative`` gives it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def directional_derivatives(gradients: np.ndarray, cavs: np.ndarray) -> np.ndarray:
    """``gradients`` (N, D) d logit_k / d a per example; ``cavs`` (K, D) or (D,).

    Returns S (N, K) (or (N,) for a single CAV), in logit units per activation unit."""
    g = np.asarray(gradients, dtype=np.float64).reshape(len(gradients), -1)
    v = np.asarray(cavs, dtype=np.float64)
    return g @ v.T


def tcav_score(derivatives: np.ndarray) -> np.ndarray:
    """Fraction of examples with S > 0, per column of S (N, K) -> (K,) (or scalar for (N,))."""
    return np.mean(np.asarray(derivatives) > 0, axis=0)


def magnitude_score(derivatives: np.ndarray) -> np.ndarray:
    """sum(S>0) / sum|S| per column, in [0, 1]; 0.5 when every S is exactly 0 (no direction)."""
    s = np.asarray(derivatives, dtype=np.float64)
    total = np.abs(s).sum(axis=0)
    positive = np.clip(s, 0, None).sum(axis=0)
    return np.where(total > 0, positive / np.where(total > 0, total, 1.0), 0.5)


def mean_derivative(derivatives: np.ndarray) -> np.ndarray:
    """Mean S per column: Captum's (unbounded) ``magnitude`` score."""
    return np.asarray(derivatives, dtype=np.float64).mean(axis=0)


def logit_changes(gradients: np.ndarray, differences: np.ndarray) -> np.ndarray:
    """``gradients`` (N, D) d logit_k / d a; ``differences`` (K, D) mean activation of
    the concept minus mean activation of each random set (or other set).

    Returns (K,): mean over the N examples of grad . difference (logit units)."""
    g = np.asarray(gradients, dtype=np.float64).reshape(len(gradients), -1).mean(axis=0)
    return np.atleast_2d(np.asarray(differences, dtype=np.float64)) @ g


def pseudo_logit_changes(projections: np.ndarray, pseudo: np.ndarray, randoms: np.ndarray) -> np.ndarray:
    """Logit changes of many sets at once, from ``projections`` (P,): the mean class
    gradient . each pool clip's activation. ``pseudo`` (M, P) and ``randoms`` (N, P)
    are 0/1 memberships. Set j against random set i less their overlap:
    mean of set j - mean of the rest of set i (the logit change is linear in the
    clips). Returns (M,) the mean over the N sets, NaN where every random set is
    covered by set j."""
    p = np.asarray(projections, dtype=np.float64)
    own = (pseudo @ p) / pseudo.sum(axis=1)                                  # (M,)
    shared_sum, shared_count = (pseudo * p) @ randoms.T, pseudo @ randoms.T  # (M, N)
    rest_count = randoms.sum(axis=1)[None, :] - shared_count
    rest = np.divide((randoms @ p)[None, :] - shared_sum, rest_count, out=np.full_like(shared_sum, np.nan),
                     where=rest_count > 0)
    per_set = own[:, None] - rest
    valid = ~np.isnan(per_set)
    counts = valid.sum(axis=1)
    return np.where(counts > 0, np.where(valid, per_set, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)


def mean_activation(activations: np.ndarray) -> np.ndarray:
    """(n, ...) activations -> (D,) float64 mean over the n clips."""
    a = np.asarray(activations)
    return a.reshape(len(a), -1).mean(axis=0, dtype=np.float64)


@dataclass(frozen=True)
class TemporalProfile:
    """When in the clip a concept drives a class, over the layer's T time slices.

    ``contribution`` (T,): mean over examples of the slice's share of S,
    S_t / sum_t |S_t|, in [-1, 1] (sums of the shares give the sign of S);
    ``fraction_positive`` (T,): fraction of examples with S_t > 0."""

    contribution: np.ndarray
    fraction_positive: np.ndarray


def temporal_derivatives(gradients: np.ndarray, cav: np.ndarray) -> np.ndarray:
    """Splits S over time: ``gradients`` (N, C, T, H, W), ``cav`` (C*T*H*W,) -> S_t (N, T).

    sum over t of S_t equals S for each example."""
    g = np.asarray(gradients, dtype=np.float64)
    if g.ndim != 5:
        raise ValueError(f"temporal TCAV needs 5-D gradients (N,C,T,H,W), got shape {g.shape}")
    v = np.asarray(cav, dtype=np.float64).reshape(g.shape[1:])
    return np.einsum("ncthw,cthw->nt", g, v)


def temporal_profile(slice_derivatives: np.ndarray) -> TemporalProfile:
    """From S_t (N, T) to the curve over T and the fraction positive per slice."""
    s = np.asarray(slice_derivatives, dtype=np.float64)
    total = np.abs(s).sum(axis=1, keepdims=True)
    share = np.divide(s, total, out=np.zeros_like(s), where=total > 0)
    return TemporalProfile(contribution=share.mean(axis=0), fraction_positive=np.mean(s > 0, axis=0))
