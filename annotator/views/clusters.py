"""The cluster gallery of a run and the cluster detail page (decisions go through the API)."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template, request

from annotator import queries
from annotator.db import db
from annotator.views.auth import login_required

bp = Blueprint("clusters", __name__)


@bp.get("/runs/<int:run_id>/clusters")
@login_required
def gallery(run_id: int):
    page = queries.gallery(db(), run_id, clustering_id=request.args.get("clustering", type=int),
                           status=request.args.get("status", "open"), sort=request.args.get("sort", "size"),
                           page=request.args.get("page", 1), per_page=current_app.config["PER_PAGE_CLUSTERS"])
    return render_template("gallery.html", g_page=page, statuses=queries.STATUS_FILTERS, sorts=list(queries.SORTS))


@bp.get("/clusters/<int:cluster_id>")
@login_required
def detail(cluster_id: int):
    detail = queries.cluster_detail(db(), cluster_id, page=request.args.get("page", 1),
                                    per_page=current_app.config["PER_PAGE_MEMBERS"])
    return render_template("cluster.html", d=detail)
