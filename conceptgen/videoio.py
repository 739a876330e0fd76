"""Video decoding, clip sampling and browser-playable writing, all through PyAV.

Frames are numpy ``uint8`` arrays ``(T, H, W, 3)`` in RGB order. Any container and
codec FFmpeg can read is accepted (variable frame rate, grayscale and odd sizes
included); a file that cannot be decoded raises :class:`VideoReadError` with a
one-line reason. Frame indices always count *decoded* frames in presentation
order, so they stay valid for variable-frame-rate sources.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import cv2
import numpy as np

from conceptgen.errors import ConfigError, DataError, VideoReadError

# A single image is not an action: every reader asks for at least this many frames.
MIN_FRAMES = 2
DEFAULT_FPS = 25.0
# FFmpeg decodes any text file as "ANSI art" video (tty demuxer); those are not videos.
_TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds. ``fps`` is the average rate in frames per second;
    ``frame_count`` is the number of frames the demuxer delivers."""

    path: Path
    fps: float
    frame_count: int
    width: int
    height: int
    codec: str


# --------------------------------------------------------------------------- reading
def _open(path: str | Path):
    """Open ``path`` and return ``(container, video_stream)``; errors become VideoReadError."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file; check the path")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: file is empty (0 bytes); re-export or re-download the video")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoReadError(f"{path}: not a readable video ({_reason(err)}); "
                             "check the file is a complete video FFmpeg can read") from err
    streams = container.streams.video
    if not streams:
        container.close()
        raise VideoReadError(f"{path}: contains no video stream (not a video, or truncated); "
                             "give a complete video file")
    stream = streams[0]
    if stream.codec_context.name in _TEXT_CODECS or container.format.name == "tty":
        container.close()
        raise VideoReadError(f"{path}: is a text file, not a video; give a video file")
    stream.thread_type = "AUTO"
    return container, stream


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())


def _decode(path: str | Path) -> Iterator[np.ndarray]:
    """Yield every decoded frame as (H, W, 3) uint8 RGB; raise VideoReadError if none decode."""
    container, stream = _open(path)
    count = 0
    try:
        for frame in container.decode(stream):
            count += 1
            yield frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoReadError(f"{path}: video data is corrupt or truncated after {count} "
                             f"frame(s) ({_reason(err)}); re-export or re-download the video") from err
    finally:
        declared = stream.frames
        container.close()
    if declared and count < declared:
        raise VideoReadError(f"{path}: truncated video ({count} of {declared} frames decode); "
                             "re-export or re-download the video")
    if count == 0:
        raise VideoReadError(f"{path}: no decodable frames (truncated or empty video stream); "
                             "re-export or re-download the video")


def probe_video(path: str | Path, *, min_frames: int = MIN_FRAMES) -> VideoInfo:
    """Read a video's metadata. Frames are counted by demuxing packets (no decoding),
    and the first frame is decoded to prove the stream is readable."""
    container, stream = _open(path)
    try:
        width, height = stream.codec_context.width, stream.codec_context.height
        codec = stream.codec_context.name
        rate = stream.average_rate or stream.guessed_rate
        first_decoded = False
        count = 0
        for packet in container.demux(stream):
            if packet.size == 0:  # flush packet at end of stream
                continue
            count += 1
            if not first_decoded:
                first_decoded = bool(packet.decode())
        duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoReadError(f"{path}: video data is corrupt ({_reason(err)}); "
                             "re-export or re-download the video") from err
    finally:
        container.close()
    if stream.frames and count < stream.frames:
        raise VideoReadError(f"{path}: truncated video ({count} of {stream.frames} frames "
                             "present); re-export or re-download the video")
    if count == 0 or not (width and height):
        raise VideoReadError(f"{path}: has no video frames; give a non-empty video")
    if not first_decoded:
        # Decoders may buffer a few packets before the first picture; decode for real.
        frames = _decode(path)
        next(frames)  # raises VideoReadError when nothing decodes
        frames.close()
    if count < min_frames:
        raise VideoReadError(f"{path}: has only {count} frame(s); a video needs at least "
                             f"{min_frames} frames, use a longer clip")
    fps = float(rate) if rate else (count / duration if duration > 0 else DEFAULT_FPS)
    return VideoInfo(path=Path(path), fps=fps, frame_count=count, width=int(width),
                     height=int(height), codec=codec)


def iter_frames(path: str | Path, *, max_side: int | None = None) -> Iterator[np.ndarray]:
    """Stream decoded frames one by one: each (H, W, 3) uint8 RGB, downscaled so that
    max(H, W) <= max_side when given."""
    for frame in _decode(path):
        yield fit_max_side(frame, max_side)


def read_frames(path: str | Path, *, indices: Iterable[int] | None = None,
                max_side: int | None = None, min_frames: int = MIN_FRAMES) -> np.ndarray:
    """Decode a video into (T, H, W, 3) uint8 RGB.

    ``indices`` selects decoded frames (any order, repeats allowed); decoding stops
    after the largest one. ``max_side`` downscales so that max(H, W) <= max_side.
    """
    if indices is None:
        frames = [fit_max_side(f, max_side) for f in _decode(path)]
        if len(frames) < min_frames:
            raise VideoReadError(f"{path}: has only {len(frames)} frame(s); a video needs at "
                                 f"least {min_frames} frames, use a longer clip")
        return np.stack(frames)
    wanted = np.asarray(list(indices), dtype=np.int64)
    if wanted.size == 0:
        raise DataError(f"{path}: no frame indices given; ask for at least one frame")
    if wanted.min() < 0:
        raise DataError(f"{path}: negative frame index {int(wanted.min())}; indices start at 0")
    last = int(wanted.max())
    kept: dict[int, np.ndarray] = {}
    needed = set(wanted.tolist())
    count = 0
    for i, frame in enumerate(_decode(path)):
        count = i + 1
        if i in needed:
            kept[i] = fit_max_side(frame, max_side)
        if i >= last:
            break
    if last not in kept:
        raise DataError(f"{path}: frame index {last} is out of range (video has {count} "
                        "frames); sample indices with sample_indices(frame_count, ...)")
    return np.stack([kept[int(i)] for i in wanted])


# --------------------------------------------------------------------------- sampling
def sample_indices(frame_count: int, num_frames: int, *, stride: int | None = None,
                   start: int = 0) -> np.ndarray:
    """Indices of ``num_frames`` frames, shape (num_frames,) int64.

    Uniform (``stride=None``): evenly spaced over [start, frame_count - 1], so short
    videos repeat frames. Strided: start, start+stride, ...; indices past the end
    repeat the last frame (the usual padding for short clips).
    """
    if num_frames < 1:
        raise ConfigError(f"num_frames must be at least 1 (got {num_frames})")
    if frame_count < 1 or not 0 <= start < frame_count:
        raise DataError(f"cannot sample from frame {start} of a video with {frame_count} "
                        "frames; give a start inside the video")
    if stride is None:
        return np.round(np.linspace(start, frame_count - 1, num_frames)).astype(np.int64)
    if stride < 1:
        raise ConfigError(f"stride must be at least 1 (got {stride})")
    return np.minimum(start + stride * np.arange(num_frames), frame_count - 1).astype(np.int64)


def read_clip(path: str | Path, num_frames: int, side: int, *, stride: int | None = None,
              start: int = 0) -> np.ndarray:
    """One model-ready clip: ``num_frames`` sampled uniformly (or with ``stride``) from
    ``start``, short-side resized and centre-cropped to (num_frames, side, side, 3) uint8."""
    info = probe_video(path)
    indices = sample_indices(info.frame_count, num_frames, stride=stride, start=start)
    return resize_clip(read_frames(path, indices=indices, max_side=None), side)


def clip_from_file(path: str | Path, num_frames: int, side: int, *, static: bool = False) -> np.ndarray:
    """A clip file (a concept example) uniformly sampled to ``num_frames`` frames at
    ``side``: (num_frames, side, side, 3) uint8; with ``static`` its middle frame repeated.
    A file shorter than ``num_frames`` is refused rather than stretched."""
    info = probe_video(path)
    if info.frame_count < num_frames:
        raise DataError(f"{path} has {info.frame_count} frames, shorter than the model's input of "
                        f"{num_frames} frames: use clips of at least {num_frames} frames")
    clip = read_clip(path, num_frames, side)
    return static_clip(clip) if static else clip


def static_clip(clip: np.ndarray) -> np.ndarray:
    """The middle frame of ``clip`` (T, H, W, 3) repeated T times."""
    return np.repeat(clip[len(clip) // 2][None], len(clip), axis=0)


def resize_clip(frames: np.ndarray, side: int) -> np.ndarray:
    """Resize (T, H, W, 3) so the short side is ``side`` then centre-crop to
    (T, side, side, 3) uint8 — the usual video-model test transform."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise DataError(f"expected frames shaped (T, H, W, 3), got {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    scale = side / min(h, w)
    nh, nw = max(side, round(h * scale)), max(side, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    y0, x0 = (nh - side) // 2, (nw - side) // 2
    out = np.empty((t, side, side, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        resized = frame if (nh, nw) == (h, w) else cv2.resize(frame, (nw, nh), interpolation=interp)
        out[i] = resized[y0:y0 + side, x0:x0 + side]
    return out


def fit_max_side(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale ``frame`` (H, W, 3) so that max(H, W) <= ``max_side``; unchanged when it fits."""
    h, w = frame.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return frame
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- writing
def _partial_name(path: Path, writer: str) -> Path:
    return path.with_name(f".{path.stem}.partial-{writer}{path.suffix}")


def remove_partial_writes(path: str | Path) -> int:
    """Delete what killed writers of ``path`` left (their partial files); returns how many.
    Call it only where no other writer of ``path`` can be alive (e.g. under a claim)."""
    path = Path(path)
    stale = list(path.parent.glob(_partial_name(path, "*").name)) if path.parent.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def write_video(path: str | Path, frames: np.ndarray, fps: float = 8.0, *, crf: int = 18) -> None:
    """Write (T, H, W, 3) uint8 RGB as H.264 (libx264, yuv420p, +faststart) that browsers
    play. Odd sizes are padded to even by repeating the last row/column. Single-threaded
    encoding with fixed options and no macroblock-tree makes the bytes deterministic. The file appears
    atomically (written beside it, then renamed), so an interrupted write leaves nothing
    and a concurrent reader never sees half a file."""
    path = Path(path)
    fmt = _CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{path}: unsupported video extension; use one of {sorted(_CONTAINERS)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise DataError(f"expected frames shaped (T>0, H, W, 3), got {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise DataError(f"expected uint8 frames, got {frames.dtype}; convert with .astype(np.uint8)")
    if not fps > 0:
        raise ConfigError(f"fps must be positive (got {fps})")
    frames = _pad_even(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name per writer: two threads or processes writing the same file never share a partial
    tmp = _partial_name(path, f"{os.getpid()}-{threading.get_ident()}")
    options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
    try:
        with av.open(str(tmp), mode="w", format=fmt, options=options) as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(10000))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            # x264's macroblock-tree rate control gives different bytes for the same frames
            # from one call to the next (seen single-threaded, PyAV 18); without it the
            # output is a function of the frames alone.
            stream.options = {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}
            stream.codec_context.thread_count = 1
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                                       format="rgb24")))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _pad_even(frames: np.ndarray) -> np.ndarray:
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
