"""Approved concepts in the labelling tools' own formats: FiftyOne and CVAT for video.

Both write the concepts' *tubes* on their source videos (the native export,
:mod:`conceptgen.export`, writes rendered clips instead):

``fiftyone``: a FiftyOne video labels dataset (``fo.types.FiftyOneVideoLabelsDataset``)::

    OUT/
      manifest.json              {"type": "eta.core.datasets.LabeledVideoDataset", "index": [{data, labels}]}
      data/<video>.mp4           each source video that has an approved example, copied
      labels/<video>.json        ETA VideoLabels: per frame (1-based), one object per tube in it:
                                 label = concept name, index = tube id (FiftyOne's track index),
                                 bounding_box relative [0, 1] on whole video pixels, mask = the
                                 tube's video-resolution mask inside the box, attribute concept_version
      FORMAT.md, SHA256SUMS

``cvat-video``: one CVAT task per source video::

    OUT/<task>/<task>.xml        CVAT for video 1.1 (interpolation): per tube one <track> of <box>
                                 and one <track> of <polygon> (its mask's pixel-edge outline;
                                 see masks.mask_outline for parts and holes); every tube frame is a
                                 keyframe, a shape with outside="1" ends each run of frames;
                                 attributes tube_id and concept_version. Every task declares
                                 the export's full label set, so one reader takes all tasks.
    OUT/<task>/<video file>      the source video, to create the task from
    OUT/FORMAT.md, OUT/SHA256SUMS

Boxes and masks are scaled from the tube's processing resolution to the video's
pixels. Examples without a tube (imported clips) have no source frames and are
skipped with a reason. Both exports are atomic and deterministic, like the native one;
``SHA256SUMS`` (``sha256sum -c``) lets ``conceptgen verify`` check them.
"""
from __future__ import annotations

import base64
import io
import json
import re
import zlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from conceptgen.errors import ConfigError
from conceptgen.concepts import load_concept_records
from conceptgen.export import (CHECKSUMS, AtomicFolder, ExportReport, FileProblem, SkippedItem, VerifyReport,
                               check_files, checksum_lines, export_kind, read_checksum_lines, verify_native_export)
from conceptgen.hashing import sha256_bytes
from conceptgen.masks import mask_box, mask_outline, resize_mask, scale_box
from conceptgen.tubes import TubeRecord

FORMATS = ("native", "fiftyone", "cvat-video")
CVAT_VERSION = "1.1"
ETA_DATASET_TYPE = "eta.core.datasets.LabeledVideoDataset"
ETA_OBJECT_TYPE = "eta.core.objects.DetectedObject"
ETA_NUMERIC_ATTRIBUTE = "eta.core.data.NumericAttribute"
LABEL_ATTRIBUTES = ("tube_id", "concept_version")   # CVAT attributes on every shape


# --- one typed record per exported tube --------------------------------------------
@dataclass(frozen=True)
class SourceVideo:
    path: Path
    sha256: str
    width: int
    height: int
    frame_count: int


