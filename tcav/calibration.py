"""How often the experiment's own test fires on nothing: ``calibration.json``.

Null hypotheses are random-pool pseudo-concepts (sets of pool clips of a concept's
size) scored as concepts against the experiment's own N random sets, at every
(layer, class, variant) cell of the tested family, and tested with the experiment's
own test (:mod:`tcav.stats`, no second implementation):

* ``pseudo``: each of the first ``MAX_NULL_PER_CELL`` pseudo-concepts of the null in
  turn, its statistic ranked among the other M - 1 (:func:`tcav.stats.leave_one_out_pseudo_p`,
  the same rule as :func:`tcav.stats.pseudo_concept_p`);
* ``permutation`` / ``ttest``: ``TcavConfig.calibration_sets`` pseudo-concepts per cell,
  their N TCAV scores (one CAV per random set, as a concept's) against the cell's
  random-vs-random scores (:func:`tcav.stats.compare_to_null`).

The null p-values are shuffled (seeded) into families of the experiment's family
size (its largest correction family) and corrected with its correction. ``false_positive_rate`` is the share of
null families with at least one significant result: the family-wise error rate
the correction promises to keep at ``alpha``. ``raw_false_positive_rate`` is the
share of uncorrected p <= alpha (the test's size). ``cav_stability`` is how
much a concept's CAV at a layer agrees across seeds, averaged over concepts and layers.
Its basis (``cav_stability_basis``): with K >= 2 draws of the random sets, the cosine
across the K draws of the concept's CAV averaged over each draw's random sets (the
direction the experiment estimates; measured on the demo model 0.97, on a random-weight
create_resnet 0.95, benchmarks/cav_stability.py); with one draw, the mean pairwise
cosine of its single CAVs (one per random set, each with its own seed and split:
0.83 and 0.72 there with mean-difference CAVs, 0.58 and 0.52 with SGD), which
``cav_stability_single`` always gives. Per concept and layer,
``cav_stability_by_concept`` gives ``mean_cosine`` (single CAVs), ``seed_cosine``,
``cosine`` (the basis) and ``stable`` (``cosine`` >= ``CAV_STABILITY_MIN``).
Pure: reads a :class:`tcav.experiment.TcavReport`, writes nothing.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as sps

from tcav import stats
from tcav.cav import mean_pairwise_cosine

FILE = "calibration.json"
MAX_NULL_PER_CELL = 2000   # pseudo test: null hypotheses per (layer, class, variant, size), of M
CAV_STABILITY_MIN = 0.8    # below: the concept's rows are flagged "unstable CAV" (tcav.experiment)


@dataclass(frozen=True)
class Calibration:
    test: str
    statistic: str
    correction: str
    alpha: float
    n_null_hypotheses: int              # pseudo-concept hypotheses tested
    family_size: int                    # hypotheses corrected together (the experiment's largest family)
    n_families: int
    families_rejected: int              # null families with a significant result after correction
    false_positive_rate: float | None   # families_rejected / n_families (None: nothing to test)
    raw_false_positive_rate: float | None
    binomial_p: float | None            # P(>= families_rejected of n_families) if the true rate were alpha
    cav_stability: float | None         # mean cosine of CAVs from different seeds (see cav_stability_basis)
    cav_stability_by_concept: list[dict] = field(default_factory=list)
    null_p_values: list[float] = field(default_factory=list)
    cav_stability_single: float | None = None   # mean pairwise cosine of the single CAVs
    cav_stability_basis: str = "single CAVs across random sets"

    @property
    def exceeds_alpha(self) -> bool:
        return self.false_positive_rate is not None and self.false_positive_rate > self.alpha

    @property
    def warning(self) -> str | None:
        if not self.exceeds_alpha:
            return None
        return (f"calibration: on this experiment's own null, {self.families_rejected} of {self.n_families} families "
                f"of {self.family_size} random-pool pseudo-concepts had a significant result after "
                f"{self.correction} correction, a false-positive rate of {self.false_positive_rate:.3g} > alpha "
                f"{self.alpha}: treat significant verdicts with caution (calibration.json)")

    def summary(self) -> dict:
        """JSON-safe figures without the per-hypothesis p-values (stored with the experiment)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("null_p_values", "cav_stability_by_concept")}
        return {**out, "exceeds_alpha": self.exceeds_alpha, "warning": self.warning}

    def to_json(self) -> dict:
        return {**asdict(self), "exceeds_alpha": self.exceeds_alpha, "warning": self.warning}


