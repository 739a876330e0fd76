"""Pure mask geometry: COCO RLE, IoU, boxes, resizing.

Masks are numpy ``bool`` arrays ``(H, W)``; boxes are ``[x0, y0, x1, y1]`` float
pixels with x1/y1 exclusive (see docs/architecture.md). Nothing here touches
files, the database or devices.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import cv2
import numpy as np
from pycocotools import mask as coco_mask

__all__ = [
    "encode_rle",
    "decode_rle",
    "mask_iou",
    "iou_matrix",
    "mask_box",
    "mask_area",
    "union_box",
    "box_iou",
    "resize_mask",
    "scale_box",
    "mask_outline",
    "outline_mask",
    "shift_mask",
]


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a ``(H, W)`` mask, with ``counts`` as ``str`` so it is JSON-safe.

    Returns ``{"size": [H, W], "counts": str}``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a 2-D mask, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """Inverse of :func:`encode_rle`: a ``bool`` array ``(H, W)``."""
    counts = rle["counts"]
    coco = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    with warnings.catch_warnings():  # pycocotools' Cython array wrapper predates numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(coco).astype(bool)


def mask_area(mask: np.ndarray) -> int:
    """Number of pixels set in the mask."""
    return int(np.count_nonzero(mask))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two same-shape masks; 0.0 when both are empty."""
    inter = np.count_nonzero(np.logical_and(a, b))
    union = np.count_nonzero(np.logical_or(a, b))
    return float(inter / union) if union else 0.0


def iou_matrix(masks_a: Sequence[np.ndarray] | np.ndarray, masks_b: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Pairwise IoU: ``(N, H, W)`` x ``(M, H, W)`` -> ``(N, M)`` float64 in [0, 1].

    Only pairs whose boxes overlap are counted, on the overlap window: region
    proposals are mostly small and far apart, so this is much cheaper than a
    dense ``(N, H*W) @ (H*W, M)`` product.
    """
    n, m = len(masks_a), len(masks_b)
    iou = np.zeros((n, m), dtype=np.float64)
    if n == 0 or m == 0:
        return iou
    boxes_a = np.array([mask_box(a) for a in masks_a], dtype=np.int64)
    boxes_b = np.array([mask_box(b) for b in masks_b], dtype=np.int64)
    areas_a = [mask_area(a) for a in masks_a]
    areas_b = [mask_area(b) for b in masks_b]
    x0 = np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    y0 = np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    x1 = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2])
    y1 = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3])
    for i, j in zip(*np.nonzero((x1 > x0) & (y1 > y0))):
        win = (slice(y0[i, j], y1[i, j]), slice(x0[i, j], x1[i, j]))
        inter = np.count_nonzero(masks_a[i][win] & masks_b[j][win])
        iou[i, j] = inter / (areas_a[i] + areas_b[j] - inter)
    return iou


def mask_box(mask: np.ndarray) -> list[float]:
    """Tight box ``[x0, y0, x1, y1]`` (x1/y1 exclusive) of the set pixels; all zeros if empty."""
    ys = np.flatnonzero(np.any(mask, axis=1))
    xs = np.flatnonzero(np.any(mask, axis=0))
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes; 0.0 when both are empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def union_box(boxes: Sequence[Sequence[float]]) -> list[float]:
    """Smallest box containing every non-empty box; all zeros if none is non-empty."""
    valid = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
    if not valid:
        return [0.0, 0.0, 0.0, 0.0]
    # builtins, not numpy: a tube's few boxes are reduced ~5x faster this way
    x0, y0, x1, y1 = zip(*valid)
    return [float(min(x0)), float(min(y0)), float(max(x1)), float(max(y1))]


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a mask to ``(height, width)``."""
    if mask.shape == (height, width):
        return np.asarray(mask, dtype=bool)
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


def scale_box(box: Sequence[float], sx: float, sy: float) -> list[float]:
    """Box scaled by ``sx`` horizontally and ``sy`` vertically (pixels -> pixels)."""
    return [float(box[0]) * sx, float(box[1]) * sy, float(box[2]) * sx, float(box[3]) * sy]


def mask_outline(mask: np.ndarray) -> list[tuple[int, int]]:
    """One polygon whose even-odd fill is exactly ``mask``: its pixel-edge outlines.

    Vertices are pixel corners ``(x, y)`` (integers; pixel (x, y) spans [x, x+1] x [y, y+1]).
    Several parts and holes become one ring: each further outline (another part, or a
    hole, traced the opposite way) is reached from the first outline's first vertex by
    a zero-width bridge walked there and back, so it adds no area. Empty mask -> ``[]``.
    :func:`outline_mask` (COCO's polygon rasteriser, as Datumaro and CVAT use) inverts it.
    """
    m = np.asarray(mask, dtype=bool)
    # On the mask doubled in size, OpenCV's boundary pixel centres sit at even coordinates on
    # left/top edges and odd ones on right/bottom edges, so ceil(u / 2) is the pixel corner.
    up = np.repeat(np.repeat(m, 2, axis=0), 2, axis=1).astype(np.uint8)
    contours, _ = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for contour in contours:
        ring: list[tuple[int, int]] = []
        for x, y in ((contour.reshape(-1, 2) + 1) // 2).tolist():
            if not ring or ring[-1] != (x, y):
                ring.append((x, y))
        while len(ring) > 1 and ring[0] == ring[-1]:
            ring.pop()
        if len(ring) >= 3:
            rings.append(ring)
    if not rings:
        return []
    anchor = rings[0][0]
    points = rings[0] + [anchor]
    for ring in rings[1:]:
        points += ring + [ring[0], anchor]
    return points


def outline_mask(points: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """bool ``(height, width)``: the polygon ``points`` [(x, y), ...] (pixel corners) filled
    even-odd by COCO's rasteriser; fewer than 3 points -> empty."""
    if len(points) < 3:
        return np.zeros((height, width), bool)
    flat = [float(v) for p in points for v in p[:2]]
    rle = coco_mask.frPyObjects([flat], height, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(coco_mask.merge(rle)).astype(bool)


def shift_mask(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``mask`` moved by (dx, dy) pixels; what leaves the frame is cut off."""
    m = np.asarray(mask, dtype=bool)
    out = np.zeros_like(m)
    h, w = m.shape
    if abs(dx) >= w or abs(dy) >= h:
        return out
    ys, yd = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    xs, xd = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    out[yd, xd] = m[ys, xs]
    return out