@dataclass(frozen=True)
class TubeLabel:
    """One approved example's tube: where the concept is, frame by frame, on its source video.
    The tube's ``boxes`` and masks are at its ``mask_size`` (h, w), the processing resolution."""

    concept: str
    concept_version: int
    video: SourceVideo
    tube: TubeRecord

    @property
    def tube_id(self) -> int:
        return int(self.tube.id)

    @property
    def frames(self) -> list[int]:
        return self.tube.frame_indices

    @property
    def boxes(self) -> list[list[float]]:
        return self.tube.boxes

    @property
    def masks_rle(self) -> list[dict]:
        return self.tube.masks_rle

    @property
    def mask_size(self) -> tuple[int, int]:
        return int(self.tube.mask_size[0]), int(self.tube.mask_size[1])

    def video_box(self, i: int) -> list[float]:
        """Box of frame ``i`` (position in ``frames``) in video pixels."""
        h, w = self.mask_size
        return scale_box(self.boxes[i], self.video.width / w, self.video.height / h)

    def relative_box(self, i: int) -> list[float]:
        """Box of frame ``i`` as fractions of the frame: [x0, y0, x1, y1] in [0, 1]."""
        h, w = self.mask_size
        x0, y0, x1, y1 = self.boxes[i]
        return [x0 / w, y0 / h, x1 / w, y1 / h]

    def pixel_box(self, i: int) -> tuple[int, int, int, int]:
        """Integer box (x0, y0, x1, y1; x1/y1 exclusive) in video pixels of frame ``i``:
        :meth:`video_box` rounded outwards, grown to hold the video mask, inside the frame."""
        x0, y0, x1, y1 = self.video_box(i)
        mx0, my0, mx1, my1 = mask_box(self.video_mask(i))
        if mx1 > mx0:
            x0, y0, x1, y1 = min(x0, mx0), min(y0, my0), max(x1, mx1), max(y1, my1)
        w, h = self.video.width, self.video.height
        x0, y0 = min(max(0, int(np.floor(x0))), w - 1), min(max(0, int(np.floor(y0))), h - 1)
        return x0, y0, min(w, max(x0 + 1, int(np.ceil(x1)))), min(h, max(y0 + 1, int(np.ceil(y1))))

    def mask(self, i: int) -> np.ndarray:
        """bool (mask h, mask w) of frame ``i``."""
        return self.tube.mask(i)

    def video_mask(self, i: int) -> np.ndarray:
        """bool (video height, video width) of frame ``i``."""
        return resize_mask(self.mask(i), self.video.height, self.video.width)


def tube_labels(workspace, names: Sequence[str] | str) -> tuple[list[TubeLabel], list[SkippedItem]]:
    """Every tube-based example of the named (or all approved) concepts' current versions."""
    from conceptgen.videoio import probe_video

    labels, skipped = [], []
    for record in load_concept_records(workspace, names):
        for ex in record.examples:
            if ex.variant != "dynamic":
                continue
            if ex.tube is None:
                skipped.append(SkippedItem(f"{record.name} example {ex.position}",
                                           "an imported clip has no source video frames to label; "
                                           "only tube-based examples go to labelling tools"))
                continue
            v = ex.video
            width, height, count = v.get("width"), v.get("height"), v.get("frame_count")
            if not (width and height and count):
                info = probe_video(v["path"])
                width, height, count = info.width, info.height, info.frame_count
            labels.append(TubeLabel(record.name, record.version,
                                    SourceVideo(Path(v["path"]), v["sha256"], int(width), int(height), int(count)),
                                    ex.tube))
    return labels, skipped


def task_stem(video: SourceVideo) -> str:
    """The export's name for a video (CVAT task folder and XML, FiftyOne data/labels files)."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', video.path.stem)[:60]}-{video.sha256[:8]}"


def _by_video(labels: list[TubeLabel]) -> dict[str, list[TubeLabel]]:
    """Folder/file stem -> its video's tubes, in a stable order."""
    out: dict[str, list[TubeLabel]] = {}
    for label in sorted(labels, key=lambda lb: (lb.video.sha256, lb.concept, lb.tube_id)):
        out.setdefault(task_stem(label.video), []).append(label)
    return out


def export_for_tool(workspace, names: Sequence[str] | str, out_dir: str | Path, fmt: str, *,
                    masks: bool = True, overwrite: bool = False) -> ExportReport:
    """Writes ``fmt`` (fiftyone | cvat-video) for the concepts; see the module docstring."""
    writers = {"fiftyone": _write_fiftyone, "cvat-video": _write_cvat}
    if fmt not in writers:
        raise ConfigError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"{out_dir} already exists; choose another --out or pass --overwrite")
    labels, skipped = tube_labels(workspace, names)
    label_names = sorted({lb.concept for lb in labels})
    with AtomicFolder(out_dir) as folder:
        index_bytes = writers[fmt](folder, _by_video(labels), masks=masks, label_names=label_names)
        folder.write_text("FORMAT.md", FORMAT_DOCS[fmt])
        folder.write_text(CHECKSUMS, checksum_lines(folder.checksums))
        n_files = len(folder.checksums)
    return ExportReport(out_dir, sorted({lb.concept for lb in labels}), len(labels), n_files,
                        sha256_bytes(index_bytes), skipped)


