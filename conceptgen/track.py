"""Tracking: per-frame Detections -> Tubes (regions followed over consecutive frames).

Recipe, per segmenter source:
1. propagate every live track one frame by warping its mask along the optical flow;
2. on frames the source looked at, match predictions to detections by Hungarian
   assignment on mask IoU; a match replaces the prediction with the detection;
3. unmatched detections start tracks (births); a track missed on more than
   ``max_gap`` looked-at frames ends (death), losing the frames after its first miss;
   shorter gaps are bridged with the warped predictions;
4. link broken tracks of one source (:func:`link_tubes`): a tube that ends and one
   that starts up to ``LinkRules.max_gap`` frames later are one object when the first,
   carried on at its own speed, lands on the second with the same colour (objects
   that stop, blur or pass behind something break tracks on real video);
Then all sources together: drop tubes shorter than ``min_length`` frames and
remove duplicates (spatio-temporal IoU > ``dedup_iou``), keeping the higher score,
then the longer tube.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .masks import box_iou, iou_matrix, mask_box, mask_iou, shift_mask
from .segment import Detection, Tick, lab_frames, optical_flow, warp_mask

__all__ = ["Tube", "LinkRules", "build_tubes", "tracking_work_units", "track_detections", "link_tubes",
           "dedup_tubes", "tube_iou_matrix"]


@dataclass
class Tube:
    """A region over consecutive frames.

    ``frames``: sorted source-video frame indices (consecutive); ``masks``: bool
    ``(H, W)`` per frame; ``boxes``: ``[x0, y0, x1, y1]`` pixels per frame;
    ``kind``: the segmenter that proposed it; ``score``: mean detection score in [0, 1].
    """

    frames: list[int]
    masks: list[np.ndarray]
    boxes: list[list[float]]
    kind: str
    score: float

    @property
    def start(self) -> int:
        return self.frames[0]

    @property
    def end(self) -> int:
        """One past the last frame."""
        return self.frames[-1] + 1

    def __len__(self) -> int:
        return len(self.frames)

    def mask_at(self, frame: int) -> np.ndarray | None:
        i = frame - self.frames[0]
        return self.masks[i] if 0 <= i < len(self.frames) else None

    def mean_area(self) -> float:
        """Mean mask area as a fraction of the frame."""
        return float(np.mean([m.mean() for m in self.masks]))


@dataclass
class _Track:
    frames: list[int]
    masks: list[np.ndarray]
    scores: list[float]
    misses: int = 0
    first_miss: int | None = None

    def to_tube(self, kind: str) -> Tube | None:
        keep = len(self.frames) if self.first_miss is None else self.frames.index(self.first_miss)
        frames, masks = self.frames[:keep], self.masks[:keep]
        while masks and not masks[-1].any():  # a prediction that drifted out of the frame
            frames, masks = frames[:-1], masks[:-1]
        if not frames:
            return None
        return Tube(frames, masks, [mask_box(m) for m in masks], kind, float(np.mean(self.scores)))


@dataclass(frozen=True)
class _Rules:
    max_gap: int
    match_iou: float
    max_jump: float
    shape_iou: float


@dataclass
class _TrackerState:
    live: list[_Track] = field(default_factory=list)
    done: list[_Track] = field(default_factory=list)


def track_detections(detections: Sequence[Sequence[Detection]], flows: np.ndarray, *, kind: str,
                     observed: set[int] | None = None, max_gap: int = 2, match_iou: float = 0.2,
                     max_jump: float = 0.2, shape_iou: float = 0.6, tick: Tick | None = None) -> list[Tube]:
    """Track one source's detections.

    ``detections``: one list per frame (all with ``source == kind``); ``flows``
    ``(T-1, H, W, 2)`` forward flow; ``observed``: frames the source looked at
    (default: every frame). ``match_iou``: least IoU between a warped prediction and
    a detection to match; unmatched pairs whose centroids are within ``max_jump`` of
    the frame diagonal still match if their centroid-aligned IoU reaches ``shape_iou``.
    Returns all tubes, unfiltered. ``tick(1)`` after each frame.
    """
    num_frames = len(detections)
    if observed is None:
        observed = set(range(num_frames))
    state = _TrackerState()
    rules = _Rules(max_gap=max_gap, match_iou=match_iou, max_jump=max_jump, shape_iou=shape_iou)
    for t in range(num_frames):
        if t > 0:
            _propagate(state, t, flows[t - 1])
        if t in observed:
            _associate(state, t, list(detections[t]), rules)
        if tick is not None:
            tick(1)
    tubes = [tr.to_tube(kind) for tr in state.done + state.live]
    return [tube for tube in tubes if tube is not None]


def _propagate(state: _TrackerState, t: int, flow: np.ndarray) -> None:
    still_live = []
    for track in state.live:
        predicted = warp_mask(track.masks[-1], flow)
        track.frames.append(t)
        track.masks.append(predicted)
        (still_live if predicted.any() else state.done).append(track)
    state.live = still_live


def _associate(state: _TrackerState, t: int, dets: list[Detection], rules: "_Rules") -> None:
    """Match live tracks to this frame's detections, then births and deaths."""
    pairs = _match_by_overlap(state.live, dets, rules.match_iou)
    pairs += _match_by_shape(state.live, dets, pairs, rules)
    for r, c in pairs:
        track = state.live[r]
        track.masks[-1] = dets[c].mask
        track.scores.append(dets[c].score)
        track.misses, track.first_miss = 0, None
    matched_tracks, matched_dets = {r for r, _ in pairs}, {c for _, c in pairs}
    still_live = []
    for r, track in enumerate(state.live):
        if r not in matched_tracks:
            track.misses += 1
            track.first_miss = t if track.first_miss is None else track.first_miss
        (state.done if track.misses > rules.max_gap else still_live).append(track)
    state.live = still_live
    for c, det in enumerate(dets):
        if c not in matched_dets:
            state.live.append(_Track([t], [det.mask], [det.score]))


