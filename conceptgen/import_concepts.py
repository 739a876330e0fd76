"""Import concepts into a workspace: an export folder (round-trip equal) or a plain
folder of user clips, one sub-folder per concept (hand-made or detector-made
concepts, as in the Video-TCAV paper).

Clips are copied, content-addressed, into ``WORKSPACE/media/imported/`` and become
``ConceptExample.clip_path`` (relative to media/) + ``clip_sha256``, so tcav/ scores
them like tube-based concepts. A concept whose name exists already is skipped with a
reason, which also makes a repeated import a no-op.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from conceptgen.errors import ConceptgenError, ConfigError, DataError, NotFoundError
from conceptgen.export import MANIFEST, SkippedItem, export_kind, read_manifest
from conceptgen.hashing import sha256_file
from conceptgen.orm import AuditLog, Concept, ConceptExample, ConceptVersion, User
from conceptgen.progress import progress
from conceptgen.tubes import TubeRecord

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
IMPORTED_DIR = "imported"  # under WORKSPACE/media/


@dataclass
class ImportReport:
    source_dir: Path
    kind: str  # export | folder
    concepts: list[str]
    n_examples: int
    skipped: list[SkippedItem] = field(default_factory=list)


@dataclass(frozen=True)
class ImportedClip:
    """A clip ready to become a ConceptExample: copied into media/, with its metadata."""

    position: int
    clip_path: str  # relative to media/
    clip_sha256: str
    variant: str
    meta: dict[str, Any]


def import_concepts(workspace, source_dir: str | Path, *, user: str | None = None,
                    min_clips: int = 2, plan_only: bool = False, rename: dict[str, str] | None = None,
                    allow_new_labels: bool = False):
    """Import an export folder (has manifest.json), CVAT for video XML (a file or a folder
    of them: :mod:`conceptgen.cvat_import`) or a plain folder of clips.

    ``user`` is recorded as the importer; ``min_clips`` is the fewest valid clips a
    plain-folder concept needs (an export is taken as it is). ``plan_only``, ``rename``
    (old concept name -> label) and ``allow_new_labels`` are for CVAT XML only."""
    from conceptgen.cvat_import import import_cvat_video, is_cvat_video

    source = Path(source_dir)
    if is_cvat_video(source) and not (source / MANIFEST).is_file():
        return import_cvat_video(workspace, source, user=user, plan_only=plan_only, rename=rename,
                                 allow_new_labels=allow_new_labels)
    if plan_only or rename or allow_new_labels:
        raise ConfigError("--plan, --rename and --allow-new-labels apply to CVAT XML only; "
                          f"{source} is not CVAT for video XML")
    if not source.is_dir():
        raise NotFoundError(f"{source} is not a folder; pass an export folder or a folder of "
                            "concept sub-folders with clips")
    if (source / MANIFEST).is_file():
        if export_kind(source) == "fiftyone":
            raise ConfigError(f"{source} is a FiftyOne export, which conceptgen does not read back; import a "
                              "native export or CVAT for video XML")
        return import_export(workspace, source, user=user)
    return import_clip_folders(workspace, source, user=user, min_clips=min_clips)


def import_export(workspace, export_dir: str | Path, *, user: str | None = None) -> ImportReport:
    """Read a verified export back: names, descriptions, versions, examples, masks, boxes."""
    root = Path(export_dir).resolve()
    manifest = read_manifest(root, verify=True)
    report = ImportReport(root, "export", [], 0)
    files = manifest["files"]
    for entry in manifest["concepts"]:
        if _exists(workspace, entry["name"]):
            report.skipped.append(SkippedItem(entry["name"], "a concept with this name exists already; "
                                                             "rename or retire it, then import again"))
            continue
        unlisted = [ex["clip"] for ex in entry["examples"] if ex["clip"] not in files]
        if unlisted:  # verify only vouches for listed files
            report.skipped.append(SkippedItem(entry["name"], f"clip {unlisted[0]} has no checksum in the "
                                                             "manifest; re-export the concept"))
            continue
        clips = []
        for ex in progress(entry["examples"], desc=f"import {entry['name']}", unit="clip"):
            path = _copy_into_media(workspace.media, root / ex["clip"], files[ex["clip"]])
            clips.append(ImportedClip(ex["position"], path, files[ex["clip"]], ex["variant"],
                                      _example_meta(root, ex)))
        versions = [_version_fields(v) for v in entry["versions"]] or [
            {"version": entry["version"], "description": entry["description"], "created_at": None,
             "provenance": {}, "created_by_name": None}]
        provenance = {"kind": "export", "path": str(root), "schema_version": manifest["schema_version"],
                      "render": manifest["render"], "discovery": entry.get("discovery") or {},
                      "approval_history": entry.get("approval_history") or [], "source": entry.get("source")}
        _store_concept(workspace, entry["name"], entry["description"], "import", entry["version"],
                       versions, clips, provenance, user)
        report.concepts.append(entry["name"])
        report.n_examples += len(clips)
    return report


def import_clip_folders(workspace, folder: str | Path, *, user: str | None = None,
                        min_clips: int = 2) -> ImportReport:
    """One concept per sub-folder of ``folder``; each video file in it is one example."""
    from conceptgen.videoio import probe_video

    root = Path(folder).resolve()
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(f"{root} has no concept sub-folders; put clips in {root}/<concept name>/*.mp4")
    report = ImportReport(root, "folder", [], 0)
    for sub in subdirs:
        if _exists(workspace, sub.name):
            report.skipped.append(SkippedItem(sub.name, "a concept with this name exists already; "
                                                        "rename the folder or retire the concept"))
            continue
        clips: list[ImportedClip] = []
        for path in progress(sorted(p for p in sub.iterdir() if not p.name.startswith(".")),
                             desc=f"import {sub.name}", unit="clip"):
            item = f"{sub.name}/{path.name}"
            if not path.is_file() or path.suffix.lower() not in VIDEO_SUFFIXES:
                report.skipped.append(SkippedItem(item, f"not a video file (expected {', '.join(VIDEO_SUFFIXES)})"))
                continue
            try:
                info = probe_video(path)
                digest = sha256_file(path)
            except (ConceptgenError, OSError) as err:
                report.skipped.append(SkippedItem(item, str(err)))
                continue
            meta = {"original_name": path.name, "fps": info.fps, "frame_count": info.frame_count,
                    "width": info.width, "height": info.height, "codec": info.codec,
                    "frame_range": [0, info.frame_count]}
            clips.append(ImportedClip(len(clips), _copy_into_media(workspace.media, path, digest), digest,
                                      "dynamic", meta))
        if len(clips) < min_clips:
            report.skipped.append(SkippedItem(sub.name, f"only {len(clips)} readable clip(s), need at least "
                                                        f"{min_clips}; add clips or lower --min-clips"))
            continue
        versions = [{"version": 1, "description": None, "created_at": None, "provenance": {},
                     "created_by_name": user}]
        provenance = {"kind": "folder", "path": str(sub)}
        _store_concept(workspace, sub.name, None, "folder", 1, versions, clips, provenance, user)
        report.concepts.append(sub.name)
        report.n_examples += len(clips)
    return report


# --- helpers -------------------------------------------------------------------------
def _exists(workspace, name: str) -> bool:
    with workspace.session() as s:
        return s.scalar(select(Concept.id).where(Concept.name == name)) is not None


def _copy_into_media(media: Path, src: Path, sha256: str) -> str:
    """Copy ``src`` to media/imported/<sha[:2]>/<sha><suffix> (atomic, idempotent); returns the relative path."""
    rel = Path(IMPORTED_DIR) / sha256[:2] / f"{sha256}{src.suffix.lower()}"
    dest = media / rel
    if not (dest.is_file() and sha256_file(dest) == sha256):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    return rel.as_posix()


def _example_meta(root: Path, ex: dict[str, Any]) -> dict[str, Any]:
    """What the DB keeps of an exported example: provenance, frames, boxes and the RLE masks."""
    import json

    meta = {key: ex.get(key) for key in ("source_video", "frame_range", "frame_indices", "boxes",
                                         "mask_size", "tube", "rendered")}
    if ex.get("derived_from") is not None:
        meta["static_of"] = ex["derived_from"]
    if ex.get("masks"):
        track = TubeRecord.from_masks_json(json.loads((root / ex["masks"]).read_bytes()))
        meta["masks_rle"] = track.masks_rle
        meta["mask_size"] = track.mask_size
    return meta


def _version_fields(v: dict[str, Any]) -> dict[str, Any]:
    return {"version": v["version"], "description": v.get("description"),
            "created_at": datetime.fromisoformat(v["created_at"]) if v.get("created_at") else None,
            "provenance": v.get("provenance") or {}, "created_by_name": v.get("created_by"),
            "cluster_id": v.get("cluster_id")}


def _store_concept(workspace, name: str, description: str | None, source: str, current: int,
                   versions: list[dict[str, Any]], clips: list[ImportedClip], provenance: dict[str, Any],
                   user: str | None) -> None:
    """One transaction: the concept, its versions (examples on the current one) and an audit entry.

    Versions are attributed to the importer; the original author and cluster stay in
    ``provenance["import"]`` (user ids of another database mean nothing here)."""
    if current not in {v["version"] for v in versions}:
        raise ConfigError(f"concept '{name}' has no version {current} in its history; re-export it")
    with workspace.session() as s:
        importer = s.scalar(select(User.id).where(User.name == user)) if user else None
        if user and importer is None:
            raise NotFoundError(f"unknown user '{user}'; create it with `conceptgen user add {user}`")
        concept = Concept(name=name, description=description, source=source, status="approved",
                          current_version=current)
        s.add(concept)
        for v in versions:
            prov = dict(v["provenance"])
            prov["import"] = dict(provenance, original_created_by=v["created_by_name"],
                                  original_cluster_id=v.get("cluster_id"))
            row = ConceptVersion(concept=concept, version=v["version"], description=v["description"],
                                 created_by=importer, provenance=prov)
            if v["created_at"] is not None:
                row.created_at = v["created_at"]
            s.add(row)
            if v["version"] == current:
                for clip in clips:
                    s.add(ConceptExample(concept_version=row, position=clip.position, clip_path=clip.clip_path,
                                         clip_sha256=clip.clip_sha256, variant=clip.variant, meta=clip.meta))
        s.flush()
        s.add(AuditLog(user_id=importer, action="import", target_type="concept", target_id=concept.id,
                       after={"name": name, "source": source, "from": provenance["path"],
                              "n_examples": len(clips)}))