# --- FiftyOne (ETA VideoLabels) ------------------------------------------------------
# Readers draw a relative box at int(width * x) (ETA's truncation, which FiftyOne uses):
# corners written as pixel + EPS land on that pixel whatever the float round-off.
BOX_EPS = 1e-6


def relative_corner(pixel: int, size: int) -> float:
    """A box corner on pixel edge ``pixel`` of ``size`` as a fraction that truncating readers
    (``int(size * x)``, also after FiftyOne's x + (x1 - x) round trip) read back as ``pixel``."""
    return (pixel + BOX_EPS) / size


def eta_object(label: TubeLabel, i: int, *, masks: bool) -> dict:
    """One DetectedObject of frame ``label.frames[i]``: concept label, tube id as index.
    The box is the tube's box in video pixels rounded outwards (grown to the mask if the
    mask reaches past it) and the mask is the video-resolution mask inside it, so a reader
    that draws the mask in the box puts it on exactly the tube's pixels."""
    x0, y0, x1, y1 = label.pixel_box(i)
    w, h = label.video.width, label.video.height
    obj = {"type": ETA_OBJECT_TYPE, "label": label.concept, "index": label.tube_id,
           "bounding_box": {"top_left": {"x": relative_corner(x0, w), "y": relative_corner(y0, h)},
                            "bottom_right": {"x": relative_corner(x1, w), "y": relative_corner(y1, h)}},
           "attrs": {"attrs": [{"type": ETA_NUMERIC_ATTRIBUTE, "name": "concept_version",
                                "value": label.concept_version}]}}
    if masks:  # FiftyOne's instance masks cover the bounding box only
        obj["mask"] = eta_mask(label.video_mask(i)[y0:y1, x0:x1])
    return obj


def eta_mask(mask: np.ndarray) -> str:
    """ETA's serialized numpy array (``eta.core.serial.serialize_numpy_array``): the .npy
    bytes, zlib-compressed, base64 (ASCII). Deterministic for the same mask."""
    with io.BytesIO() as buffer:
        np.save(buffer, np.ascontiguousarray(mask, dtype=bool), allow_pickle=False)
        return base64.b64encode(zlib.compress(buffer.getvalue())).decode("ascii")


def eta_mask_decode(text: str) -> np.ndarray:
    with io.BytesIO(zlib.decompress(base64.b64decode(text.encode("ascii")))) as buffer:
        return np.load(buffer, allow_pickle=False)


def video_labels(labels: list[TubeLabel], *, masks: bool) -> dict:
    """ETA VideoLabels dict of one video: frame numbers are 1-based, as FiftyOne's."""
    frames: dict[int, list[dict]] = {}
    for label in labels:
        for i, f in enumerate(label.frames):
            frames.setdefault(f + 1, []).append(eta_object(label, i, masks=masks))
    return {"frames": {str(n): {"frame_number": n, "objects": {"objects": frames[n]}} for n in sorted(frames)}}


def _write_fiftyone(folder, videos: dict[str, list[TubeLabel]], *, masks: bool, label_names: list[str]) -> bytes:
    index = []
    for stem, labels in videos.items():
        data = f"data/{stem}{labels[0].video.path.suffix.lower()}"
        folder.copy_file(data, labels[0].video.path)
        folder.write_bytes(f"labels/{stem}.json", _json(video_labels(labels, masks=masks)))
        index.append({"data": data, "labels": f"labels/{stem}.json"})
    manifest = _json({"type": ETA_DATASET_TYPE, "description": "conceptgen approved concepts", "index": index})
    folder.write_bytes("manifest.json", manifest)
    return manifest


