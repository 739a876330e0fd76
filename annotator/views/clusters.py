"""The cluster gallery of a run and the cluster detail page (decisions go through the API)."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template, request

from annotator import queries
from annotator.db import db
from annotator.views.auth import login_required

bp = Blueprint("clusters", __name__)
MEMBERS_PER_LOAD = 100  # rows per scroll step: a 500-member cluster is five requests


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
    per_page = current_app.config["PER_PAGE_MEMBERS"]
    detail = queries.cluster_detail(db(), cluster_id, page=request.args.get("page", 1), per_page=per_page)
    return render_template("cluster.html", d=detail, next_offset=(detail.page - 1) * per_page + len(detail.members))


@bp.get("/clusters/<int:cluster_id>/members")
@login_required
def members(cluster_id: int):
    """More member rows (HTML) from ``offset``: the detail page loads them as the reviewer scrolls."""
    offset = max(request.args.get("offset", 0, type=int), 0)
    limit = min(max(request.args.get("limit", MEMBERS_PER_LOAD, type=int), 1), MEMBERS_PER_LOAD)
    rows = queries.member_rows(db(), cluster_id, offset=offset, limit=limit)
    return render_template("_member_rows.html", members=rows)
