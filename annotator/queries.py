"""Read side of the annotator: small typed views of the database for the pages and
the JSON API. Every list is paginated in SQL so a 100,000-tube workspace stays fast."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, func, or_, select, union_all
from sqlalchemy.orm import Session

from conceptgen.review.decisions import REVIEWABLE, cluster_title
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


_SCALARS = frozenset({str, int, float, bool, type(None)})


def to_plain(value: Any) -> Any:
    """What ``dataclasses.asdict`` gives for these views (dicts, lists, scalars), about
    ten times faster: every decision re-reads a cluster through the JSON API."""
    if type(value) in _SCALARS:
        return value
    names = getattr(type(value), "__dataclass_fields__", None)
    if names is not None:
        return {n: to_plain(getattr(value, n)) for n in names}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    if isinstance(value, dict):
        return {to_plain(k): to_plain(v) for k, v in value.items()}
    return value


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
    n_background: int = 0  # tubes tagged background by objectness: kept, not clustered by default


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
    tubes = {run_id: (n, int(n_background or 0)) for run_id, n, n_background in session.execute(
        select(Tube.run_id, func.count(Tube.id), func.sum(case((Tube.background, 1), else_=0))).group_by(Tube.run_id))}
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
        n_tubes, n_background = tubes.get(run.id, (0, 0))
        out.append(RunSummary(id=run.id, status=run.status, model_name=run.model_name, created_at=run.created_at,
                              config=_config_summary(run.config), n_videos=videos.get((run.id, "done"), 0),
                              n_failed_videos=videos.get((run.id, "failed"), 0), n_tubes=n_tubes,
                              clustering_id=cid, n_clusters=int(n_clusters or 0), n_reviewed=int(n_reviewed or 0),
                              n_background=n_background))
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
    concept_name: str | None = None  # of an accepted cluster: what rejecting it would retire


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
    layer_warning: str | None = None  # the clustering's layer does not separate the run's tubes

    def to_json(self) -> dict[str, Any]:
        return to_plain(self)


def _status_clause(status: str):
    if status not in STATUS_FILTERS:
        raise ConfigError(f"unknown status filter {status!r}; use one of {', '.join(STATUS_FILTERS)}")
    if status == "open":
        return Cluster.status.in_(REVIEWABLE)
    if status == "all":
        return True
    return Cluster.status == status


_CARD_COLUMNS = (Cluster.id, Cluster.version, Cluster.label_index, Cluster.name, Cluster.status, Cluster.size,
                 Cluster.cohesion, Cluster.n_videos, Cluster.supported, Cluster.parent_id, Cluster.concept_id)


def _card(row: Any) -> ClusterCard:
    """A card from a row of ``_CARD_COLUMNS`` (plain columns: no ORM objects on the read path)."""
    return ClusterCard(id=row.id, version=row.version, label_index=row.label_index, name=row.name,
                       status=row.status, size=row.size, cohesion=float(row.cohesion), n_videos=row.n_videos,
                       supported=bool(row.supported), parent_id=row.parent_id, concept_id=row.concept_id,
                       concept_name=getattr(row, "concept_name", None))


@functools.lru_cache(maxsize=64)
def _central_members_statement(n_clusters: int, spare: int) -> Select:
    """Per cluster ``:c0 … :c{n-1}``, its first ``spare`` non-removed members by rank, read
    straight from the (cluster_id, excluded, rank) index, joined to only those tubes'
    preview paths. Built once per size: building a 16-way union costs more than running it."""
    tops = [select(ClusterMember.cluster_id, ClusterMember.tube_id, ClusterMember.rank, ClusterMember.id)
            .where(ClusterMember.cluster_id == bindparam(f"c{i}"), ClusterMember.excluded.is_(False))
            .order_by(ClusterMember.rank, ClusterMember.id).limit(spare).subquery()
            for i in range(n_clusters)]
    ranked = union_all(*[select(top) for top in tops]).subquery()
    return (select(ranked.c.cluster_id, ranked.c.tube_id, ranked.c.rank, ranked.c.id, Tube.preview_path)
            .join(Tube, Tube.id == ranked.c.tube_id).where(Tube.preview_path.is_not(None)))


def central_previews(session: Session, cluster_ids: list[int], per_cluster: int = PREVIEWS_PER_CARD
                     ) -> dict[int, list[Preview]]:
    """The most central non-removed members with a preview clip, per cluster (by rank)."""
    ids = list(dict.fromkeys(cluster_ids))
    if not ids:
        return {}
    statement = _central_members_statement(len(ids), per_cluster + 2)  # spares for tubes without a preview
    rows = _read(session, statement, **{f"c{i}": cid for i, cid in enumerate(ids)})
    out: dict[int, list[Preview]] = {cid: [] for cid in ids}
    for r in sorted(rows, key=lambda r: (r.cluster_id, r.rank, r.id)):
        if len(out[r.cluster_id]) < per_cluster:
            out[r.cluster_id].append(Preview(r.tube_id, r.preview_path))
    return out


@dataclass(frozen=True)
class ClusteringRef:
    id: int
    run_id: int
    layer: str
    params: dict | None = None

    @property
    def layer_warning(self) -> str | None:
        """The clustering's layer check as one warning line, when its layer does not separate the tubes."""
        from conceptgen.cluster import LayerSeparation

        check = (self.params or {}).get("layer_check")
        return LayerSeparation.from_dict(check).warning() if check else None


