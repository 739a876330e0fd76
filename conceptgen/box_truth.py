"""Hand-made box ground truth for real clips, and how tubes are scored against it.

The truth file (``benchmarks/data/real_clips_boxes.json``) holds, per clip, one box
``[x0, y0, x1, y1]`` (original-video pixels, x1/y1 exclusive) per keyframe for every
person, moving body part and moved or handled object; ``part_of`` ties a body part to
its person. A tube is compared on the keyframes where at least one object is labelled
(*labelled keyframes*), with its boxes scaled from the processing size to the video's.

Definitions (the README's figures use these):
  * a tube-frame **lies on** an object when at least half of the tube's box is inside
    the object's box; its **best match** is, of the objects it lies on, the one with
    the highest box IoU (a hand tube matches the hand, not the person around it);
  * a tube **is on an object** when its tube-frames lie on some object on at least half
    of its labelled keyframes; otherwise it is **background**;
  * an object's **coverage**: the largest share of its labelled frames on which one
    tube's box has IoU >= 0.5 with the object's (a tube that follows half the object
    and then loses it covers 0.5);
  * **object recall**: the share of objects with coverage >= 0.5;
  * an object's **detection coverage**: the share of its labelled frames on which some
    single-frame detection's box has IoU >= 0.5 with the object's. It bounds what any
    tracker can make of those detections: an object below 0.5 cannot be recalled;
  * **identity switches**: of the tube-frames of tubes on an object, the share whose
    best match belongs to another thing than the tube's majority; a thing is a person
    with their parts, or an object (so hand -> person is not a switch, girl -> boy is).
The maths is pure; :func:`load_ground_truth` is the only I/O.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from conceptgen.errors import DataError
from conceptgen.masks import box_iou

__all__ = ["TruthObject", "ClipTruth", "TubeBoxes", "ClipScore", "load_ground_truth", "box_iou",
           "score_clip", "pool_scores", "scale_box", "detection_coverage"]

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TruthObject:
    id: str
    category: str  # person | body_part | animal | object
    boxes: dict[int, Box]  # keyframe -> box, original-video pixels
    part_of: str | None = None


@dataclass(frozen=True)
class ClipTruth:
    clip: str
    width: int
    height: int
    frames: int
    objects: tuple[TruthObject, ...]

    @property
    def labelled_frames(self) -> set[int]:
        return {f for o in self.objects for f in o.boxes}

    def up_to(self, num_frames: int | None) -> "ClipTruth":
        """The truth of the clip's first ``num_frames`` frames (objects not labelled there dropped)."""
        if num_frames is None:
            return self
        objects = tuple(TruthObject(o.id, o.category, {f: b for f, b in o.boxes.items() if f < num_frames}, o.part_of)
                        for o in self.objects)
        kept = {o.id for o in objects if o.boxes}
        # a part whose person is not labelled in these frames stands on its own
        objects = tuple(TruthObject(o.id, o.category, o.boxes, o.part_of if o.part_of in kept else None)
                        for o in objects if o.id in kept)
        return ClipTruth(self.clip, self.width, self.height, min(self.frames, num_frames), objects)

    def thing_of(self, object_id: str) -> str:
        """The top-level thing an object belongs to (a part's person, else itself)."""
        by_id = {o.id: o for o in self.objects}
        seen = set()
        while by_id[object_id].part_of and object_id not in seen:
            seen.add(object_id)
            object_id = by_id[object_id].part_of
        return object_id


@dataclass(frozen=True)
class TubeBoxes:
    """A tube's boxes in original-video pixels, keyed by frame."""

    boxes: dict[int, Box]
    background: bool = False

    @classmethod
    def from_record(cls, frame_indices: Sequence[int], boxes: Sequence[Sequence[float]], mask_size: Sequence[int],
                    video_size: tuple[int, int], *, background: bool = False) -> "TubeBoxes":
        """From a stored tube (boxes at ``mask_size`` [h, w]) to a ``video_size`` (w, h) video."""
        return cls({int(f): scale_box(b, mask_size, video_size) for f, b in zip(frame_indices, boxes)}, background)


def scale_box(box: Sequence[float], mask_size: Sequence[int], video_size: tuple[int, int]) -> Box:
    """A box at the processing size ``mask_size`` [h, w] in a ``video_size`` (w, h) video's pixels."""
    sx, sy = video_size[0] / mask_size[1], video_size[1] / mask_size[0]
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


