"""Ingest: files, folders, globs; labels; content dedupe; bad files recorded, batch goes on."""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from conceptgen.cli import main
from conceptgen.errors import ConfigError
from conceptgen.ingest import expand_paths, ingest
from conceptgen.orm import Video
from conceptgen.videoio import write_video
from conceptgen.workspace import Workspace


def _video(path, seed, frames=6, size=(32, 48)):
    rng = np.random.default_rng(seed)
    write_video(path, rng.integers(0, 255, (frames, *size, 3), dtype=np.uint8))
    return path


@pytest.fixture
def ws(tmp_path):
    w = Workspace.resolve(tmp_path / "ws")
    yield w
    w.close()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "videos"
    _video(root / "walking" / "a.mp4", 1)
    _video(root / "walking" / "b.mp4", 2)
    _video(root / "running" / "nested" / "c.mp4", 3)
    (root / "running" / "notes.txt").write_text("not a video, and not picked from a folder")
    return root


def _videos(ws):
    with ws.session() as s:
        return {v.path.split("/")[-1]: v for v in s.scalars(select(Video))}


def test_folder_is_searched_recursively_and_labelled_by_parent(ws, folder):
    report = ingest(ws, [folder])
    assert len(report.added) == 3 and not report.failed and not report.duplicates
    rows = _videos(ws)
    assert {n: v.label for n, v in rows.items()} == {"a.mp4": "walking", "b.mp4": "walking", "c.mp4": "nested"}
    assert rows["a.mp4"].frame_count == 6 and (rows["a.mp4"].width, rows["a.mp4"].height) == (48, 32)


def test_reingest_and_copies_add_no_rows(ws, folder, tmp_path):
    ingest(ws, [folder])
    copy = tmp_path / "copy.mp4"
    copy.write_bytes((folder / "walking" / "a.mp4").read_bytes())
    report = ingest(ws, [folder, copy])
    assert not report.added and len(report.duplicates) == 4
    assert len(_videos(ws)) == 3


def test_bad_files_are_recorded_as_failed_and_the_batch_goes_on(ws, tmp_path):
    good1 = _video(tmp_path / "in" / "good1.mp4", 1)
    empty = tmp_path / "in" / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "in" / "truncated.mp4"
    data = _video(tmp_path / "full.mp4", 5, frames=20).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    text = tmp_path / "in" / "readme.txt"
    text.write_text("hello, I am not a video\n" * 20)
    good2 = _video(tmp_path / "in" / "good2.mp4", 2)

    report = ingest(ws, [good1, empty, truncated, text, good2])
    assert sorted(p.name for p, _ in report.added) == ["good1.mp4", "good2.mp4"]
    failed = {p.name: reason for p, reason in report.failed}
    assert set(failed) == {"empty.mp4", "truncated.mp4", "readme.txt"}
    assert "empty" in failed["empty.mp4"]
    rows = _videos(ws)
    for name in failed:
        assert rows[name].status == "failed" and rows[name].error == failed[name]
        assert "\n" not in rows[name].error
    assert rows["good1.mp4"].status == rows["good2.mp4"].status == "ok"


def test_labels_and_split_from_csv(ws, folder, tmp_path):
    by_path = tmp_path / "labels.csv"
    by_path.write_text(f"path,label,split\nvideos/walking/a.mp4,jump,test\n{folder / 'walking' / 'b.mp4'},swim,\n")
    ingest(ws, [folder / "walking"], labels_csv=by_path, split="train")
    rows = _videos(ws)
    assert (rows["a.mp4"].label, rows["a.mp4"].split) == ("jump", "test")
    assert (rows["b.mp4"].label, rows["b.mp4"].split) == ("swim", "train")

    by_name = tmp_path / "names.csv"
    by_name.write_text("filename,label\nc.mp4,climb\n")
    ingest(ws, [folder / "running"], labels_csv=by_name)
    assert _videos(ws)["c.mp4"].label == "climb"


def test_bad_csv_and_missing_paths_give_clear_errors(ws, folder, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.mp4,x\n")
    with pytest.raises(ConfigError, match="path .*label"):
        ingest(ws, [folder], labels_csv=bad)
    with pytest.raises(ConfigError, match="no such file"):
        ingest(ws, [tmp_path / "nope"])
    with pytest.raises(ConfigError, match="matches no files"):
        ingest(ws, [str(tmp_path / "nothing*.mp4")])


def test_globs_expand_recursively(folder):
    names = sorted(p.name for p in expand_paths([str(folder / "**" / "*.mp4")]))
    assert names == ["a.mp4", "b.mp4", "c.mp4"]


def test_cli_prints_summary_with_failure_reasons(tmp_path, folder, capsys):
    (folder / "walking" / "broken.mp4").write_bytes(b"\x00garbage" * 10)
    code = main(["--quiet", "--workspace", str(tmp_path / "ws"), "ingest", str(folder)])
    out = capsys.readouterr().out
    assert code == 0
    assert "added 3, duplicates 0, failed 1" in out and "broken.mp4" in out
    main(["--quiet", "--workspace", str(tmp_path / "ws"), "ingest", str(folder)])
    assert "added 0, duplicates 4, failed 0" in capsys.readouterr().out