_LATEST_CLUSTERING = (select(Clustering.id, Clustering.run_id, Clustering.layer, Clustering.params)
                      .where(Clustering.run_id == bindparam("run")).order_by(Clustering.id.desc()).limit(1))
_CLUSTERING = select(Clustering.id, Clustering.run_id, Clustering.layer, Clustering.params).where(Clustering.id == bindparam("clustering"))
_STATUS_COUNTS = (select(Cluster.status, func.count(Cluster.id))
                  .where(Cluster.clustering_id == bindparam("clustering")).group_by(Cluster.status))


def _read(session: Session, statement: Select, **params: Any) -> list[Any]:
    """Rows of a read-only statement, through the request's connection: the hot pages'
    statements are built once (``bindparam``) and skip the ORM's per-call work."""
    return session.connection().execute(statement, params).all()


def resolve_clustering(session: Session, run_id: int, clustering_id: int | None) -> ClusteringRef:
    """The clustering to show for a run: the given one, else the run's latest."""
    rows = (_read(session, _LATEST_CLUSTERING, run=run_id) if clustering_id is None
            else _read(session, _CLUSTERING, clustering=int(clustering_id)))
    if rows and rows[0].run_id == run_id:
        return ClusteringRef(rows[0].id, rows[0].run_id, rows[0].layer, rows[0].params)
    if session.scalar(select(Run.id).where(Run.id == run_id)) is None:
        raise NotFoundError(f"run {run_id} does not exist; pick one from the runs page")
    if clustering_id is None:
        raise NotFoundError(f"run {run_id} has no clustering yet; run `conceptgen cluster --run {run_id}`")
    raise NotFoundError(f"clustering {clustering_id} does not belong to run {run_id}")


def status_counts(session: Session, clustering_id: int) -> dict[str, int]:
    """Clusters per status, plus the ``open`` (reviewable) and ``all`` totals."""
    counts = dict(_read(session, _STATUS_COUNTS, clustering=clustering_id))
    counts["open"] = sum(counts.get(s, 0) for s in REVIEWABLE)
    counts["all"] = sum(v for k, v in counts.items() if k not in ("open", "all"))
    return counts


@functools.lru_cache(maxsize=None)
def _gallery_statement(status: str, sort: str) -> Select:
    """One page of cards for a status filter and sort (``:clustering``, ``:limit``, ``:offset``)."""
    return (select(*_CARD_COLUMNS, Concept.name.label("concept_name"))
            .outerjoin(Concept, Concept.id == Cluster.concept_id)
            .where(Cluster.clustering_id == bindparam("clustering"), _status_clause(status))
            .order_by(*SORTS[sort]).limit(bindparam("limit")).offset(bindparam("offset")))


def gallery(session: Session, run_id: int, *, clustering_id: int | None = None, status: str = "open",
            sort: str = "size", page: Any = 1, per_page: int = 24) -> GalleryPage:
    clustering = resolve_clustering(session, run_id, clustering_id)
    if sort not in SORTS:
        raise ConfigError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    page = _page_number(page)
    statement = _gallery_statement(status, sort)  # checks the status filter
    counts = status_counts(session, clustering.id)
    total = counts.get(status, 0)  # the status filter is one of the counted keys
    rows = _read(session, statement, clustering=clustering.id, limit=per_page, offset=(page - 1) * per_page)
    cards = [_card(r) for r in rows]
    previews = central_previews(session, [c.id for c in cards])
    for card in cards:
        card.previews = previews[card.id]
    return GalleryPage(run_id=run_id, clustering_id=clustering.id, layer=clustering.layer, status=status,
                       sort=sort, page=page, n_pages=_pages(total, per_page), total=total,
                       status_counts=counts, cards=cards, layer_warning=clustering.layer_warning)


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
    labels: dict[int, int] = field(default_factory=dict)  # parent's and children's "#n", by id

    def to_json(self) -> dict[str, Any]:
        return to_plain(self)


