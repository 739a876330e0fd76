"""The SQLAlchemy 2.0 typed ORM models: the one schema shared by the engine,
the annotator and tcav. Portable SQL only (SQLite now, PostgreSQL later).

Masks are stored as COCO RLE (pycocotools' compressed string form) in JSON
columns; embeddings as float16/float32 blobs with their dtype and dimension.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints let Alembic autogenerate see (and batch-alter) them on SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# --- videos -----------------------------------------------------------------
class Video(Base):
    __tablename__ = "videos"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    fps: Mapped[Optional[float]] = mapped_column(Float)
    frame_count: Mapped[Optional[int]] = mapped_column(Integer)
    width: Mapped[Optional[int]] = mapped_column(Integer)
    height: Mapped[Optional[int]] = mapped_column(Integer)
    label: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    split: Mapped[Optional[str]] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="ok")  # ok | failed
    error: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    tubes: Mapped[list["Tube"]] = relationship(back_populates="video")


# --- extraction runs --------------------------------------------------------
class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | finished | failed
    error: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime)

    run_videos: Mapped[list["RunVideo"]] = relationship(back_populates="run")
    clusterings: Mapped[list["Clustering"]] = relationship(back_populates="run")


class RunVideo(Base):
    """Per-video progress of a run; a video is committed whole, so resume skips 'done'.

    A video being computed is 'claimed' by one driver (``claimed_by``, refreshed at
    ``heartbeat_at``); the unique (run, video) key makes the claim exclusive on any
    database, so two drivers or workers never compute the same video twice
    (``conceptgen.claims``)."""

    __tablename__ = "run_videos"
    __table_args__ = (UniqueConstraint("run_id", "video_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # claimed | done | failed
    claimed_by: Mapped[Optional[str]] = mapped_column(String(200))  # host:pid:token of the claiming driver
    heartbeat_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    error: Mapped[Optional[str]] = mapped_column(Text)
    n_tubes: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[Optional[float]] = mapped_column(Float)
    finished_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="run_videos")
    video: Mapped[Video] = relationship()


# --- tubes and embeddings ---------------------------------------------------
class Tube(Base):
    """A region tracked over consecutive frames [start_frame, end_frame).

    Frame indices refer to the source video's decoded frames. ``masks_rle`` holds
    one COCO RLE per frame at ``mask_height`` x ``mask_width`` (the processing
    resolution); ``boxes`` are [x0, y0, x1, y1] per frame in the same pixels.
    """

    __tablename__ = "tubes"
    # One row per (run, video, track): a retried or duplicated write cannot add a second copy.
    __table_args__ = (UniqueConstraint("run_id", "video_id", "track_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    track_index: Mapped[int] = mapped_column(Integer)
    start_frame: Mapped[int] = mapped_column(Integer)
    end_frame: Mapped[int] = mapped_column(Integer)
    frame_indices: Mapped[list[int]] = mapped_column(JSON)
    kind: Mapped[str] = mapped_column(String(32))  # segmenter that proposed it: motion | supervoxel | sam
    mask_height: Mapped[int] = mapped_column(Integer)
    mask_width: Mapped[int] = mapped_column(Integer)
    masks_rle: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    boxes: Mapped[list[list[float]]] = mapped_column(JSON)
    area: Mapped[float] = mapped_column(Float)  # mean mask area, fraction of the frame
    score: Mapped[float] = mapped_column(Float, default=1.0)
    # conceptgen.objectness: a thing or background (walls, floors, water); background tubes
    # are kept but left out of clustering unless asked. None/False: stored before the score existed.
    objectness: Mapped[Optional[float]] = mapped_column(Float)
    objectness_features: Mapped[Optional[dict[str, float]]] = mapped_column(JSON)
    background: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    preview_path: Mapped[Optional[str]] = mapped_column(Text)  # relative to media/
    preview_sha256: Mapped[Optional[str]] = mapped_column(String(64))

    video: Mapped[Video] = relationship(back_populates="tubes")
    embeddings: Mapped[list["Embedding"]] = relationship(back_populates="tube")


class Embedding(Base):
    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("tube_id", "layer", "pooling", "render_mode"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tube_id: Mapped[int] = mapped_column(ForeignKey("tubes.id", ondelete="CASCADE"), index=True)
    layer: Mapped[str] = mapped_column(String(200))
    pooling: Mapped[str] = mapped_column(String(32))  # mean | time
    render_mode: Mapped[str] = mapped_column(String(32))
    dim: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))  # float16 | float32
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    tube: Mapped[Tube] = relationship(back_populates="embeddings")


# --- clustering -------------------------------------------------------------
class Clustering(Base):
    __tablename__ = "clusterings"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    layer: Mapped[str] = mapped_column(String(200))
    k: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    index_path: Mapped[Optional[str]] = mapped_column(Text)  # FAISS index, relative to cache/
    index_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="clusterings")
    clusters: Mapped[list["Cluster"]] = relationship(back_populates="clustering")


class Cluster(Base):
    __tablename__ = "clusters"

    id: Mapped[int] = mapped_column(primary_key=True)
    clustering_id: Mapped[int] = mapped_column(ForeignKey("clusterings.id", ondelete="CASCADE"), index=True)
    label_index: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer, default=0)
    cohesion: Mapped[float] = mapped_column(Float, default=0.0)
    n_videos: Mapped[int] = mapped_column(Integer, default=0)
    supported: Mapped[bool] = mapped_column(Boolean, default=True)
    # candidate | accepted | rejected | merged | split
    status: Mapped[str] = mapped_column(String(16), default="candidate", index=True)
    name: Mapped[Optional[str]] = mapped_column(String(200))
    description: Mapped[Optional[str]] = mapped_column(Text)
    parent_id: Mapped[Optional[int]] = mapped_column(ForeignKey("clusters.id", ondelete="SET NULL"))
    concept_id: Mapped[Optional[int]] = mapped_column(ForeignKey("concepts.id", ondelete="SET NULL"))
    centroid: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    version: Mapped[int] = mapped_column(Integer, default=1)

    clustering: Mapped[Clustering] = relationship(back_populates="clusters")
    members: Mapped[list["ClusterMember"]] = relationship(back_populates="cluster", order_by="ClusterMember.rank")

    __mapper_args__ = {"version_id_col": version}


class ClusterMember(Base):
    __tablename__ = "cluster_members"
    __table_args__ = (UniqueConstraint("cluster_id", "tube_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), index=True)
    tube_id: Mapped[int] = mapped_column(ForeignKey("tubes.id", ondelete="CASCADE"), index=True)
    distance: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)
    is_outlier: Mapped[bool] = mapped_column(Boolean, default=False)
    excluded: Mapped[bool] = mapped_column(Boolean, default=False)  # removed by a human
    representative: Mapped[bool] = mapped_column(Boolean, default=False)

    cluster: Mapped[Cluster] = relationship(back_populates="members")
    tube: Mapped[Tube] = relationship()


# --- concepts ---------------------------------------------------------------
class Concept(Base):
    __tablename__ = "concepts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[Optional[str]] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), default="cluster")  # cluster | import | folder
    status: Mapped[str] = mapped_column(String(16), default="approved")  # approved | retired
    current_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    versions: Mapped[list["ConceptVersion"]] = relationship(
        back_populates="concept", order_by="ConceptVersion.version"
    )

    __mapper_args__ = {"version_id_col": version}


class ConceptVersion(Base):
    __tablename__ = "concept_versions"
    __table_args__ = (UniqueConstraint("concept_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    concept_id: Mapped[int] = mapped_column(ForeignKey("concepts.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    description: Mapped[Optional[str]] = mapped_column(Text)
    cluster_id: Mapped[Optional[int]] = mapped_column(ForeignKey("clusters.id", ondelete="SET NULL"))
    created_by: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # model, layer, run, import source

    concept: Mapped[Concept] = relationship(back_populates="versions")
    examples: Mapped[list["ConceptExample"]] = relationship(
        back_populates="concept_version", order_by="ConceptExample.position"
    )
    author: Mapped[Optional["User"]] = relationship()


class ConceptExample(Base):
    """One example of a concept version: a tube of a video, or an imported clip file.

    ``variant`` is 'dynamic' (the tube as it moves) or 'static' (one frame of it
    repeated over time, rendered on demand from the same tube)."""

    __tablename__ = "concept_examples"

    id: Mapped[int] = mapped_column(primary_key=True)
    concept_version_id: Mapped[int] = mapped_column(
        ForeignKey("concept_versions.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    tube_id: Mapped[Optional[int]] = mapped_column(ForeignKey("tubes.id", ondelete="SET NULL"))
    clip_path: Mapped[Optional[str]] = mapped_column(Text)  # imported clip, relative to media/
    clip_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    variant: Mapped[str] = mapped_column(String(16), default="dynamic")
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    concept_version: Mapped[ConceptVersion] = relationship(back_populates="examples")
    tube: Mapped[Optional[Tube]] = relationship()


# --- people and decisions ---------------------------------------------------
class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AuditLog(Base):
    """Every human decision: who, when, what, and the target's state before and after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(50))
    target_type: Mapped[str] = mapped_column(String(50))
    target_id: Mapped[Optional[int]] = mapped_column(Integer)
    before: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    after: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    undone: Mapped[bool] = mapped_column(Boolean, default=False)

    user: Mapped[Optional[User]] = relationship()


