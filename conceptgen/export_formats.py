"""Approved concepts in the labelling tools' own formats: FiftyOne and CVAT for video.

Both write the concepts' *tubes* on their source videos (the native export,
:mod:`conceptgen.export`, writes rendered clips instead):

``fiftyone``: a FiftyOne video labels dataset (``fo.types.FiftyOneVideoLabelsDataset``)::

    OUT/
      manifest.json              {"type": "eta.core.datasets.LabeledVideoDataset", "index": [{data, labels}]}
      data/<video>.mp4           each source video that has an approved example, copied
      labels/<video>.json        ETA VideoLabels: per frame (1-based), one object per tube in it:
                                 label = concept name, index = tube id (FiftyOne's track index),
                                 bounding_box relative [0, 1], mask = the tube's mask inside the box,
                                 attribute concept_version
      FORMAT.md

``cvat-video``: one CVAT task per source video::

    OUT/<video>/annotations.xml  CVAT for video 1.1 (interpolation): one <track> of <box> per tube
                                 and, with masks, one <track> of <mask> (CVAT RLE) per tube;
                                 every tube frame is a keyframe, a shape with outside="1" ends
                                 each run of frames; attributes tube_id and concept_version
    OUT/<video>/<video file>     the source video, to create the task from
    OUT/FORMAT.md

Boxes and masks are scaled from the tube's processing resolution to the video's
pixels. Examples without a tube (imported clips) have no source frames and are
skipped with a reason. Both exports are atomic and deterministic, like the native one.
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
from conceptgen.export import ExportReport, SkippedItem, AtomicFolder
from conceptgen.hashing import sha256_bytes
from conceptgen.masks import resize_mask, scale_box
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


def _by_video(labels: list[TubeLabel]) -> dict[str, list[TubeLabel]]:
    """Folder/file stem -> its video's tubes, in a stable order."""
    out: dict[str, list[TubeLabel]] = {}
    for label in sorted(labels, key=lambda lb: (lb.video.sha256, lb.concept, lb.tube_id)):
        stem = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', label.video.path.stem)[:60]}-{label.video.sha256[:8]}"
        out.setdefault(stem, []).append(label)
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
    with AtomicFolder(out_dir) as folder:
        index_bytes = writers[fmt](folder, _by_video(labels), masks=masks)
        folder.write_text("FORMAT.md", FORMAT_DOCS[fmt])
        n_files = len(folder.checksums)
    return ExportReport(out_dir, sorted({lb.concept for lb in labels}), len(labels), n_files,
                        sha256_bytes(index_bytes), skipped)


# --- FiftyOne (ETA VideoLabels) ------------------------------------------------------
def eta_object(label: TubeLabel, i: int, *, masks: bool) -> dict:
    """One DetectedObject of frame ``label.frames[i]``: concept label, tube id as index."""
    x0, y0, x1, y1 = label.relative_box(i)
    obj = {"type": ETA_OBJECT_TYPE, "label": label.concept, "index": label.tube_id,
           "bounding_box": {"top_left": {"x": x0, "y": y0}, "bottom_right": {"x": x1, "y": y1}},
           "attrs": {"attrs": [{"type": ETA_NUMERIC_ATTRIBUTE, "name": "concept_version",
                                "value": label.concept_version}]}}
    if masks:  # FiftyOne's instance masks cover the bounding box only
        obj["mask"] = eta_mask(box_crop(label.mask(i), label.boxes[i]))
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


