"""Extraction runs: config and identity recorded, one transaction per video, resume
skips finished videos, a killed run resumes to exactly the uninterrupted result, and
bad inputs mid-batch are recorded while the batch goes on."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from conceptgen.cli import main
from conceptgen.errors import ConfigError
from conceptgen.extract import ExtractConfig, extract, list_runs, run_identity
from conceptgen.hashing import sha256_file
from conceptgen.ingest import ingest
from conceptgen.orm import Embedding, Run, RunVideo, Tube, Video
from conceptgen.videoio import probe_video, read_frames, write_video
from conceptgen.workspace import Workspace

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """Four 16-frame 64x64 synthetic videos (one per class)."""
    from conceptgen.synth import generate_synthetic_set

    return generate_synthetic_set(tmp_path_factory.mktemp("extract-synth"), n_videos=4, seed=11,
                                  num_frames=16, size=64)


def workspace_with_demo(root: Path, demo_workspace) -> Workspace:
    """A fresh workspace (own database) holding the session's trained demo model."""
    ws = Workspace.resolve(root)
    ws.ensure_dirs()
    shutil.copy2(Path(demo_workspace.models) / "demo.pt", ws.models / "demo.pt")
    return ws


def tube_signature(ws: Workspace) -> dict[str, list]:
    """Per video sha256: its tubes' (frames, kind, masks, boxes) and embedding bytes, in track order."""
    out: dict[str, list] = {}
    with ws.session() as s:
        rows = s.execute(select(Video.sha256, Tube).join(Tube, Tube.video_id == Video.id)
                         .order_by(Video.sha256, Tube.track_index)).all()
        for sha, tube in rows:
            vectors = sorted((e.layer, e.vector) for e in tube.embeddings)
            out.setdefault(sha, []).append((tube.track_index, tube.frame_indices, tube.kind,
                                            [r["counts"] for r in tube.masks_rle], tube.boxes, vectors,
                                            tube.preview_sha256))
    return out


def test_run_records_config_identity_tubes_embeddings_and_previews(tmp_path, demo_workspace, small_set):
    ws = workspace_with_demo(tmp_path / "ws", demo_workspace)
    ingest(ws, [small_set.root / "videos"])
    config = ExtractConfig.from_options(model="demo", seed=0)
    rep = extract(ws, config, batch_size=8)
    assert (rep.n_done, rep.n_failed, rep.resumed) == (4, 0, False) and rep.n_tubes > 0
    with ws.session() as s:
        run = s.get(Run, rep.run_id)
        assert run.status == "finished" and run.finished_at is not None
        assert run.config["segmenters"] == "motion,supervoxel,foreground" and run.config["layers"]
        assert run.config["render_mode"] == config.render_mode and run.config["seed"] == 0
        assert run.config_hash == run_identity(ExtractConfig.from_dict(run.config), run.model_fingerprint)
        assert len(run.model_fingerprint) == 64 and run.code_version.startswith("0.")
        tubes = s.scalars(select(Tube).where(Tube.run_id == run.id)).all()
        assert len(tubes) == rep.n_tubes
        layer = run.config["layers"][0]
        for tube in tubes:
            assert len(tube.masks_rle) == len(tube.boxes) == len(tube.frame_indices)
            assert tube.end_frame == tube.frame_indices[-1] + 1 and 0 < tube.area < 1
            emb = {e.layer: e for e in tube.embeddings}
            assert emb[layer].dtype == "float16" and len(emb[layer].vector) == 2 * emb[layer].dim
            preview = ws.media / tube.preview_path
            assert sha256_file(preview) == tube.preview_sha256
        info = probe_video(ws.media / tubes[0].preview_path)
        assert info.codec == "h264" and info.frame_count == len(tubes[0].frame_indices)
        assert s.scalar(select(func.count()).select_from(RunVideo).where(RunVideo.status == "done")) == 4

    again = extract(ws, ExtractConfig.from_options(model="demo", seed=0), batch_size=3)
    assert again.resumed and again.run_id == rep.run_id
    assert (again.n_done, again.n_skipped, again.n_tubes) == (0, 4, 0)
    other = extract(ws, ExtractConfig.from_options(model="demo", seed=0, pooling="time"), batch_size=8)
    assert other.run_id != rep.run_id and not other.resumed
    assert [r.n_tubes for r in list_runs(ws)] == [rep.n_tubes, other.n_tubes]
    ws.close()


