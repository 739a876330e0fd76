"""TCAV results out of memory: database rows (TcavExperiment + TcavResult), CSV and JSON.

Per-random-set scores, the temporal curve and flags go in ``TcavResult.details``;
warnings, layer diagnostics, null means and power in ``TcavExperiment.summary``.
Files go to ``WORKSPACE/media/tcav/<experiment id>/`` (the annotator serves media/).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from conceptgen.orm import Concept, TcavExperiment, TcavResult, utcnow
from tcav.calibration import write_calibration
from tcav.experiment import HypothesisResult, TcavReport, config_dict

CSV_COLUMNS = ("concept", "variant", "layer", "target", "comparison", "tcav_mean", "tcav_std",
               "magnitude_mean", "logit_change_mean", "cav_accuracy_mean", "null_mean", "p_value", "p_corrected",
               "significant", "verdict", "flags")


def media_folder(workspace, experiment_id: int) -> Path:
    return Path(workspace.media) / "tcav" / str(experiment_id)


def result_row(r: HypothesisResult, null_mean: float | None) -> dict[str, Any]:
    """One hypothesis as plain JSON-safe values (the CSV columns plus details)."""
    row = {
        "concept": r.concept, "variant": r.variant, "layer": r.layer, "target": r.target,
        "comparison": r.comparison, "tcav_mean": r.tcav_mean, "tcav_std": r.tcav_std,
        "magnitude_mean": float(r.magnitudes.mean()), "logit_change_mean": r.logit_change_mean,
        "cav_accuracy_mean": float(r.cav_accuracies.mean()),
        "null_mean": null_mean, "p_value": r.p_value, "p_corrected": r.p_corrected,
        "significant": bool(r.significant), "verdict": r.verdict, "flags": ";".join(r.flags),
    }
    row["details"] = {
        "scores": [float(x) for x in r.scores], "magnitudes": [float(x) for x in r.magnitudes],
        "logit_changes": [float(x) for x in r.logit_changes],
        "cav_accuracies": [float(x) for x in r.cav_accuracies], "against": list(r.against),
        "flags": list(r.flags),
        "temporal": None if r.temporal is None else {
            "contribution": [float(x) for x in r.temporal.contribution],
            "fraction_positive": [float(x) for x in r.temporal.fraction_positive]},
    }
    return row


def summary(report: TcavReport) -> dict[str, Any]:
    """Warnings, per-(layer, class) diagnostics and the null, power, and auto history."""
    return {
        "warnings": list(report.warnings),
        "n_random_sets": report.n_random_sets,
        "test": report.config.test, "statistic": report.config.test_statistic,
        "layers": [{
            "layer": lr.layer, "target": lr.target, "variant": lr.variant, "gradient_cosine": lr.diagnosis.gradient_cosine,
            "degenerate": lr.diagnosis.degenerate, "null_mean": lr.null_mean,
            "null_scores": [float(x) for x in lr.null_scores],
            "null_logit_changes": [float(x) for x in lr.null_logit_changes],
            "null_cav_accuracy_mean": float(lr.null_accuracies.mean()), "warning": lr.warning,
            # test "pseudo": per concept size, the pseudo-concepts' statistic: count, mean, spread, share at 0 or 1
            "pseudo_null": {str(size): {"n": len(m), "mean": float(np.mean(m)), "std": float(np.std(m)),
                                        "all_or_nothing": float(np.mean((m == 0) | (m == 1)))}
                            for size, m in lr.pseudo_means.items()},
        } for lr in report.layer_reports],
        "degenerate_layers": report.degenerate_layers(),
        "power": {"min_p": report.power.min_p, "min_p_corrected": report.power.min_p_corrected,
                  "n_hypotheses": report.power.n_hypotheses, "possible": report.power.possible},
        "auto_history": report.auto_history,
        "calibration": report.calibration.summary() if report.calibration else None,
    }


def rows(report: TcavReport) -> list[dict[str, Any]]:
    return [result_row(r, report.null_for(r).null_mean if r.comparison == "random" else None)
            for r in report.results]


def write_exports(report: TcavReport, folder: Path) -> list[Path]:
    """results.csv (one row per hypothesis), results.json (config, summary, rows) and,
    beside them, calibration.json (:mod:`tcav.calibration`)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = rows(report)
    csv_path, json_path = folder / "results.csv", folder / "results.json"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    json_path.write_text(json.dumps({"config": config_dict(report.config), "summary": summary(report),
                                     "results": table}, indent=1, sort_keys=True))
    if report.calibration is None:
        return [csv_path, json_path]
    return [csv_path, json_path, write_calibration(report.calibration, folder)]


