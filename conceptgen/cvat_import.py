"""CVAT for video 1.1 tracks back into the workspace as concept examples.

People fix the tubes of ``conceptgen export --format cvat-video`` in CVAT, export the
task as "CVAT for video 1.1" and run ``conceptgen import-concepts annotations.xml``
(or a folder of them). Each track becomes a tube on its source video, and each label
a new version of the concept of that name (a new approved concept if none exists):
the tracks are its examples. A <mask> track with the same label and ``tube_id``
attribute as a <box> track gives that tube its masks (else the boxes are filled);
shapes with outside="1" are left out. The video is found by the file next to the XML
named in <source> (by content), else by that file name among the workspace's videos.
Importing the same XML twice is a no-op (its sha256 is recorded on the import's run).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

import conceptgen
from conceptgen.errors import ConfigError, NotFoundError
from conceptgen.export import SkippedItem
from conceptgen.export_formats import CVAT_VERSION, cvat_rle_decode
from conceptgen.hashing import sha256_bytes, sha256_file
from conceptgen.masks import encode_rle, mask_box

CVAT_RUN_MODEL = "cvat-import"


@dataclass(frozen=True)
class CvatTrack:
    """One object of a CVAT task: its visible frames with boxes (video pixels) and masks."""

    label: str
    track_id: int
    tube_id: str | None
    frames: list[int]
    boxes: list[list[float]]
    masks: list[np.ndarray] | None   # bool (height, width) per frame, or None (boxes only)


@dataclass(frozen=True)
class CvatTask:
    path: Path
    sha256: str
    source: str
    width: int
    height: int
    tracks: list[CvatTrack]


@dataclass
class CvatImportReport:
    source_dir: Path
    concepts: list[str] = field(default_factory=list)
    n_examples: int = 0
    skipped: list[SkippedItem] = field(default_factory=list)
    kind: str = "cvat-video"


def is_cvat_video(path: str | Path) -> bool:
    """An .xml file, or a folder holding ``*/annotations.xml`` or ``*.xml`` CVAT files."""
    path = Path(path)
    return (path.is_file() and path.suffix.lower() == ".xml") or (path.is_dir() and bool(cvat_files(path)))


def cvat_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted({*path.glob("*.xml"), *path.glob("*/annotations.xml")})


def _int(element, name: str, where: str) -> int:
    try:
        return int(float(element.get(name)))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: <{element.tag}> lacks a number in {name!r}; export it from CVAT "
                          "as 'CVAT for video 1.1'") from None


def parse_cvat_video(path: str | Path) -> CvatTask:
    """Reads one CVAT for video 1.1 XML (interpolation tracks of boxes and masks)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise ConfigError(f"{path} is not valid XML ({err}): export the task as 'CVAT for video 1.1'") from None
    version = root.findtext("version")
    if root.tag != "annotations" or version != CVAT_VERSION:
        raise ConfigError(f"{path} is not a CVAT {CVAT_VERSION} annotations file (root <{root.tag}>, version "
                          f"{version}): export the task as 'CVAT for video 1.1'")
    task = root.find("meta/task")
    task = root.find("meta/job") if task is None else task
    size = task.find("original_size") if task is not None else None
    if size is None:
        raise ConfigError(f"{path} has no <original_size>: it is a 'CVAT for images' file; export the task "
                          "as 'CVAT for video 1.1'")
    try:
        width, height = int(size.findtext("width")), int(size.findtext("height"))
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: <original_size> needs a width and a height; export the task from CVAT "
                          "as 'CVAT for video 1.1'") from None
    source = task.findtext("source") or ""
    tracks = [_track(t, width, height, str(path)) for t in root.findall("track")]
    return CvatTask(path, sha256_bytes(data), source, width, height, [t for t in tracks if t is not None])


