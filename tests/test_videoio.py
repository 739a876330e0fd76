"""Video I/O: decoding any FFmpeg input to RGB uint8, clip sampling, browser-playable writing,
and one-line VideoReadError for every kind of bad file."""
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conceptgen.errors import DataError, VideoReadError
from conceptgen.videoio import (iter_frames, probe_video, read_clip, read_frames, remove_partial_writes,
                                resize_clip, sample_indices, write_video)

REAL_CLIPS = Path(__file__).resolve().parents[1].parent / "shared/data/real-clips"


def smooth_clip(t=6, h=33, w=47, seed=0):
    """Smooth gradients plus a moving square: compresses well, so a round trip is close."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.zeros((t, h, w, 3), dtype=np.uint8)
    base = rng.integers(40, 100, size=3)
    for i in range(t):
        frames[i] = np.stack([xx * 2 + base[0], yy * 3 + base[1], np.full_like(xx, base[2])], -1)
        frames[i, 5:15, 2 + 3 * i:12 + 3 * i] = (250, 20, 20)
    return frames


def one_line_error(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text and text
    return text


def test_write_then_read_round_trips_odd_sized_frames(tmp_path):
    frames = smooth_clip()
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=10)
    info = probe_video(path)
    assert (info.frame_count, info.width, info.height, info.codec) == (6, 48, 34, "h264")
    assert info.fps == pytest.approx(10.0)
    back = read_frames(path)
    assert back.dtype == np.uint8 and back.shape == (6, 34, 48, 3)
    assert np.abs(back[:, :33, :47].astype(int) - frames).mean() < 5
    assert [f.shape for f in iter_frames(path)] == [(34, 48, 3)] * 6


def test_written_video_is_browser_playable_h264_yuv420p_faststart(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, smooth_clip())
    with av.open(str(path)) as c:
        ctx = c.streams.video[0].codec_context
        assert (ctx.name, ctx.pix_fmt) == ("h264", "yuv420p")
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # index first: playback starts while loading


def test_writing_is_deterministic_and_atomic(tmp_path):
    frames = smooth_clip(seed=3)
    write_video(tmp_path / "a.mp4", frames)
    write_video(tmp_path / "b.mp4", frames)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]  # no partial files left


def test_partial_files_of_killed_writers_are_removed_for_their_target_only(tmp_path):
    write_video(tmp_path / "a.mp4", smooth_clip(seed=3))
    for name in (".a.partial-123-456.mp4", ".a.partial-9-9.mp4", ".b.partial-123-456.mp4"):
        (tmp_path / name).write_bytes(b"half a file")
    assert remove_partial_writes(tmp_path / "a.mp4") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.partial-123-456.mp4", "a.mp4"]
    assert remove_partial_writes(tmp_path / "missing" / "c.mp4") == 0


def test_repeated_writes_of_textured_motion_give_the_same_bytes(tmp_path):
    # x264's macroblock-tree gave 2-4 different byte streams over 8 writes of this clip in one process.
    texture = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    frames = np.concatenate([np.roll(texture, 2 * i, axis=2) for i in range(16)])
    digests = set()
    for i in range(8):
        write_video(tmp_path / f"{i}.mp4", frames)
        digests.add((tmp_path / f"{i}.mp4").read_bytes())
    assert len(digests) == 1


def test_indices_select_frames_in_any_order_and_max_side_downscales(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, smooth_clip())
    full = read_frames(path)
    picked = read_frames(path, indices=[4, 1, 1])
    assert np.array_equal(picked, full[[4, 1, 1]])
    small = read_frames(path, max_side=24)
    assert max(small.shape[1:3]) == 24 and small.shape[0] == 6
    with pytest.raises(DataError):
        read_frames(path, indices=[6])


def test_grayscale_video_decodes_to_rgb_with_equal_channels(tmp_path):
    path = tmp_path / "gray.mkv"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = 33, 21, "gray"
        for _ in range(5):
            c.mux(s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (21, 33), dtype=np.uint8),
                                                      format="gray")))
        c.mux(s.encode(None))
    frames = read_frames(path)
    assert frames.shape == (5, 21, 33, 3)
    assert np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 1], frames[..., 2])


def test_variable_frame_rate_video_keeps_every_decoded_frame(tmp_path):
    path = tmp_path / "vfr.mkv"
    pts = [0, 40, 50, 200, 210, 400, 800]  # milliseconds, irregular
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv444p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 30, dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = p, Fraction(1, 1000)
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    frames = read_frames(path)
    assert frames.shape[0] == len(pts)
    assert np.all(np.diff(frames[:, 0, 0, 0].astype(int)) > 0)  # in presentation order
    assert probe_video(path).frame_count == len(pts)


@pytest.mark.parametrize("case", ["empty", "text", "truncated_half", "truncated_header", "one_frame", "missing"])
def test_bad_files_raise_one_line_video_read_error(tmp_path, case):
    good = tmp_path / "good.mp4"
    write_video(good, smooth_clip(t=12))
    path = tmp_path / f"{case}.mp4"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is a text file, not a video\n" * 20)
    elif case == "truncated_half":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "truncated_header":
        path.write_bytes(good.read_bytes()[:300])
    elif case == "one_frame":
        write_video(path, smooth_clip(t=1))
    for reader in (probe_video, read_frames):
        with pytest.raises(VideoReadError) as exc:
            reader(path)
        assert str(path) in one_line_error(exc)


def test_text_file_with_txt_extension_is_not_a_video(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" * 200)
    with pytest.raises(VideoReadError) as exc:
        probe_video(path)
    assert "text" in one_line_error(exc)


def test_sample_indices_uniform_strided_and_short_videos():
    uniform = sample_indices(100, 8)
    assert uniform[0] == 0 and uniform[-1] == 99 and np.all(np.diff(uniform) > 0)
    assert sample_indices(100, 4, stride=5, start=10).tolist() == [10, 15, 20, 25]
    short = sample_indices(3, 6)
    assert len(short) == 6 and short.min() == 0 and short.max() == 2 and np.all(np.diff(short) >= 0)
    assert sample_indices(10, 4, stride=4).tolist() == [0, 4, 8, 9]  # past the end: last frame repeats
    with pytest.raises(DataError):
        sample_indices(0, 4)


def test_resize_clip_scales_short_side_and_centre_crops():
    frames = np.zeros((2, 40, 80, 3), dtype=np.uint8)
    frames[:, 18:22, 38:42] = 255  # a dot at the centre
    out = resize_clip(frames, 20)
    assert out.shape == (2, 20, 20, 3) and out.dtype == np.uint8
    ys, xs = np.nonzero(out[0, ..., 0] > 100)
    assert abs(ys.mean() - 9.5) <= 1 and abs(xs.mean() - 9.5) <= 1


def test_read_clip_gives_model_ready_shape(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, smooth_clip(t=9))
    assert read_clip(path, 4, 16).shape == (4, 16, 16, 3)


def test_real_clips_decode(tmp_path):
    clips = sorted(p for p in REAL_CLIPS.glob("*") if p.suffix in (".mp4", ".avi")) if REAL_CLIPS.is_dir() else []
    if not clips:
        pytest.skip(f"no real clips at {REAL_CLIPS}")
    for path in clips:
        info = probe_video(path)
        assert info.frame_count > 10 and info.fps > 0
        frames = read_frames(path, indices=[0, info.frame_count - 1], max_side=64)
        assert frames.shape[0] == 2 and max(frames.shape[1:3]) == 64 and frames.dtype == np.uint8
