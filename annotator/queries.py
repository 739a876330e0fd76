"""Read side of the annotator: small typed views of the database for the pages and
the JSON API. Every list is paginated in SQL so a 100,000-tube workspace stays fast."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from annotator.decisions import REVIEWABLE
from conceptgen.errors import ConfigError, NotFoundError
from conceptgen.orm import (
    AuditLog,
    Cluster,
    Clustering,
    ClusterMember,
    Concept,
    ConceptExample,
    ConceptVersion,
    Run,
    RunVideo,
    TcavExperiment,
    TcavResult,
    Tube,
    User,
    Video,
)

STATUS_FILTERS = ("open", "candidate", "accepted", "rejected", "merged", "split", "all")
SORTS = {
    "size": (Cluster.size.desc(), Cluster.id),
    "cohesion": (Cluster.cohesion.desc(), Cluster.id),
    "support": (Cluster.supported.desc(), Cluster.size.desc(), Cluster.id),
}
PREVIEWS_PER_CARD = 6


def _pages(total: int, per_page: int) -> int:
    return max(1, math.ceil(total / per_page))


def _page_number(page: Any) -> int:
    try:
        value = int(page)
    except (TypeError, ValueError):
        raise ConfigError(f"page must be a positive whole number, got {page!r}") from None
    if value < 1:
        raise ConfigError(f"page must be 1 or more, got {value}")
    return value


# --- runs ----------------------------------------------------------------------
@dataclass
class RunSummary:
    id: int
    status: str
    model_name: str
    created_at: datetime
    config: list[tuple[str, str]]
    n_videos: int
    n_failed_videos: int
    n_tubes: int
    clustering_id: int | None
    n_clusters: int
    n_reviewed: int


def _config_summary(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Scalar and short-list settings, for one glance at how a run was made."""
    out = []
    for key in sorted(config or {}):
        value = config[key]
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value[:4])) + (" …" if len(value) > 4 else "")
        elif isinstance(value, dict):
            continue
        out.append((str(key), str(value)[:80]))
    return out


def latest_clustering_ids(session: Session) -> dict[int, int]:
    return dict(session.execute(select(Clustering.run_id, func.max(Clustering.id)).group_by(Clustering.run_id)).all())


def run_summaries(session: Session) -> list[RunSummary]:
    runs = session.scalars(select(Run).order_by(Run.id.desc())).all()
    tubes = dict(session.execute(select(Tube.run_id, func.count(Tube.id)).group_by(Tube.run_id)).all())
    videos = {(r, s): n for r, s, n in session.execute(
        select(RunVideo.run_id, RunVideo.status, func.count(RunVideo.id)).group_by(RunVideo.run_id, RunVideo.status))}
    latest = latest_clustering_ids(session)
    counts = {cid: (n, reviewed) for cid, n, reviewed in session.execute(
        select(Cluster.clustering_id, func.count(Cluster.id),
               func.sum(case((Cluster.status != "candidate", 1), else_=0)))
        .where(Cluster.clustering_id.in_(list(latest.values()))).group_by(Cluster.clustering_id))}
    out = []
    for run in runs:
        cid = latest.get(run.id)
        n_clusters, n_reviewed = counts.get(cid, (0, 0))
        out.append(RunSummary(id=run.id, status=run.status, model_name=run.model_name, created_at=run.created_at,
                              config=_config_summary(run.config), n_videos=videos.get((run.id, "done"), 0),
                              n_failed_videos=videos.get((run.id, "failed"), 0), n_tubes=tubes.get(run.id, 0),
                              clustering_id=cid, n_clusters=int(n_clusters or 0), n_reviewed=int(n_reviewed or 0)))
    return out


# --- gallery -------------------------------------------------------------------
@dataclass
class Preview:
    tube_id: int
    path: str  # relative to media/


@dataclass
class ClusterCard:
    id: int
    version: int
    label_index: int
    name: str | None
    status: str
    size: int
    cohesion: float
    n_videos: int
    supported: bool
    parent_id: int | None
    concept_id: int | None
    previews: list[Preview] = field(default_factory=list)


@dataclass
class GalleryPage:
    run_id: int
    clustering_id: int
    layer: str
    status: str
    sort: str
    page: int
    n_pages: int
    total: int
    status_counts: dict[str, int]
    cards: list[ClusterCard]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _status_clause(status: str):
    if status not in STATUS_FILTERS:
        raise ConfigError(f"unknown status filter {status!r}; use one of {', '.join(STATUS_FILTERS)}")
    if status == "open":
        return Cluster.status.in_(REVIEWABLE)
    if status == "all":
        return True
    return Cluster.status == status