def _track(element, width: int, height: int, where: str) -> CvatTrack | None:
    boxes, masks = element.findall("box"), element.findall("mask")
    shapes = boxes or masks
    attrs = {a.get("name"): (a.text or "") for s in shapes[:1] for a in s.findall("attribute")}
    visible = sorted((s for s in shapes if s.get("outside", "0") != "1"), key=lambda s: _int(s, "frame", where))
    if not visible:
        return None
    frames = [_int(s, "frame", where) for s in visible]
    if boxes:
        return CvatTrack(element.get("label"), int(element.get("id", 0)), attrs.get("tube_id"), frames,
                         [[float(s.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")] for s in visible], None)
    full = []
    for s in visible:
        w, h, left, top = (_int(s, k, where) for k in ("width", "height", "left", "top"))
        canvas = np.zeros((height, width), bool)
        crop = cvat_rle_decode([int(x) for x in s.get("rle", "").replace(" ", "").split(",") if x], w, h)
        canvas[top:top + h, left:left + w] = crop[:max(0, height - top), :max(0, width - left)]
        full.append(canvas)
    return CvatTrack(element.get("label"), int(element.get("id", 0)), attrs.get("tube_id"), frames,
                     [mask_box(m) for m in full], full)


def tubes_of(task: CvatTask) -> list[CvatTrack]:
    """One track per object: a box track takes the masks of the mask track with its
    label and tube_id on the frames both have; a mask track alone stands as it is."""
    masks = {(t.label, t.tube_id): t for t in task.tracks if t.masks is not None and t.tube_id is not None}
    out, used = [], set()
    for t in task.tracks:
        if t.masks is not None:
            continue
        m = masks.get((t.label, t.tube_id))
        if m is not None:
            used.add(id(m))
            by_frame = dict(zip(m.frames, m.masks))
            t = CvatTrack(t.label, t.track_id, t.tube_id, t.frames, t.boxes,
                          [by_frame.get(f, _box_mask(b, task.height, task.width)) for f, b in zip(t.frames, t.boxes)])
        out.append(t)
    out += [t for t in task.tracks if t.masks is not None and id(t) not in used]
    return out


def _box_mask(box, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    mask[y0:y1, x0:x1] = True
    return mask


def import_cvat_video(workspace, path: str | Path, *, user: str | None = None) -> CvatImportReport:
    """Every CVAT XML under ``path`` (a file or folder), in one transaction: tracks -> tubes,
    and per label one new concept version: the tracks, plus the previous version's examples
    on videos none of the files covers (so importing one video's task keeps the others)."""
    from conceptgen.orm import User

    path = Path(path).resolve()
    files = cvat_files(path)
    if not files:
        raise NotFoundError(f"no CVAT XML at {path}: pass an annotations.xml or a folder of them")
    report = CvatImportReport(path)
    tasks = [parse_cvat_video(file) for file in files]
    with workspace.session() as s:
        importer = s.scalar(select(User.id).where(User.name == user)) if user else None
        if user and importer is None:
            raise NotFoundError(f"unknown user '{user}'; create it with `conceptgen user add {user}`")
        tubes: dict[str, list] = {}
        covered: set[int] = set()
        for task in tasks:
            stored = _store_tracks(s, task)
            if isinstance(stored, str):
                report.skipped.append(SkippedItem(str(task.path), stored))
                continue
            video_id, by_label = stored
            covered.add(video_id)
            for name, rows in by_label.items():
                tubes.setdefault(name, []).extend(rows)
        for name in sorted(tubes):
            _new_version(s, name, tubes[name], covered, importer, path)
            report.concepts.append(name)
            report.n_examples += len(tubes[name])
    return report


def _find_video(s, task: CvatTask):
    from conceptgen.orm import Video

    beside = task.path.parent / task.source if task.source else None
    if beside is not None and beside.is_file():
        video = s.scalar(select(Video).where(Video.sha256 == sha256_file(beside)))
        if video is not None:
            return video
    if task.source:
        candidates = [v for v in s.scalars(select(Video).order_by(Video.id)) if Path(v.path).name == task.source]
        if len(candidates) == 1:
            return candidates[0]
    return None


def _store_tracks(s, task: CvatTask):
    """The task's tracks as tubes of one run: (video id, label -> tubes), or why it was skipped."""
    from conceptgen.orm import Run, Tube

    tracks = tubes_of(task)
    if not tracks:
        return "it has no track with a visible shape"
    if s.scalar(select(Run.id).where(Run.model_name == CVAT_RUN_MODEL, Run.config_hash == task.sha256)):
        return "this exact file was imported already"
    video = _find_video(s, task)
    if video is None:
        return (f"its video {task.source or '(no <source>)'} is not in this workspace: put the video next to "
                "the XML or ingest it first (`conceptgen ingest`)")
    run = Run(config={"source": "cvat-video", "file": str(task.path)}, config_hash=task.sha256,
              model_name=CVAT_RUN_MODEL, model_fingerprint="", code_version=conceptgen.__version__, status="finished")
    s.add(run)
    s.flush()
    by_label: dict[str, list] = {}
    for t in tracks:
        masks = t.masks or [_box_mask(b, task.height, task.width) for b in t.boxes]
        tube = Tube(run_id=run.id, video_id=video.id, track_index=t.track_id, start_frame=t.frames[0],
                    end_frame=t.frames[-1] + 1, frame_indices=list(t.frames), kind="cvat",
                    mask_height=task.height, mask_width=task.width, masks_rle=[encode_rle(m) for m in masks],
                    boxes=[list(map(float, b)) for b in t.boxes], area=float(np.mean([m.mean() for m in masks])),
                    score=1.0)
        s.add(tube)
        by_label.setdefault(t.label, []).append(tube)
    s.flush()
    return video.id, by_label


def _new_version(s, name: str, tubes: list, covered: set[int], importer: int | None, source: Path) -> None:
    """Concept ``name`` (created if new) gets a version holding ``tubes`` and the previous
    version's examples that are not on a ``covered`` video."""
    from conceptgen.orm import AuditLog, Concept, ConceptExample, ConceptVersion

    concept = s.scalar(select(Concept).where(Concept.name == name))
    kept = []
    if concept is None:
        concept = Concept(name=name, description=None, source="cvat", status="approved", current_version=0)
        s.add(concept)
        s.flush()
    else:
        previous = s.scalar(select(ConceptVersion).where(ConceptVersion.concept_id == concept.id,
                                                         ConceptVersion.version == concept.current_version))
        kept = [ex for ex in (previous.examples if previous else [])
                if ex.tube is None or ex.tube.video_id not in covered]
    number = (s.scalar(select(func.max(ConceptVersion.version)).where(ConceptVersion.concept_id == concept.id))
              or 0) + 1
    version = ConceptVersion(concept=concept, version=number, description=concept.description, created_by=importer,
                             provenance={"import": {"kind": "cvat-video", "path": str(source),
                                                    "kept_from_version": concept.current_version or None}})
    s.add(version)
    position = 0
    for ex in kept:
        s.add(ConceptExample(concept_version=version, position=position, tube_id=ex.tube_id, clip_path=ex.clip_path,
                             clip_sha256=ex.clip_sha256, variant=ex.variant, meta=dict(ex.meta or {})))
        position += 1
    for tube in tubes:
        s.add(ConceptExample(concept_version=version, position=position, tube_id=tube.id, variant="dynamic"))
        position += 1
    concept.current_version = number
    concept.status = "approved"
    s.flush()
    s.add(AuditLog(user_id=importer, action="import", target_type="concept", target_id=concept.id,
                   after={"name": name, "source": "cvat-video", "from": str(source), "version": number,
                          "n_examples": position, "n_tracks": len(tubes)}))