# --- CVAT for video 1.1 ----------------------------------------------------------------
def cvat_rle(mask: np.ndarray) -> list[int]:
    """CVAT's mask RLE: run lengths alternating from background, row by row over the mask."""
    flat = np.asarray(mask, dtype=bool).ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def cvat_rle_decode(rle: Sequence[int], width: int, height: int) -> np.ndarray:
    """bool (height, width) from :func:`cvat_rle`'s runs (first run is background)."""
    values = np.repeat(np.arange(len(rle)) % 2 == 1, np.asarray(rle, dtype=np.int64))
    if values.size != width * height:
        raise ConfigError(f"a CVAT mask RLE covers {values.size} pixels, not {width} x {height}: "
                          "re-export the annotations from CVAT")
    return values.reshape(height, width)


def cvat_points(points: Sequence[Sequence[float]]) -> str:
    """CVAT's polygon ``points`` attribute: "x0,y0;x1,y1;..." with two decimals."""
    return ";".join(f"{float(x):.2f},{float(y):.2f}" for x, y in points)


def cvat_box(box: Sequence[float]) -> dict[str, str]:
    return dict(zip(("xtl", "ytl", "xbr", "ybr"), (f"{float(v):.2f}" for v in box)))


def _shape_attributes(element, label: TubeLabel) -> None:
    for name, value in (("tube_id", label.tube_id), ("concept_version", label.concept_version)):
        ET.SubElement(element, "attribute", name=name).text = str(value)


def _runs(frames: list[int]) -> list[tuple[int, int]]:
    """(position of the first frame, position of the last frame) of each run of consecutive frames."""
    runs, start = [], 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or frames[i] != frames[i - 1] + 1:
            runs.append((start, i - 1))
            start = i
    return runs


def _track_shapes(track, label: TubeLabel, kind: str) -> None:
    """Every tube frame as a keyframe; after each run, the same shape with outside=1.
    A polygon track leaves out the frames whose mask is empty (a polygon needs points)."""
    geometry: dict[int, dict[str, str]] = {}
    for i, frame in enumerate(label.frames):
        if kind == "box":
            geometry[frame] = cvat_box(label.video_box(i))
        else:
            points = mask_outline(label.video_mask(i))
            if points:
                geometry[frame] = {"points": cvat_points(points)}
    frames = sorted(geometry)
    for first, last in _runs(frames):
        for f in frames[first:last + 1] + ([frames[last] + 1] if frames[last] + 1 < label.video.frame_count else []):
            outside = int(f not in geometry)
            attrs = {"frame": str(f), "outside": str(outside), "occluded": "0", "keyframe": "1",
                     **geometry[frames[last] if outside else f], "z_order": "0"}
            _shape_attributes(ET.SubElement(track, kind, attrs), label)


def cvat_document(labels: list[TubeLabel], source: str, *, masks: bool, label_names: Sequence[str]) -> ET.Element:
    """The <annotations> tree of one video (CVAT for video 1.1, interpolation mode). Every
    task declares all of ``label_names`` with the same attributes, so that one reader
    (Datumaro, a CVAT project) can take all the tasks together."""
    video = labels[0].video
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = CVAT_VERSION
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    for tag, text in (("name", f"conceptgen {Path(source).stem}"), ("size", str(video.frame_count)),
                      ("mode", "interpolation"), ("overlap", "0"), ("flipped", "False"),
                      ("start_frame", "0"), ("stop_frame", str(video.frame_count - 1))):
        ET.SubElement(task, tag).text = text
    names = ET.SubElement(task, "labels")
    for concept in label_names:
        label = ET.SubElement(names, "label")
        ET.SubElement(label, "name").text = concept
        ET.SubElement(label, "type").text = "any"
        attributes = ET.SubElement(label, "attributes")
        for name in LABEL_ATTRIBUTES:
            attribute = ET.SubElement(attributes, "attribute")
            for tag, text in (("name", name), ("mutable", "False"), ("input_type", "text"),
                              ("default_value", ""), ("values", "")):
                ET.SubElement(attribute, tag).text = text
    size = ET.SubElement(task, "original_size")
    ET.SubElement(size, "width").text = str(video.width)
    ET.SubElement(size, "height").text = str(video.height)
    ET.SubElement(task, "source").text = source
    track_id = 0
    for label in labels:
        for kind in ("box", "polygon") if masks else ("box",):
            track = ET.SubElement(root, "track", id=str(track_id), label=label.concept, source="manual")
            _track_shapes(track, label, kind)
            track_id += 1
    return root


