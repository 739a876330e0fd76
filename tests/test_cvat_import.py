"""CVAT for video tracks back through `conceptgen import-concepts`: edits in CVAT (polygons,
boxes, deleted tracks, renamed labels) become new concept versions, nothing else does; bad
files are refused in one line before anything is written. Real workspace, real XML files
as `conceptgen export --format cvat-video` writes them, edited the way CVAT would."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from sqlalchemy import func, select

from conceptgen.cli import main
from conceptgen.concepts import load_concept_records, render_concept_example
from conceptgen.cvat_import import import_cvat_video
from conceptgen.errors import ConfigError
from conceptgen.export_formats import cvat_points, export_for_tool, tube_labels
from conceptgen.masks import mask_outline, outline_mask, shift_mask
from conceptgen.orm import AuditLog, Concept, ConceptVersion, Tube


def _run(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _versions(ws) -> dict[str, int]:
    with ws.session() as s:
        return {c.name: c.current_version for c in s.scalars(select(Concept))}


def _n_versions(ws) -> int:
    with ws.session() as s:
        return s.scalar(select(func.count(ConceptVersion.id)))


def _records(ws):
    return {r.name: r for r in load_concept_records(ws, "all-approved")}


@pytest.fixture
def exported(concept_ws, tmp_path):
    """(workspace, export folder, {tube id: TubeLabel}, the first task's XML)."""
    export_for_tool(concept_ws, "all-approved", tmp_path / "cvat", "cvat-video")
    labels, _ = tube_labels(concept_ws, "all-approved")
    return concept_ws, tmp_path / "cvat", {lb.tube_id: lb for lb in labels}, sorted((tmp_path / "cvat").glob("*/*.xml"))[0]


def _tracks(tree, kind: str, concept: str | None = None):
    return [t for t in tree.getroot().findall("track")
            if t.find(kind) is not None and (concept is None or t.get("label") == concept)]


def _tube_of(track) -> int:
    return int(track.find("*/attribute[@name='tube_id']").text)


def _visible(track):
    return [s for s in track if s.tag != "attribute" and s.get("outside") == "0"]


def test_the_untouched_export_imports_as_no_change_whatever_its_bytes(exported, capsys):
    ws, folder, _labels, xml = exported
    before, n_before = _versions(ws), _n_versions(ws)
    code, out, err = _run(capsys, "--workspace", ws.root, "import-concepts", folder)
    assert code == 0, err
    assert "actors: 0 tube(s) added, 0 removed, 0 edited, 2 unchanged -> no new version" in out
    assert "imported 0 concept(s)" in out
    # CVAT writes the same content with other bytes: attribute order, spacing, polygon decimals
    tree = ET.parse(xml)
    for track in tree.getroot().findall("track"):
        for shape in track:
            if shape.tag == "polygon":
                shape.set("points", ";".join(f"{float(x):.1f},{float(y):g}" for x, y in
                                              (p.split(",") for p in shape.get("points").split(";"))))
            attrs = dict(shape.attrib)
            shape.attrib.clear()
            shape.attrib.update(dict(reversed(attrs.items())))
    tree.write(xml, encoding="utf-8", xml_declaration=False, short_empty_elements=False)
    report = import_cvat_video(ws, folder)
    assert report.concepts == [] and all(not p.changed for p in report.plan)
    assert _versions(ws) == before and _n_versions(ws) == n_before
    with ws.session() as s:
        assert s.scalar(select(func.count(Tube.id)).where(Tube.kind == "cvat")) == 0


def test_an_edited_polygon_becomes_the_mask_and_only_its_concept_gets_a_version(exported, capsys):
    ws, folder, labels, xml = exported
    tree = ET.parse(xml)
    track = _tracks(tree, "polygon", "actors")[0]
    tube = labels[_tube_of(track)]
    shape = _visible(track)[1]
    edited = tube.video_mask(1).copy()
    ys, xs = np.nonzero(edited)
    edited[ys.min():ys.min() + 2, :] = False                 # the annotator trims the top two rows
    edited[ys.max() + 1:ys.max() + 3, xs.min():xs.max() + 1] = True   # ... and adds two below
    shape.set("points", cvat_points(mask_outline(edited)))
    tree.write(xml, encoding="utf-8", xml_declaration=True)

    before = _versions(ws)
    code, out, err = _run(capsys, "--workspace", ws.root, "import-concepts", "--plan", folder)
    assert code == 0 and "actors: 0 tube(s) added, 0 removed, 1 edited, 1 unchanged" in out, err
    assert "distractors: 0 tube(s) added, 0 removed, 0 edited, 2 unchanged -> no new version" in out
    assert "nothing was written" in out and _versions(ws) == before     # --plan writes nothing

    code, out, err = _run(capsys, "--workspace", ws.root, "import-concepts", folder)
    assert code == 0 and "imported 1 concept(s)" in out, err
    after = _versions(ws)
    assert after == {**before, "actors": before["actors"] + 1}         # distractors untouched
    records = _records(ws)
    new = next(ex.tube for ex in records["actors"].examples if ex.tube.kind == "cvat")
    assert new.frame_indices == tube.frames
    np.testing.assert_array_equal(new.mask(1), edited)
    assert new.boxes[1] == [float(v) for v in np.array(_box_of(edited))]   # the box follows the polygon
    for i in (0, 2):
        np.testing.assert_array_equal(new.mask(i), tube.video_mask(i))   # other frames as they were
    # the other actors tube is the same stored tube, not a copy
    assert {ex.tube.id for ex in records["actors"].examples} - {new.id} == \
        {t for t, lb in labels.items() if lb.concept == "actors"} - {tube.tube_id}

    # the same edited file again, or with other bytes: nothing changes
    report = import_cvat_video(ws, folder)
    assert report.concepts == [] and _versions(ws) == after


def _box_of(mask):
    from conceptgen.masks import mask_box

    return mask_box(mask)


def test_a_box_moved_without_its_polygon_moves_the_mask_and_the_rendered_clip(exported, tmp_path):
    ws, folder, labels, xml = exported
    tree = ET.parse(xml)
    track = _tracks(tree, "box", "actors")[0]
    tube = labels[_tube_of(track)]
    for shape in track:   # moved 10 px left, every frame (the polygon track stays)
        for k in ("xtl", "xbr"):
            shape.set(k, f"{float(shape.get(k)) - 10:.2f}")
    resized = _tracks(tree, "box", "distractors")[0]
    small = labels[_tube_of(resized)]
    first = _visible(resized)[0]
    first.set("xbr", f"{float(first.get('xbr')) - 1:.2f}")    # one box narrowed by a pixel: the mask is cropped
    tree.write(xml, encoding="utf-8", xml_declaration=True)

    before = _records(ws)
    report = import_cvat_video(ws, folder)
    assert sorted(report.concepts) == ["actors", "distractors"]
    notes = "\n".join(report.lines())
    assert f"tube {tube.tube_id}): box moved without its polygon on {len(tube.frames)} frame(s)" in notes
    assert f"tube {small.tube_id}): box moved without its polygon on 0 frame(s) (mask moved), resized on 1" in notes
    after = _records(ws)
    moved = next(ex for ex in after["actors"].examples if ex.tube.kind == "cvat")
    for i in range(len(tube.frames)):
        np.testing.assert_array_equal(moved.tube.mask(i), shift_mask(tube.video_mask(i), -10, 0))
        assert moved.tube.boxes[i] == pytest.approx(np.add(tube.video_box(i), [-10, 0, -10, 0]), abs=0.006)
    cropped = next(ex for ex in after["distractors"].examples if ex.tube.kind == "cvat").tube
    x1 = int(np.ceil(small.video_box(0)[2] - 1))
    np.testing.assert_array_equal(cropped.mask(0), small.video_mask(0) & (np.arange(48) < x1)[None, :])
    # the edit has an effect where it matters: the rendered clip differs from the old one
    old = next(ex for ex in before["actors"].examples if ex.tube.id == tube.tube_id)
    clip_old = render_concept_example(old, ws.media, mode="mask", num_frames=4, side=32)
    clip_new = render_concept_example(moved, ws.media, mode="mask", num_frames=4, side=32)
    assert clip_old.shape == clip_new.shape and not np.array_equal(clip_old, clip_new)


def test_deleted_tracks_remove_their_tubes_from_the_new_version(exported):
    ws, folder, labels, xml = exported
    tree = ET.parse(xml)
    root = tree.getroot()
    video_sha = next(lb.video.sha256 for lb in labels.values()
                     if lb.video.path.name == root.findtext("meta/task/source"))
    gone = {_tube_of(t) for t in _tracks(tree, "box", "distractors")}
    assert gone
    for track in list(root.findall("track")):
        if track.get("label") == "distractors":   # every distractors track of this video deleted
            root.remove(track)
    tree.write(xml, encoding="utf-8", xml_declaration=True)
    before = _versions(ws)
    report = import_cvat_video(ws, xml)
    assert report.concepts == ["distractors"]
    plan = {p.concept: p for p in report.plan}
    assert plan["distractors"].removed == len(gone) and not plan["actors"].changed
    assert _versions(ws) == {**before, "distractors": before["distractors"] + 1}
    left = [ex.tube.id for ex in _records(ws)["distractors"].examples]
    assert not set(left) & gone
    assert set(left) == {t for t, lb in labels.items() if lb.concept == "distractors" and lb.video.sha256 != video_sha}


def test_a_renamed_label_renames_its_concept(exported, capsys):
    ws, folder, labels, xml = exported
    files = sorted(folder.glob("*/*.xml"))
    for file in files:   # renamed in the CVAT project: every task's label and tracks
        file.write_text(file.read_text().replace("<name>actors</name>", "<name>people</name>")
                        .replace('label="actors"', 'label="people"'))
    before, n_before = _versions(ws), _n_versions(ws)
    code, out, err = _run(capsys, "--workspace", ws.root, "import-concepts", folder)
    assert code == 0, err
    assert "people (renamed from actors): 0 tube(s) added, 0 removed, 0 edited, 2 unchanged" in out
    after = _versions(ws)
    assert "actors" not in after and after["people"] == before["actors"] and _n_versions(ws) == n_before
    with ws.session() as s:
        assert s.scalar(select(AuditLog.before).where(AuditLog.action == "rename")) == {"name": "actors"}

    code, _out, err = _run(capsys, "--workspace", ws.root, "import-concepts", "--rename", "distractors=ghosts", folder)
    assert code == 2 and "still declare the label 'distractors'" in err

    # an explicit --rename for a label that carries no tube ids (a track drawn anew)
    for file in files:
        file.write_text(file.read_text().replace("<name>distractors</name>", "<name>clutter</name>")
                        .replace('label="distractors"', 'label="clutter"')
                        .replace('<attribute name="tube_id">', '<attribute name="old_tube_id">'))
    code, _out, err = _run(capsys, "--workspace", ws.root, "import-concepts", folder)
    assert code == 2 and "'clutter' is not a concept" in err and "--rename OLD=clutter" in err
    code, out, err = _run(capsys, "--workspace", ws.root, "import-concepts", "--rename", "distractors=clutter", folder)
    assert code == 0 and "clutter (renamed from distractors)" in out, err
    assert set(_versions(ws)) == {"people", "clutter"}


def _one_line_refusal(capsys, ws, path, *extra):
    before = (_versions(ws), _n_versions(ws))
    code, _out, err = _run(capsys, "--workspace", ws.root, "import-concepts", *extra, path)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert (_versions(ws), _n_versions(ws)) == before     # nothing written
    return err


def test_bad_cvat_files_are_refused_in_one_line_and_nothing_is_written(exported, capsys):
    ws, folder, labels, xml = exported
    original = xml.read_text()

    # a track whose label the file does not declare
    xml.write_text(original.replace('label="distractors"', 'label="ghosts"', 1))
    err = _one_line_refusal(capsys, ws, folder)
    assert "'ghosts', which the file does not declare (declared: actors, distractors)" in err

    # a declared label that is no concept here: refused, or created with --allow-new-labels
    xml.write_text(original.replace("<name>distractors</name>", "<name>ghosts</name>")
                   .replace('label="distractors"', 'label="ghosts"').replace(
                       '<attribute name="tube_id">', '<attribute name="note">'))
    err = _one_line_refusal(capsys, ws, xml)
    assert "label 'ghosts' is not a concept of this workspace (concepts: actors, distractors)" in err
    assert "--allow-new-labels" in err
    report = import_cvat_video(ws, xml, allow_new_labels=True, plan_only=True)
    assert any(p.concept == "ghosts" and p.new for p in report.plan)

    # a frame past the video's end
    tree = ET.parse(folder / xml.relative_to(folder))
    xml.write_text(original)
    tree = ET.parse(xml)
    track = _tracks(tree, "box", "actors")[0]
    last = [s for s in track if s.tag == "box"][-1]
    late = ET.SubElement(track, "box", dict(last.attrib, frame="40", outside="0"))
    late.extend(list(last))
    tree.getroot().find("meta/task/size").text = "64"   # the file itself claims more frames
    tree.write(xml, encoding="utf-8", xml_declaration=True)
    err = _one_line_refusal(capsys, ws, xml)
    assert f"tube {_tube_of(track)}) has a shape at frame 40, but the video" in err and "has 8 frames" in err

    # a malformed number names the element and the attribute
    xml.write_text(original.replace('xtl="', 'xtl="abc', 1))
    err = _one_line_refusal(capsys, ws, xml)
    assert "<box> at frame" in err and "xtl='abc" in err and "not a number" in err
    xml.write_text(original.replace('points="', 'points="x;', 1))
    assert "<polygon> at frame" in _one_line_refusal(capsys, ws, xml)


def test_older_cvat_meta_source_and_other_shapes_are_read_and_reported(exported, capsys):
    ws, folder, labels, xml = exported
    tree = ET.parse(xml)
    root = tree.getroot()
    task = root.find("meta/task")
    source = task.find("source")
    task.remove(source)
    root.find("meta").append(source)                 # older CVAT: <meta><source>
    track = _tracks(tree, "box", "actors")[0]
    moved = [s for s in track if s.tag == "box"][0]
    moved.set("xtl", f"{float(moved.get('xtl')) + 1:.2f}")
    for kind, attrs in (("polyline", {"points": "1,1;5,5"}), ("points", {"points": "3,3"})):
        extra = ET.SubElement(root, "track", id="90", label="actors", source="manual")
        for frame in (0, 1):
            ET.SubElement(extra, kind, dict(attrs, frame=str(frame), outside="0", occluded="0", keyframe="1"))
    tree.write(xml, encoding="utf-8", xml_declaration=True)
    code, out, err = _run(capsys, "--workspace", ws.root, "import-concepts", xml)
    assert code == 0 and "imported 1 concept(s)" in out, err       # the video was found through <meta><source>
    assert "ignored 4 shape(s) that are neither boxes, polygons nor masks: 2 points, 2 polyline" in out


def test_mask_tracks_of_older_exports_still_come_back(exported):
    """Exports before polygons wrote <mask> tracks (CVAT RLE); they are still read."""
    from conceptgen.export_formats import cvat_rle

    ws, folder, labels, xml = exported
    tree = ET.parse(xml)
    track = _tracks(tree, "polygon", "actors")[0]
    tube = labels[_tube_of(track)]
    for shape in list(track):
        if shape.tag != "polygon":
            continue
        mask = outline_mask([tuple(map(float, p.split(","))) for p in shape.get("points").split(";")], 48, 48)
        if shape.get("outside") == "0" and int(shape.get("frame")) == tube.frames[0]:
            mask[0:2, 0:2] = True                       # an edit, drawn with the brush
        ys, xs = np.nonzero(mask)
        crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        shape.tag = "mask"
        del shape.attrib["points"]
        shape.attrib.update(rle=", ".join(map(str, cvat_rle(crop))), left=str(xs.min()), top=str(ys.min()),
                            width=str(crop.shape[1]), height=str(crop.shape[0]))
    tree.write(xml, encoding="utf-8", xml_declaration=True)
    report = import_cvat_video(ws, xml)
    assert report.concepts == ["actors"] and {p.concept: p.edited for p in report.plan}["actors"] == 1
    new = next(ex.tube for ex in _records(ws)["actors"].examples if ex.tube.kind == "cvat")
    assert new.mask(0)[0:2, 0:2].all() and (new.mask(0) | tube.video_mask(0)).sum() == new.mask(0).sum()


def test_plan_and_rename_flags_are_for_cvat_only(concept_ws, tmp_path):
    from conceptgen.import_concepts import import_concepts

    (tmp_path / "clips" / "a").mkdir(parents=True)
    with pytest.raises(ConfigError, match="apply to CVAT XML only"):
        import_concepts(concept_ws, tmp_path / "clips", plan_only=True)
    export_for_tool(concept_ws, "all-approved", tmp_path / "fo", "fiftyone")
    with pytest.raises(ConfigError, match="is a FiftyOne export"):
        import_concepts(concept_ws, tmp_path / "fo")
