"""The runs page: every extraction run, how it was configured, and review progress."""
from __future__ import annotations

from flask import Blueprint, render_template

from annotator import queries
from annotator.db import db
from annotator.views.auth import login_required

bp = Blueprint("runs", __name__)


@bp.get("/runs")
@login_required
def index():
    return render_template("runs.html", runs=queries.run_summaries(db()))
