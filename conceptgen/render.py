"""Concept clips: a Tube rendered into a clip the model under study can take.

Modes (named so tcav/ renders examples the same way):

- ``mask``: the region over its context window; everything outside it is filled with
  the dataset mean colour (so it normalises to zero);
- ``crop``: a square crop around the tube's box (the Video-TCAV paper's tracked crops);
- ``blur``: the region sharp, its background Gaussian-blurred.

``static=True`` repeats the tube's middle frame over time (appearance without motion).
Every function here is pure and deterministic: no randomness, no I/O.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import cv2
import numpy as np

from .errors import ConfigError, DataError
from .masks import mask_box, resize_mask, scale_box, union_box
from .videoio import fit_max_side

__all__ = [
    "RENDER_MODES",
    "DEFAULT_MEAN",
    "fill_from_mean",
    "tube_positions",
    "render_tube_clip",
    "render_object_clip",
    "render_outlined_preview",
    "highlight_full_video",
]

RENDER_MODES = ("mask", "crop", "blur")
DEFAULT_MEAN = (0.45, 0.45, 0.45)  # Kinetics mean used by pytorchvideo models, in [0, 1]
OUTLINE_RGB = (255, 40, 220)  # bright magenta: rare in natural video


def fill_from_mean(mean: Sequence[float]) -> tuple[int, int, int]:
    """Model-spec mean in [0, 1] (RGB) -> uint8 RGB fill colour."""
    return tuple(int(round(float(np.clip(m, 0.0, 1.0)) * 255)) for m in mean)  # type: ignore[return-value]


def tube_positions(tube_length: int, num_frames: int, *, static: bool = False) -> np.ndarray:
    """Positions within a tube to render: ``num_frames`` ints in ``[0, tube_length)``.

    Uniform over the tube's span (repeating frames when the tube is shorter than the
    clip); all equal to the middle position when ``static``.
    """
    if tube_length < 1 or num_frames < 1:
        raise DataError(f"cannot render {num_frames} frames from a tube of {tube_length} frames; "
                        "both must be at least 1")
    if static:
        return np.full(num_frames, tube_length // 2, dtype=np.int64)
    return np.round(np.linspace(0, tube_length - 1, num_frames)).astype(np.int64)


def render_tube_clip(frames: np.ndarray, tube_frames: Sequence[int], masks: Sequence[np.ndarray],
                     boxes: Sequence[Sequence[float]], *, mode: str, static: bool = False, num_frames: int,
                     side: int, fill: Sequence[int] = fill_from_mean(DEFAULT_MEAN), margin: float = 0.15,
                     per_frame_crop: bool = False, blur_sigma: float | None = None) -> np.ndarray:
    """Render one tube as a ``(num_frames, side, side, 3)`` uint8 RGB clip.

    ``frames``: the source video's decoded frames ``(T, H, W, 3)`` uint8, indexed by
    ``tube_frames``; ``masks``: bool ``(h, w)`` per tube frame and ``boxes``
    ``[x0, y0, x1, y1]`` per tube frame, in mask pixels (rescaled when the masks are
    at a different resolution from ``frames``); each box must hold every pixel of its
    mask (``masks.mask_box`` gives the tight one): ``mask`` mode looks for the region
    only there. ``fill``: uint8 RGB dataset mean
    (``fill_from_mean(spec.mean)``). ``margin``: crop padding as a fraction of the
    box side. ``per_frame_crop``: follow each frame's box instead of the union box.
    ``blur_sigma``: background blur in pixels (default: 1/30 of the frame diagonal).

    Only the model's ``num_frames`` positions are rendered, each distinct one once,
    and each is cut to its square window before masking and resizing, so the cost
    per tube does not grow with the tube's length or the frame's area outside the
    window. The source frames are never copied or converted.
    """
    if mode not in RENDER_MODES:
        raise ConfigError(f"unknown render mode {mode!r}; use one of {', '.join(RENDER_MODES)}")
    if not (len(tube_frames) == len(masks) == len(boxes)) or len(tube_frames) == 0:
        raise DataError(f"a tube needs one mask and one box per frame: got {len(tube_frames)} frames, "
                        f"{len(masks)} masks, {len(boxes)} boxes")
    if side < 1:
        raise ConfigError(f"clip side must be a positive number of pixels, got {side}")
    frames = np.asarray(frames)
    if max(tube_frames) >= len(frames) or min(tube_frames) < 0:
        raise DataError(f"tube frames {tube_frames[0]}..{tube_frames[-1]} are outside the video's "
                        f"{len(frames)} decoded frames; decode the whole video before rendering")
    h, w = frames.shape[1:3]
    picked, order = _picked_positions(len(tube_frames), num_frames, static)
    sy, sx = h / masks[0].shape[0], w / masks[0].shape[1]
    fill_rgb = np.asarray(fill, dtype=np.uint8).reshape(3)
    picked_boxes = [boxes[p] for p in picked]

    clip = np.empty((len(picked), side, side, 3), dtype=np.uint8)
    if mode == "crop":
        for p, window, out in zip(picked, _crop_windows(picked_boxes, sx, sy, h, w, margin, per_frame_crop), clip):
            _resize_into(_cut(frames[tube_frames[p]], window, fill_rgb), out)
    else:  # one context window for the whole tube
        region = scale_box(union_box(picked_boxes), sx, sy)  # a positive scale commutes with min and max
        window = _context_window(region, h, w)
        frame_indices = [tube_frames[p] for p in picked]
        rescaled = masks[0].shape != (h, w)  # a tube's masks share one size
        picked_masks = [masks[p] if masks[p].dtype == bool and not rescaled else resize_mask(masks[p], h, w)
                        for p in picked]
        period = _area_period(window[2], side) if mode == "mask" else None
        if period is not None:
            # rescaled masks: one pixel of slack for the nearest-neighbour rounding
            _render_masked_window(frames, frame_indices, picked_masks, window, region, int(rescaled), period,
                                  fill_rgb, clip)
        else:
            x0, y0, size = window
            _resize_stack_into(_isolate_regions(frames, frame_indices, picked_masks, (x0, y0, size, size), mode,
                                                fill_rgb, blur_sigma), clip)
    return clip if len(picked) == num_frames else clip[order]  # distinct positions come in order


def render_object_clip(frames: np.ndarray, masks: np.ndarray, *, mode: str, num_frames: int, side: int,
                       static: bool = False) -> np.ndarray | None:
    """An object known by its masks ``(T, H, W)`` bool over all of ``frames`` (a
    synthetic set's ground truth), rendered as :func:`render_tube_clip` renders a tube
    over the frames where it shows, each boxed tightly; None when it shows in fewer
    than 2 frames (no motion to render)."""
    shown = [t for t in range(masks.shape[0]) if masks[t].any()]
    if len(shown) < 2:
        return None
    return render_tube_clip(frames, shown, [masks[t] for t in shown], [mask_box(masks[t]) for t in shown],
                            mode=mode, static=static, num_frames=num_frames, side=side)


def render_background_clip(frames: np.ndarray, full_masks: np.ndarray, *, num_frames: int, side: int,
                           static: bool = False) -> np.ndarray:
    """A synthetic video's background: the pixels no object covers in any frame (``full_masks``
    ``(n_objects, T, H, W)`` bool), the rest filled as ``mask`` mode fills it. A per-frame hole
    would move with the objects and carry their motion into the background."""
    t, h, w = full_masks.shape[1:]
    background = np.broadcast_to(~full_masks.any(axis=(0, 1)), (t, h, w))
    return render_tube_clip(frames, list(range(t)), list(background), [[0.0, 0.0, float(w), float(h)]] * t,
                            mode="mask", static=static, num_frames=num_frames, side=side)


@functools.lru_cache(maxsize=256)
def _picked_positions(tube_length: int, num_frames: int, static: bool) -> tuple[np.ndarray, np.ndarray]:
    """The distinct :func:`tube_positions` (sorted) and, per clip frame, its index among them.
    Cached (read-only arrays): every tube of a given length samples the same positions."""
    positions = tube_positions(tube_length, num_frames, static=static)
    picked = np.unique(positions)
    order = np.searchsorted(picked, positions)
    picked.flags.writeable = order.flags.writeable = False
    return picked, order


def _crop_windows(boxes: list[Sequence[float]], sx: float, sy: float, h: int, w: int, margin: float,
                  per_frame_crop: bool) -> list[tuple[int, int, int]]:
    """One square ``(x0, y0, size)`` crop per rendered frame, around the union box or
    each frame's box. ``boxes`` are in mask pixels; ``sx``, ``sy`` scale them to frame pixels."""
    if per_frame_crop:
        return [_crop_window(scale_box(box, sx, sy), margin, h, w) for box in boxes]
    return [_crop_window(scale_box(union_box(boxes), sx, sy), margin, h, w)] * len(boxes)