def _card(c: Cluster) -> ClusterCard:
    return ClusterCard(id=c.id, version=c.version, label_index=c.label_index, name=c.name, status=c.status,
                       size=c.size, cohesion=float(c.cohesion), n_videos=c.n_videos, supported=bool(c.supported),
                       parent_id=c.parent_id, concept_id=c.concept_id)


def central_previews(session: Session, cluster_ids: list[int], per_cluster: int = PREVIEWS_PER_CARD
                     ) -> dict[int, list[Preview]]:
    """The most central non-removed members with a preview clip, per cluster (by rank).

    Two cheap steps: the top ranks per cluster from cluster_members alone, then only
    those tubes' preview paths — joining tubes first would read every member's masks."""
    if not cluster_ids:
        return {}
    spare = per_cluster + 2  # a few extra in case some tubes have no preview
    ranked = (select(ClusterMember.cluster_id, ClusterMember.tube_id, ClusterMember.rank, ClusterMember.id,
                     func.row_number().over(partition_by=ClusterMember.cluster_id,
                                            order_by=(ClusterMember.rank, ClusterMember.id)).label("n"))
              .where(ClusterMember.cluster_id.in_(cluster_ids), ClusterMember.excluded.is_(False)).subquery())
    ranked = session.execute(select(ranked).where(ranked.c.n <= spare)).all()
    paths = dict(session.execute(select(Tube.id, Tube.preview_path)
                                 .where(Tube.id.in_([r.tube_id for r in ranked]), Tube.preview_path.is_not(None))).all())
    out: dict[int, list[Preview]] = {cid: [] for cid in cluster_ids}
    for r in sorted(ranked, key=lambda r: (r.cluster_id, r.rank, r.id)):
        if r.tube_id in paths and len(out[r.cluster_id]) < per_cluster:
            out[r.cluster_id].append(Preview(r.tube_id, paths[r.tube_id]))
    return out


def resolve_clustering(session: Session, run_id: int, clustering_id: int | None) -> Clustering:
    if session.get(Run, run_id) is None:
        raise NotFoundError(f"run {run_id} does not exist; pick one from the runs page")
    if clustering_id is None:
        clustering_id = session.scalar(select(func.max(Clustering.id)).where(Clustering.run_id == run_id))
        if clustering_id is None:
            raise NotFoundError(f"run {run_id} has no clustering yet; run `conceptgen cluster --run {run_id}`")
    clustering = session.get(Clustering, int(clustering_id))
    if clustering is None or clustering.run_id != run_id:
        raise NotFoundError(f"clustering {clustering_id} does not belong to run {run_id}")
    return clustering


def gallery(session: Session, run_id: int, *, clustering_id: int | None = None, status: str = "open",
            sort: str = "size", page: Any = 1, per_page: int = 24) -> GalleryPage:
    clustering = resolve_clustering(session, run_id, clustering_id)
    if sort not in SORTS:
        raise ConfigError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    page = _page_number(page)
    in_clustering = Cluster.clustering_id == clustering.id
    counts = dict(session.execute(select(Cluster.status, func.count(Cluster.id)).where(in_clustering)
                                  .group_by(Cluster.status)).all())
    counts["open"] = sum(counts.get(s, 0) for s in REVIEWABLE)
    counts["all"] = sum(v for k, v in counts.items() if k not in ("open", "all"))
    total = session.scalar(select(func.count(Cluster.id)).where(in_clustering, _status_clause(status)))
    clusters = session.scalars(select(Cluster).where(in_clustering, _status_clause(status))
                               .order_by(*SORTS[sort]).limit(per_page).offset((page - 1) * per_page)).all()
    cards = [_card(c) for c in clusters]
    previews = central_previews(session, [c.id for c in cards])
    for card in cards:
        card.previews = previews[card.id]
    return GalleryPage(run_id=run_id, clustering_id=clustering.id, layer=clustering.layer, status=status,
                       sort=sort, page=page, n_pages=_pages(total, per_page), total=total,
                       status_counts=counts, cards=cards)


# --- cluster detail ------------------------------------------------------------
@dataclass
class MemberRow:
    id: int
    tube_id: int
    rank: int
    distance: float
    is_outlier: bool
    excluded: bool
    representative: bool
    video_id: int
    video_name: str
    start_frame: int
    end_frame: int
    kind: str
    preview_path: str | None


