"""`conceptgen export --format fiftyone|cvat-video` and CVAT tracks back through
`conceptgen import-concepts`: a real workspace (ingested synthetic videos, ground-truth
tubes as approved concepts), real files, checked against each format's documented layout."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from sqlalchemy import select

from conceptgen.cli import main
from conceptgen.concepts import load_concept_records
from conceptgen.export_formats import (box_crop, cvat_rle, cvat_rle_decode, eta_mask_decode, export_for_tool,
                                       tube_labels)
from conceptgen.hashing import sha256_file
from conceptgen.masks import decode_rle, resize_mask
from conceptgen.orm import Concept, ConceptVersion, Tube

# CVAT for video 1.1 (docs.cvat.ai, "XML annotation format", Interpolation): required attributes
BOX_ATTRS = {"frame", "outside", "occluded", "keyframe", "xtl", "ytl", "xbr", "ybr"}
MASK_ATTRS = {"frame", "outside", "occluded", "rle", "left", "top", "width", "height"}


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
                h, w = label.mask_size
                assert [box["top_left"]["x"] * w, box["top_left"]["y"] * h, box["bottom_right"]["x"] * w,
                        box["bottom_right"]["y"] * h] == pytest.approx(label.boxes[i])
                np.testing.assert_array_equal(eta_mask_decode(obj["mask"]),
                                              box_crop(decode_rle(label.masks_rle[i]), label.boxes[i]))
                seen.add((obj["index"], int(number) - 1))
    assert seen == {(t, f) for t, lb in labels.items() for f in lb.frames}
    again = export_for_tool(concept_ws, "all-approved", tmp_path / "fo2", "fiftyone")
    for entry in manifest["index"]:   # deterministic
        assert (tmp_path / "fo" / entry["labels"]).read_bytes() == (tmp_path / "fo2" / entry["labels"]).read_bytes()
    assert again.n_clips == 4


def _fiftyone(monkeypatch, tmp_path):
    monkeypatch.setenv("FIFTYONE_DO_NOT_TRACK", "true")
    monkeypatch.setenv("FIFTYONE_DATABASE_DIR", str(tmp_path / "fiftyone-db"))
    return pytest.importorskip("fiftyone", reason="the optional extra is not installed: "
                                                  "pip install 'conceptgen[fiftyone]'")


def test_the_fiftyone_package_parses_the_export(concept_ws, tmp_path, monkeypatch):
    _fiftyone(monkeypatch, tmp_path)
    from fiftyone.utils.data.importers import FiftyOneVideoLabelsDatasetImporter

    export_for_tool(concept_ws, "all-approved", tmp_path / "fo", "fiftyone")
    labels = _labels_by_tube(concept_ws)
    found = set()
    with FiftyOneVideoLabelsDatasetImporter(str(tmp_path / "fo")) as importer:
        for video_path, _metadata, _label, frames in importer:
            assert os.path.isfile(video_path)
            for number, fields in frames.items():
                for det in fields["detections"].detections:
                    label = labels[det.index]
                    i = label.frames.index(number - 1)
                    x, y, bw, bh = det.bounding_box   # FiftyOne's [x, y, width, height], relative
                    h, w = label.mask_size
                    assert [x * w, y * h, (x + bw) * w, (y + bh) * h] == pytest.approx(label.boxes[i])
                    assert det.label == label.concept and det["concept_version"] == 1
                    assert det.mask.shape == box_crop(label.mask(i), label.boxes[i]).shape
                    found.add(det.index)
    assert found == set(labels)


def test_fiftyone_dataset_from_dir_loads_the_export(concept_ws, tmp_path, monkeypatch):
    fo = _fiftyone(monkeypatch, tmp_path)
    from fiftyone.core.config import FiftyOneConfigError
    from fiftyone.core.service import ServiceExecutableNotFound

    export_for_tool(concept_ws, "all-approved", tmp_path / "fo", "fiftyone")
    try:
        dataset = fo.Dataset.from_dir(dataset_dir=str(tmp_path / "fo"),
                                      dataset_type=fo.types.FiftyOneVideoLabelsDataset)
    except (FiftyOneConfigError, ServiceExecutableNotFound) as err:   # fiftyone-db ships no mongod offline
        pytest.skip(f"fiftyone is installed but cannot start its database here: {str(err).splitlines()[0]}")
    try:
        assert len(dataset) == len(json.loads((tmp_path / "fo" / "manifest.json").read_text())["index"])
        indices = {d.index for s in dataset for f in s.frames.values() for d in f["detections"].detections}
        assert indices == set(_labels_by_tube(concept_ws))
    finally:
        dataset.delete()


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
    files = sorted((tmp_path / "cvat").glob("*/annotations.xml"))
    assert files
    tubes_seen = set()
    for file in files:
        root = ET.parse(file).getroot()
        assert root.tag == "annotations" and root.findtext("version") == "1.1"
        task = root.find("meta/task")
        assert task.findtext("mode") == "interpolation"
        size = int(task.findtext("size"))
        width, height = int(task.findtext("original_size/width")), int(task.findtext("original_size/height"))
        assert (file.parent / task.findtext("source")).is_file()
        names = {lab.findtext("name") for lab in task.findall("labels/label")}
        assert all({a.findtext("name") for a in lab.findall("attributes/attribute")} == {"tube_id", "concept_version"}
                   for lab in task.findall("labels/label"))
        for track in root.findall("track"):
            assert track.get("label") in names and track.get("id").isdigit()
            shapes = list(track)
            kinds = {s.tag for s in shapes}
            assert kinds in ({"box"}, {"mask"})
            for s in shapes:
                assert (BOX_ATTRS if s.tag == "box" else MASK_ATTRS) <= set(s.attrib)
                assert s.get("outside") in ("0", "1") and s.get("keyframe") == "1"
            frames = [int(s.get("frame")) for s in shapes]
            assert frames == sorted(set(frames)) and 0 <= frames[0] and frames[-1] < size
            tube = labels[int(shapes[0].find("attribute[@name='tube_id']").text)]
            visible = [s for s in shapes if s.get("outside") == "0"]
            assert [int(s.get("frame")) for s in visible] == tube.frames
            if tube.frames[-1] + 1 < size:
                assert shapes[-1].get("outside") == "1" and int(shapes[-1].get("frame")) == tube.frames[-1] + 1
            for i, s in enumerate(visible):
                if s.tag == "box":
                    box = [float(s.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")]
                    assert box == pytest.approx(tube.video_box(i), abs=0.006)
                else:
                    w, h, left, top = (int(s.get(k)) for k in ("width", "height", "left", "top"))
                    crop = cvat_rle_decode([int(x) for x in s.get("rle").split(",")], w, h)
                    full = np.zeros((height, width), bool)
                    full[top:top + h, left:left + w] = crop
                    np.testing.assert_array_equal(full, resize_mask(tube.mask(i), height, width))
            tubes_seen.add(tube.tube_id)
    assert tubes_seen == set(labels)


def test_fixed_cvat_tracks_come_back_as_a_new_concept_version(concept_ws, tmp_path, capsys):
    export_for_tool(concept_ws, "all-approved", tmp_path / "cvat", "cvat-video")
    labels = _labels_by_tube(concept_ws)
    file = sorted((tmp_path / "cvat").glob("*/annotations.xml"))[0]
    tree = ET.parse(file)
    track = next(t for t in tree.getroot().findall("track") if t.find("box") is not None)
    fixed_tube = labels[int(track.find("box/attribute[@name='tube_id']").text)]
    boxes = [b for b in track.findall("box") if b.get("outside") == "0"]
    boxes[-1].set("outside", "1")                       # the annotator drops the last frame ...
    boxes[0].set("xtl", f"{float(boxes[0].get('xtl')) - 1:.2f}")   # ... and widens the first box
    tree.write(file, encoding="utf-8", xml_declaration=True)
    n_tracks = {f: len([t for t in ET.parse(f).getroot().findall("track") if t.find("box") is not None])
                for f in (tmp_path / "cvat").glob("*/annotations.xml")}

    code, out, err = _run(capsys, "--workspace", concept_ws.root, "import-concepts", tmp_path / "cvat")
    assert code == 0, err
    assert f"imported 2 concept(s) with {sum(n_tracks.values())} clip(s)" in out
    with concept_ws.session() as s:
        for name in ("actors", "distractors"):
            concept = s.scalar(select(Concept).where(Concept.name == name))
            assert concept.current_version > 1 and concept.status == "approved"
        cvat_tubes = s.scalars(select(Tube).where(Tube.kind == "cvat")).all()
        fixed = next(t for t in cvat_tubes if t.frame_indices == fixed_tube.frames[:-1]
                     and t.boxes[0][0] == pytest.approx(fixed_tube.video_box(0)[0] - 1, abs=0.01))
        # masks come from the CVAT mask track of the same tube
        np.testing.assert_array_equal(decode_rle(fixed.masks_rle[1]), fixed_tube.video_mask(1))
        assert len(cvat_tubes) == sum(n_tracks.values())
    records = {r.name: r for r in load_concept_records(concept_ws, "all-approved")}
    assert any(ex.tube.frame_indices == fixed_tube.frames[:-1] for ex in records[fixed_tube.concept].examples)

    code, out, err = _run(capsys, "--workspace", concept_ws.root, "import-concepts", tmp_path / "cvat")
    assert code == 0 and "imported 0 concept(s)" in out and "imported already" in out
    with concept_ws.session() as s:
        assert s.scalar(select(ConceptVersion.version).join(Concept).where(Concept.name == "actors")
                        .order_by(ConceptVersion.version.desc()).limit(1)) == records["actors"].version


def test_cvat_import_names_what_is_missing_in_one_line(concept_ws, tmp_path, capsys):
    export_for_tool(concept_ws, "all-approved", tmp_path / "cvat", "cvat-video")
    file = sorted((tmp_path / "cvat").glob("*/annotations.xml"))[0]
    (file.parent / file.parent.name).mkdir()
    moved = file.parent / file.parent.name / "annotations.xml"
    text = file.read_text().replace("<source>", "<source>unknown_")
    moved.write_text(text)
    code, out, _err = _run(capsys, "--workspace", concept_ws.root, "import-concepts", moved)
    assert code == 0 and "is not in this workspace" in out and "imported 0 concept(s)" in out
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotations><version>1.0</version></annotations>")
    code, _out, err = _run(capsys, "--workspace", concept_ws.root, "import-concepts", bad)
    assert code == 2 and "CVAT 1.1" in err and len(err.strip().splitlines()) == 1


def test_importing_one_videos_task_keeps_the_concepts_examples_on_other_videos(concept_ws, tmp_path):
    from conceptgen.cvat_import import import_cvat_video

    export_for_tool(concept_ws, "all-approved", tmp_path / "cvat", "cvat-video")
    before = {r.name: r for r in load_concept_records(concept_ws, "all-approved")}
    file = sorted((tmp_path / "cvat").glob("*/annotations.xml"))[0]
    video_sha = sha256_file(file.parent / ET.parse(file).getroot().findtext("meta/task/source"))
    report = import_cvat_video(concept_ws, file)
    after = {r.name: r for r in load_concept_records(concept_ws, "all-approved")}
    for name in report.concepts:
        assert after[name].version == before[name].version + 1
        others = [ex.tube.id for ex in before[name].examples if ex.video["sha256"] != video_sha]
        kept = [ex.tube.id for ex in after[name].examples if ex.video["sha256"] != video_sha]
        on_video = [ex for ex in after[name].examples if ex.video["sha256"] == video_sha]
        assert kept == others and on_video and all(ex.tube.kind == "cvat" for ex in on_video)


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
