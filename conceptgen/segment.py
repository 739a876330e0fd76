"""Region proposals: frames in, per-frame instance masks with scores out.

Every segmenter implements :class:`Segmenter`; ``build_segmenters`` turns the
``--segmenter`` option (``"motion,supervoxel,foreground"``) into instances. Dense optical
flow is computed once per clip by :func:`optical_flow` and may be shared with the
tracker (``flows=`` everywhere), so no frame pair is processed twice.

Frames are ``(T, H, W, 3)`` uint8 RGB; flows are ``(T-1, H, W, 2)`` float32 in
pixels per frame, ``flows[t][y, x] = (dx, dy)`` moving pixel (x, y) of frame t to
frame t+1.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

Tick = Callable[[int], Any]  # a stage's progress callback: tick(n) after n more units of work


def _no_tick(n: int = 1) -> None:
    return None

import cv2
import numpy as np

from .errors import ConfigError, ModelError
from .masks import mask_box

__all__ = [
    "Detection",
    "Segmenter",
    "MotionSegmenter",
    "SupervoxelSegmenter",
    "ForegroundSegmenter",
    "SamSegmenter",
    "SEGMENTER_NAMES",
    "optical_flow",
    "warp_mask",
    "camera_motion",
    "warp_error",
    "merge_similar_regions",
    "connected_parts",
    "boundary_contrast",
    "lab_frames",
    "build_segmenters",
    "default_segmenter_names",
    "run_segmenters",
]


@dataclass
class Detection:
    """One instance mask on one frame.

    ``mask`` is ``bool (H, W)`` at the frames' resolution; ``score`` is in [0, 1];
    ``source`` names the segmenter (``motion`` | ``supervoxel`` | ``sam``).
    """

    frame: int
    mask: np.ndarray
    score: float
    source: str


# --------------------------------------------------------------------------- flow helpers


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ConfigError(
            f"frames must be a uint8 array (T, H, W, 3), got {frames.dtype} {frames.shape}; decode with videoio.read_frames"
        )
    return frames


def optical_flow(frames: np.ndarray, *, tick: Tick | None = None) -> np.ndarray:
    """Dense forward flow between consecutive frames, robust to colour-only edges.

    ``(T, H, W, 3)`` uint8 -> ``(T-1, H, W, 2)`` float32, pixels per frame.
    OpenCV Farnebäck runs on the luminance and on the two CIELAB opponent-colour
    channels (an object can have the luminance of its background); per pixel, the
    candidate flow with the lowest local colour warping error wins. Deterministic.
    ``tick(1)`` is called after each frame pair.
    """
    tick = tick or _no_tick
    frames = _check_frames(frames)
    t, h, w = frames.shape[:3]
    flows = np.zeros((max(t - 1, 0), h, w, 2), dtype=np.float32)
    if t < 2:
        return flows
    lab = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2LAB) for f in frames])  # uint8 L, a, b
    colour = lab.astype(np.float32)
    for i in range(t - 1):
        candidates = [_farneback(lab[i, ..., c], lab[i + 1, ..., c]) for c in range(3)]
        errors = [cv2.blur(warp_error(colour[i], colour[i + 1], flow), (5, 5)) for flow in candidates]
        best = np.argmin(np.stack(errors), axis=0)
        flows[i] = np.take_along_axis(np.stack(candidates), best[None, ..., None], axis=0)[0]
        tick(1)
    return flows


def _farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Farnebäck flow ``(H, W, 2)`` between two uint8 single-channel images (3 levels, 9-px window)."""
    return cv2.calcOpticalFlowFarneback(np.ascontiguousarray(a), np.ascontiguousarray(b), None, pyr_scale=0.5,
                                        levels=3, winsize=9, iterations=3, poly_n=5, poly_sigma=1.1, flags=0)


def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs, ys