@dataclass
class ClusterDetail:
    cluster: ClusterCard
    run_id: int
    clustering_id: int
    layer: str
    description: str | None
    concept_name: str | None
    children: list[int]
    merged_from: list[int]
    members: list[MemberRow]
    page: int
    n_pages: int
    n_members: int
    prev_id: int | None
    next_id: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _video_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def cluster_detail(session: Session, cluster_id: int, *, page: Any = 1, per_page: int = 24) -> ClusterDetail:
    cluster = session.get(Cluster, cluster_id)
    if cluster is None:
        raise NotFoundError(f"cluster {cluster_id} does not exist; go back to the gallery")
    page = _page_number(page)
    clustering = session.get(Clustering, cluster.clustering_id)
    n_members = session.scalar(select(func.count(ClusterMember.id)).where(ClusterMember.cluster_id == cluster.id))
    rows = session.execute(
        select(ClusterMember, Tube.video_id, Tube.start_frame, Tube.end_frame, Tube.kind, Tube.preview_path, Video.path)
        .join(Tube, Tube.id == ClusterMember.tube_id).join(Video, Video.id == Tube.video_id)
        .where(ClusterMember.cluster_id == cluster.id)
        .order_by(ClusterMember.excluded, ClusterMember.rank, ClusterMember.id)
        .limit(per_page).offset((page - 1) * per_page)).all()
    members = [MemberRow(id=m.id, tube_id=m.tube_id, rank=m.rank, distance=float(m.distance),
                         is_outlier=bool(m.is_outlier), excluded=bool(m.excluded),
                         representative=bool(m.representative), video_id=vid, video_name=_video_name(vpath),
                         start_frame=start, end_frame=end, kind=kind, preview_path=preview)
               for m, vid, start, end, kind, preview, vpath in rows]
    related = session.execute(select(Cluster.id, Cluster.status).where(Cluster.parent_id == cluster.id)
                              .order_by(Cluster.id)).all()
    same = and_(Cluster.clustering_id == cluster.clustering_id, Cluster.status.in_(REVIEWABLE))
    concept = session.get(Concept, cluster.concept_id) if cluster.concept_id else None
    return ClusterDetail(
        cluster=_card(cluster), run_id=clustering.run_id, clustering_id=clustering.id, layer=clustering.layer,
        description=cluster.description, concept_name=concept.name if concept else None,
        children=[i for i, s in related if s != "merged"], merged_from=[i for i, s in related if s == "merged"],
        members=members, page=page, n_pages=_pages(n_members, per_page), n_members=n_members,
        prev_id=session.scalar(select(func.max(Cluster.id)).where(same, Cluster.id < cluster.id)),
        next_id=session.scalar(select(func.min(Cluster.id)).where(same, Cluster.id > cluster.id)))


@dataclass
class SimilarTube:
    tube_id: int
    score: float
    cluster_id: int | None
    cluster_status: str | None
    preview_path: str | None
    video_name: str
    start_frame: int
    end_frame: int


def describe_similar(session: Session, clustering_id: int, hits: list[tuple[int, float]], exclude_cluster: int
                     ) -> list[SimilarTube]:
    """FAISS hits (tube id, cosine) with their cluster, keeping tubes of other clusters."""
    ids = [t for t, _ in hits]
    info = {row[0]: row[1:] for row in session.execute(
        select(Tube.id, Tube.preview_path, Tube.start_frame, Tube.end_frame, Video.path)
        .join(Video, Video.id == Tube.video_id).where(Tube.id.in_(ids)))}
    where = dict((t, (c, s)) for t, c, s in session.execute(
        select(ClusterMember.tube_id, Cluster.id, Cluster.status).join(Cluster, Cluster.id == ClusterMember.cluster_id)
        .where(Cluster.clustering_id == clustering_id, ClusterMember.tube_id.in_(ids))))
    out = []
    for tube_id, score in hits:
        cid, cstatus = where.get(tube_id, (None, None))
        if cid == exclude_cluster or tube_id not in info:
            continue
        preview, start, end, vpath = info[tube_id]
        out.append(SimilarTube(tube_id, float(score), cid, cstatus, preview, _video_name(vpath), start, end))
    return out


# --- concept library -----------------------------------------------------------
@dataclass
class VersionRow:
    version: int
    created_at: datetime
    author: str | None
    description: str | None
    cluster_id: int | None
    n_examples: int