def _match_by_overlap(tracks: list[_Track], dets: list[Detection], min_iou: float) -> list[tuple[int, int]]:
    """Hungarian assignment on IoU between warped predictions and detections."""
    iou = iou_matrix([tr.masks[-1] for tr in tracks], [d.mask for d in dets])
    if not iou.size:
        return []
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= min_iou]


def _match_by_shape(tracks: list[_Track], dets: list[Detection], taken: list[tuple[int, int]],
                    rules: "_Rules") -> list[tuple[int, int]]:
    """Second chance for fast objects that the flow under-estimated: leftover tracks and
    detections whose centroids lie within ``max_jump`` (fraction of the frame diagonal)
    and whose masks overlap by ``shape_iou`` once their centroids are aligned."""
    free_r = [r for r in range(len(tracks)) if r not in {a for a, _ in taken}]
    free_c = [c for c in range(len(dets)) if c not in {b for _, b in taken}]
    if not free_r or not free_c:
        return []
    h, w = dets[0].mask.shape
    reach = rules.max_jump * float(np.hypot(h, w))
    # Compare with the mask before warping: a badly wrong flow also distorts the shape.
    shapes = {r: tracks[r].masks[-2] if len(tracks[r].masks) > 1 else tracks[r].masks[-1] for r in free_r}
    cents_r = [_centroid(shapes[r]) for r in free_r]
    cents_c = [_centroid(dets[c].mask) for c in free_c]
    score = np.zeros((len(free_r), len(free_c)))
    for i, r in enumerate(free_r):
        for j, c in enumerate(free_c):
            shift = cents_c[j] - cents_r[i]
            if np.hypot(*shift) <= reach:
                score[i, j] = mask_iou(_translate(shapes[r], shift), dets[c].mask)
    rows, cols = linear_sum_assignment(-score)
    return [(free_r[i], free_c[j]) for i, j in zip(rows, cols) if score[i, j] >= rules.shape_iou]


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else np.zeros(2)


