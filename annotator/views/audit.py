"""The audit log: every decision, who made it, when, and what it changed."""
from __future__ import annotations

from flask import Blueprint, render_template, request

from annotator import queries
from annotator.db import db
from annotator.views.auth import login_required

bp = Blueprint("audit", __name__)


@bp.get("/audit")
@login_required
def index():
    rows, page, n_pages = queries.audit_page(db(), page=request.args.get("page", 1))
    return render_template("audit.html", rows=rows, page=page, n_pages=n_pages)