def _video_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


_DETAIL_HEAD = (select(*_CARD_COLUMNS, Cluster.description, Cluster.clustering_id, Clustering.run_id, Clustering.layer,
                       Concept.name.label("concept_name"))
                .join(Clustering, Clustering.id == Cluster.clustering_id)
                .outerjoin(Concept, Concept.id == Cluster.concept_id).where(Cluster.id == bindparam("cluster")))
_SAME_GALLERY = and_(Cluster.clustering_id == bindparam("clustering"), Cluster.status.in_(REVIEWABLE))
_DETAIL_COUNTS = select(  # members in all, and the previous and next reviewable clusters
    select(func.count(ClusterMember.id)).where(ClusterMember.cluster_id == bindparam("cluster")).scalar_subquery(),
    select(func.max(Cluster.id)).where(_SAME_GALLERY, Cluster.id < bindparam("cluster")).scalar_subquery(),
    select(func.min(Cluster.id)).where(_SAME_GALLERY, Cluster.id > bindparam("cluster")).scalar_subquery())
_DETAIL_MEMBERS = (
    select(ClusterMember.id, ClusterMember.tube_id, ClusterMember.rank, ClusterMember.distance,
           ClusterMember.is_outlier, ClusterMember.excluded, ClusterMember.representative,
           Tube.video_id, Tube.start_frame, Tube.end_frame, Tube.kind, Tube.preview_path, Video.path)
    .join(Tube, Tube.id == ClusterMember.tube_id).join(Video, Video.id == Tube.video_id)
    .where(ClusterMember.cluster_id == bindparam("cluster"))
    .order_by(ClusterMember.excluded, ClusterMember.rank, ClusterMember.id)
    .limit(bindparam("limit")).offset(bindparam("offset")))
_DETAIL_RELATED = (select(Cluster.id, Cluster.status, Cluster.label_index)
                   .where(or_(Cluster.parent_id == bindparam("cluster"), Cluster.id == bindparam("parent")))
                   .order_by(Cluster.id))


def member_rows(session: Session, cluster_id: int, *, offset: int, limit: int) -> list[MemberRow]:
    """Members of a cluster in review order (kept by rank, then removed), ``limit`` from ``offset``."""
    rows = _read(session, _DETAIL_MEMBERS, cluster=int(cluster_id), limit=int(limit), offset=int(offset))
    return [MemberRow(id=r.id, tube_id=r.tube_id, rank=r.rank, distance=float(r.distance),
                      is_outlier=bool(r.is_outlier), excluded=bool(r.excluded),
                      representative=bool(r.representative), video_id=r.video_id, video_name=_video_name(r.path),
                      start_frame=r.start_frame, end_frame=r.end_frame, kind=r.kind, preview_path=r.preview_path)
            for r in rows]


def cluster_detail(session: Session, cluster_id: int, *, page: Any = 1, per_page: int = 24) -> ClusterDetail:
    head = _read(session, _DETAIL_HEAD, cluster=int(cluster_id))
    if not head:
        raise NotFoundError(f"cluster {cluster_id} does not exist; go back to the gallery")
    head = head[0]
    page = _page_number(page)
    (n_members, prev_id, next_id), = _read(session, _DETAIL_COUNTS, cluster=head.id, clustering=head.clustering_id)
    members = member_rows(session, head.id, offset=(page - 1) * per_page, limit=per_page)
    related = _read(session, _DETAIL_RELATED, cluster=head.id, parent=head.parent_id)
    children = [r for r in related if r.id != head.parent_id]
    return ClusterDetail(
        cluster=_card(head), run_id=head.run_id, clustering_id=head.clustering_id, layer=head.layer,
        description=head.description, concept_name=head.concept_name,
        children=[r.id for r in children if r.status != "merged"],
        merged_from=[r.id for r in children if r.status == "merged"],
        members=members, page=page, n_pages=_pages(n_members, per_page), n_members=n_members,
        prev_id=prev_id, next_id=next_id, labels={r.id: r.label_index for r in related})