def _translate(mask: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Mask moved by ``shift`` = (dx, dy) pixels, rounded; pixels moved off the frame are lost."""
    return shift_mask(mask, int(round(shift[0])), int(round(shift[1])))


@dataclass(frozen=True)
class LinkRules:
    """When two tubes of one source are one object seen with a break.

    ``max_gap``: most frames between the first tube's end and the second's start;
    ``min_iou``: least box IoU between the first tube's last mask, moved on at its
    recent speed to the second's start, and the second's first mask;
    ``max_colour``: largest distance (CIELAB) between the two masks' mean colours;
    ``speed_frames``: frames over which the first tube's speed is measured.
    """

    max_gap: int = 12
    min_iou: float = 0.3
    max_colour: float = 12.0
    speed_frames: int = 5


def link_tubes(tubes: Sequence[Tube], lab: np.ndarray, *, rules: LinkRules = LinkRules()) -> list[Tube]:
    """Join tubes of one source that continue each other across a break of up to
    ``rules.max_gap`` frames (see :class:`LinkRules`); the gap is filled with the first
    tube's last mask moved along a straight line to the second's first mask.

    ``lab``: the clip's CIELAB frames ``(T, H, W, 3)``. Links are chosen best IoU first,
    each tube with at most one successor and one predecessor. Deterministic.
    """
    successor: dict[int, int] = {}
    predecessor: dict[int, int] = {}
    for score, a, b in sorted(_link_candidates(tubes, lab, rules), key=lambda c: (-c[0], c[1], c[2])):
        if a not in successor and b not in predecessor:
            successor[a], predecessor[b] = b, a
    chains = []
    for first in range(len(tubes)):
        if first in predecessor:
            continue
        chain = [first]
        while chain[-1] in successor:
            chain.append(successor[chain[-1]])
        chains.append(chain)
    return [_join([tubes[i] for i in chain]) for chain in chains]


def _link_candidates(tubes: Sequence[Tube], lab: np.ndarray, rules: LinkRules) -> list[tuple[float, int, int]]:
    by_start: dict[int, list[int]] = defaultdict(list)
    for j, tube in enumerate(tubes):
        by_start[tube.start].append(j)
    colour = {}

    def mean_colour(k: int, frame: int, mask: np.ndarray) -> np.ndarray:
        if (k, frame) not in colour:
            colour[k, frame] = lab[frame][mask].mean(0) if mask.any() else np.full(3, np.inf)
        return colour[k, frame]

    out = []
    for i, a in enumerate(tubes):
        followers = [j for gap in range(rules.max_gap + 1) for j in by_start.get(a.end + gap, []) if j != i]
        if not followers or not a.masks[-1].any():
            continue
        velocity = _recent_velocity(a, rules.speed_frames)
        for j in followers:
            b = tubes[j]
            carried = _translate(a.masks[-1], velocity * (b.start - a.frames[-1]))
            # Boxes, not masks: motion masks change shape from frame to frame while their extent holds.
            iou = box_iou(mask_box(carried), b.boxes[0]) if carried.any() else 0.0
            if iou < rules.min_iou:
                continue
            distance = float(np.linalg.norm(mean_colour(i, a.frames[-1], a.masks[-1]) - mean_colour(j, b.start, b.masks[0])))
            if distance <= rules.max_colour:
                out.append((iou, i, j))
    return out


def _recent_velocity(tube: Tube, frames: int) -> np.ndarray:
    """Centroid displacement per frame over the tube's last ``frames`` frames (pixels, (dx, dy))."""
    k = min(frames, len(tube))
    if k < 2:
        return np.zeros(2)
    return (_centroid(tube.masks[-1]) - _centroid(tube.masks[-k])) / (k - 1)


def _join(chain: Sequence[Tube]) -> Tube:
    if len(chain) == 1:
        return chain[0]
    frames, masks = list(chain[0].frames), list(chain[0].masks)
    weighted = chain[0].score * len(chain[0])
    for b in chain[1:]:
        last, start = masks[-1], _centroid(masks[-1])
        steps = b.start - frames[-1]
        shift = _centroid(b.masks[0]) - start
        for s in range(1, steps):
            frames.append(frames[-1] + 1)
            masks.append(_translate(last, shift * s / steps))
        frames += b.frames
        masks += b.masks
        weighted += b.score * len(b)
    return Tube(frames, masks, [mask_box(m) for m in masks], chain[0].kind,
                float(weighted / sum(len(t) for t in chain)))


def tube_iou_matrix(tubes_a: Sequence[Tube], tubes_b: Sequence[Tube]) -> np.ndarray:
    """Spatio-temporal IoU ``(N, M)``: per-frame mask IoU summed over shared frames,
    divided by the number of frames in the union of the two spans."""
    n, m = len(tubes_a), len(tubes_b)
    total = np.zeros((n, m))
    if n == 0 or m == 0:
        return total
    all_frames = sorted({f for tube in list(tubes_a) + list(tubes_b) for f in tube.frames})
    for f in all_frames:
        ia = [i for i, tube in enumerate(tubes_a) if tube.start <= f < tube.end]
        ib = [j for j, tube in enumerate(tubes_b) if tube.start <= f < tube.end]
        if ia and ib:
            total[np.ix_(ia, ib)] += iou_matrix([tubes_a[i].mask_at(f) for i in ia], [tubes_b[j].mask_at(f) for j in ib])
    span = np.array([[len(set(a.frames) | set(b.frames)) for b in tubes_b] for a in tubes_a], dtype=np.float64)
    return total / span


def dedup_tubes(tubes: Sequence[Tube], *, dedup_iou: float = 0.5) -> list[Tube]:
    """Greedy non-maximum suppression: best (score, then length) first; a tube whose
    spatio-temporal IoU with a kept tube exceeds ``dedup_iou`` is dropped."""
    order = sorted(range(len(tubes)), key=lambda i: (-tubes[i].score, -len(tubes[i]), tubes[i].start, i))
    ranked = [tubes[i] for i in order]
    overlap = tube_iou_matrix(ranked, ranked)
    kept: list[int] = []
    for i in range(len(ranked)):
        if all(overlap[i, j] <= dedup_iou for j in kept):
            kept.append(i)
    return [ranked[i] for i in kept]


def tracking_work_units(detections: Sequence[Sequence[Detection]]) -> int:
    """The ``tick`` units :func:`build_tubes` reports: one per frame per source."""
    return len(detections) * max(1, len({d.source for dets in detections for d in dets}))


def build_tubes(frames: np.ndarray, detections: Sequence[Sequence[Detection]], *, flows: np.ndarray | None = None,
                observed: Mapping[str, set[int]] | None = None, min_length: int = 4, max_gap: int = 2,
                dedup_iou: float = 0.5, match_iou: float = 0.2, max_jump: float = 0.2,
                shape_iou: float = 0.6, link: LinkRules | None = LinkRules(),
                tick: Tick | None = None) -> list[Tube]:
    """Tubes from per-frame detections of one or more segmenters.

    ``frames`` ``(T, H, W, 3)`` uint8; ``detections``: ``T`` lists (mixed sources);
    ``flows`` ``(T-1, H, W, 2)``, computed from ``frames`` when not given;
    ``observed``: per source, the frames it looked at (e.g. SAM keyframes; default:
    every frame). Each source is tracked on its own and its broken tracks linked
    (``link=None``: not linked), then tubes shorter than ``min_length`` frames are dropped and duplicates across all
    sources removed. Output is sorted by (start frame, kind, -score): deterministic.
    """
    if len(detections) != len(frames):
        raise ValueError(f"need one detection list per frame: {len(detections)} lists for {len(frames)} frames")
    if flows is None:
        flows = optical_flow(frames)
    by_source: dict[str, list[list[Detection]]] = defaultdict(lambda: [[] for _ in range(len(frames))])
    for t, dets in enumerate(detections):
        for det in dets:
            by_source[det.source][t].append(det)
    lab = lab_frames(np.asarray(frames)) if link is not None and by_source else None
    tubes: list[Tube] = []
    for source in sorted(by_source):
        seen = None if observed is None else observed.get(source)
        tracked = track_detections(by_source[source], flows, kind=source, observed=seen, max_gap=max_gap,
                                   match_iou=match_iou, max_jump=max_jump, shape_iou=shape_iou, tick=tick)
        if link is not None:
            tracked = link_tubes(tracked, lab, rules=link)
        tubes.extend(tube for tube in tracked if len(tube) >= min_length)
    tubes = dedup_tubes(tubes, dedup_iou=dedup_iou)
    return sorted(tubes, key=lambda tube: (tube.start, tube.kind, -tube.score, tube.boxes[0]))