def box_crop(mask: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The part of ``mask`` inside ``box`` (pixels, x1/y1 exclusive, rounded outwards)."""
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    return np.asarray(mask, dtype=bool)[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)]


def video_labels(labels: list[TubeLabel], *, masks: bool) -> dict:
    """ETA VideoLabels dict of one video: frame numbers are 1-based, as FiftyOne's."""
    frames: dict[int, list[dict]] = {}
    for label in labels:
        for i, f in enumerate(label.frames):
            frames.setdefault(f + 1, []).append(eta_object(label, i, masks=masks))
    return {"frames": {str(n): {"frame_number": n, "objects": {"objects": frames[n]}} for n in sorted(frames)}}


def _write_fiftyone(folder, videos: dict[str, list[TubeLabel]], *, masks: bool) -> bytes:
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
    """Every tube frame as a keyframe; after each run, the same shape with outside=1."""
    def shape(i: int, frame: int, outside: int) -> None:
        attrs = {"frame": str(frame), "outside": str(outside), "occluded": "0", "keyframe": "1"}
        if kind == "box":
            x0, y0, x1, y1 = label.video_box(i)
            attrs.update(xtl=f"{x0:.2f}", ytl=f"{y0:.2f}", xbr=f"{x1:.2f}", ybr=f"{y1:.2f}", z_order="0")
        else:
            mask = label.video_mask(i)
            ys, xs = np.nonzero(mask)
            left, top = (int(xs.min()), int(ys.min())) if len(xs) else (0, 0)
            right, bottom = (int(xs.max()), int(ys.max())) if len(xs) else (0, 0)
            crop = mask[top:bottom + 1, left:right + 1]
            attrs.update(rle=", ".join(map(str, cvat_rle(crop))), left=str(left), top=str(top),
                         width=str(right - left + 1), height=str(bottom - top + 1), z_order="0")
        _shape_attributes(ET.SubElement(track, kind, attrs), label)

    for first, last in _runs(label.frames):
        for i in range(first, last + 1):
            shape(i, label.frames[i], 0)
        if label.frames[last] + 1 < label.video.frame_count:
            shape(last, label.frames[last] + 1, 1)


def cvat_document(labels: list[TubeLabel], source: str, *, masks: bool) -> ET.Element:
    """The <annotations> tree of one video (CVAT for video 1.1, interpolation mode)."""
    video = labels[0].video
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = CVAT_VERSION
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    for tag, text in (("name", f"conceptgen {Path(source).stem}"), ("size", str(video.frame_count)),
                      ("mode", "interpolation"), ("overlap", "0"), ("flipped", "False"),
                      ("start_frame", "0"), ("stop_frame", str(video.frame_count - 1))):
        ET.SubElement(task, tag).text = text
    names = ET.SubElement(task, "labels")
    for concept in sorted({lb.concept for lb in labels}):
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
        for kind in ("box", "mask") if masks else ("box",):
            track = ET.SubElement(root, "track", id=str(track_id), label=label.concept, source="manual")
            _track_shapes(track, label, kind)
            track_id += 1
    return root


def _write_cvat(folder, videos: dict[str, list[TubeLabel]], *, masks: bool) -> bytes:
    index = []
    for stem, labels in videos.items():
        source = labels[0].video.path.name
        folder.copy_file(f"{stem}/{source}", labels[0].video.path)
        tree = cvat_document(labels, source, masks=masks)
        ET.indent(tree)
        xml = b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(tree, encoding="utf-8") + b"\n"
        folder.write_bytes(f"{stem}/annotations.xml", xml)
        index.append(f"{stem}/annotations.xml")
    return _json(index)


def _json(obj) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode("utf-8")


FORMAT_DOCS = {
    "fiftyone": """# conceptgen concepts as a FiftyOne video dataset

Load it with FiftyOne (`pip install 'conceptgen[fiftyone]'`):

    import fiftyone as fo
    dataset = fo.Dataset.from_dir(dataset_dir="THIS_FOLDER", dataset_type=fo.types.FiftyOneVideoLabelsDataset)

Each video's frames carry `detections`: one detection per concept tube in the frame,
`label` = the concept's name, `index` = the tube id (one track per tube), a relative
bounding box, the tube's mask inside the box and the attribute `concept_version`.
""",
    "cvat-video": """# conceptgen concepts as CVAT for video 1.1 tasks

One folder per source video: create a CVAT task from the video file in it, then
upload `annotations.xml` with "Upload annotations" and the format "CVAT 1.1".
Each concept is a label; each tube is one track of boxes (and one of masks), with
the attributes `tube_id` and `concept_version`. Every tube frame is a keyframe; a
shape with outside="1" ends each run of frames.

Fix the tracks in CVAT, export the task as "CVAT for video 1.1" and bring the tracks
back as a new version of each concept:

    conceptgen import-concepts PATH/TO/annotations.xml   (or a folder of them)
""",
}
