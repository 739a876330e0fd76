"""The JSON API: every action of the pages, with the same login, CSRF (header
``X-CSRFToken``) and version checks. The pages' JavaScript uses it."""
from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Callable

from flask import Blueprint, g, jsonify, request
from sqlalchemy import select

from annotator import queries
from conceptgen.review import decisions
from annotator.db import db, workspace, writer_turn
from conceptgen.db import get_or_raise
from annotator.views.auth import login_required
from conceptgen.errors import ConfigError, NotFoundError
from conceptgen.orm import Cluster, ClusterMember

bp = Blueprint("api", __name__, url_prefix="/api")
SIMILAR_SHOWN = 8


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ConfigError("send a JSON object body with Content-Type: application/json")
    return body


def _int(body: dict[str, Any], key: str, what: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"include {what} as {key!r} (a whole number)")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key!r} must be a whole number, got {value!r}") from None


def _version(body: dict[str, Any]) -> int:
    return _int(body, "version", "the cluster version you saw")


def _move_target(body: dict[str, Any], source: Callable[[], int | None]) -> int:
    """The cluster id to move members to: ``target`` (a database id) or ``target_label``, the
    "#n" the gallery shows, looked up in the clustering of the ``source()`` cluster (labels are
    unique there)."""
    if "target_label" not in body:
        return _int(body, "target", "the target cluster id")
    label = _int(body, "target_label", "the target cluster's #number")
    clustering_id = select(Cluster.clustering_id).where(Cluster.id == source()).scalar_subquery()
    target = db().scalar(select(Cluster.id).where(Cluster.clustering_id == clustering_id, Cluster.label_index == label))
    if target is None:
        raise ConfigError(f"no cluster #{label} in this gallery; type the #number shown on a gallery card")
    return target


def _decide(decision: Callable[..., decisions.DecisionResult], *args, **kwargs):
    """Run one decision in this request's session and commit it; reply with its result.
    It reads outside the writers' turn and holds the turn only to write (``decisions.run``)."""
    ws = workspace()
    result = decisions.run(decision, db(), g.user.id, *args, turn=lambda: writer_turn(ws), **kwargs)
    return jsonify(ok=True, **result.to_json())


# --- reads -----------------------------------------------------------------------
@bp.get("/runs")
@login_required
def runs():
    return jsonify(runs=[asdict(r) for r in queries.run_summaries(db())])


@bp.get("/runs/<int:run_id>/clusters")
@login_required
def gallery(run_id: int):
    clustering = request.args.get("clustering", type=int)
    page = queries.gallery(db(), run_id, clustering_id=clustering, status=request.args.get("status", "open"),
                           sort=request.args.get("sort", "size"), page=request.args.get("page", 1),
                           per_page=_per_page("PER_PAGE_CLUSTERS"))
    return jsonify(page.to_json())


@bp.get("/clusters/<int:cluster_id>")
@login_required
def cluster(cluster_id: int):
    detail = queries.cluster_detail(db(), cluster_id, page=request.args.get("page", 1),
                                    per_page=_per_page("PER_PAGE_MEMBERS"))
    return jsonify(detail.to_json())


def _per_page(key: str) -> int:
    from flask import current_app

    return int(current_app.config[key])


def seed_tube(cluster_id: int) -> int:
    """The tube the 'similar tubes' search starts from: a representative, else the most central member."""
    from sqlalchemy import select

    tube_id = db().scalar(select(ClusterMember.tube_id)
                          .where(ClusterMember.cluster_id == cluster_id, ClusterMember.excluded.is_(False))
                          .order_by(ClusterMember.representative.desc(), ClusterMember.rank).limit(1))
    if tube_id is None:
        raise NotFoundError("this cluster has no members left to search from (split, merged or emptied)")
    return tube_id


@bp.get("/clusters/<int:cluster_id>/similar")
@login_required
def similar(cluster_id: int):
    """Tubes of *other* clusters nearest to this cluster's representative (FAISS index)."""
    from conceptgen.cluster import similar_tubes

    cluster = get_or_raise(db(), Cluster, cluster_id, "cluster")
    tube_id = seed_tube(cluster.id)
    k = min(max(request.args.get("k", SIMILAR_SHOWN, type=int), 1), 50)
    hits = similar_tubes(workspace(), cluster.clustering_id, tube_id, k=k + cluster.size + 1)
    rows = queries.describe_similar(db(), cluster.clustering_id, hits, exclude_cluster=cluster.id)[:k]
    return jsonify(query_tube_id=tube_id, similar=[asdict(r) for r in rows])


@bp.get("/concepts")
@login_required
def concepts():
    return jsonify(concepts=[c.to_json() for c in queries.concept_library(db())])


