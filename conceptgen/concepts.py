"""Reading concepts: approved concepts out of the database as typed records, and
rendering one concept example as a clip.

The one reader behind export, TCAV and the demo::

    records = load_concept_records(workspace, "all-approved")    # list[ConceptRecord]
    clip = render_concept_example(records[0].examples[0], workspace.media,
                                  mode="crop", num_frames=16, side=112)

A :class:`ConceptRecord` is a concept's current version with its history, its
discovery provenance and its examples; an :class:`ExampleRecord` is either a
database tube (a :class:`~conceptgen.tubes.TubeRecord` and its source video) or
a clip file an import copied into the media folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sqlalchemy import or_, select

from conceptgen.errors import ConfigError, IntegrityError, NotFoundError
from conceptgen.hashing import sha256_file
from conceptgen.orm import AuditLog, Cluster, Clustering, Concept, ConceptExample, ConceptVersion, Run, User, Video
from conceptgen.tubes import TubeRecord

ALL_APPROVED = "all-approved"
VARIANTS = ("dynamic", "static")


@dataclass(frozen=True)
class ExampleRecord:
    """One ConceptExample read out of the DB, detached from the session.

    Tube-based examples carry the tube and the source video; clip-based ones
    (imported earlier) carry the clip file and whatever metadata the import kept
    (``meta``)."""

    position: int
    variant: str
    tube: TubeRecord | None
    video: dict[str, Any] | None
    clip_path: Path | None
    clip_sha256: str | None
    meta: dict[str, Any]

    @property
    def track(self) -> TubeRecord:
        """The example's region: its tube, else the one an import kept in ``meta``."""
        return self.tube if self.tube is not None else TubeRecord.from_meta(self.meta)


@dataclass(frozen=True)
class ConceptRecord:
    name: str
    description: str | None
    source: str
    status: str
    version: int
    versions: list[dict[str, Any]]
    approval_history: list[dict[str, Any]]
    discovery: dict[str, Any]
    examples: list[ExampleRecord]


def load_concept_records(workspace, names: Sequence[str] | str) -> list[ConceptRecord]:
    """Read concepts (by name, or all approved) with their current version's examples."""
    wanted = parse_names(names)
    with workspace.session() as s:
        if wanted is None:
            concepts = s.scalars(select(Concept).where(Concept.status == "approved").order_by(Concept.name)).all()
            if not concepts:
                raise NotFoundError("no approved concepts to export; accept clusters in the annotator "
                                    "or run `conceptgen import-concepts` first")
        else:
            wanted = _expand_globs(s, wanted)
            found = {c.name: c for c in s.scalars(select(Concept).where(Concept.name.in_(wanted)))}
            missing = [n for n in wanted if n not in found]
            if missing:
                known = ", ".join(s.scalars(select(Concept.name).order_by(Concept.name)).all()[:20]) or "none"
                raise NotFoundError(f"unknown concept(s) {', '.join(missing)}; known concepts: {known}")
            concepts = [found[n] for n in wanted]
        return [_concept_record(s, c) for c in concepts]


def _expand_globs(session, names: list[str]) -> list[str]:
    """Names with ``*``, ``?`` or ``[`` match approved concept names (fnmatch, sorted); others stay."""
    import fnmatch

    if not any(c in n for n in names for c in "*?["):
        return names
    approved = session.scalars(select(Concept.name).where(Concept.status == "approved")
                                         .order_by(Concept.name)).all()
    out: list[str] = []
    for n in names:
        if not any(c in n for c in "*?["):
            out.append(n)
            continue
        matched = [a for a in approved if fnmatch.fnmatchcase(a, n)]
        if not matched:
            raise NotFoundError(f"no approved concept matches {n!r}; approved: {', '.join(approved[:20]) or 'none'}")
        out += matched
    return list(dict.fromkeys(out))


