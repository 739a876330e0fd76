"""Layer and CAV diagnostics that keep TCAV honest. Pure numpy.

* Degenerate layers: when the class-logit gradient w.r.t. a layer's activation
  is (nearly) the same for every input, e.g. after global pooling followed by a
  linear head (gradient = the head's weight row), S = grad . v has the same sign
  for every example and every TCAV score is exactly 0 or 1.
* CAV quality gate: a concept whose CAVs separate it from random sets no better
  than random sets separate from each other is not a learnable concept there.
* Null health: the random-versus-random TCAV scores should centre near 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEGENERATE_COSINE = 0.98   # mean pairwise cosine of gradients above this: input-independent
ACCURACY_MARGIN = 0.10     # concept CAVs must beat null CAVs by at least this much mean accuracy
NULL_TOLERANCE = 0.15      # |null mean - 0.5| above this is a warning
NULL_EXTREME_FRACTION = 0.5  # this share of null scores at exactly 0 or 1 is a warning


@dataclass(frozen=True)
class LayerDiagnosis:
    """``gradient_cosine``: mean pairwise cosine of the class-logit gradients
    across class examples, in [-1, 1]; ``degenerate`` when above DEGENERATE_COSINE."""

    layer: str
    target: str
    gradient_cosine: float
    degenerate: bool
    message: str | None


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine over all pairs i != j of rows of ``vectors`` (N, D); 1.0 for N < 2."""
    x = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    if len(x) < 2:
        return 1.0
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    gram = unit @ unit.T
    n = len(x)
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def diagnose_layer(layer: str, target: str, gradients: np.ndarray,
                   earlier_layers: list[str] | None = None) -> LayerDiagnosis:
    """``gradients`` (N, D): d logit_target / d activation for N class examples."""
    cosine = mean_pairwise_cosine(gradients)
    degenerate = cosine > DEGENERATE_COSINE
    message = None
    if degenerate:
        hint = f" (e.g. {earlier_layers[-1]})" if earlier_layers else ""
        message = (f"layer {layer} is degenerate for {target}: scores are all-or-nothing "
                   f"(gradient cosine {cosine:.3f} across examples); use an earlier layer{hint}")
    return LayerDiagnosis(layer, target, cosine, degenerate, message)


@dataclass(frozen=True)
class CavQuality:
    """Mean held-out accuracy of the concept's CAVs and of the null's CAVs."""

    concept_accuracy: float
    null_accuracy: float
    required: float
    learnable: bool


def cav_quality(concept_accuracies: np.ndarray, null_accuracies: np.ndarray,
                alpha: float = 0.05) -> CavQuality:
    """Learnable when the concept CAVs' mean held-out accuracy beats the null CAVs'
    by at least ACCURACY_MARGIN *and* a one-sided Mann-Whitney test says the
    concept accuracies are larger (p <= ``alpha``, uncorrected: a gate, not a finding)."""
    from scipy.stats import mannwhitneyu

    c = np.asarray(concept_accuracies, float)
    n = np.asarray(null_accuracies, float)
    required = float(min(1.0, n.mean() + ACCURACY_MARGIN))
    separated = np.ptp(np.concatenate([c, n])) > 0 and \
        mannwhitneyu(c, n, alternative="greater").pvalue <= alpha
    return CavQuality(float(c.mean()), float(n.mean()), required,
                      bool(c.mean() >= required and separated))


def null_warning(layer: str, target: str, null_scores: np.ndarray) -> str | None:
    """A warning when the random-versus-random mean sits far from 0.5, or when most
    null scores are exactly 0 or 1: then the class gradients are so alike (though
    below DEGENERATE_COSINE) that a random direction scores all-or-nothing, a
    concept's 1.0 is within what random sets reach, and the test has little power."""
    scores = np.asarray(null_scores, float)
    mean, extreme = float(scores.mean()), float(np.mean((scores == 0) | (scores == 1)))
    problems = []
    if abs(mean - 0.5) > NULL_TOLERANCE:
        problems.append(f"has mean {mean:.2f}, far from 0.5 (random directions are not neutral here)")
    if extreme >= NULL_EXTREME_FRACTION:
        problems.append(f"is all-or-nothing ({extreme:.0%} of random-vs-random scores are 0 or 1; "
                        f"prefer an earlier layer)")
    if not problems:
        return None
    return f"null baseline at {layer} for {target} " + " and ".join(problems) + ": treat its verdicts with caution"