@bp.get("/audit")
@login_required
def audit():
    rows, page, n_pages = queries.audit_page(db(), page=request.args.get("page", 1))
    return jsonify(entries=[asdict(r) for r in rows], page=page, n_pages=n_pages)


# --- decisions -------------------------------------------------------------------
@bp.post("/clusters/<int:cluster_id>/accept")
@login_required
def accept(cluster_id: int):
    body = _body()
    return _decide(decisions.accept, cluster_id, _version(body), name=body.get("name", ""),
                   description=body.get("description", ""),
                   as_new_version=bool(body.get("as_new_version", False)))


@bp.post("/clusters/<int:cluster_id>/reject")
@login_required
def reject(cluster_id: int):
    return _decide(decisions.reject, cluster_id, _version(_body()))


@bp.post("/clusters/<int:cluster_id>/rename")
@login_required
def rename(cluster_id: int):
    body = _body()
    return _decide(decisions.rename, cluster_id, _version(body), name=body.get("name", ""))


@bp.post("/clusters/<int:cluster_id>/split")
@login_required
def split(cluster_id: int):
    body = _body()
    seed = _int(body, "seed", "a random seed") if "seed" in body else 0
    return _decide(decisions.split, cluster_id, _version(body), k=_int(body, "k", "the number of parts"),
                   seed=seed)


@bp.post("/clusters/merge")
@login_required
def merge():
    body = _body()
    items = body.get("clusters")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigError("send 'clusters': a list of {\"id\": cluster id, \"version\": version you saw}, "
                          "the first one being the cluster to keep")
    seen = {_int(i, "id", "each cluster id"): _version(i) for i in items}
    return _decide(decisions.merge, seen)


@bp.post("/members/<int:member_id>/remove")
@login_required
def remove_member(member_id: int):
    return _decide(decisions.set_member_excluded, member_id, _version(_body()), excluded=True)


@bp.post("/members/<int:member_id>/restore")
@login_required
def restore_member(member_id: int):
    return _decide(decisions.set_member_excluded, member_id, _version(_body()), excluded=False)


@bp.post("/members/<int:member_id>/representative")
@login_required
def representative(member_id: int):
    body = _body()
    return _decide(decisions.set_representative, member_id, _version(body),
                   representative=bool(body.get("representative", True)))


@bp.post("/members/<int:member_id>/move")
@login_required
def move_member(member_id: int):
    body = _body()
    target = _move_target(body, lambda: db().scalar(select(ClusterMember.cluster_id).where(ClusterMember.id == member_id)))
    return _decide(decisions.move_member, member_id, _version(body), target_cluster_id=target)


@bp.post("/clusters/<int:cluster_id>/members/bulk")
@login_required
def bulk_members(cluster_id: int):
    """Remove, restore or move several members of one cluster as one decision (one undo)."""
    body = _body()
    ids = body.get("members")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConfigError("send 'members': a list of member ids (whole numbers)")
    action = body.get("action")
    if action in ("remove", "restore"):
        return _decide(decisions.set_members_excluded, cluster_id, ids, _version(body), excluded=action == "remove")
    if action == "move":
        return _decide(decisions.move_members, cluster_id, ids, _version(body),
                       target_cluster_id=_move_target(body, lambda: cluster_id))
    raise ConfigError("send 'action': one of remove, restore, move")


@bp.get("/tubes/<int:tube_id>")
@login_required
def tube(tube_id: int):
    """What the browser needs to outline a tube over its source video: frames, boxes, masks."""
    return jsonify(queries.tube_overlay(db(), tube_id))


@bp.post("/undo")
@login_required
def undo():
    return _decide(decisions.undo_last)


@bp.post("/concepts/export")
@login_required
def export():
    """Start exporting concepts (``conceptgen.export``, the export command's own code) as a
    background job; answers 202 at once with the job id (progress: ``GET /api/jobs/<id>``)."""
    from conceptgen.export import export_concepts

    body = _body()
    names = body.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError("send 'names': a non-empty list of concept names to export")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    out_dir = workspace().exports / f"annotator-{stamp}"
    kwargs = {k: body[k] for k in ("mode", "static") if k in body}
    ws = workspace()

    def work(reporter) -> dict[str, Any]:
        report = export_concepts(ws, names, out_dir, on_progress=reporter.progress, **kwargs)
        return {"out_dir": str(report.out_dir), "n_clips": report.n_clips, "n_files": report.n_files,
                "skipped": [asdict(s) for s in report.skipped]}

    from annotator.views.jobs import runner

    job_id = runner().submit("export", {"names": names, "out_dir": str(out_dir), **kwargs}, work, user_id=g.user.id)
    return jsonify(ok=True, job_id=job_id, out_dir=str(out_dir), status_url=f"/api/jobs/{job_id}"), 202


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    return str(value)