def warp_mask(mask: np.ndarray, flow: np.ndarray, *, backward: bool = False) -> np.ndarray:
    """Move a mask along a forward flow field.

    ``mask`` bool ``(H, W)`` on frame t, ``flow`` ``(H, W, 2)`` from t to t+1 ->
    the mask on frame t+1. Uses ``cv2.remap`` with the flow sampled at the target
    pixel (a first-order inverse, exact for locally constant motion). With
    ``backward=True`` the mask is on frame t+1 and is pulled back to frame t
    (exact: ``out(x) = mask(x + flow(x))``).
    """
    h, w = mask.shape
    xs, ys = _pixel_grid(h, w)
    sign = 1.0 if backward else -1.0
    map_x = xs + sign * flow[..., 0]
    map_y = ys + sign * flow[..., 1]
    warped = cv2.remap(mask.astype(np.float32), map_x, map_y, interpolation=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped >= 0.5


def camera_motion(flow: np.ndarray, *, step: int = 4, ransac_px: float = 1.0, seed: int = 0) -> np.ndarray:
    """Flow explained by the camera: a similarity transform fitted by RANSAC.

    ``flow`` ``(H, W, 2)`` -> ``(H, W, 2)`` float32 model flow. Samples the flow on
    a grid every ``step`` pixels; falls back to zero motion if the fit fails.
    """
    h, w = flow.shape[:2]
    xs, ys = _pixel_grid(h, w)
    src = np.stack([xs[::step, ::step].ravel(), ys[::step, ::step].ravel()], axis=1)
    dst = src + flow[::step, ::step].reshape(-1, 2)
    cv2.setRNGSeed(seed)  # RANSAC draws from OpenCV's global RNG
    affine, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=ransac_px,
                                            maxIters=2000, confidence=0.995, refineIters=10)
    if affine is None:
        return np.zeros_like(flow, dtype=np.float32)
    model_x = affine[0, 0] * xs + affine[0, 1] * ys + affine[0, 2] - xs
    model_y = affine[1, 0] * xs + affine[1, 1] * ys + affine[1, 2] - ys
    return np.stack([model_x, model_y], axis=-1).astype(np.float32)


