"""CVAT for video 1.1 tracks back into the workspace as new versions of the concepts.

People fix the tubes of ``conceptgen export --format cvat-video`` in CVAT, export the
task as "CVAT for video 1.1" and run ``conceptgen import-concepts FILE.xml`` (or a folder
of them). The import reads like a diff, in three steps:

1. **parse** each XML (:func:`parse_cvat_video`): its declared labels, and per object
   (the box, polygon and mask tracks that share a label and a ``tube_id`` attribute) the
   visible shapes per frame. Bad input (a malformed number, a frame outside the task, a
   label the file does not declare) is one :class:`ConfigError` naming the element.
2. **plan** (:func:`plan_cvat_import`): each object becomes a tube against its *base*,
   the stored tube its ``tube_id`` names: a frame whose polygon and box are as exported
   keeps the stored mask exactly; an edited polygon becomes the mask; a box moved
   without its polygon moves the mask with it, a resized one crops it (growing is
   reported: the mask cannot know the new pixels). Per concept that the file declares,
   its tubes on the file's video are then compared with the current version's, by
   content: tubes added, removed, edited, unchanged. Labels are matched to concepts by
   name, through ``--rename OLD=NEW``, or by the documented rule: a label that is no
   concept here, whose tracks all name tubes of one concept the file does not declare,
   is that concept renamed. Any other new label is refused unless ``allow_new_labels``.
3. **apply** (:func:`import_cvat_video`): in one transaction, only concepts whose tubes
   changed get a new version (so importing equal content again, whatever its bytes,
   changes nothing); renames rename.

The video is found by the file next to the XML named in ``<source>`` (by content), else
by that file name among the workspace's videos.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

import conceptgen
from conceptgen.errors import ConfigError, NotFoundError
from conceptgen.export import SkippedItem
from conceptgen.export_formats import (CVAT_VERSION, SourceVideo, TubeLabel, cvat_files, cvat_rle_decode,
                                       cvat_source)
from conceptgen.hashing import sha256_bytes, sha256_file
from conceptgen.masks import encode_rle, mask_box, mask_outline, outline_mask, shift_mask
from conceptgen.progress import progress
from conceptgen.tubes import TubeRecord

CVAT_RUN_MODEL = "cvat-import"
READ_SHAPES = ("box", "polygon", "mask")
BOX_TOLERANCE = 0.006   # px: the export writes two decimals


# --- parsed file ---------------------------------------------------------------------
@dataclass
class CvatObject:
    """One object of a CVAT task: its label, the tube it came from (``tube_id`` attribute)
    and per visible frame its box, polygon (pixel-corner points) and/or mask."""

    label: str
    tube_id: int | None
    track_ids: list[int]
    boxes: dict[int, list[float]] = field(default_factory=dict)
    polygons: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def frames(self) -> list[int]:
        return sorted({*self.boxes, *self.polygons, *self.masks})

    def describe(self) -> str:
        tube = f", tube {self.tube_id}" if self.tube_id is not None else ""
        return f"track {self.track_ids[0]} (label '{self.label}'{tube})"


@dataclass
class CvatTask:
    path: Path
    sha256: str
    source: str
    width: int
    height: int
    size: int | None            # frames in the task, when the file says
    labels: list[str]           # declared in <meta>
    objects: list[CvatObject]
    ignored: Counter = field(default_factory=Counter)   # shape kind -> count not read


# --- plan --------------------------------------------------------------------------------
@dataclass
class NewTube:
    """A tube the import would store: video pixels, one mask and box per frame."""

    obj: CvatObject
    frames: list[int]
    boxes: list[list[float]]
    masks: list[np.ndarray]


@dataclass
class LabelPlan:
    """What an import does to one concept."""

    concept: str                     # its name after the import
    renamed_from: str | None = None
    new: bool = False
    added: int = 0
    removed: int = 0
    edited: int = 0
    unchanged: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.new or self.added or self.removed or self.edited)

    def line(self) -> str:
        head = self.concept + (f" (renamed from {self.renamed_from})" if self.renamed_from else "") + \
            (" (new concept)" if self.new else "")
        what = f"{self.added} tube(s) added, {self.removed} removed, {self.edited} edited, {self.unchanged} unchanged"
        return f"{head}: {what}" + ("" if self.changed else " -> no new version")


@dataclass
class CvatImportReport:
    source_dir: Path
    concepts: list[str] = field(default_factory=list)   # those given a new version
    n_examples: int = 0
    skipped: list[SkippedItem] = field(default_factory=list)
    plan: list[LabelPlan] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)
    kind: str = "cvat-video"

    def lines(self) -> list[str]:
        """The plan, one line per label, and the shapes that were not read."""
        out = [p.line() for p in self.plan] + [f"{p.concept}: {n}" for p in self.plan for n in p.notes]
        if self.ignored:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.ignored.items()))
            out.append(f"ignored {sum(self.ignored.values())} shape(s) that are neither boxes, polygons nor "
                       f"masks: {kinds}")
        return out


# --- parsing -------------------------------------------------------------------------------
def is_cvat_video(path: str | Path) -> bool:
    """An .xml file, or a folder holding ``*.xml`` or ``*/*.xml`` CVAT files."""
    path = Path(path)
    return (path.is_file() and path.suffix.lower() == ".xml") or (path.is_dir() and bool(cvat_files(path)))


def _number(element, name: str, where: str) -> float:
    text = element.get(name)
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value):
        raise ConfigError(f"{where}: <{element.tag}> at frame {element.get('frame', '?')} has {name}="
                          f"{text!r}, not a number; fix it or export the task again from CVAT") from None
    return value


def _points(element, where: str) -> list[tuple[float, float]]:
    text = element.get("points") or ""
    try:
        pts = [tuple(float(v) for v in pair.split(",")) for pair in text.split(";") if pair.strip()]
        if any(len(p) != 2 or not all(np.isfinite(p)) for p in pts):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{where}: <{element.tag}> at frame {element.get('frame', '?')} has points="
                          f"{text[:40]!r}, not 'x,y;x,y;...' numbers; fix it or export the task again "
                          "from CVAT") from None
    return pts  # type: ignore[return-value]


def parse_cvat_video(path: str | Path) -> CvatTask:
    """Reads one CVAT for video 1.1 XML (interpolation tracks of boxes, polygons and masks)."""
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
    meta = root.find("meta")
    size = next(iter(meta.iter("original_size")), None) if meta is not None else None
    if size is None:
        raise ConfigError(f"{path} has no <original_size>: it is a 'CVAT for images' file; export the task "
                          "as 'CVAT for video 1.1'")
    try:
        width, height = int(size.findtext("width")), int(size.findtext("height"))
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: <original_size> needs a width and a height; export the task from CVAT "
                          "as 'CVAT for video 1.1'") from None
    task = next((t for t in (meta.find("task"), meta.find("job")) if t is not None), meta)
    n_frames = None
    if (task.findtext("size") or "").strip().isdigit():
        n_frames = int(task.findtext("size"))
    labels = [(lab.findtext("name") or "").strip() for lab in meta.iter("label")]
    out = CvatTask(path, sha256_bytes(data), cvat_source(meta), width, height, n_frames,
                   [n for n in dict.fromkeys(labels) if n], [])
    objects: dict[tuple, CvatObject] = {}
    for track in root.findall("track"):
        _read_track(track, out, objects, str(path))
    out.ignored.update(el.tag for image in root.findall("image") for el in image)
    out.objects = list(objects.values())
    return out


def _read_track(track, task: CvatTask, objects: dict[tuple, CvatObject], where: str) -> None:
    label, track_id = track.get("label") or "", int(_number(track, "id", where)) if track.get("id") else -1
    here = f"{where}: track {track_id}"
    if task.labels and label not in task.labels:
        raise ConfigError(f"{here} has label {label!r}, which the file does not declare (declared: "
                          f"{', '.join(task.labels)}); fix the label in CVAT and export again")
    shapes = [s for s in track if s.tag != "attribute"]
    task.ignored.update(s.tag for s in shapes if s.tag not in READ_SHAPES)
    shapes = [s for s in shapes if s.tag in READ_SHAPES]
    if not shapes:
        return
    attrs = {a.get("name"): (a.text or "").strip() for s in shapes for a in s.findall("attribute")}
    tube_id = int(attrs["tube_id"]) if attrs.get("tube_id", "").isdigit() else None
    key = (label, tube_id) if tube_id is not None else (label, "track", track_id)
    obj = objects.setdefault(key, CvatObject(label, tube_id, []))
    obj.track_ids.append(track_id)
    for s in shapes:
        frame = int(_number(s, "frame", here))
        if frame < 0 or (task.size is not None and frame >= task.size):
            raise ConfigError(f"{where}: {obj.describe()} has a shape at frame {frame}, outside the task's "
                              f"{task.size} frames (0-{(task.size or 1) - 1}); delete it or export the task again")
        if s.get("outside", "0") == "1":
            continue
        if s.tag == "box":
            obj.boxes[frame] = [_number(s, k, here) for k in ("xtl", "ytl", "xbr", "ybr")]
        elif s.tag == "polygon":
            obj.polygons[frame] = _points(s, here)
        else:
            w, h, left, top = (int(_number(s, k, here)) for k in ("width", "height", "left", "top"))
            try:
                runs = [int(x) for x in (s.get("rle") or "").replace(" ", "").split(",") if x]
            except ValueError:
                raise ConfigError(f"{here}: <mask> at frame {frame} has an rle that is not comma-separated "
                                  "numbers; export the task again from CVAT") from None
            canvas = np.zeros((task.height, task.width), bool)
            crop = cvat_rle_decode(runs, w, h)[:max(0, task.height - top), :max(0, task.width - left)]
            canvas[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
            obj.masks[frame] = canvas


# --- from an object to a tube ----------------------------------------------------------------
def object_tube(obj: CvatObject, base: TubeLabel | None, height: int, width: int,
                notes: list[str]) -> NewTube:
    """The tube ``obj`` stands for, in video pixels (``height`` x ``width``). Frame by frame,
    against ``base`` (the exported tube, or None): shapes as exported keep the base mask;
    an edited polygon (or mask) is the new mask; a box moved alone moves the mask, a box
    resized alone crops it (a grown side is noted: the mask is not grown)."""
    base_at = {f: i for i, f in enumerate(base.frames)} if base is not None else {}
    frames, boxes, masks = [], [], []
    moved = cropped = grown = 0
    for f in obj.frames:
        i = base_at.get(f)
        base_mask = base.video_mask(i) if i is not None else None
        base_box = [round(v, 2) for v in base.video_box(i)] if i is not None else None
        drawn = _drawn_mask(obj, f, height, width)
        box = obj.boxes.get(f)
        polygon_edited = drawn is not None and (base_mask is None or not _same_outline(obj, f, base_mask))
        box_edited = box is not None and base_box is not None and not np.allclose(box, base_box, atol=BOX_TOLERANCE)
        if polygon_edited:
            mask = drawn
        elif base_mask is not None:
            mask = base_mask
        else:
            mask = drawn if drawn is not None else _box_mask(box, height, width)
        if box_edited and not polygon_edited and base_mask is not None:
            dx0, dy0, dx1, dy1 = (b - a for a, b in zip(base_box, box))
            if abs(dx1 - dx0) < 0.5 and abs(dy1 - dy0) < 0.5:   # same size: moved
                mask = shift_mask(mask, int(round(dx0)), int(round(dy0)))
                moved += 1
            else:
                mask = mask & _box_mask(box, height, width)
                cropped += 1
                grown += int(dx0 < -0.5 or dy0 < -0.5 or dx1 > 0.5 or dy1 > 0.5)
        if box is None or (polygon_edited and not box_edited):
            box = mask_box(mask)
        frames.append(f)
        boxes.append([float(v) for v in box])
        masks.append(mask)
    if moved or cropped:
        notes.append(f"{obj.describe()}: box moved without its polygon on {moved} frame(s) (mask moved), "
                     f"resized on {cropped} (mask cropped to the box)"
                     + (f"; on {grown} of them the box grew, draw the polygon to grow the mask" if grown else ""))
    return NewTube(obj, frames, boxes, masks)


def _drawn_mask(obj: CvatObject, frame: int, height: int, width: int) -> np.ndarray | None:
    if frame in obj.polygons:
        return outline_mask(obj.polygons[frame], height, width)
    return obj.masks.get(frame)


def _same_outline(obj: CvatObject, frame: int, base_mask: np.ndarray) -> bool:
    """The frame's polygon (or mask) is the one the export wrote for ``base_mask``."""
    if frame in obj.polygons:
        ours = mask_outline(base_mask)
        theirs = obj.polygons[frame]
        return len(ours) == len(theirs) and np.allclose(np.asarray(ours, float), np.asarray(theirs, float),
                                                          atol=BOX_TOLERANCE)
    return np.array_equal(obj.masks[frame], base_mask)


def _box_mask(box, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    if box is None:
        return mask
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    mask[y0:y1, x0:x1] = True
    return mask


def same_tube(new: NewTube, stored: TubeLabel) -> bool:
    """Equal content: frames, boxes and masks (at the video's pixels)."""
    if new.frames != stored.frames:
        return False
    return all(np.allclose(b, stored.video_box(i), atol=BOX_TOLERANCE) and np.array_equal(m, stored.video_mask(i))
               for i, (b, m) in enumerate(zip(new.boxes, new.masks)))


# --- import ------------------------------------------------------------------------------------
@dataclass
class _TaskPlan:
    task: CvatTask
    video_id: int
    # per declared label: (label, kept tube ids, edited: (old tube id, NewTube), added NewTubes)
    changes: list[tuple[str, set[int], list[tuple[int, NewTube]], list[NewTube]]]


def import_cvat_video(workspace, path: str | Path, *, user: str | None = None, plan_only: bool = False,
                      rename: dict[str, str] | None = None, allow_new_labels: bool = False) -> CvatImportReport:
    """Every CVAT XML under ``path`` (a file or folder), in one transaction. With
    ``plan_only`` nothing is written: the report's ``plan`` says what would change."""
    from conceptgen.orm import User

    path = Path(path).resolve()
    files = cvat_files(path)
    if not files:
        raise NotFoundError(f"no CVAT XML at {path}: pass a CVAT for video 1.1 .xml or a folder of them")
    report = CvatImportReport(path)
    tasks = [parse_cvat_video(file) for file in progress(files, desc="read CVAT XML", unit="file")]
    for task in tasks:
        report.ignored.update(task.ignored)
    with workspace.session() as s:
        importer = s.scalar(select(User.id).where(User.name == user)) if user else None
        if user and importer is None:
            raise NotFoundError(f"unknown user '{user}'; create it with `conceptgen user add {user}`")
        names = _match_labels(s, tasks, dict(rename or {}), allow_new_labels)
        plans: dict[str, LabelPlan] = {}
        for label, (concept_name, renamed_from, new) in sorted(names.items()):
            plans[label] = LabelPlan(concept_name, renamed_from, new)
        task_plans = []
        for task in progress(tasks, desc="compare with the stored tubes", unit="task"):
            tp = _plan_task(s, task, names, plans, report)
            if tp is not None:
                task_plans.append(tp)
        report.plan = [plans[k] for k in sorted(plans, key=lambda k: plans[k].concept)]
        if plan_only:
            s.rollback()
            return report
        _apply(s, task_plans, names, plans, importer, path, report)
    return report


def _match_labels(s, tasks: list[CvatTask], rename: dict[str, str], allow_new: bool) -> dict[str, tuple]:
    """label in the files -> (concept name after the import, renamed from, new concept).
    Refuses (one line) a label that is no concept, no rename and not allowed to be new."""
    from conceptgen.orm import Concept, ConceptExample, ConceptVersion

    existing = set(s.scalars(select(Concept.name)))
    for old, new in rename.items():
        if old not in existing:
            raise ConfigError(f"--rename {old}={new}: there is no concept {old!r} (concepts: "
                              f"{', '.join(sorted(existing)) or 'none'})")
        if new in existing:
            raise ConfigError(f"--rename {old}={new}: a concept {new!r} exists already; retire it or pick another name")
    renamed_to = {new: old for old, new in rename.items()}
    declared = {label for task in tasks for label in (task.labels or [o.label for o in task.objects])}
    for old, new in rename.items():
        if old in declared:
            raise ConfigError(f"--rename {old}={new}: the files still declare the label {old!r}; rename it in "
                              "CVAT (the project's labels) and export again, or drop --rename")
        if new not in declared:
            raise ConfigError(f"--rename {old}={new}: no file declares a label {new!r} (labels: "
                              f"{', '.join(sorted(declared)) or 'none'})")
    out = {}
    for label in sorted(declared):
        if label in renamed_to:
            out[label] = (label, renamed_to[label], False)
        elif label in existing:
            out[label] = (label, None, False)
        else:
            tubes = {o.tube_id for t in tasks for o in t.objects if o.label == label}
            owners = set(s.scalars(
                select(Concept.name).join(ConceptVersion, ConceptVersion.concept_id == Concept.id)
                .join(ConceptExample, ConceptExample.concept_version_id == ConceptVersion.id)
                .where(ConceptVersion.version == Concept.current_version,
                       ConceptExample.tube_id.in_([t for t in tubes if t is not None])))) if None not in tubes else set()
            claimed = {v[1] for v in out.values()}
            if len(owners) == 1 and next(iter(owners)) not in declared | claimed and tubes:
                out[label] = (label, next(iter(owners)), False)   # the documented rename rule
            elif allow_new:
                out[label] = (label, None, True)
            else:
                raise ConfigError(f"label {label!r} is not a concept of this workspace (concepts: "
                                  f"{', '.join(sorted(existing)) or 'none'}); pass --rename OLD={label} if it "
                                  "is a renamed concept, or --allow-new-labels to create it")
    return out


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


def _stored_label(tube, video) -> TubeLabel:
    return TubeLabel("", 0, SourceVideo(Path(video.path), video.sha256, video.width or 0,
                                                   video.height or 0, video.frame_count or 0),
                     TubeRecord.from_row(tube))


def _plan_task(s, task: CvatTask, names: dict, plans: dict[str, LabelPlan], report: CvatImportReport):
    """Compare the task's objects with the current versions' tubes on its video."""
    from conceptgen.orm import Concept, ConceptVersion, Tube

    video = _find_video(s, task)
    if video is None:
        report.skipped.append(SkippedItem(str(task.path), f"its video {task.source or '(no <source>)'} is not in "
                                          "this workspace: put the video next to the XML or ingest it first "
                                          "(`conceptgen ingest`)"))
        return None
    count = video.frame_count or task.size
    for obj in task.objects:
        late = [f for f in obj.frames if count is not None and f >= count]
        if late:
            raise ConfigError(f"{task.path}: {obj.describe()} has a shape at frame {late[0]}, but the video "
                              f"{Path(video.path).name} has {count} frames (0-{count - 1}); delete the shape or "
                              "check that the XML belongs to this video")
    if (video.width, video.height) not in ((task.width, task.height), (None, None)):
        raise ConfigError(f"{task.path}: <original_size> {task.width}x{task.height} differs from its video "
                          f"{Path(video.path).name} ({video.width}x{video.height}); export the task again from CVAT")
    changes = []
    for label in (task.labels or sorted({o.label for o in task.objects})):
        concept_name, renamed_from, new = names[label]
        plan = plans[label]
        concept = None if new else s.scalar(select(Concept).where(Concept.name == (renamed_from or concept_name)))
        current = []
        if concept is not None:
            version = s.scalar(select(ConceptVersion).where(ConceptVersion.concept_id == concept.id,
                                                            ConceptVersion.version == concept.current_version))
            current = [ex.tube for ex in (version.examples if version else [])
                       if ex.tube is not None and ex.tube.video_id == video.id and ex.variant == "dynamic"]
        stored = {t.id: _stored_label(t, video) for t in current}
        kept, edited, added = set(), [], []
        for obj in (o for o in task.objects if o.label == label):
            base_row = s.get(Tube, obj.tube_id) if obj.tube_id is not None else None
            base = _stored_label(base_row, video) if base_row is not None and base_row.video_id == video.id else None
            tube = object_tube(obj, base, task.height, task.width, plan.notes)
            if not tube.frames:
                continue
            same = next((tid for tid, lb in stored.items() if tid not in kept and same_tube(tube, lb)), None)
            if same is not None:
                kept.add(same)
            elif base is not None and base.tube_id in stored and base.tube_id not in kept:
                kept.add(base.tube_id)   # reserved: replaced by its edit
                edited.append((base.tube_id, tube))
            else:
                added.append(tube)
        plan.unchanged += len(kept) - len(edited)
        plan.edited += len(edited)
        plan.added += len(added)
        plan.removed += len(stored) - len(kept)
        changes.append((label, kept - {e[0] for e in edited}, edited, added))
    return _TaskPlan(task, video.id, changes)


def _apply(s, task_plans: list[_TaskPlan], names: dict, plans: dict[str, LabelPlan], importer, source: Path,
           report: CvatImportReport) -> None:
    from conceptgen.orm import AuditLog, Concept, Run, Tube

    run = None
    new_examples: dict[str, dict] = {}   # label -> {"covered": set(video ids), "keep": set, "edit": {old: id}, "add": [ids]}
    for tp in task_plans:
        index = 0
        for label, kept, edited, added in tp.changes:
            if not plans[label].changed:
                continue
            if run is None:
                run = Run(config={"source": "cvat-video", "path": str(source)}, config_hash=tp.task.sha256,
                          model_name=CVAT_RUN_MODEL, model_fingerprint="", code_version=conceptgen.__version__,
                          status="finished")
                s.add(run)
                s.flush()

            def store(tube: NewTube) -> int:
                nonlocal index
                row = Tube(run_id=run.id, video_id=tp.video_id, track_index=index, start_frame=tube.frames[0],
                           end_frame=tube.frames[-1] + 1, frame_indices=list(tube.frames), kind="cvat",
                           mask_height=tp.task.height, mask_width=tp.task.width,
                           masks_rle=[encode_rle(m) for m in tube.masks], boxes=tube.boxes,
                           area=float(np.mean([m.mean() for m in tube.masks])), score=1.0)
                index += 1
                s.add(row)
                s.flush()
                return row.id

            entry = new_examples.setdefault(label, {"covered": set(), "keep": set(), "edit": {}, "add": []})
            entry["covered"].add(tp.video_id)
            entry["keep"] |= kept
            entry["edit"].update({old: store(t) for old, t in edited})
            entry["add"] += [store(t) for t in added]
    for label, entry in sorted(new_examples.items()):
        concept_name, renamed_from, new = names[label]
        _new_version(s, renamed_from or concept_name, entry, importer, source, new)
        report.concepts.append(concept_name)
    for label, (concept_name, renamed_from, _new) in sorted(names.items()):
        if renamed_from:
            concept = s.scalar(select(Concept).where(Concept.name == renamed_from))
            concept.name = concept_name
            s.add(AuditLog(user_id=importer, action="rename", target_type="concept", target_id=concept.id,
                           before={"name": renamed_from}, after={"name": concept_name, "from": str(source)}))
            if concept_name not in report.concepts:
                report.concepts.append(concept_name)
    s.flush()
    report.n_examples = sum(len(e["keep"]) + len(e["edit"]) + len(e["add"]) for e in new_examples.values())


def _new_version(s, name: str, entry: dict, importer: int | None, source: Path, new: bool) -> None:
    """Concept ``name`` (created if ``new``) gets a version: the previous version's examples,
    less those on the covered videos that the import removed, edited ones swapped in place,
    and the added tubes at the end."""
    from conceptgen.orm import AuditLog, Concept, ConceptExample, ConceptVersion

    concept = s.scalar(select(Concept).where(Concept.name == name))
    previous = []
    if concept is None:
        concept = Concept(name=name, description=None, source="cvat", status="approved", current_version=0)
        s.add(concept)
        s.flush()
    else:
        version = s.scalar(select(ConceptVersion).where(ConceptVersion.concept_id == concept.id,
                                                        ConceptVersion.version == concept.current_version))
        previous = list(version.examples) if version else []
    number = (s.scalar(select(func.max(ConceptVersion.version)).where(ConceptVersion.concept_id == concept.id))
              or 0) + 1
    version = ConceptVersion(concept=concept, version=number, description=concept.description, created_by=importer,
                             provenance={"import": {"kind": "cvat-video", "path": str(source),
                                                    "kept_from_version": concept.current_version or None}})
    s.add(version)
    rows = []
    for ex in previous:
        on_covered = ex.tube is not None and ex.tube.video_id in entry["covered"]
        if not on_covered or ex.tube_id in entry["keep"]:
            rows.append((ex.tube_id, ex))
        elif ex.tube_id in entry["edit"] and ex.variant == "dynamic":
            rows.append((entry["edit"][ex.tube_id], None))
    rows += [(tube_id, None) for tube_id in entry["add"]]
    for position, (tube_id, ex) in enumerate(rows):
        if ex is None:
            s.add(ConceptExample(concept_version=version, position=position, tube_id=tube_id, variant="dynamic"))
        else:
            s.add(ConceptExample(concept_version=version, position=position, tube_id=ex.tube_id,
                                 clip_path=ex.clip_path, clip_sha256=ex.clip_sha256, variant=ex.variant,
                                 meta=dict(ex.meta or {})))
    concept.current_version = number
    concept.status = "approved"
    s.flush()
    s.add(AuditLog(user_id=importer, action="import", target_type="concept", target_id=concept.id,
                   after={"name": name, "source": "cvat-video", "from": str(source), "version": number,
                          "n_examples": len(rows)}))