class LoginFailure(Base):
    """One failed login (or one being checked): the login throttle's memory, in the
    database so that every worker process and host sees the same counts. Rows older
    than the longest lockout are deleted as new ones arrive."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    name: Mapped[str] = mapped_column(String(100), index=True)  # as typed, cut to 100 characters
    address: Mapped[str] = mapped_column(String(64), index=True)  # the client's IP address


# --- TCAV -------------------------------------------------------------------
class TcavExperiment(Base):
    __tablename__ = "tcav_experiments"

    id: Mapped[int] = mapped_column(primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_name: Mapped[str] = mapped_column(String(200))
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    layers: Mapped[list[str]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | finished | failed
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # warnings, layer diagnostics, null means
    plots: Mapped[list[str]] = mapped_column(JSON, default=list)  # relative to media/
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime)

    results: Mapped[list["TcavResult"]] = relationship(back_populates="experiment")


class TcavResult(Base):
    """One hypothesis: a concept (variant) for a class at a layer, against random or relative."""

    __tablename__ = "tcav_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("tcav_experiments.id", ondelete="CASCADE"), index=True
    )
    concept_id: Mapped[Optional[int]] = mapped_column(ForeignKey("concepts.id", ondelete="SET NULL"), index=True)
    concept_name: Mapped[str] = mapped_column(String(200))
    variant: Mapped[str] = mapped_column(String(16), default="dynamic")
    layer: Mapped[str] = mapped_column(String(200))
    target_class: Mapped[str] = mapped_column(String(200))
    comparison: Mapped[str] = mapped_column(String(16), default="random")  # random | relative
    tcav_mean: Mapped[float] = mapped_column(Float)
    tcav_std: Mapped[float] = mapped_column(Float)
    magnitude_mean: Mapped[float] = mapped_column(Float)
    cav_accuracy_mean: Mapped[float] = mapped_column(Float)
    p_value: Mapped[Optional[float]] = mapped_column(Float)
    p_corrected: Mapped[Optional[float]] = mapped_column(Float)
    significant: Mapped[bool] = mapped_column(Boolean, default=False)
    verdict: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # per-random-set scores, temporal curve, flags

    experiment: Mapped[TcavExperiment] = relationship(back_populates="results")


Index("ix_tubes_run_video", Tube.run_id, Tube.video_id)
# The gallery reads each cluster's most central non-excluded members.
Index("ix_cluster_members_cluster_rank", ClusterMember.cluster_id, ClusterMember.excluded, ClusterMember.rank)


# --- background jobs ------------------------------------------------------------
class Job(Base):
    """Long work the annotator started (an export, ...), run in the serving process
    (``conceptgen.jobs``). ``owner`` is host:pid of that process, so a restarted
    server can tell its predecessor's unfinished jobs and mark them failed."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # export
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)  # queued|running|done|failed|cancelled
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    error: Mapped[Optional[str]] = mapped_column(Text)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[Optional[str]] = mapped_column(String(200))
    user_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