@dataclass
class SimilarTube:
    tube_id: int
    score: float  # cosine similarity
    cluster_id: int | None
    cluster_status: str | None
    preview_path: str | None
    video_name: str
    start_frame: int
    end_frame: int
    distance: float | None = None  # cosine distance / the run's spread (1.0: as far as two random tubes)
    cluster_label: int | None = None  # the "#n" the gallery shows (the id is the database's)
    cluster_name: str | None = None


def describe_similar(session: Session, clustering_id: int, hits: list[tuple[int, float]], exclude_cluster: int
                     ) -> list[SimilarTube]:
    """FAISS hits (tube id, cosine) with their cluster, keeping tubes of other clusters. Their
    distance is in the unit of the clustering's member distances: cosine 0.97 reads "close" but
    is as far as two random tubes on a layer whose random pairs are at 0.95."""
    from conceptgen.cluster import clustering_spread

    spread = clustering_spread(session.get(Clustering, clustering_id).params)
    ids = [t for t, _ in hits]
    info = {row[0]: row[1:] for row in session.execute(
        select(Tube.id, Tube.preview_path, Tube.start_frame, Tube.end_frame, Video.path)
        .join(Video, Video.id == Tube.video_id).where(Tube.id.in_(ids)))}
    where = {row[0]: row[1:] for row in session.execute(
        select(ClusterMember.tube_id, Cluster.id, Cluster.status, Cluster.label_index, Cluster.name)
        .join(Cluster, Cluster.id == ClusterMember.cluster_id)
        .where(Cluster.clustering_id == clustering_id, ClusterMember.tube_id.in_(ids)))}
    out = []
    for tube_id, score in hits:
        cid, cstatus, label, name = where.get(tube_id, (None, None, None, None))
        if cid == exclude_cluster or tube_id not in info:
            continue
        preview, start, end, vpath = info[tube_id]
        distance = round(max(1.0 - float(score), 0.0) / spread, 4) if spread else None
        out.append(SimilarTube(tube_id, float(score), cid, cstatus, preview, _video_name(vpath), start, end, distance,
                               label, name))
    return out


def mask_runs(mask: Any) -> list[int]:
    """Run lengths of a (H, W) bool mask read row by row, starting with a run of False:
    what the browser's tube overlay paints (COCO RLE is column-major and compressed)."""
    import numpy as np

    flat = np.asarray(mask, dtype=bool).ravel()
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def tube_overlay(session: Session, tube_id: int) -> dict[str, Any]:
    """A tube's frames, boxes and masks (mask pixels) and its source video's rate and size."""
    from conceptgen.tubes import TubeRecord

    row = session.get(Tube, int(tube_id))
    if row is None:
        raise NotFoundError(f"tube {tube_id} does not exist; reload the page")
    video = session.get(Video, row.video_id)
    tube = TubeRecord.from_row(row)
    return {"tube_id": row.id, "video_id": video.id, "video_name": _video_name(video.path),
            "fps": video.fps, "width": video.width, "height": video.height, "frame_count": video.frame_count,
            "start_frame": row.start_frame, "end_frame": row.end_frame, "frame_indices": list(tube.frame_indices),
            "mask_width": row.mask_width, "mask_height": row.mask_height, "boxes": row.boxes,
            "masks": [mask_runs(m) for m in tube.masks()]}