@dataclass
class TcavRow:
    experiment_id: int
    target_class: str
    layer: str
    variant: str
    comparison: str
    tcav_mean: float
    tcav_std: float
    p_corrected: float | None
    significant: bool
    verdict: str


@dataclass
class ConceptEntry:
    id: int
    name: str
    description: str | None
    status: str
    source: str
    current_version: int
    versions: list[VersionRow]
    annotators: list[str]
    tcav: list[TcavRow]
    plots: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def concept_library(session: Session) -> list[ConceptEntry]:
    concepts = session.scalars(select(Concept).order_by(Concept.name)).all()
    ids = [c.id for c in concepts]
    versions: dict[int, list[VersionRow]] = {i: [] for i in ids}
    annotators: dict[int, set[str]] = {i: set() for i in ids}
    for v, author, n in session.execute(
            select(ConceptVersion, User.name, func.count(ConceptExample.id))
            .outerjoin(User, User.id == ConceptVersion.created_by)
            .outerjoin(ConceptExample, ConceptExample.concept_version_id == ConceptVersion.id)
            .where(ConceptVersion.concept_id.in_(ids)).group_by(ConceptVersion.id)
            .order_by(ConceptVersion.concept_id, ConceptVersion.version.desc())):
        versions[v.concept_id].append(VersionRow(v.version, v.created_at, author, v.description, v.cluster_id, n))
        if author:
            annotators[v.concept_id].add(author)
    for concept_id, name in session.execute(
            select(Cluster.concept_id, User.name).join(AuditLog, and_(AuditLog.target_type == "cluster",
                                                                      AuditLog.target_id == Cluster.id))
            .join(User, User.id == AuditLog.user_id).where(Cluster.concept_id.in_(ids)).distinct()):
        annotators[concept_id].add(name)
    tcav: dict[int, list[TcavRow]] = {i: [] for i in ids}
    plots: dict[int, list[str]] = {i: [] for i in ids}
    for r, exp_plots in session.execute(
            select(TcavResult, TcavExperiment.plots).join(TcavExperiment, TcavExperiment.id == TcavResult.experiment_id)
            .where(TcavResult.concept_id.in_(ids)).order_by(TcavResult.experiment_id.desc(), TcavResult.id)):
        tcav[r.concept_id].append(TcavRow(r.experiment_id, r.target_class, r.layer, r.variant, r.comparison,
                                          float(r.tcav_mean), float(r.tcav_std), r.p_corrected,
                                          bool(r.significant), r.verdict))
        for p in exp_plots or []:
            if p not in plots[r.concept_id]:
                plots[r.concept_id].append(p)
    return [ConceptEntry(c.id, c.name, c.description, c.status, c.source, c.current_version, versions[c.id],
                         sorted(annotators[c.id]), tcav[c.id], plots[c.id]) for c in concepts]


# --- audit log -----------------------------------------------------------------
@dataclass
class AuditRow:
    id: int
    at: datetime
    user: str | None
    action: str
    target_type: str
    target_id: int | None
    summary: str
    undone: bool


def summarise_change(action: str, before: dict | None, after: dict | None) -> str:
    """One line: the info of the decision and each cluster's status change."""
    before, after = before or {}, after or {}
    parts = [f"{k}={v}" for k, v in (after.get("info") or {}).items()]
    for key, state in (after.get("clusters") or {}).items():
        old = (before.get("clusters") or {}).get(key)
        if state is None:
            parts.append(f"cluster {key} removed")
        elif old is None:
            parts.append(f"cluster {key} created ({state['status']}, {state['size']} members)")
        elif old["status"] != state["status"]:
            parts.append(f"cluster {key}: {old['status']} → {state['status']}")
    n_members = len(after.get("members") or {})
    if n_members:
        parts.append(f"{n_members} member(s)")
    return "; ".join(parts)


def audit_page(session: Session, *, page: Any = 1, per_page: int = 50) -> tuple[list[AuditRow], int, int]:
    page = _page_number(page)
    total = session.scalar(select(func.count(AuditLog.id)))
    rows = session.execute(select(AuditLog, User.name).outerjoin(User, User.id == AuditLog.user_id)
                           .order_by(AuditLog.id.desc()).limit(per_page).offset((page - 1) * per_page)).all()
    return ([AuditRow(a.id, a.at, name, a.action, a.target_type, a.target_id,
                      summarise_change(a.action, a.before, a.after), bool(a.undone)) for a, name in rows],
            page, _pages(total, per_page))
