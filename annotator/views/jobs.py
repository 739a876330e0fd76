"""Background jobs over JSON: their state, progress and ETA, and cancelling them
(``conceptgen.jobs`` owns the rows and runs the work)."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from annotator.db import db
from annotator.views.auth import login_required
from conceptgen import jobs

bp = Blueprint("jobs", __name__, url_prefix="/api/jobs")


def runner() -> jobs.JobRunner:
    return current_app.extensions["conceptgen_jobs"]


@bp.get("")
@login_required
def index():
    limit = min(max(request.args.get("limit", 10, type=int), 1), 100)
    rows = jobs.list_jobs(db(), kind=request.args.get("kind") or None,
                          active_only=request.args.get("active") in ("1", "true"), limit=limit)
    return jsonify(jobs=[j.to_json() for j in rows])


@bp.get("/<int:job_id>")
@login_required
def status(job_id: int):
    return jsonify(jobs.job_status(db(), job_id).to_json())


@bp.post("/<int:job_id>/cancel")
@login_required
def cancel(job_id: int):
    return jsonify(jobs.request_cancel(db(), job_id).to_json())