# --- concept library -----------------------------------------------------------
@dataclass
class VersionRow:
    version: int
    created_at: datetime
    author: str | None
    description: str | None
    cluster_id: int | None
    n_examples: int
    cluster_label: int | None = None  # the cluster's "#n" in its gallery when it was accepted


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
class CalibrationRow:
    """An experiment's calibration (tcav.calibration): its test's false-positive rate on its own null."""

    experiment_id: int
    test: str
    alpha: float
    false_positive_rate: float | None
    families_rejected: int
    n_families: int
    n_null_hypotheses: int
    cav_stability: float | None
    exceeds_alpha: bool


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
    experiments: list[int]  # that scored it, newest first (their pages hold the plots)
    calibrations: list[CalibrationRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return to_plain(self)


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
        versions[v.concept_id].append(VersionRow(v.version, v.created_at, author, v.description, v.cluster_id, n,
                                                 (v.provenance or {}).get("label_index")))
        if author:
            annotators[v.concept_id].add(author)
    for concept_id, name in session.execute(
            select(Cluster.concept_id, User.name).join(AuditLog, and_(AuditLog.target_type == "cluster",
                                                                      AuditLog.target_id == Cluster.id))
            .join(User, User.id == AuditLog.user_id).where(Cluster.concept_id.in_(ids)).distinct()):
        annotators[concept_id].add(name)
    tcav: dict[int, list[TcavRow]] = {i: [] for i in ids}
    experiments: dict[int, list[int]] = {i: [] for i in ids}
    calibrations: dict[int, dict[int, CalibrationRow]] = {i: {} for i in ids}
    for r, exp_summary in session.execute(
            select(TcavResult, TcavExperiment.summary)
            .join(TcavExperiment, TcavExperiment.id == TcavResult.experiment_id)
            .where(TcavResult.concept_id.in_(ids)).order_by(TcavResult.experiment_id.desc(), TcavResult.id)):
        tcav[r.concept_id].append(TcavRow(r.experiment_id, r.target_class, r.layer, r.variant, r.comparison,
                                          float(r.tcav_mean), float(r.tcav_std), r.p_corrected,
                                          bool(r.significant), r.verdict))
        if r.experiment_id not in experiments[r.concept_id]:
            experiments[r.concept_id].append(r.experiment_id)
        cal = (exp_summary or {}).get("calibration")
        if cal and r.experiment_id not in calibrations[r.concept_id]:
            calibrations[r.concept_id][r.experiment_id] = CalibrationRow(
                r.experiment_id, cal["test"], cal["alpha"], cal["false_positive_rate"], cal["families_rejected"],
                cal["n_families"], cal["n_null_hypotheses"], cal["cav_stability"], bool(cal["exceeds_alpha"]))
    return [ConceptEntry(c.id, c.name, c.description, c.status, c.source, c.current_version, versions[c.id],
                         sorted(annotators[c.id]), tcav[c.id], experiments[c.id], list(calibrations[c.id].values()))
            for c in concepts]


def concept_clusters(session: Session, concept_ids: list[int]) -> dict[int, int]:
    """Per concept, the cluster its current version came from (where its members are reviewed)."""
    ids = sorted(set(concept_ids))
    if not ids:
        return {}
    rows = session.execute(select(ConceptVersion.concept_id, ConceptVersion.cluster_id)
                           .join(Concept, and_(Concept.id == ConceptVersion.concept_id,
                                               Concept.current_version == ConceptVersion.version))
                           .where(ConceptVersion.concept_id.in_(ids), ConceptVersion.cluster_id.is_not(None)))
    return {cid: cluster for cid, cluster in rows}


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
    target_label: int | None = None  # a cluster target's "#n" in its gallery


def summarise_change(action: str, before: dict | None, after: dict | None) -> str:
    """One line: the info of the decision and each cluster's status change."""
    before, after = before or {}, after or {}
    parts = [f"{k}={v}" for k, v in (after.get("info") or {}).items()]
    for key, state in (after.get("clusters") or {}).items():
        old = (before.get("clusters") or {}).get(key)
        name = _cluster_title(key, state or old)
        if state is None:
            parts.append(f"{name} removed")
        elif old is None:
            parts.append(f"{name} created ({state['status']}, {state['size']} members)")
        elif old["status"] != state["status"]:
            parts.append(f"{name}: {old['status']} → {state['status']}")
    n_members = len(after.get("members") or {})
    if n_members:
        parts.append(f"{n_members} member(s)")
    return "; ".join(parts)


def _cluster_title(cluster_id: Any, state: dict | None) -> str:
    """A cluster of an audit entry, named as decisions' messages name it."""
    return cluster_title((state or {}).get("label_index"), cluster_id)


def audit_page(session: Session, *, page: Any = 1, per_page: int = 50) -> tuple[list[AuditRow], int, int]:
    page = _page_number(page)
    total = session.scalar(select(func.count(AuditLog.id)))
    rows = session.execute(select(AuditLog, User.name, Cluster.label_index).outerjoin(User, User.id == AuditLog.user_id)
                           .outerjoin(Cluster, and_(AuditLog.target_type == "cluster", Cluster.id == AuditLog.target_id))
                           .order_by(AuditLog.id.desc()).limit(per_page).offset((page - 1) * per_page)).all()
    return ([AuditRow(a.id, a.at, name, a.action, a.target_type, a.target_id,
                      summarise_change(a.action, a.before, a.after), bool(a.undone), label) for a, name, label in rows],
            page, _pages(total, per_page))