def parse_names(names: Sequence[str] | str) -> list[str] | None:
    """Concept names (comma-separated or a list), or None for ``all-approved``."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in dict.fromkeys(n.strip() for n in names) if n]
    if not names:
        raise ConfigError(f"no concept names given; pass --concepts NAME[,NAME...] or {ALL_APPROVED}")
    return None if names == [ALL_APPROVED] else names


def example_record(ex: ConceptExample) -> ExampleRecord:
    tube = video = None
    if ex.tube is not None:
        tube = TubeRecord.from_row(ex.tube)
        v: Video = ex.tube.video
        video = {"path": v.path, "sha256": v.sha256, "fps": v.fps, "frame_count": v.frame_count,
                 "width": v.width, "height": v.height, "label": v.label}
    clip = Path(ex.clip_path) if ex.clip_path else None
    return ExampleRecord(ex.position, ex.variant, tube, video, clip, ex.clip_sha256, dict(ex.meta or {}))


# --- rendering one example ------------------------------------------------------------
def render_concept_example(ex: ExampleRecord, media: Path, *, mode: str, num_frames: int, side: int,
                           static: bool = False) -> np.ndarray:
    """(num_frames, side, side, 3) uint8: a tube rendered from its source video with
    ``mode`` (mask | crop | blur), or a clip file sampled uniformly (``mode`` unused);
    ``static`` repeats one frame (a tube re-rendered static, a clip's middle frame)."""
    from conceptgen.videoio import clip_from_file

    if ex.tube is not None:
        return render_tube(tube_frames(ex), ex.tube, mode=mode, num_frames=num_frames, side=side, static=static)
    return clip_from_file(clip_file(ex, media), num_frames, side, static=static)


def render_tube(frames: np.ndarray, tube: TubeRecord, *, mode: str, num_frames: int, side: int,
                static: bool = False) -> np.ndarray:
    """(num_frames, side, side, 3) uint8 clip of ``frames`` (the tube's frames, in order;
    render_tube_clip rescales masks and boxes when they are at another resolution)."""
    from conceptgen.render import render_tube_clip

    masks = tube.masks()
    return render_tube_clip(frames, list(range(len(frames))), masks, tube.mask_boxes(masks), mode=mode,
                            static=static, num_frames=num_frames, side=side)


def tube_frames(ex: ExampleRecord) -> np.ndarray:
    """The tube's frames, (len(frame_indices), H, W, 3) uint8, decoded at the processing
    resolution (max side = the masks' max side), as extraction saw them."""
    from conceptgen.videoio import read_frames

    video_path = Path(ex.video["path"])
    if not video_path.is_file():
        raise FileNotFoundError(f"source video {video_path} is missing; restore it to export this example")
    h, w = ex.tube.mask_size
    return read_frames(video_path, indices=ex.tube.frame_indices, max_side=max(h, w))


def clip_file(ex: ExampleRecord, media: Path) -> Path:
    """An imported example's clip file under ``media``, checked against its sha256."""
    path = ex.clip_path if ex.clip_path.is_absolute() else media / ex.clip_path
    if not path.is_file():
        raise FileNotFoundError(f"clip {path} is missing; re-import the concept")
    if ex.clip_sha256 and sha256_file(path) != ex.clip_sha256:
        raise IntegrityError(f"clip {path} changed since import (sha256 mismatch); re-import the concept")
    return path


# --- reading the DB into records ---------------------------------------------------
def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _concept_record(s, concept: Concept) -> ConceptRecord:
    versions = list(concept.versions)
    current = next((v for v in versions if v.version == concept.current_version), None)
    if current is None and versions:
        current = versions[-1]
    users = {u.id: u.name for u in s.scalars(select(User))}
    version_rows = [
        {"version": v.version, "description": v.description, "created_at": _iso(v.created_at),
         "created_by": users.get(v.created_by), "cluster_id": v.cluster_id,
         "provenance": v.provenance or {}}
        for v in versions
    ]
    cluster_ids = [v.cluster_id for v in versions if v.cluster_id is not None]
    audit = s.scalars(
        select(AuditLog).where(or_(
            (AuditLog.target_type == "concept") & (AuditLog.target_id == concept.id),
            (AuditLog.target_type == "cluster") & (AuditLog.target_id.in_(cluster_ids)),
        )).order_by(AuditLog.at, AuditLog.id)
    ).all()
    history = [
        {"at": _iso(a.at), "by": users.get(a.user_id), "action": a.action, "target_type": a.target_type,
         "target_id": a.target_id, "undone": bool(a.undone)}
        for a in audit
    ]
    examples = [example_record(ex) for ex in (current.examples if current else [])]
    return ConceptRecord(
        name=concept.name, description=concept.description, source=concept.source, status=concept.status,
        version=current.version if current else concept.current_version, versions=version_rows,
        approval_history=history, discovery=_discovery(s, current), examples=examples,
    )


def _discovery(s, version: ConceptVersion | None) -> dict[str, Any]:
    """The model, layer and run that discovered the concept (from the cluster, else provenance)."""
    if version is None:
        return {}
    prov = version.provenance or {}
    found: dict[str, Any] = {k: prov[k] for k in ("model", "layer", "run", "run_id") if k in prov}
    cluster = s.get(Cluster, version.cluster_id) if version.cluster_id is not None else None
    if cluster is not None:
        clustering = s.get(Clustering, cluster.clustering_id)
        run = s.get(Run, clustering.run_id)
        found.update({
            "cluster_id": cluster.id, "cluster_label": cluster.label_index, "clustering_id": clustering.id,
            "layer": clustering.layer, "run_id": run.id, "model": run.model_name,
            "model_fingerprint": run.model_fingerprint, "run_config_hash": run.config_hash,
            "code_version": run.code_version,
        })
    elif "import" in prov and isinstance(prov["import"], dict):
        found.update(prov["import"].get("discovery") or {})
    return found
