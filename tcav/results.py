"""TCAV results out of memory: database rows (TcavExperiment + TcavResult), CSV and JSON.

Per-random-set scores, the temporal curve and flags go in ``TcavResult.details``;
warnings, layer diagnostics, null means and power in ``TcavExperiment.summary``.
Files go to ``WORKSPACE/media/tcav/<experiment id>/`` (the annotator serves media/).
Reading them back is :mod:`conceptgen.experiments` (re-exported here), which the annotator
can import (it may not import tcav/).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from conceptgen.experiments import (StoredExperiment, StoredResult, list_experiments,  # noqa: F401 (the readers)
                                    load_experiment, plots_by_target)
from conceptgen.errors import shorten
from conceptgen.orm import Concept, TcavExperiment, TcavResult, utcnow
from tcav.calibration import write_calibration
from tcav.experiment import HypothesisResult, TcavReport, config_dict

CSV_COLUMNS = ("concept", "variant", "layer", "target", "comparison", "tcav_mean", "tcav_std",
               "magnitude_mean", "logit_change_mean", "cav_accuracy_mean", "null_mean", "p_value", "p_corrected",
               "z", "family", "seeds_significant", "n_seeds", "cav_stability", "significant", "verdict", "flags")


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
        "z": r.z, "family": r.family, "seeds_significant": r.seeds_significant, "n_seeds": r.n_seeds,
        "cav_stability": r.cav_stability,
        "significant": bool(r.significant), "verdict": r.verdict, "flags": ";".join(r.flags),
    }
    row["details"] = {
        "scores": [float(x) for x in r.scores], "magnitudes": [float(x) for x in r.magnitudes],
        "logit_changes": [float(x) for x in r.logit_changes],
        "cav_accuracies": [float(x) for x in r.cav_accuracies], "against": list(r.against),
        "flags": list(r.flags),
        # issue 22: effect size, correction family, verdict across seeds, CAV stability
        "z": r.z, "family": r.family, "seeds_significant": r.seeds_significant, "n_seeds": r.n_seeds,
        "cav_stability": r.cav_stability,
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
        # the correction families (TcavConfig.family) with m, M and the smallest attainable corrected p
        "family": report.config.family,
        "families": [{"name": f.name, "key": list(f.key), "size": f.size, "null_sets": f.null_sets,
                      "min_p_corrected": f.power.min_p_corrected} for f in report.families],
        "left_out": dict(report.left_out),
        "seeds": list(report.seeds),
        "skipped": dict(report.skipped),   # non-video files by path, clips that failed to load by key
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
                verdict=shorten(r.verdict, 200), details={**row["details"], "null_mean": row["null_mean"]}))
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