# --- database ----------------------------------------------------------------------
def start_experiment(workspace, stored_config: dict, loaded) -> int:
    """A 'running' TcavExperiment row with the full config (``TcavRequest.stored_config()``
    or ``config_dict(config)``); returns its id."""
    with workspace.session() as s:
        exp = TcavExperiment(config=dict(stored_config), model_name=loaded.name,
                             model_fingerprint=loaded.fingerprint, target=",".join(stored_config["targets"]),
                             layers=list(stored_config["layers"]), seed=stored_config["seed"], status="running",
                             summary={}, plots=[])
        s.add(exp)
        s.flush()
        return exp.id


def finish_experiment(workspace, experiment_id: int, report: TcavReport, plots: list[str]) -> None:
    """Stores every hypothesis row, the summary and the plots (relative to media/)."""
    with workspace.session() as s:
        exp = s.get(TcavExperiment, experiment_id)
        concept_ids = {c.name: c.id for c in s.query(Concept).filter(
            Concept.name.in_({r.concept for r in report.results}))}
        for r, row in zip(report.results, rows(report)):
            s.add(TcavResult(
                experiment_id=experiment_id, concept_id=r.concept_id or concept_ids.get(r.concept),
                concept_name=r.concept, variant=r.variant, layer=r.layer, target_class=r.target,
                comparison=r.comparison, tcav_mean=row["tcav_mean"], tcav_std=row["tcav_std"],
                magnitude_mean=row["magnitude_mean"], cav_accuracy_mean=row["cav_accuracy_mean"],
                p_value=r.p_value, p_corrected=r.p_corrected, significant=bool(r.significant),
                verdict=r.verdict[:200], details={**row["details"], "null_mean": row["null_mean"]}))
        exp.summary = summary(report)
        exp.plots = list(plots)
        exp.status = "finished"
        exp.finished_at = utcnow()


def fail_experiment(workspace, experiment_id: int, error: str) -> None:
    with workspace.session() as s:
        exp = s.get(TcavExperiment, experiment_id)
        exp.status = "failed"
        exp.summary = {"error": error}
        exp.finished_at = utcnow()


def record_progress(workspace, experiment_id: int, done: int, total: int, stage: str) -> None:
    """A running experiment's progress (``summary["progress"]``; :func:`finish_experiment`
    replaces the summary), for the annotator's experiment page."""
    with workspace.session() as s:
        exp = s.get(TcavExperiment, experiment_id)
        if exp is not None and exp.status == "running":
            exp.summary = {**(exp.summary or {}), "progress": {"done": done, "total": total, "stage": stage}}


# --- reading back (the annotator's experiment pages) ---------------------------------
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
    from sqlalchemy import func, select

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
    """Each plot under the target its file is named for (:func:`tcav.plots.plot_report`
    names them ``<kind>_<target>.png``); plots of the whole experiment (calibration) apart."""
    from tcav.plots import _safe

    out: dict[str, list[str]] = {t: [] for t in targets}
    shared = []
    for p in plots:
        stem = Path(p).stem
        owner = next((t for t in sorted(targets, key=len, reverse=True) if stem.endswith("_" + _safe(t))), None)
        (out[owner] if owner is not None else shared).append(p)
    return out, shared


def load_experiment(session, experiment_id: int) -> StoredExperiment:
    """An experiment with every stored hypothesis, its warnings, calibration and plots."""
    from sqlalchemy import select

    from conceptgen.errors import NotFoundError

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

