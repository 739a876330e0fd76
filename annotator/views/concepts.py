"""The concept library: approved concepts, versions, annotators, TCAV results, export."""
from __future__ import annotations

import importlib.util

from flask import Blueprint, render_template

from annotator import queries
from annotator.db import db
from annotator.views.auth import login_required

bp = Blueprint("concepts", __name__)


@bp.get("/concepts")
@login_required
def index():
    can_export = importlib.util.find_spec("conceptgen.export") is not None
    return render_template("concepts.html", concepts=queries.concept_library(db()), can_export=can_export)
