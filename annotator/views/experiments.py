"""TCAV experiments: the list, and one experiment's verdict table, plots, calibration
and warnings (read through ``conceptgen.experiments``, the one reader of stored results)."""
from __future__ import annotations

from flask import Blueprint, jsonify, render_template

from annotator import queries
from annotator.db import db
from annotator.queries import to_plain
from annotator.views.auth import login_required
from conceptgen import experiments as results

bp = Blueprint("experiments", __name__)


@bp.get("/experiments")
@login_required
def index():
    return render_template("experiments.html", experiments=results.list_experiments(db()))


@bp.get("/experiments/<int:experiment_id>")
@login_required
def detail(experiment_id: int):
    exp = results.load_experiment(db(), experiment_id)
    members = queries.concept_clusters(db(), [r.concept_id for r in exp.results if r.concept_id])
    static_of = {(r.target, r.concept, r.layer, r.comparison): r.tcav_mean for r in exp.results if r.variant == "static"}
    return render_template("experiment.html", e=exp, members=members, static_of=static_of)


@bp.get("/api/experiments")
@login_required
def api_index():
    return jsonify(experiments=[to_plain(e) for e in results.list_experiments(db())])


@bp.get("/api/experiments/<int:experiment_id>")
@login_required
def api_detail(experiment_id: int):
    exp = results.load_experiment(db(), experiment_id)
    return jsonify(to_plain(exp))