def cvat_xml(root: ET.Element) -> bytes:
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def _write_cvat(folder, videos: dict[str, list[TubeLabel]], *, masks: bool, label_names: list[str]) -> bytes:
    index = []
    for stem, labels in videos.items():
        source = labels[0].video.path.name
        folder.copy_file(f"{stem}/{source}", labels[0].video.path)
        # named after the task, not annotations.xml: Datumaro makes each file's stem a subset,
        # so the tasks' frames stay apart when it reads the whole folder
        folder.write_bytes(f"{stem}/{stem}.xml",
                           cvat_xml(cvat_document(labels, source, masks=masks, label_names=label_names)))
        index.append(f"{stem}/{stem}.xml")
    return _json(index)


# --- verify -----------------------------------------------------------------------------
def verify_export(export_dir: str | Path) -> VerifyReport:
    """Check an export of any format (:func:`conceptgen.export.export_kind`): for the native
    one the manifest's own checksum and every file's sha256; for FiftyOne and CVAT exports
    their ``SHA256SUMS`` and that every video they reference is there. ``notes`` say what
    could not be checked."""
    root = Path(export_dir)
    kind = export_kind(root)
    return verify_native_export(root) if kind == "native" else verify_tool_export(root, kind)


def verify_tool_export(root: Path, kind: str) -> VerifyReport:
    """A FiftyOne or CVAT export: every file of its SHA256SUMS (and no other), and every
    video it references. Without SHA256SUMS (a folder CVAT wrote, say) only the latter."""
    problems: list[FileProblem] = []
    notes: list[str] = []
    sums = root / CHECKSUMS
    if sums.is_file():
        files = read_checksum_lines(sums.read_text())
        problems += check_files(root, files, also_listed={CHECKSUMS})
        n_files = len(files) + 1
    else:
        notes.append(f"no {CHECKSUMS}: not written by `conceptgen export` (or written over since), so file "
                     "checksums cannot be checked; checked only that the referenced videos exist")
        n_files = sum(1 for p in root.rglob("*") if p.is_file())
    for rel in _referenced_videos(root, kind, problems):
        if not (root / rel).is_file():
            problems.append(FileProblem(rel, "missing video"))
    return VerifyReport(root, n_files, problems, kind, notes)


def _referenced_videos(root: Path, kind: str, problems: list[FileProblem]) -> list[str]:
    """Relative paths of the videos (and FiftyOne label files) the export's index files name."""
    if kind == "fiftyone":
        try:
            index = json.loads((root / "manifest.json").read_bytes())["index"]
            return [entry[key] for entry in index for key in ("data", "labels")]
        except (ValueError, KeyError, TypeError):
            problems.append(FileProblem("manifest.json", "unreadable manifest"))
            return []
    out = []
    for xml in cvat_files(root):
        rel = xml.relative_to(root).as_posix()
        try:
            meta = ET.parse(xml).getroot().find("meta")
        except ET.ParseError:
            problems.append(FileProblem(rel, "not valid XML"))
            continue
        source = cvat_source(meta)
        if not source:
            problems.append(FileProblem(rel, "names no video (<source>)"))
        else:
            out.append((xml.parent / source).relative_to(root).as_posix())
    return out