def test_killed_run_resumes_to_exactly_the_uninterrupted_tubes(tmp_path, demo_workspace, small_set):
    reference = workspace_with_demo(tmp_path / "reference", demo_workspace)
    ingest(reference, [small_set.root / "videos"])
    extract(reference, ExtractConfig.from_options(model="demo", seed=0), batch_size=16)

    ws = workspace_with_demo(tmp_path / "killed", demo_workspace)
    ingest(ws, [small_set.root / "videos"])
    db = ws.root / "concepts.db"
    env = {**os.environ, "CONCEPTGEN_QUIET": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "conceptgen", "--workspace", str(ws.root), "--quiet",
                             "extract", "--seed", "0"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_at_kill = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        with sqlite3.connect(db, timeout=30) as conn:
            done_at_kill = conn.execute("select count(*) from run_videos where status='done'").fetchone()[0]
        if done_at_kill >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 1 <= done_at_kill < 4  # the kill really interrupted the run

    assert main(["--quiet", "--workspace", str(ws.root), "extract", "--seed", "0"]) == 0
    assert tube_signature(ws) == tube_signature(reference)
    with ws.session() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 1
        assert s.scalar(select(func.count()).select_from(RunVideo)) == 4
        keys = s.execute(select(Tube.video_id, Tube.track_index)).all()
        assert len(keys) == len(set(keys))
    for ws_ in (reference, ws):
        ws_.close()


def test_bad_inputs_mid_batch_are_recorded_and_the_batch_goes_on(tmp_path, demo_workspace, small_set, capsys):
    src = tmp_path / "inputs"
    src.mkdir()
    good = [shutil.copy(v.video_path, src / f"good{i}.mp4") for i, v in enumerate(small_set.videos[:2])]
    (src / "empty.mp4").write_bytes(b"")
    data = Path(small_set.videos[2].video_path).read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (src / "notes.mp4").write_text("this is a text file with a video name\n" * 10)
    frames = read_frames(small_set.videos[3].video_path)
    write_video(src / "short.mp4", frames[:3])  # shorter than the model's 16-frame clip
    big = np.zeros((4, 1500, 2000, 3), np.uint8)
    big[:] = (90, 120, 60)
    for t in range(4):
        big[t, 500:900, 300 + 150 * t:800 + 150 * t] = (230, 30, 30)
    write_video(src / "huge.mp4", big)
    ws = workspace_with_demo(tmp_path / "ws", demo_workspace)
    report = ingest(ws, [src])
    assert {p.name for p, _ in report.failed} == {"empty.mp4", "truncated.mp4", "notes.mp4"}
    # A file that changes after ingest fails at extraction, mid-batch.
    Path(good[1]).write_bytes(b"\x00" * 4096)

    rep = extract(ws, ExtractConfig.from_options(model="demo", seed=0, max_side=128), batch_size=4)
    assert (rep.n_done, rep.n_failed) == (3, 1)
    with ws.session() as s:
        outcome = {Path(path).name: rv for rv, path in
                   s.execute(select(RunVideo, Video.path).join(Video, Video.id == RunVideo.video_id)).all()}
        assert set(outcome) == {"good0.mp4", "good1.mp4", "short.mp4", "huge.mp4"}
        assert outcome["good1.mp4"].status == "failed" and "good1.mp4" in outcome["good1.mp4"].error
        assert outcome["short.mp4"].status == "done" and "short video" in outcome["short.mp4"].error
        assert outcome["huge.mp4"].status == "done" and outcome["huge.mp4"].n_tubes >= 1
        huge_tubes = s.scalars(select(Tube).join(Video).where(Video.path.like("%huge.mp4"))).all()
        assert all(max(t.mask_height, t.mask_width) <= 128 for t in huge_tubes)
        assert s.get(Run, rep.run_id).error.startswith("1 video(s) failed")
    capsys.readouterr()
    assert main(["--quiet", "--workspace", str(ws.root), "runs", str(rep.run_id)]) == 0
    listing = capsys.readouterr().out
    assert "failed 0 tubes" in listing and "good1.mp4" in listing and "render_mode = mask" in listing
    # Resume retries only the failure; finished videos are skipped.
    again = extract(ws, ExtractConfig.from_options(model="demo", seed=0, max_side=128), batch_size=4)
    assert (again.n_skipped, again.n_done, again.n_failed) == (3, 0, 1)
    ws.close()


def test_bad_options_give_one_line_errors(tmp_path, demo_workspace, capsys):
    ws = workspace_with_demo(tmp_path / "ws", demo_workspace)
    with pytest.raises(ConfigError, match="--mode"):
        ExtractConfig.from_options(mode="sketch")
    with pytest.raises(ConfigError, match="ingest"):
        extract(ws, ExtractConfig.from_options(model="demo"))
    code = main(["--workspace", str(ws.root), "extract", "--amp"])
    assert code == 2 and "--amp needs --device cuda" in capsys.readouterr().err
    code = main(["--workspace", str(ws.root), "extract", "--segmenter", "sam"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    ws.close()


def test_a_video_past_its_time_budget_is_recorded_as_failed_and_the_batch_goes_on(tmp_path, demo_workspace, small_set):
    ws = workspace_with_demo(tmp_path / "ws", demo_workspace)
    ingest(ws, [str(v.video_path) for v in small_set.videos])
    # A budget no video can meet: every one stops at its first stage's first progress step.
    report = extract(ws, ExtractConfig.from_options(model="demo", seed=0), video_time_limit=1e-9)
    assert report.n_failed == len(small_set.videos) and report.n_done == 0
    assert all("time budget" in reason and "--video-time-limit" in reason for _, reason in report.failures)
    with ws.session() as s:
        assert s.scalar(select(func.count()).select_from(Tube)) == 0
        assert {rv.status for rv in s.scalars(select(RunVideo))} == {"failed"}
        assert s.get(Run, report.run_id).status == "finished"
    # A generous budget then finishes them: failed videos are retried by the same run.
    again = extract(ws, ExtractConfig.from_options(model="demo", seed=0), video_time_limit=600)
    assert again.run_id == report.run_id and again.n_done == len(small_set.videos)
    ws.close()


def test_progress_shows_each_stage_inside_a_video(tmp_path, demo_workspace, small_set, capsys, monkeypatch):
    import conceptgen.progress
    from conceptgen.progress import is_quiet, set_quiet

    monkeypatch.setattr(conceptgen.progress, "STAGE_BAR_DELAY_S", 0.0)  # these stages take well under a second

    ws = workspace_with_demo(tmp_path / "ws", demo_workspace)
    ingest(ws, [str(small_set.videos[0].video_path)])
    was_quiet = is_quiet()
    set_quiet(False)
    try:
        extract(ws, ExtractConfig.from_options(model="demo", seed=0))
    finally:
        set_quiet(was_quiet)
    err = capsys.readouterr().err
    name = Path(small_set.videos[0].video_path).name
    for stage in ("segment", "track", "objectness", "embed", "store"):
        assert f"{name}: {stage}" in err, stage
    ws.close()


def test_extract_without_a_model_on_real_looking_videos_names_the_real_options(tmp_path, demo_workspace, capsys):
    ws = workspace_with_demo(tmp_path / "ws", demo_workspace)
    rng = np.random.default_rng(0)
    write_video(tmp_path / "clips" / "kitchen.mp4", rng.integers(0, 255, (12, 48, 64, 3), dtype=np.uint8))
    assert main(["--quiet", "--workspace", str(ws.root), "ingest", str(tmp_path / "clips")]) == 0
    capsys.readouterr()
    code = main(["--quiet", "--workspace", str(ws.root), "extract"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "demo model knows only the synthetic shapes" in err and "--pretrained" in err and "--weights" in err
    with ws.session() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0  # nothing started
    ws.close()
