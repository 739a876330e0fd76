"""Import: export folders read back round-trip equal, plain clip folders, bad inputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import build_concept_workspace
from conceptgen.cli import main
from conceptgen.errors import DataError, IntegrityError, NotFoundError
from conceptgen.export import export_concepts, read_manifest
from conceptgen.export_formats import verify_export
from conceptgen.hashing import sha256_file
from conceptgen.import_concepts import import_concepts
from conceptgen.masks import decode_rle
from conceptgen.orm import AuditLog, Concept
from conceptgen.videoio import read_frames, write_video
from conceptgen.workspace import Workspace


@pytest.fixture
def fresh_ws(tmp_path):
    ws = Workspace.resolve(tmp_path / "other-ws")
    yield ws
    ws.close()


def _concepts(ws):
    with ws.session() as s:
        out = {}
        for c in s.query(Concept).order_by(Concept.name):
            version = next(v for v in c.versions if v.version == c.current_version)
            out[c.name] = (c, version, list(version.examples))
        return out


def test_export_verify_import_round_trip(concept_ws, fresh_ws, tmp_path):
    out = tmp_path / "export"
    export_concepts(concept_ws, "all-approved", out, static=True, num_frames=8, side=32)
    assert verify_export(out).ok
    manifest = read_manifest(out)

    report = import_concepts(fresh_ws, out)
    assert report.kind == "export" and report.concepts == ["actors", "distractors"] and not report.skipped

    imported = _concepts(fresh_ws)
    for entry in manifest["concepts"]:
        concept, version, examples = imported[entry["name"]]
        assert (concept.description, concept.source, concept.status) == (entry["description"], "import", "approved")
        assert concept.current_version == entry["version"] == version.version
        assert [v.version for v in concept.versions] == [v["version"] for v in entry["versions"]]
        assert version.provenance["import"]["discovery"] == entry["discovery"]
        assert version.provenance["import"]["approval_history"] == entry["approval_history"]
        assert len(examples) == len(entry["examples"]) == 4
        for row, ex in zip(examples, entry["examples"]):
            assert row.tube_id is None and row.variant == ex["variant"]
            assert row.clip_sha256 == manifest["files"][ex["clip"]]
            assert sha256_file(fresh_ws.media / row.clip_path) == row.clip_sha256
            assert row.clip_path.startswith("imported/")
            assert row.meta["frame_range"] == ex["frame_range"] and row.meta["boxes"] == ex["boxes"]
            masks = json.loads((out / ex["masks"]).read_text())["rle"]
            assert all(np.array_equal(decode_rle(a), decode_rle(b)) for a, b in zip(row.meta["masks_rle"], masks))
    with fresh_ws.session() as s:
        assert s.query(AuditLog).filter_by(action="import").count() == 2


def test_reexport_of_an_import_keeps_clips_and_metadata(concept_ws, fresh_ws, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    export_concepts(concept_ws, ["actors"], first, static=True, num_frames=8, side=32)
    import_concepts(fresh_ws, first)
    export_concepts(fresh_ws, ["actors"], second, static=True, num_frames=8, side=32)
    a, b = read_manifest(first)["concepts"][0], read_manifest(second)["concepts"][0]
    assert b["source"] == "import" and len(a["examples"]) == len(b["examples"])
    for ea, eb in zip(a["examples"], b["examples"]):
        assert (ea["variant"], ea["frame_range"], ea["boxes"], ea["derived_from"]) == \
               (eb["variant"], eb["frame_range"], eb["boxes"], eb["derived_from"])
        assert (first / ea["clip"]).read_bytes() == (second / eb["clip"]).read_bytes()
        assert (first / ea["masks"]).read_bytes() == (second / eb["masks"]).read_bytes()
    assert b["discovery"] == a["discovery"]


def test_importing_twice_adds_nothing(concept_ws, fresh_ws, tmp_path):
    out = tmp_path / "export"
    export_concepts(concept_ws, ["actors"], out, num_frames=8, side=32)
    import_concepts(fresh_ws, out)
    again = import_concepts(fresh_ws, out)
    assert again.concepts == [] and [s.item for s in again.skipped] == ["actors"]
    assert len(_concepts(fresh_ws)["actors"][2]) == 2


def test_corrupt_export_is_refused(concept_ws, fresh_ws, tmp_path):
    out = tmp_path / "export"
    export_concepts(concept_ws, ["actors"], out, num_frames=8, side=32)
    clip = next(out.rglob("*.mp4"))
    clip.write_bytes(clip.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="conceptgen verify"):
        import_concepts(fresh_ws, out)
    assert _concepts(fresh_ws) == {}


def _clip(path, seed, frames=6):
    rng = np.random.default_rng(seed)
    write_video(path, rng.integers(0, 255, (frames, 24, 32, 3), dtype=np.uint8))


def test_plain_clip_folders_become_concepts_and_bad_items_are_skipped(fresh_ws, tmp_path):
    root = tmp_path / "user-clips"
    for i in range(3):
        _clip(root / "waving" / f"w{i}.mp4", i)
    (root / "waving" / "notes.txt").write_text("not a clip")
    (root / "waving" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    _clip(root / "lonely" / "only.mp4", 7)
    (root / "empty").mkdir()

    report = import_concepts(fresh_ws, root)
    assert report.kind == "folder" and report.concepts == ["waving"] and report.n_examples == 3
    reasons = {s.item: s.reason for s in report.skipped}
    assert "not a video file" in reasons["waving/notes.txt"]
    assert "waving/broken.mp4" in reasons and "\n" not in reasons["waving/broken.mp4"]
    assert "only 1 readable clip" in reasons["lonely"] and "only 0 readable clip" in reasons["empty"]

    concept, version, examples = _concepts(fresh_ws)["waving"]
    assert concept.source == "folder" and version.provenance["import"]["kind"] == "folder"
    assert [e.meta["original_name"] for e in examples] == ["w0.mp4", "w1.mp4", "w2.mp4"]
    for e in examples:
        assert e.tube_id is None and sha256_file(fresh_ws.media / e.clip_path) == e.clip_sha256
        assert e.clip_sha256 == sha256_file(root / "waving" / e.meta["original_name"])


def test_plain_folder_concepts_export_with_static_variants(fresh_ws, tmp_path):
    root = tmp_path / "user-clips"
    _clip(root / "waving" / "w0.mp4", 0, frames=10)
    _clip(root / "waving" / "w1.mp4", 1, frames=4)  # too short for an 8-frame static variant
    import_concepts(fresh_ws, root)
    out = tmp_path / "export"
    report = export_concepts(fresh_ws, ["waving"], out, static=True, num_frames=8, side=32)
    examples = read_manifest(out)["concepts"][0]["examples"]
    assert [(e["position"], e["variant"], e["rendered"]) for e in examples] == [
        (0, "dynamic", False), (1, "static", True), (2, "dynamic", False)]
    assert [s.item for s in report.skipped] == ["waving#3 (static)"]
    assert "shorter than" in report.skipped[0].reason
    assert (out / examples[0]["clip"]).read_bytes() == (root / "waving" / "w0.mp4").read_bytes()


def test_bad_import_sources_are_one_line_errors(fresh_ws, tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no concept sub-folders"):
        import_concepts(fresh_ws, tmp_path / "nothing")
    with pytest.raises(NotFoundError, match="is not a folder"):
        import_concepts(fresh_ws, tmp_path / "absent")
    capsys.readouterr()
    code = main(["--workspace", str(fresh_ws.root), "--quiet", "import-concepts", str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error:") and err.count("\n") == 1


def test_cli_import_round_trip(tiny_synth, tmp_path, capsys):
    src = build_concept_workspace(tmp_path / "src", tiny_synth)
    out = tmp_path / "export"
    export_concepts(src, ["actors"], out, num_frames=8, side=32)
    src.close()
    dst = tmp_path / "dst"
    assert main(["--workspace", str(dst), "--quiet", "import-concepts", str(out)]) == 0
    assert "imported 1 concept(s) with 2 clip(s)" in capsys.readouterr().out
    ws = Workspace.resolve(dst)
    try:
        assert list(_concepts(ws)) == ["actors"]
    finally:
        ws.close()


REAL_CLIPS = Path(__file__).resolve().parents[1].parent / "shared/data/real-clips"


def test_real_clips_import_export_verify(fresh_ws, tmp_path):
    names = ["mmaction2_armwrestling.mp4", "mmaction2_test.avi"]
    if not all((REAL_CLIPS / n).is_file() for n in names):
        pytest.skip(f"real clips not found in {REAL_CLIPS}")
    root = tmp_path / "user-clips"
    (root / "arms").mkdir(parents=True)
    for n in names:
        shutil.copyfile(REAL_CLIPS / n, root / "arms" / n)

    report = import_concepts(fresh_ws, root)
    assert report.concepts == ["arms"] and not report.skipped
    _, _, examples = _concepts(fresh_ws)["arms"]
    assert [(e.meta["width"], e.meta["height"]) for e in examples] == [(340, 256), (320, 240)]
    assert examples[1].clip_path.endswith(".avi")  # the container is kept as is

    out = tmp_path / "export"
    export_concepts(fresh_ws, ["arms"], out, static=True, num_frames=8, side=32)
    assert verify_export(out).ok
    static = [e for e in read_manifest(out)["concepts"][0]["examples"] if e["variant"] == "static"]
    assert len(static) == 2
    frames = read_frames(out / static[0]["clip"]).astype(int)
    assert frames.shape == (8, 32, 32, 3) and np.abs(np.diff(frames, axis=0)).mean() < 2.0


def test_imported_concepts_load_through_tcav_like_any_other(concept_ws, fresh_ws, tmp_path):
    from conceptgen.registry import InputSpec
    from tcav.examples import concepts_from_db, static_counterpart

    out = tmp_path / "export"
    export_concepts(concept_ws, ["actors"], out, num_frames=8, side=32)
    import_concepts(fresh_ws, out)
    spec = InputSpec(num_frames=8, side=24, mean=(0.45,) * 3, std=(0.225,) * 3)
    (concept,) = concepts_from_db(fresh_ws, ["actors"], spec, render_mode="crop")
    clips = [e.load() for e in concept.examples]
    assert len(clips) == 2 and all(c.shape == (8, 24, 24, 3) and c.dtype == np.uint8 for c in clips)
    # the imported clip is the exported one, resized: same content as reading the export directly
    direct = read_frames(out / read_manifest(out)["concepts"][0]["examples"][0]["clip"])
    assert abs(float(clips[0].mean()) - float(direct.mean())) < 3
    static = static_counterpart(concept)
    assert np.abs(np.diff(static.examples[0].load().astype(int), axis=0)).max() == 0
