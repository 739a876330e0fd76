"""Stored TCAV experiments read back: each hypothesis as a person reads it, the run's
warnings, calibration and plots. The one reader of ``tcav_experiments``/``tcav_results``:
the annotator's experiment pages use it, and ``tcav.results`` (which writes them)
re-exports it. Core layer, so the annotator may import it (it may not import tcav/)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from conceptgen.errors import NotFoundError
from conceptgen.orm import TcavExperiment, TcavResult


def safe_name(name: str) -> str:
    """A class or concept name as it appears in file names (``tcav.plots`` names plots with it)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


@dataclass
class StoredResult:
    """One stored hypothesis as a person reads it: the statistic the test ranks and its
    value, raw and corrected p, verdict, TCAV score with its spread over random sets,
    CAV accuracy and flags (degenerate layer, not tested, unreliable CAV, ...)."""

    id: int
    concept_id: int | None
    concept: str
    target: str
    layer: str
    variant: str
    comparison: str
    statistic: str
    statistic_value: float
    p_value: float | None
    p_corrected: float | None
    significant: bool
    verdict: str
    tcav_mean: float
    tcav_std: float
    cav_accuracy: float
    null_mean: float | None
    flags: list[str]


@dataclass
class StoredExperiment:
    """An experiment row, with its results only when loaded by :func:`load_experiment`."""

    id: int
    model_name: str
    targets: list[str]
    layers: list[str]
    test: str
    statistic: str
    correction: str | None
    alpha: float | None
    status: str
    created_at: datetime
    finished_at: datetime | None
    n_results: int
    progress: dict[str, Any] | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    degenerate_layers: list[Any] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    power: dict[str, Any] | None = None
    plots_by_target: dict[str, list[str]] = field(default_factory=dict)
    shared_plots: list[str] = field(default_factory=list)
    results: list[StoredResult] = field(default_factory=list)


def _describe(exp: TcavExperiment, n_results: int) -> StoredExperiment:
    config, summ = exp.config or {}, exp.summary or {}
    targets = list(config.get("targets") or [t for t in (exp.target or "").split(",") if t])
    return StoredExperiment(
        id=exp.id, model_name=exp.model_name, targets=targets, layers=list(exp.layers or []),
        test=summ.get("test") or config.get("test") or "?", statistic=summ.get("statistic") or config.get("statistic") or "tcav",
        correction=config.get("correction"), alpha=config.get("alpha"), status=exp.status,
        created_at=exp.created_at, finished_at=exp.finished_at, n_results=n_results,
        progress=summ.get("progress") if exp.status == "running" else None, error=summ.get("error"))


def list_experiments(session) -> list[StoredExperiment]:
    """Every experiment, newest first (without its results)."""
    counts = dict(session.execute(select(TcavResult.experiment_id, func.count(TcavResult.id))
                                  .group_by(TcavResult.experiment_id)).all())
    return [_describe(e, counts.get(e.id, 0))
            for e in session.scalars(select(TcavExperiment).order_by(TcavExperiment.id.desc()))]


def _statistic_value(r: TcavResult, statistic: str) -> float:
    """The value the test ranks: the mean logit change, or the TCAV score."""
    changes = (r.details or {}).get("logit_changes")
    if statistic == "logit-change" and changes:
        return float(np.mean(changes))
    return float(r.tcav_mean)


def plots_by_target(plots: list[str], targets: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Each plot under the target its file is named for (``tcav.plots.plot_report``
    names them ``<kind>_<target>.png``); plots of the whole experiment (calibration) apart."""
    out: dict[str, list[str]] = {t: [] for t in targets}
    shared = []
    for p in plots:
        stem = Path(p).stem
        owner = next((t for t in sorted(targets, key=len, reverse=True) if stem.endswith("_" + safe_name(t))), None)
        (out[owner] if owner is not None else shared).append(p)
    return out, shared


def load_experiment(session, experiment_id: int) -> StoredExperiment:
    """An experiment with every stored hypothesis, its warnings, calibration and plots."""
    exp = session.get(TcavExperiment, experiment_id)
    if exp is None:
        raise NotFoundError(f"experiment {experiment_id} does not exist; see the experiments page")
    rows = session.scalars(select(TcavResult).where(TcavResult.experiment_id == exp.id).order_by(TcavResult.id)).all()
    out = _describe(exp, len(rows))
    summ = exp.summary or {}
    out.warnings = list(summ.get("warnings") or [])
    out.degenerate_layers = list(summ.get("degenerate_layers") or [])
    out.calibration, out.power = summ.get("calibration"), summ.get("power")
    out.plots_by_target, out.shared_plots = plots_by_target(list(exp.plots or []), out.targets)
    for r in rows:
        details = r.details or {}
        out.results.append(StoredResult(
            id=r.id, concept_id=r.concept_id, concept=r.concept_name, target=r.target_class, layer=r.layer,
            variant=r.variant, comparison=r.comparison, statistic=out.statistic,
            statistic_value=_statistic_value(r, out.statistic), p_value=r.p_value, p_corrected=r.p_corrected,
            significant=bool(r.significant), verdict=r.verdict, tcav_mean=float(r.tcav_mean),
            tcav_std=float(r.tcav_std), cav_accuracy=float(r.cav_accuracy_mean), null_mean=details.get("null_mean"),
            flags=list(details.get("flags") or [])))
    return out

