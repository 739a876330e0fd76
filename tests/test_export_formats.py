"""`conceptgen export --format fiftyone|cvat-video` and `conceptgen verify` of them: a real
workspace (ingested synthetic videos, ground-truth tubes as approved concepts), real files,
checked against each format's documented layout. The tools themselves read the exports in
tests/test_readers.py; CVAT tracks come back in tests/test_cvat_import.py."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conceptgen.cli import main
from conceptgen.export_formats import verify_export
from conceptgen.export_formats import (cvat_rle, cvat_rle_decode, eta_mask_decode, export_for_tool, relative_corner,
                                       tube_labels)
from conceptgen.hashing import sha256_file
from conceptgen.masks import mask_outline, outline_mask

# CVAT for video 1.1 (docs.cvat.ai, "XML annotation format", Interpolation): required attributes
BOX_ATTRS = {"frame", "outside", "occluded", "keyframe", "xtl", "ytl", "xbr", "ybr"}
POLYGON_ATTRS = {"frame", "outside", "occluded", "keyframe", "points"}


def _run(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _labels_by_tube(ws):
    labels, skipped = tube_labels(ws, "all-approved")
    assert not skipped
    return {lb.tube_id: lb for lb in labels}


# --- FiftyOne ------------------------------------------------------------------------
def test_fiftyone_export_is_a_video_labels_dataset_of_the_approved_tubes(concept_ws, tmp_path, capsys):
    code, out, err = _run(capsys, "--workspace", concept_ws.root, "export", "--concepts", "all-approved",
                          "--out", tmp_path / "fo", "--format", "fiftyone")
    assert code == 0, err
    assert "exported 2 concept(s), 4 tube(s)" in out
    labels = _labels_by_tube(concept_ws)
    manifest = json.loads((tmp_path / "fo" / "manifest.json").read_text())
    assert manifest["type"] == "eta.core.datasets.LabeledVideoDataset" and len(manifest["index"]) >= 1
    seen = set()
    for entry in manifest["index"]:
        data, frames = tmp_path / "fo" / entry["data"], json.loads((tmp_path / "fo" / entry["labels"]).read_text())
        sources = {lb.video.sha256 for lb in labels.values()}
        assert sha256_file(data) in sources   # the source video itself, copied
        for number, frame in frames["frames"].items():
            assert frame["frame_number"] == int(number) >= 1
            for obj in frame["objects"]["objects"]:
                label = labels[obj["index"]]   # the tube id is the track index
                i = label.frames.index(int(number) - 1)   # FiftyOne frame numbers are 1-based
                assert obj["label"] == label.concept and obj["type"] == "eta.core.objects.DetectedObject"
                box = obj["bounding_box"]
                w, h = label.video.width, label.video.height
                x0, y0, x1, y1 = (int(box["top_left"]["x"] * w), int(box["top_left"]["y"] * h),
                                  int(box["bottom_right"]["x"] * w), int(box["bottom_right"]["y"] * h))
                assert (x0, y0, x1, y1) == label.pixel_box(i)
                assert [x0, y0, x1, y1] == pytest.approx(label.video_box(i), abs=1.0)
                # the mask in the box is the tube's, at the video's pixels, and nothing of it is cut off
                full = np.zeros((h, w), bool)
                full[y0:y1, x0:x1] = eta_mask_decode(obj["mask"])
                np.testing.assert_array_equal(full, label.video_mask(i))
                seen.add((obj["index"], int(number) - 1))
    assert seen == {(t, f) for t, lb in labels.items() for f in lb.frames}
    again = export_for_tool(concept_ws, "all-approved", tmp_path / "fo2", "fiftyone")
    for entry in manifest["index"]:   # deterministic
        assert (tmp_path / "fo" / entry["labels"]).read_bytes() == (tmp_path / "fo2" / entry["labels"]).read_bytes()
    assert again.n_clips == 4


def test_relative_box_corners_survive_truncating_readers():
    """ETA's BoundingBox.coords_in reads a corner as int(size * x), and FiftyOne stores
    [x, y, w, h], so the far corner comes back as int(size * (x + (x1 - x))). Exact
    fractions n / size lose a pixel there for some n (1 in 10 pairs at 340 px)."""
    for size in (36, 50, 100, 340, 1920):
        for x0 in range(0, size, 3):
            for x1 in range(x0 + 1, size + 1, 7):
                a, b = relative_corner(x0, size), relative_corner(x1, size)
                assert (int(size * a), int(size * (a + (b - a)))) == (x0, x1)
                assert abs(a * size - x0) < 1e-5


# --- CVAT for video 1.1 ------------------------------------------------------------
def test_cvat_rle_round_trips_and_reads_the_documented_example():
    rng = np.random.default_rng(0)
    for mask in [rng.random((7, 9)) > 0.5, np.ones((3, 4), bool), np.zeros((3, 4), bool),
                 np.eye(5, dtype=bool)]:
        runs = cvat_rle(mask)
        assert sum(runs) == mask.size and all(r >= 0 for r in runs)
        np.testing.assert_array_equal(cvat_rle_decode(runs, mask.shape[1], mask.shape[0]), mask)
    doc = [3, 5, 7, 7, 5, 9, 3, 11, 2, 11, 2, 12, 1, 12, 1, 26, 1, 12, 1, 12, 2, 11, 3, 9, 5, 7, 7, 5, 3]
    circle = cvat_rle_decode(doc, 13, 15)   # the docs' 13 x 15 mask: symmetric, background first
    assert circle[0].tolist() == [False] * 3 + [True] * 5 + [False] * 5 and cvat_rle(circle) == doc


def test_cvat_export_has_the_cvat_for_video_structure(concept_ws, tmp_path, capsys):
    code, out, err = _run(capsys, "--workspace", concept_ws.root, "export", "--concepts", "all-approved",
                          "--out", tmp_path / "cvat", "--format", "cvat-video")
    assert code == 0 and "exported 2 concept(s), 4 tube(s)" in out, err
    labels = _labels_by_tube(concept_ws)
    files = sorted((tmp_path / "cvat").glob("*/*.xml"))
    assert len(files) == len({lb.video.sha256 for lb in labels.values()}) >= 2
    tube_frames = set()
    for file in files:
        assert file.stem == file.parent.name   # Datumaro takes the file's stem as the task's subset
        root = ET.parse(file).getroot()
        assert root.tag == "annotations" and root.findtext("version") == "1.1"
        task = root.find("meta/task")
        assert task.findtext("mode") == "interpolation"
        size = int(task.findtext("size"))
        width, height = int(task.findtext("original_size/width")), int(task.findtext("original_size/height"))
        assert (file.parent / task.findtext("source")).is_file()
        # every task declares the export's whole label set, with the same attributes
        assert [lab.findtext("name") for lab in task.findall("labels/label")] == ["actors", "distractors"]
        assert all([a.findtext("name") for a in lab.findall("attributes/attribute")] == ["tube_id", "concept_version"]
                   for lab in task.findall("labels/label"))
        kinds_of_tube: dict[int, list[str]] = {}
        for track in root.findall("track"):
            assert track.get("id").isdigit()
            shapes = list(track)
            assert {s.tag for s in shapes} in ({"box"}, {"polygon"})
            for s in shapes:
                assert (BOX_ATTRS if s.tag == "box" else POLYGON_ATTRS) <= set(s.attrib)
                assert s.get("outside") in ("0", "1") and s.get("keyframe") == "1"
            frames = [int(s.get("frame")) for s in shapes]
            assert frames == sorted(set(frames)) and 0 <= frames[0] and frames[-1] < size
            tube = labels[int(shapes[0].find("attribute[@name='tube_id']").text)]
            assert track.get("label") == tube.concept
            kinds_of_tube.setdefault(tube.tube_id, []).append(shapes[0].tag)
            visible = [s for s in shapes if s.get("outside") == "0"]
            assert [int(s.get("frame")) for s in visible] == tube.frames
            if tube.frames[-1] + 1 < size:
                assert shapes[-1].get("outside") == "1" and int(shapes[-1].get("frame")) == tube.frames[-1] + 1
            for i, s in enumerate(visible):
                if s.tag == "box":
                    box = [float(s.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")]
                    assert box == pytest.approx(tube.video_box(i), abs=0.006)
                else:   # the polygon, filled, is the mask: pixel for pixel
                    points = [tuple(map(float, p.split(","))) for p in s.get("points").split(";")]
                    np.testing.assert_array_equal(outline_mask(points, height, width), tube.video_mask(i))
                    tube_frames.add((tube.tube_id, tube.frames[i]))
        assert all(sorted(k) == ["box", "polygon"] for k in kinds_of_tube.values())
    assert tube_frames == {(t, f) for t, lb in labels.items() for f in lb.frames}


def test_mask_outline_is_one_polygon_with_parts_and_holes():
    rng = np.random.default_rng(0)
    ring = np.zeros((12, 14), bool)
    ring[2:9, 2:9] = True
    ring[4:6, 4:7] = False                       # a hole
    ring[10:12, 11:14] = True                    # a second part, touching the frame's edge
    masks = [ring, np.ones((5, 4), bool), np.eye(6, dtype=bool)] + [rng.random((9, 11)) > 0.6 for _ in range(20)]
    for mask in masks:
        points = mask_outline(mask)
        assert all(float(x).is_integer() and float(y).is_integer() for x, y in points)
        np.testing.assert_array_equal(outline_mask(points, *mask.shape), mask)
    assert mask_outline(np.zeros((4, 4), bool)) == []
    assert not outline_mask([], 4, 4).any()


# --- verify -----------------------------------------------------------------------------
def test_verify_recognises_each_export_format_and_checks_it(concept_ws, tmp_path, capsys):
    for fmt in ("fiftyone", "cvat-video"):
        out = tmp_path / fmt
        export_for_tool(concept_ws, "all-approved", out, fmt)
        code, stdout, err = _run(capsys, "verify", out)
        assert code == 0 and f"in the {fmt} export" in stdout and "missing" not in stdout, (stdout, err)
        report = verify_export(out)
        assert report.ok and report.kind == fmt and not report.notes
        video = next(p for p in out.rglob("*.mp4"))
        video.write_bytes(video.read_bytes()[:-7])
        (out / "stray.txt").write_text("x")
        problems = {(p.path, p.problem) for p in verify_export(out).problems}
        rel = video.relative_to(out).as_posix()
        assert problems == {(rel, "checksum mismatch"), ("stray.txt", "unexpected file")}
        video.unlink()
        assert (rel, "missing video") in {(p.path, p.problem) for p in verify_export(out).problems}
        code, stdout, err = _run(capsys, "verify", out)
        assert code != 0 and "missing video: " + rel in stdout and len(err.strip().splitlines()) == 1

    # a CVAT folder CVAT wrote has no SHA256SUMS: verify says what it cannot check, checks the rest
    cvat = tmp_path / "from-cvat"
    export_for_tool(concept_ws, "all-approved", cvat, "cvat-video")
    (cvat / "SHA256SUMS").unlink()
    code, stdout, _err = _run(capsys, "verify", cvat)
    assert code == 0 and stdout.count("cannot check: no SHA256SUMS") == 1
    assert verify_export(cvat).notes and verify_export(cvat).ok
    (tmp_path / "nothing").mkdir()
    code, _out, err = _run(capsys, "verify", tmp_path / "nothing")
    assert code == 2 and "is not an export" in err and len(err.strip().splitlines()) == 1


def test_readme_tool_commands_are_valid_cli_invocations():
    """Every `conceptgen ...` line of the README's tool sections parses (the commands
    themselves run in the tests above: export formats, import-concepts, tcav apply)."""
    import re
    import shlex
    from pathlib import Path

    from conceptgen.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Concepts in other tools", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for block in re.findall(r"```[a-z]*\n(.*?)```", section, re.S)
                for line in block.splitlines() if line.startswith("conceptgen ")]
    assert len(commands) >= 4
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert callable(args.handler), command


def test_readme_export_verify_import_commands_run(concept_ws, tmp_path, monkeypatch, capsys):
    """The README's export, verify and import-concepts lines for FiftyOne and CVAT, run in
    order on a workspace with approved concepts (the Python snippets run in test_readers)."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Concepts in other tools", 1)[1].split("### Captum", 1)[0]
    commands = [line.split("#")[0].strip() for block in re.findall(r"```[a-z]*\n(.*?)```", section, re.S)
                for line in block.splitlines() if line.startswith("conceptgen ")]
    assert [c.split()[1] for c in commands] == ["export", "export", "verify", "import-concepts", "import-concepts"]
    monkeypatch.chdir(tmp_path)
    for command in commands:
        code, out, err = _run(capsys, "--workspace", concept_ws.root, *shlex.split(command)[1:])
        assert code == 0, (command, err)
    assert "ok:" in out or "imported 0 concept(s)" in out
    assert (tmp_path / "exports" / "fo" / "manifest.json").is_file()