def null_p_values(report) -> np.ndarray:
    """Raw p-value of every pseudo-concept null hypothesis, cell by cell (sorted, deterministic)."""
    config, out = report.config, []
    for lr in sorted(report.layer_reports, key=lambda r: (r.layer, r.target, r.variant)):
        if config.test == "pseudo":
            for _size, m in sorted(lr.pseudo_means.items()):
                out += stats.leave_one_out_pseudo_p(m)[:MAX_NULL_PER_CELL].tolist()
            continue
        for size, scores in sorted(lr.calibration_scores.items()):
            for j, row in enumerate(scores):
                row = row[~np.isnan(row)]
                if len(row) >= 2:
                    seed = stats.derive_seed(config.seed, "calibration-test", lr.layer, lr.target, lr.variant, size, j)
                    out.append(stats.compare_to_null(row, lr.null_scores, test=config.test, seed=seed,
                                                     n_resamples=config.n_resamples).p_value)
    return np.asarray(out, dtype=float)


def family_error_rate(p_values: np.ndarray, family_size: int, *, correction: str, alpha: float,
                      seed: int) -> tuple[int, int]:
    """(families with a corrected p <= alpha, families): the p-values shuffled (seeded)
    into families of ``family_size`` (a last partial family is dropped, unless it is the only one)."""
    p = np.asarray(p_values, dtype=float)
    if not len(p):
        return 0, 0
    p = p[np.random.default_rng(stats.derive_seed(seed, "calibration-families")).permutation(len(p))]
    size = max(1, min(int(family_size), len(p)))
    families = [p[i:i + size] for i in range(0, len(p) - size + 1, size)]
    rejected = sum(bool(np.any(stats.correct_p_values(f, correction) <= alpha)) for f in families)
    return rejected, len(families)


def cav_stability(cavs, seed_means: dict | None = None) -> list[dict]:
    """Per (concept label, layer): mean pairwise cosine of its CAVs (one per seed / random
    set), and of its set-averaged CAVs across the run's seeds (``seed_means``, when K >= 2)."""
    groups: dict[tuple[str, str], list[np.ndarray]] = {}
    for cav in cavs:
        groups.setdefault((cav.concept, cav.layer), []).append(cav.vector)
    out = []
    for (concept, layer), vectors in sorted(groups.items()):
        if len(vectors) < 2:
            continue
        cosine = mean_pairwise_cosine(np.stack(vectors))
        per_seed = (seed_means or {}).get((concept, layer), [])
        across = mean_pairwise_cosine(np.stack(per_seed)) if len(per_seed) >= 2 else None
        basis = cosine if across is None else across
        out.append({"concept": concept, "layer": layer, "n_cavs": len(vectors), "mean_cosine": cosine,
                    "seed_cosine": across, "n_seeds": max(1, len(per_seed)), "cosine": basis,
                    "stable": bool(basis >= CAV_STABILITY_MIN)})
    return out


def calibrate(report) -> Calibration:
    """The calibration of ``report``'s test on its own null (see the module docstring)."""
    config = report.config
    p = null_p_values(report)
    sizes = [f.size for f in getattr(report, "families", [])]
    family_size = max(1, max(sizes) if sizes else int(report.power.n_hypotheses))
    rejected, n_families = family_error_rate(p, family_size, correction=config.correction, alpha=config.alpha,
                                             seed=config.seed)
    stability = cav_stability(report.cavs, getattr(report, "seed_cav_means", None))
    return Calibration(
        test=config.test, statistic=config.test_statistic, correction=config.correction, alpha=float(config.alpha),
        n_null_hypotheses=int(len(p)), family_size=family_size, n_families=n_families, families_rejected=rejected,
        false_positive_rate=rejected / n_families if n_families else None,
        raw_false_positive_rate=float(np.mean(p <= config.alpha)) if len(p) else None,
        binomial_p=float(sps.binom.sf(rejected - 1, n_families, config.alpha)) if n_families else None,
        cav_stability=float(np.mean([s["cosine"] for s in stability])) if stability else None,
        cav_stability_by_concept=stability, null_p_values=[float(x) for x in p],
        cav_stability_single=float(np.mean([s["mean_cosine"] for s in stability])) if stability else None,
        cav_stability_basis=("set-averaged CAV across seeds" if any(s["seed_cosine"] is not None for s in stability)
                             else "single CAVs across random sets"))


def write_calibration(calibration: Calibration, folder: str | Path) -> Path:
    path = Path(folder) / FILE
    path.write_text(json.dumps(calibration.to_json(), indent=1, sort_keys=True))
    return path