def cvat_files(path: Path) -> list[Path]:
    """The CVAT for video XML files of an export folder (``TASK/TASK.xml``, or XML at its top), or the file itself."""
    if path.is_file():
        return [path]
    return sorted({*path.glob("*.xml"), *path.glob("*/*.xml")})


def cvat_source(meta) -> str:
    """The video file name of a CVAT XML's <meta>: <task><source> (CVAT 2.x), <job><source>,
    or <meta><source> (older CVAT)."""
    if meta is None:
        return ""
    for path in ("task/source", "job/source", "source"):
        text = (meta.findtext(path) or "").strip()
        if text:
            return text
    return ""


def _json(obj) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode("utf-8")


FORMAT_DOCS = {
    "fiftyone": """# conceptgen concepts as a FiftyOne video dataset

Load it with FiftyOne (any environment that has `fiftyone` and its database):

    import fiftyone as fo
    dataset = fo.Dataset.from_dir(dataset_dir="THIS_FOLDER", dataset_type=fo.types.FiftyOneVideoLabelsDataset)

Each video's frames carry `detections`: one detection per concept tube in the frame,
`label` = the concept's name, `index` = the tube id (one track per tube), a relative
bounding box on whole video pixels (each corner + 1e-6 px, so that readers that truncate
`width * x`, as FiftyOne does, land on the pixel), the tube's mask at the video's
resolution inside the box (FiftyOne draws it on exactly the tube's pixels) and the
attribute `concept_version`. `SHA256SUMS` holds every file's sha256 (`sha256sum -c
SHA256SUMS`, or `conceptgen verify THIS_FOLDER`).
""",
    "cvat-video": """# conceptgen concepts as CVAT for video 1.1 tasks

One folder per source video, holding the video and `<folder name>.xml` (CVAT for video
1.1, interpolation mode). Every file declares the same labels, one per exported concept,
each with two text attributes, `tube_id` and `concept_version`; so Datumaro reads the whole
folder in one call (`dm.Dataset.import_from("THIS_FOLDER", "cvat")`, one subset per task).

## In CVAT
1. Create a project (or task) with the labels of the XML: for each concept a label of
   type "any" with the text attributes `tube_id` and `concept_version` (the `<labels>`
   of any XML here, as CVAT's "Raw" label constructor JSON or by hand).
2. Create one task per folder from its video file; "Upload annotations" with the
   format "CVAT 1.1" and the folder's XML.
3. Fix the tracks, then "Export task dataset" as "CVAT for video 1.1".

## What the tracks hold
- Each tube is two tracks with the same label and `tube_id`: a track of boxes, and a track
  of polygons (the mask's outline along pixel edges, so filling it gives back the mask
  exactly). A mask of several parts, or with holes, is still one polygon per frame: each
  further outline is joined to the first by a zero-width cut walked there and back, so
  even-odd and non-zero filling (COCO's rasteriser, Datumaro, CVAT) give the parts and
  the holes. Frames whose mask is empty have no polygon.
- Every tube frame is a keyframe; a shape with `outside="1"` ends each run of frames.
- CVAT keeps box and polygon tracks whole, every keyframe. It does not keep mask
  tracks (it reads only the first keyframe of each, CVAT issue #6264), which is why
  masks travel as polygons.

## Back into conceptgen

    conceptgen import-concepts --plan PATH/TO/FOLDER-OR-XML   # what would change, per label
    conceptgen import-concepts PATH/TO/FOLDER-OR-XML

An edited polygon becomes the new mask; a box moved without its polygon moves the mask
(resized: crops it; the report says so); a deleted track removes the tube; a renamed label
renames its concept (`--rename OLD=NEW`, or found by the tracks' `tube_id`s); only
concepts whose tubes changed get a new version, and importing the same content again
changes nothing. A label that is no concept is refused unless `--allow-new-labels`.
""",
}