@dataclass
class ClipScore:
    clip: str
    n_objects: int
    n_recalled: int
    n_tubes: int
    n_background: int  # tubes on no object
    n_matched_frames: int
    n_switched_frames: int
    recalled: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    coverage: dict[str, float] = field(default_factory=dict)  # object id -> its coverage

    @property
    def object_recall(self) -> float:
        return self.n_recalled / self.n_objects if self.n_objects else 1.0

    @property
    def background_fraction(self) -> float:
        return self.n_background / self.n_tubes if self.n_tubes else 0.0

    @property
    def identity_switch_fraction(self) -> float:
        return self.n_switched_frames / self.n_matched_frames if self.n_matched_frames else 0.0


def load_ground_truth(path: str | Path) -> dict[str, ClipTruth]:
    """Clip file name -> its truth."""
    try:
        data = json.loads(Path(path).read_text())
        clips = data["clips"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"cannot read box ground truth {path}: {err}; expected the format of "
                        "benchmarks/data/real_clips_boxes.json") from err
    out = {}
    for name, c in clips.items():
        objects = tuple(TruthObject(o["id"], o["category"], {int(k): tuple(map(float, b)) for k, b in o["boxes"].items()},
                                    o.get("part_of")) for o in c["objects"])
        out[name] = ClipTruth(name, int(c["width"]), int(c["height"]), int(c["frames"]), objects)
    return out


def _inside_fraction(inner: Box, outer: Box) -> float:
    iw = max(0.0, min(inner[2], outer[2]) - max(inner[0], outer[0]))
    ih = max(0.0, min(inner[3], outer[3]) - max(inner[1], outer[1]))
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    return iw * ih / area if area > 0 else 0.0


def best_match(box: Box, truth: ClipTruth, frame: int) -> str | None:
    """The object a tube box at ``frame`` lies on (>= half inside), highest IoU first."""
    best, best_iou = None, -1.0
    for o in truth.objects:
        gt = o.boxes.get(frame)
        if gt is not None and _inside_fraction(box, gt) >= 0.5:
            iou = box_iou(box, gt)
            if iou > best_iou:
                best, best_iou = o.id, iou
    return best


def score_clip(truth: ClipTruth, tubes: Sequence[TubeBoxes]) -> ClipScore:
    """Recall, background and identity switches of one clip's tubes (see the module doc)."""
    labelled = truth.labelled_frames
    coverage = {o.id: max((_coverage(t, o) for t in tubes), default=0.0) for o in truth.objects}
    recalled = [o.id for o in truth.objects if coverage[o.id] >= 0.5]
    n_background = n_matched = n_switched = 0
    for tube in tubes:
        frames = [f for f in tube.boxes if f in labelled]
        matches = [best_match(tube.boxes[f], truth, f) for f in frames]
        things = [truth.thing_of(m) for m in matches if m is not None]
        if not frames or len(things) * 2 < len(frames):
            n_background += 1
            continue
        majority = Counter(things).most_common(1)[0][0]
        n_matched += len(things)
        n_switched += sum(t != majority for t in things)
    return ClipScore(truth.clip, len(truth.objects), len(recalled), len(tubes), n_background, n_matched, n_switched,
                     recalled=recalled, missed=[o.id for o in truth.objects if o.id not in recalled],
                     coverage=coverage)


def detection_coverage(truth: ClipTruth, frame_boxes: dict[int, Sequence[Box]]) -> dict[str, float]:
    """Object id -> its detection coverage (module doc); ``frame_boxes``: frame -> the
    boxes detected on it, in the video's pixels (a frame not given has none)."""
    return {o.id: sum(any(box_iou(d, b) >= 0.5 for d in frame_boxes.get(f, ())) for f, b in o.boxes.items())
            / len(o.boxes) if o.boxes else 0.0 for o in truth.objects}


def _coverage(tube: TubeBoxes, obj: TruthObject) -> float:
    hits = sum(box_iou(tube.boxes[f], b) >= 0.5 for f, b in obj.boxes.items() if f in tube.boxes)
    return hits / len(obj.boxes) if obj.boxes else 0.0


def pool_scores(scores: Sequence[ClipScore]) -> dict[str, float]:
    """Figures over all clips: counts pooled (not a mean of per-clip ratios)."""
    n_obj = sum(s.n_objects for s in scores)
    n_tubes = sum(s.n_tubes for s in scores)
    n_frames = sum(s.n_matched_frames for s in scores)
    coverages = [c for s in scores for c in s.coverage.values()]
    return {"object_recall": sum(s.n_recalled for s in scores) / n_obj if n_obj else 1.0,
            "mean_object_coverage": float(sum(coverages) / len(coverages)) if coverages else 1.0,
            "background_fraction": sum(s.n_background for s in scores) / n_tubes if n_tubes else 0.0,
            "identity_switch_fraction": sum(s.n_switched_frames for s in scores) / n_frames if n_frames else 0.0}