def _isolate_regions(frames: np.ndarray, frame_indices: list[int], masks: list[np.ndarray],
                     window: tuple[int, int, int, int], mode: str, fill_rgb: np.ndarray,
                     blur_sigma: float | None) -> np.ndarray:
    """The window ``(x0, y0, width, height)`` (inside the frame, so masking after the cut
    is exact) of each of ``frames[frame_indices]`` (``frames`` ``(T, H, W, 3)`` uint8),
    with the region kept and, outside its mask (bool ``(H, W)`` each), the mean fill
    (``mask``) or the blurred frame (``blur``). -> ``(n, height, width, 3)`` uint8."""
    x0, y0, width, height = window
    rows, cols = slice(y0, y0 + height), slice(x0, x0 + width)
    n = len(frame_indices)
    if mode == "mask":
        out = _filled(n * height, width, fill_rgb)  # one fill for the whole tube
    else:  # blur each whole frame, so the frame's own border (not the window's) is reflected
        out = np.empty((n * height, width, 3), dtype=np.uint8)
        for index, patch in zip(frame_indices, out.reshape(n, height, width, 3)):
            frame = frames[index]
            sigma = blur_sigma if blur_sigma is not None else float(np.hypot(*frame.shape[:2])) / 30.0
            blurred = cv2.GaussianBlur(frame, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
            patch[...] = blurred[rows, cols]
    # the n windows stacked vertically: one masked copy for the whole tube
    pixels = frames[frame_indices, rows, cols].reshape(n * height, width, 3)
    keep = np.concatenate([mask[rows, cols] for mask in masks]).view(np.uint8)  # (n * height, width)
    cv2.copyTo(pixels, keep, out)  # in place: out is the right size
    return out.reshape(n, height, width, 3)


def _render_masked_window(frames: np.ndarray, frame_indices: list[int], masks: list[np.ndarray],
                          window: tuple[int, int, int], region: Sequence[float], slack: int,
                          period: tuple[int, int], fill_rgb: np.ndarray, out: np.ndarray) -> None:
    """``mask`` mode into ``out`` ``(n, side, side, 3)``: the same bytes as filling the
    whole window outside the masks and area-shrinking it, but only the block of the
    window around ``region`` (a box holding every mask pixel, ``slack`` pixels short at
    most) is masked and resized; the rest of ``out`` is plain fill, which is what
    area-averaging a plain fill gives. Exact because the shrink's cells repeat every
    ``period`` source pixels (see :func:`_area_period`), so a resize of whole periods
    uses the same weights as the full one; a region is usually a small part of its
    window, so this is most of a render's time saved."""
    x0, y0, size = window
    _fill_into(out, fill_rgb)
    src, dst = period
    # the region in window pixels, widened to whole periods and kept inside the window
    left = max(math.floor(region[0]) - slack - x0, 0) // src * src
    top = max(math.floor(region[1]) - slack - y0, 0) // src * src
    right = min(-(-(math.ceil(region[2]) + slack - x0) // src) * src, size)  # size: whole periods
    bottom = min(-(-(math.ceil(region[3]) + slack - y0) // src) * src, size)
    if right <= left or bottom <= top:
        return
    block = (x0 + left, y0 + top, right - left, bottom - top)  # (x, y, width, height)
    shrunk = np.empty((len(frame_indices), (bottom - top) // src * dst, (right - left) // src * dst, 3),
                      dtype=np.uint8)
    _resize_stack_into(_isolate_regions(frames, frame_indices, masks, block, "mask", fill_rgb, None), shrunk)
    out[:, top // src * dst:bottom // src * dst, left // src * dst:right // src * dst] = shrunk


def _area_period(size: int, side: int) -> tuple[int, int] | None:
    """``(source, output)`` pixels after which area-shrinking ``size`` -> ``side`` repeats
    its cell weights exactly (``size / side`` in lowest terms), or None when OpenCV's
    arithmetic does not make the repeat exact (see :func:`_stacked_area_is_exact`)."""
    if not _stacked_area_is_exact(size, side):
        return None
    common = math.gcd(size, side)
    return size // common, side // common


def _context_window(box: Sequence[float], h: int, w: int) -> tuple[int, int, int]:
    """The largest square inside the frame (side ``min(h, w)``) centred as near the box as possible.

    Returns ``(x0, y0, size)`` in frame pixels.
    """
    size = min(h, w)
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    x0 = min(max(round(cx - size / 2.0), 0), w - size)
    y0 = min(max(round(cy - size / 2.0), 0), h - size)
    return int(x0), int(y0), size


def _crop_window(box: Sequence[float], margin: float, h: int, w: int) -> tuple[int, int, int]:
    """Square around ``box`` enlarged by ``margin`` of its longer side; may extend past the frame."""
    bw, bh = max(box[2] - box[0], 1.0), max(box[3] - box[1], 1.0)
    size = max(int(np.ceil(max(bw, bh) * (1.0 + 2.0 * margin))), 8)
    size = min(size, max(h, w))
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    return int(round(cx - size / 2.0)), int(round(cy - size / 2.0)), size


def _cut(frame: np.ndarray, window: tuple[int, int, int], fill_rgb: np.ndarray) -> np.ndarray:
    """The square window of ``frame``: a view when it lies inside the frame, else a copy
    padded with ``fill_rgb``. -> ``(size, size, 3)`` uint8."""
    x0, y0, size = window
    h, w = frame.shape[:2]
    if x0 >= 0 and y0 >= 0 and x0 + size <= w and y0 + size <= h:
        return frame[y0:y0 + size, x0:x0 + size]
    patch = _filled(size, size, fill_rgb)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + size, w), min(y0 + size, h)
    if fx1 > fx0 and fy1 > fy0:
        patch[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = frame[fy0:fy1, fx0:fx1]
    return patch


def _filled(height: int, width: int, fill_rgb: np.ndarray) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 image of one colour."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    _fill_into(out, fill_rgb)
    return out


def _fill_into(out: np.ndarray, fill_rgb: np.ndarray) -> None:
    """Set every pixel of a C-contiguous ``(..., width, 3)`` uint8 array to ``fill_rgb``."""
    rows = out.reshape(-1, out.shape[-2], 3)
    rows[0] = fill_rgb
    rows[1:] = rows[0]  # row-wise copies: filling every pixel from (3,) directly is ~15x slower


def _resize_into(patch: np.ndarray, out: np.ndarray) -> None:
    """Resize a uint8 patch into ``out`` ``(h, w, 3)`` (the same scale on both axes):
    area averaging when shrinking (no aliasing), bilinear when enlarging."""
    height, width = out.shape[:2]
    interpolation = cv2.INTER_AREA if patch.shape[0] > height else cv2.INTER_LINEAR
    cv2.resize(patch, (width, height), dst=out, interpolation=interpolation)


def _resize_stack_into(patches: np.ndarray, out: np.ndarray) -> None:
    """:func:`_resize_into` for each of ``patches`` ``(n, h, w, 3)`` uint8 into ``out``
    ``(n, oh, ow, 3)``; one OpenCV call on the patches stacked vertically when that
    provably gives the same bytes (saves ~10% of a 112 -> 32 render in call overhead)."""
    n, height, width = patches.shape[:3]
    out_height, out_width = out.shape[1:3]
    if _stacked_area_is_exact(height, out_height) and out.flags.c_contiguous:
        cv2.resize(patches.reshape(n * height, width, 3), (out_width, n * out_height),
                   dst=out.reshape(n * out_height, out_width, 3), interpolation=cv2.INTER_AREA)
        return
    for patch, dst in zip(patches, out):
        _resize_into(patch, dst)


def _stacked_area_is_exact(size: int, side: int) -> bool:
    """Whether area-shrinking ``size`` -> ``side`` pixels gives the same weights for every
    patch of a vertical stack as for one patch: OpenCV's cell size ``1 / (side / size)``
    must equal ``size / side`` exactly, and that be a dyadic fraction (true for side 32
    and most sizes), so each cell edge ``row * scale`` is exact, cells end on patch
    borders, and every weight is computed from the same numbers."""
    odd_part = side // (side & -side)
    return size > side and size % odd_part == 0 and 1.0 / (side / size) == size / side


# --------------------------------------------------------------------------- annotator previews


def _outline(frame: np.ndarray, mask: np.ndarray, colour: Sequence[int], thickness: int) -> np.ndarray:
    """Copy of ``frame`` with the boundary of ``mask`` (resized to the frame) drawn on it."""
    mask = resize_mask(mask, *frame.shape[:2])
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(frame.copy())
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), thickness)
    return out


def _thickness(frame: np.ndarray) -> int:
    return max(1, round(max(frame.shape[:2]) / 128))


def render_outlined_preview(frames: np.ndarray, tube_frames: Sequence[int], masks: Sequence[np.ndarray], *,
                            max_side: int = 256, colour: Sequence[int] = OUTLINE_RGB) -> np.ndarray:
    """The tube's frames with the region outlined, for annotator previews.

    ``frames`` ``(T, H, W, 3)`` uint8 indexed by ``tube_frames`` -> ``(len(tube_frames),
    h, w, 3)`` uint8 with ``max(h, w) <= max_side`` (aspect kept).
    """
    out = []
    for f, mask in zip(tube_frames, masks):
        frame = fit_max_side(frames[f], max_side)
        out.append(_outline(frame, mask, colour, _thickness(frame)))
    return np.stack(out)


def highlight_full_video(frames: np.ndarray, tube_frames: Sequence[int], masks: Sequence[np.ndarray], *,
                         max_side: int | None = None, colour: Sequence[int] = OUTLINE_RGB) -> np.ndarray:
    """The whole source video with the tube's region outlined on the frames where it exists.

    ``(T, H, W, 3)`` uint8 -> ``(T, h, w, 3)`` uint8 (downscaled to ``max_side`` if given).
    """
    by_frame = dict(zip(tube_frames, masks))
    out = []
    for f in range(len(frames)):
        frame = fit_max_side(frames[f], max_side)
        out.append(_outline(frame, by_frame[f], colour, _thickness(frame)) if f in by_frame else frame.copy())
    return np.stack(out)


def contact_sheet(tiles: Sequence[tuple[np.ndarray, np.ndarray, str]], *, columns: int = 6, tile_side: int = 200,
                  colour: Sequence[int] = OUTLINE_RGB) -> np.ndarray:
    """A grid of outlined regions for a person to look at.

    ``tiles``: ``(frame (H, W, 3) uint8, mask (H, W) bool, caption)``; each frame is fitted
    into ``tile_side`` pixels with its region outlined and the caption written under it.
    -> ``(rows * (cell height + 16), columns * tile_side, 3)`` uint8 RGB, the cell height
    being the tallest fitted frame.
    """
    caption_h = 16
    fitted = []
    for frame, mask, caption in tiles:
        small = fit_max_side(frame, tile_side)
        small_mask = cv2.resize(mask.astype(np.uint8), (small.shape[1], small.shape[0]),
                                interpolation=cv2.INTER_NEAREST).astype(bool)
        fitted.append((_outline(small, small_mask, colour, _thickness(small)), caption))
    cell_h = max((t.shape[0] for t, _ in fitted), default=tile_side) + caption_h
    rows = max(1, -(-len(fitted) // columns))
    sheet = np.full((rows * cell_h, columns * tile_side, 3), 255, np.uint8)
    for i, (tile, caption) in enumerate(fitted):
        y, x = (i // columns) * cell_h, (i % columns) * tile_side
        sheet[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
        # Right under its own frame: a wide frame in a row of tall ones keeps its caption beside it.
        cv2.putText(sheet, caption[:34], (x + 3, y + tile.shape[0] + caption_h - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return sheet