def warp_error(image: np.ndarray, image_next: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Per-pixel colour distance ``(H, W)`` between ``image`` (frame t, ``(H, W, C)`` float)
    and ``image_next`` (frame t+1) sampled where ``flow`` ``(H, W, 2)`` says each pixel went."""
    h, w = image.shape[:2]
    xs, ys = _pixel_grid(h, w)
    predicted = cv2.remap(image_next, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return np.linalg.norm(predicted - image, axis=-1)


# --------------------------------------------------------------------------- interface


class Segmenter(ABC):
    """Extension point: frames ``(T, H, W, 3)`` uint8 -> one list of Detections per frame.

    A segmenter that only looks at keyframes returns empty lists elsewhere and lists
    its keyframes in :meth:`keyframes`; the tracker propagates masks between them.
    """

    name: str = ""

    @abstractmethod
    def segment(self, frames: np.ndarray, *, flows: np.ndarray | None = None,
                tick: Tick | None = None) -> list[list[Detection]]:
        """Detections per frame. ``flows`` (``(T-1, H, W, 2)``) may be passed to avoid recomputing flow.
        ``tick(n)`` reports progress: :meth:`work_units` units in all."""

    def keyframes(self, num_frames: int) -> list[int]:
        """Frames this segmenter looks at (all of them unless overridden)."""
        return list(range(num_frames))

    def work_units(self, num_frames: int) -> int:
        """How many ``tick`` units :meth:`segment` reports for a clip of ``num_frames`` frames."""
        return len(self.keyframes(num_frames))


def _area_bounds(h: int, w: int, min_area_frac: float, max_area_frac: float) -> tuple[float, float]:
    return min_area_frac * h * w, max_area_frac * h * w


class MotionSegmenter(Segmenter):
    """Independently moving regions from dense optical flow.

    Per frame pair: fit the camera's similarity transform to the flow by RANSAC;
    threshold the residual flow magnitude adaptively (median + ``threshold_k`` robust
    standard deviations, at least ``min_magnitude`` px/frame), ignoring a border band
    as wide as the camera motion; clean up with morphological opening/closing; keep
    connected components of ``min_area_frac``..``max_area_frac`` of the frame, each
    trimmed to its core (speed >= ``core_frac`` of its peak, since flow smoothing
    leaks motion into textureless surroundings) and kept only if the camera motion
    alone does not explain its change in appearance (mean Lab error >=
    ``min_change``). Scores are :func:`boundary_contrast`. The last frame reuses the
    previous pair's masks warped forward, so every frame has detections.
    """

    name = "motion"

    def __init__(self, *, min_magnitude: float = 0.5, threshold_k: float = 4.0, min_area_frac: float = 0.003,
                 max_area_frac: float = 0.5, open_px: int = 2, close_px: int = 3, ransac_px: float = 1.0,
                 core_frac: float = 0.5, min_change: float = 4.0, seed: int = 0):
        self.core_frac = core_frac
        self.min_change = min_change
        self.min_magnitude = min_magnitude
        self.threshold_k = threshold_k
        self.min_area_frac = min_area_frac
        self.max_area_frac = max_area_frac
        self.open_px = open_px
        self.close_px = close_px
        self.ransac_px = ransac_px
        self.seed = seed

    def segment(self, frames: np.ndarray, *, flows: np.ndarray | None = None,
                tick: Tick | None = None) -> list[list[Detection]]:
        frames = _check_frames(frames)
        tick = tick or _no_tick
        t = len(frames)
        if flows is None:
            flows = optical_flow(frames)
        lab = lab_frames(frames)
        out: list[list[Detection]] = [[] for _ in range(t)]
        for i in range(t - 1):
            out[i] = self._moving_regions(i, flows[i], lab[i], lab[i + 1])
            tick(1)
        tick(1)
        if t >= 2:
            out[t - 1] = [Detection(t - 1, warp_mask(d.mask, flows[t - 2]), d.score, self.name) for d in out[t - 2]]
            out[t - 1] = [d for d in out[t - 1] if d.mask.any()]
        return out

    def _moving_regions(self, frame: int, flow: np.ndarray, lab: np.ndarray, lab_next: np.ndarray) -> list[Detection]:
        camera = camera_motion(flow, ransac_px=self.ransac_px, seed=self.seed + frame)
        magnitude = np.linalg.norm(flow - camera, axis=-1)
        # Pixels entering or leaving the view have no reliable flow.
        band = int(np.ceil(np.abs(camera).max())) + 2
        magnitude[:band], magnitude[-band:], magnitude[:, :band], magnitude[:, -band:] = 0, 0, 0, 0
        threshold = self._threshold(magnitude)
        moving = open_close((magnitude > threshold).astype(np.uint8), self.open_px, self.close_px)
        unexplained = warp_error(lab, lab_next, camera)
        masks = [m for m in self._components(moving, magnitude) if self._changes_appearance(m, unexplained)]
        return [Detection(frame, mask, boundary_contrast(lab, mask), self.name) for mask in masks]

    def _changes_appearance(self, mask: np.ndarray, unexplained: np.ndarray) -> bool:
        """Flow inside textureless regions is unreliable (the aperture problem), so a
        region only counts as moving if following the camera alone fails to predict
        its next appearance: mean Lab error over the region and a 2-px ring."""
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        return float(unexplained[ring].mean()) >= self.min_change

    def _threshold(self, magnitude: np.ndarray) -> float:
        median = float(np.median(magnitude))
        mad = float(np.median(np.abs(magnitude - median))) * 1.4826
        return max(self.min_magnitude, median + self.threshold_k * mad)

    def _core(self, mask: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
        """Pixels moving at least ``core_frac`` of the region's peak speed: flow smoothing
        spreads motion into textureless surroundings at decaying speed."""
        peak = float(np.percentile(magnitude[mask], 95))
        core = (mask & (magnitude >= self.core_frac * peak)).astype(np.uint8)
        return open_close(core, self.open_px, self.close_px).astype(bool)

    def _components(self, moving: np.ndarray, magnitude: np.ndarray) -> list[np.ndarray]:
        h, w = moving.shape
        lo, hi = _area_bounds(h, w, self.min_area_frac, self.max_area_frac)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(moving, connectivity=8)
        masks = []
        for label in range(1, count):
            if lo <= stats[label, cv2.CC_STAT_AREA] <= hi:
                mask = self._core(labels == label, magnitude)
                if mask.sum() >= lo:
                    masks.append(mask)
        return masks


class SupervoxelSegmenter(Segmenter):
    """SLIC supervoxels over the clip volume, merged into colour-coherent regions.

    SLIC (scikit-image, CIELAB, ``channel_axis=-1``) over-segments each frame
    (``per_frame=True``, the default) or the whole ``(T, H, W, 3)`` volume at once
    (``per_frame=False``). Neighbouring pieces, in space or in time, are then merged
    most-similar-first while their mean Lab colours differ by less than
    ``merge_delta``, so a uniformly coloured object becomes one region over the frames
    it occupies. Per-frame SLIC measured better on the synthetic set (mean IoU 0.83
    vs 0.81): volume supervoxels mix a fast object with the background it leaves.
    Each region gives one mask per frame; regions whose mean per-frame area is below
    ``min_area_frac`` or above ``max_area_frac`` of the frame (background) are dropped.
    Scores are :func:`boundary_contrast` averaged over the region's frames.
    """

    name = "supervoxel"

    def __init__(self, *, segments_per_frame: int = 100, compactness: float = 10.0, merge_delta: float = 16.0,
                 min_size_factor: float = 0.05, per_frame: bool = True, min_area_frac: float = 0.003,
                 max_area_frac: float = 0.35, min_frames: int = 2, seed: int = 0):
        self.segments_per_frame = segments_per_frame
        self.compactness = compactness
        self.merge_delta = merge_delta
        self.min_size_factor = min_size_factor  # SLIC's default 0.5 swallows small objects into neighbours
        self.per_frame = per_frame
        self.min_area_frac = min_area_frac
        self.max_area_frac = max_area_frac
        self.min_frames = min_frames
        self.seed = seed  # SLIC's grid initialisation is deterministic; kept for a uniform interface

    def segment(self, frames: np.ndarray, *, flows: np.ndarray | None = None,
                tick: Tick | None = None) -> list[list[Detection]]:
        from skimage.segmentation import slic

        frames = _check_frames(frames)
        tick = tick or _no_tick
        t = len(frames)
        # SLIC converts the uint8 RGB volume to CIELAB itself; its compactness is tuned for that scale.
        if self.per_frame:
            per_frame = []
            for f in frames:
                per_frame.append(slic(f, n_segments=self.segments_per_frame, compactness=self.compactness,
                                      min_size_factor=self.min_size_factor, start_label=0, channel_axis=-1))
                tick(1)
            labels = np.stack(per_frame)
            labels += np.cumsum([0] + [int(x.max()) + 1 for x in labels[:-1]])[:, None, None]
        else:
            labels = slic(frames, n_segments=max(2, self.segments_per_frame * t), compactness=self.compactness,
                          min_size_factor=self.min_size_factor, start_label=0, channel_axis=-1)
            tick(t)
        lab = lab_frames(frames)
        regions = merge_similar_regions(labels, lab, self.merge_delta)
        return self._region_detections(regions, lab)

    def _region_detections(self, regions: np.ndarray, lab: np.ndarray) -> list[list[Detection]]:
        t, h, w = regions.shape
        lo, hi = _area_bounds(h, w, self.min_area_frac, self.max_area_frac)
        n = int(regions.max()) + 1
        per_frame = np.stack([np.bincount(regions[i].ravel(), minlength=n) for i in range(t)])  # (T, n) pixels
        present = per_frame > 0
        n_frames = present.sum(0)
        mean_area = per_frame.sum(0) / np.maximum(n_frames, 1)
        keep = np.flatnonzero((n_frames >= self.min_frames) & (mean_area >= lo) & (mean_area <= hi))
        out: list[list[Detection]] = [[] for _ in range(t)]
        for region in keep:
            masks = {int(i): regions[i] == region for i in np.flatnonzero(present[:, region]) if per_frame[i, region] >= lo}
            # One score per region, so its per-frame pieces rank together in deduplication.
            score = float(np.mean([boundary_contrast(lab[i], m) for i, m in masks.items()])) if masks else 0.0
            for i, mask in masks.items():
                # A region merged through time can hold separate things of one colour on a frame (a white
                # ball and white shoes): each connected part is its own detection, and tracking links them.
                out[i].extend(Detection(i, part, score, self.name) for part in connected_parts(mask, lo))
        return out


class ForegroundSegmenter(Segmenter):
    """Whatever differs from the clip's own background, for a still camera.

    The background of each block of ``block`` frames is the per-pixel median colour
    (CIELAB) of the still frames within ``window`` frames of the block, sampled every
    ``stride`` frames. A pixel is foreground where its colour is more than ``min_delta``
    from it; after opening and closing, each connected part of ``min_area_frac`` to
    ``max_area_frac`` of the frame is a detection, scored by :func:`boundary_contrast`.
    A frame whose camera moves (median flow above ``max_camera_px`` px/frame) has
    none: its background would smear.

    Why: anything that moves somewhere in the clip stands apart from the background
    in full, its slow parts too (a person's torso, which flow thresholds leave out),
    and an object that was moved shows where it now stands.
    """

    name = "foreground"

    def __init__(self, *, min_delta: float = 10.0, window: int = 60, block: int = 16, stride: int = 2,
                 max_camera_px: float = 0.5, open_px: int = 2, close_px: int = 3, min_area_frac: float = 0.003,
                 max_area_frac: float = 0.5, seed: int = 0):
        self.min_delta = min_delta
        self.window = window
        self.block = block
        self.stride = stride
        self.max_camera_px = max_camera_px
        self.open_px = open_px
        self.close_px = close_px
        self.min_area_frac = min_area_frac
        self.max_area_frac = max_area_frac
        self.seed = seed  # deterministic; kept for a uniform interface

    def segment(self, frames: np.ndarray, *, flows: np.ndarray | None = None,
                tick: Tick | None = None) -> list[list[Detection]]:
        frames = _check_frames(frames)
        tick = tick or _no_tick
        t, h, w = frames.shape[:3]
        if flows is None:
            flows = optical_flow(frames)
        still = self._still_frames(flows, t)
        lab = lab_frames(frames)
        lo, hi = _area_bounds(h, w, self.min_area_frac, self.max_area_frac)
        out: list[list[Detection]] = [[] for _ in range(t)]
        for start in range(0, t, self.block):
            stop = min(start + self.block, t)
            background = self._background(lab, still, start, stop)
            for i in range(start, stop):
                if background is not None and still[i]:
                    out[i] = [Detection(i, m, boundary_contrast(lab[i], m), self.name)
                              for m in self._parts(lab[i], background, lo, hi)]
                tick(1)
        return out

    def _still_frames(self, flows: np.ndarray, t: int) -> np.ndarray:
        """Per frame: True where the camera holds still (the median flow speed of the
        frame's pairs is at most ``max_camera_px``; a moving object rarely covers half the frame)."""
        speed = np.array([float(np.median(np.linalg.norm(f[::4, ::4], axis=-1))) for f in flows])
        still = np.ones(t, dtype=bool)
        if len(speed):
            moving = speed > self.max_camera_px
            still[:-1] &= ~moving
            still[1:] &= ~moving
        return still

    def _background(self, lab: np.ndarray, still: np.ndarray, start: int, stop: int) -> np.ndarray | None:
        lo, hi = max(0, start - self.window), min(len(lab), stop + self.window)
        sample = [i for i in range(lo, hi, self.stride) if still[i]]
        return np.median(lab[sample], axis=0) if len(sample) >= 3 else None

    def _parts(self, lab: np.ndarray, background: np.ndarray, lo: float, hi: float) -> list[np.ndarray]:
        binary = (np.linalg.norm(lab - background, axis=-1) > self.min_delta).astype(np.uint8)
        binary = open_close(binary, self.open_px, self.close_px)
        return [m for m in connected_parts(binary.astype(bool), lo) if m.sum() <= hi]


def open_close(binary: np.ndarray, open_px: int, close_px: int) -> np.ndarray:
    """A uint8 ``(H, W)`` mask opened then closed with elliptic kernels of radius ``open_px`` and
    ``close_px`` (0: that step skipped): specks go, small holes and gaps fill."""
    for px, op in ((open_px, cv2.MORPH_OPEN), (close_px, cv2.MORPH_CLOSE)):
        if px > 0:
            binary = cv2.morphologyEx(binary, op, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1,) * 2))
    return binary


def connected_parts(mask: np.ndarray, min_area: float) -> list[np.ndarray]:
    """The 8-connected components of a bool ``(H, W)`` mask with at least ``min_area`` pixels, largest first."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count == 2:
        return [mask] if stats[1, cv2.CC_STAT_AREA] >= min_area else []
    order = sorted(range(1, count), key=lambda c: (-int(stats[c, cv2.CC_STAT_AREA]), c))
    return [labels == c for c in order if stats[c, cv2.CC_STAT_AREA] >= min_area]


def merge_similar_regions(labels: np.ndarray, image: np.ndarray, max_delta: float) -> np.ndarray:
    """Merge adjacent labelled regions while their mean colours differ by < ``max_delta``.

    ``labels`` int ``(T, H, W)`` (or ``(H, W)``), ``image`` float ``(*labels.shape, C)``
    -> relabelled array, same shape, labels 0..K-1. Adjacency is 6-connected in the
    volume. Statistical-region-merging order (Nock and Nielsen, 2004): adjacent pairs
    are visited once, most similar first by their initial means, and a pair merges if
    the *current* means of the two regions it now belongs to still differ by less than
    ``max_delta`` (means are size-weighted and updated after every merge, so a chain of
    slightly different regions cannot bridge two distinct colours). Cost is
    O(E log E) for E adjacent pairs whatever the scene: re-scoring every neighbour of a
    growing region after each merge was quadratic when one large uniform region (a
    mat, a wall) touched thousands of small ones.
    """
    flat = labels.ravel()
    n = int(flat.max()) + 1
    sizes = np.bincount(flat, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(flat, weights=image[..., c].ravel(), minlength=n)
                     for c in range(image.shape[-1])], axis=1)
    edges = _adjacent_pairs(labels)
    initial = sums / np.maximum(sizes, 1)[:, None]
    dist = np.linalg.norm(initial[edges[:, 0]] - initial[edges[:, 1]], axis=1)
    close = np.flatnonzero(dist < max_delta)  # only these can ever merge
    order = close[np.lexsort((edges[close, 1], edges[close, 0], dist[close]))]  # deterministic ties
    parent = list(range(n))
    size = sizes.tolist()
    total = sums.tolist()
    limit = float(max_delta) ** 2

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges[order].tolist():
        ra, rb = root(a), root(b)
        if ra == rb:
            continue
        sa, sb = size[ra], size[rb]
        ma, mb = total[ra], total[rb]
        if sum((x / sa - y / sb) ** 2 for x, y in zip(ma, mb)) >= limit:
            continue
        if sb > sa or (sb == sa and rb < ra):
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        total[ra] = [x + y for x, y in zip(total[ra], total[rb])]
    roots = np.array([root(x) for x in range(n)])
    _, relabelled = np.unique(roots, return_inverse=True)
    return relabelled[labels]


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """Unique ``(a, b)`` label pairs, a < b, that touch along any axis: ``(E, 2)`` int64."""
    n = int(labels.max()) + 1
    keys = []
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        lo, hi = a[:-1].ravel(), a[1:].ravel()
        diff = lo != hi
        lo, hi = lo[diff].astype(np.int64), hi[diff].astype(np.int64)
        keys.append(np.minimum(lo, hi) * n + np.maximum(lo, hi))  # one int64 per pair: a 1-D sort
    unique = np.unique(np.concatenate(keys))
    return np.stack([unique // n, unique % n], axis=1)


def lab_frames(frames: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 RGB -> float32 CIELAB (L in [0, 100], a/b about [-127, 127])."""
    flat = frames.reshape(-1, frames.shape[-2] if frames.ndim > 2 else 1, 3).astype(np.float32) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(frames.shape)


def boundary_contrast(lab: np.ndarray, mask: np.ndarray, *, width: int = 2) -> float:
    """How well a mask follows a colour edge, in [0, 1].

    ``lab`` ``(H, W, 3)`` CIELAB, ``mask`` bool ``(H, W)``. Compares the mean colour
    of the ``width``-px band just inside the mask boundary with the band just outside
    (Lab distance d, squashed as ``1 - exp(-d / 25)``). A mask whose edge sits on the
    object's edge scores high; a blurred or misplaced one scores low. Used as the
    detection score so duplicate tubes resolve to the better-aligned mask.
    """
    x0, y0, x1, y1 = (int(v) for v in mask_box(mask))
    if x1 <= x0:
        return 0.0
    pad = width + 1
    ys = slice(max(y0 - pad, 0), y1 + pad)
    xs = slice(max(x0 - pad, 0), x1 + pad)
    crop = mask[ys, xs].astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * width + 1,) * 2)
    inner = crop.astype(bool) & ~cv2.erode(crop, kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
    outer = cv2.dilate(crop, kernel).astype(bool) & ~crop.astype(bool)
    if not inner.any() or not outer.any():
        return 0.0
    window = lab[ys, xs]
    delta = float(np.linalg.norm(window[inner].mean(0) - window[outer].mean(0)))
    return float(1.0 - np.exp(-delta / 25.0))


SAM_MODELS = ("vit_b", "vit_l", "vit_h")
SAM_CHECKPOINT_HINT = ("pass --sam-checkpoint PATH (download sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or "
                       "sam_vit_h_4b8939.pth from https://github.com/facebookresearch/segment-anything#model-checkpoints)")


class SamSegmenter(Segmenter):
    """segment-anything's automatic mask generator on keyframes (every ``keyframe_every`` frames and the last).

    The model is built lazily on first use by ``model_factory()`` (tests inject a
    tiny randomly initialised SAM) or else from ``checkpoint`` with
    ``segment_anything.sam_model_registry[model_type]``. ``generator_kwargs`` pass
    straight to ``SamAutomaticMaskGenerator``.
    """

    name = "sam"

    def __init__(self, *, checkpoint: str | Path | None = None, model_type: str = "vit_b", device: str = "cpu",
                 keyframe_every: int = 4, points_per_side: int = 16, pred_iou_thresh: float = 0.86,
                 stability_score_thresh: float = 0.9, min_area_frac: float = 0.003, max_area_frac: float = 0.5,
                 model_factory: Callable[[], Any] | None = None, generator_kwargs: dict | None = None):
        if model_type not in SAM_MODELS:
            raise ConfigError(f"unknown SAM model {model_type!r}; use one of {', '.join(SAM_MODELS)}")
        if keyframe_every < 1:
            raise ConfigError(f"keyframe interval must be >= 1, got {keyframe_every}")
        if model_factory is None:
            if checkpoint is None:
                raise ConfigError(f"the sam segmenter needs weights: {SAM_CHECKPOINT_HINT}, or use --segmenter motion,supervoxel,foreground")
            if not Path(checkpoint).is_file():
                raise ConfigError(f"SAM checkpoint not found: {checkpoint}; {SAM_CHECKPOINT_HINT}")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.model_type = model_type
        self.device = device
        self.keyframe_every = keyframe_every
        self.min_area_frac = min_area_frac
        self.max_area_frac = max_area_frac
        self._model_factory = model_factory
        self._generator_kwargs = dict(points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                                      stability_score_thresh=stability_score_thresh)
        self._generator_kwargs.update(generator_kwargs or {})
        self._generator = None

    def keyframes(self, num_frames: int) -> list[int]:
        frames = list(range(0, num_frames, self.keyframe_every))
        if num_frames and frames[-1] != num_frames - 1:
            frames.append(num_frames - 1)
        return frames

    def segment(self, frames: np.ndarray, *, flows: np.ndarray | None = None,
                tick: Tick | None = None) -> list[list[Detection]]:
        frames = _check_frames(frames)
        tick = tick or _no_tick
        t, h, w = frames.shape[:3]
        generator = self._mask_generator()
        lo, hi = _area_bounds(h, w, self.min_area_frac, self.max_area_frac)
        out: list[list[Detection]] = [[] for _ in range(t)]
        for i in self.keyframes(t):
            for record in generator.generate(np.ascontiguousarray(frames[i])):
                if lo <= record["area"] <= hi:
                    score = float(np.clip(record["predicted_iou"], 0.0, 1.0))
                    out[i].append(Detection(i, np.asarray(record["segmentation"], dtype=bool), score, self.name))
            tick(1)
        return out

    def _mask_generator(self):
        if self._generator is None:
            from segment_anything import SamAutomaticMaskGenerator

            model = self._build_model()
            self._generator = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **self._generator_kwargs)
        return self._generator

    def _build_model(self):
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {self.device} requested but CUDA is not available; use --device cpu")
        if self._model_factory is not None:
            model = self._model_factory()
        else:
            from segment_anything import sam_model_registry

            try:
                model = sam_model_registry[self.model_type](checkpoint=str(self.checkpoint))
            except (RuntimeError, KeyError, OSError, EOFError, ValueError) as err:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ModelError(f"could not load SAM {self.model_type} weights from {self.checkpoint} ({first}); "
                                 f"check --sam-model matches the checkpoint") from err
        return model.to(self.device).eval()


# --------------------------------------------------------------------------- construction

SEGMENTER_NAMES = ("motion", "supervoxel", "foreground", "sam")


def default_segmenter_names(sam_checkpoint: str | Path | None = None) -> str:
    """``"sam,motion"`` when a SAM checkpoint is given, else the weights-free ``"motion,supervoxel,foreground"``."""
    return "sam,motion" if sam_checkpoint else "motion,supervoxel,foreground"


def build_segmenters(names: str | Sequence[str], *, sam_checkpoint: str | Path | None = None, sam_model: str = "vit_b",
                     device: str = "cpu", keyframe_every: int = 4, seed: int = 0,
                     sam_model_factory: Callable[[], Any] | None = None) -> list[Segmenter]:
    """Segmenters named by a comma-separated list, e.g. ``"motion,supervoxel"``.

    Raises ConfigError for unknown, repeated or missing names, and for ``sam``
    without a checkpoint.
    """
    parts = [p.strip().lower() for p in (names.split(",") if isinstance(names, str) else names)]
    parts = [p for p in parts if p]
    if not parts:
        raise ConfigError(f"no segmenter given; use --segmenter with one or more of {', '.join(SEGMENTER_NAMES)}")
    unknown = [p for p in parts if p not in SEGMENTER_NAMES]
    if unknown:
        raise ConfigError(f"unknown segmenter {unknown[0]!r}; valid segmenters: {', '.join(SEGMENTER_NAMES)}")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"segmenter listed twice in {','.join(parts)!r}; give each name once")
    segmenters: list[Segmenter] = []
    for name in parts:
        if name == "motion":
            segmenters.append(MotionSegmenter(seed=seed))
        elif name == "supervoxel":
            segmenters.append(SupervoxelSegmenter(seed=seed))
        elif name == "foreground":
            segmenters.append(ForegroundSegmenter(seed=seed))
        else:
            segmenters.append(SamSegmenter(checkpoint=sam_checkpoint, model_type=sam_model, device=device,
                                           keyframe_every=keyframe_every, model_factory=sam_model_factory))
    return segmenters


def run_segmenters(segmenters: Sequence[Segmenter], frames: np.ndarray, *,
                   flows: np.ndarray | None = None, tick: Tick | None = None) -> list[list[Detection]]:
    """All segmenters' detections merged per frame: ``T`` lists of Detections (mixed sources).
    ``tick`` receives ``sum(s.work_units(T))`` units."""
    frames = _check_frames(frames)
    merged: list[list[Detection]] = [[] for _ in range(len(frames))]
    for segmenter in segmenters:
        for i, dets in enumerate(segmenter.segment(frames, flows=flows, tick=tick)):
            merged[i].extend(dets)
    return merged
