"""Concept dataset export: self-describing manifest, checksums, atomicity, byte reproducibility."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conceptgen.cli import main
from conceptgen.errors import ConfigError, NotFoundError
from conceptgen.export import MANIFEST, export_concepts, read_manifest
from conceptgen.export_formats import verify_export
from conceptgen.hashing import sha256_file
from conceptgen.masks import decode_rle
from conceptgen.orm import Concept, Tube, Video
from conceptgen.videoio import probe_video, read_frames


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_writes_clips_masks_and_a_complete_manifest(concept_ws, tmp_path):
    out = tmp_path / "export"
    report = export_concepts(concept_ws, "all-approved", out, mode="mask", num_frames=8, side=32)

    assert report.concepts == ["actors", "distractors"] and not report.skipped
    manifest = read_manifest(out)
    assert manifest["schema_version"] == 1 and manifest["render"]["mode"] == "mask"
    assert (out / "FORMAT.md").read_text().startswith("# conceptgen concept dataset")
    with concept_ws.session() as s:
        tubes = {t.id: t for t in s.query(Tube)}
        videos = {v.id: v for v in s.query(Video)}
    for concept in manifest["concepts"]:
        assert (out / concept["folder"]).is_dir()
        assert concept["discovery"]["layer"] == "blocks.2" and concept["discovery"]["model"] == "demo"
        assert concept["versions"][0]["created_by"] == "alice"
        assert [h["action"] for h in concept["approval_history"]] == ["accept"]
        assert concept["approval_history"][0]["by"] == "alice" and concept["approval_history"][0]["at"]
        assert len(concept["examples"]) == 2
        for ex in concept["examples"]:
            tube = tubes[ex["tube"]["id"]]
            info = probe_video(out / ex["clip"])
            assert (info.codec, info.frame_count, info.width, info.height) == ("h264", 8, 32, 32)
            assert ex["frame_range"] == [tube.start_frame, tube.end_frame]
            assert ex["boxes"] == tube.boxes
            assert ex["source_video"]["sha256"] == videos[tube.video_id].sha256
            assert sha256_file(ex["source_video"]["path"]) == ex["source_video"]["sha256"]
            masks = json.loads((out / ex["masks"]).read_text())
            assert masks["frames"] == tube.frame_indices
            for rle, stored in zip(masks["rle"], tube.masks_rle):
                assert np.array_equal(decode_rle(rle), decode_rle(stored))
    listed = set(manifest["files"])
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk - listed == {MANIFEST, "manifest.json.sha256"}
    assert all(sha256_file(out / rel) == digest for rel, digest in manifest["files"].items())


def test_mask_mode_clip_keeps_the_region_and_fills_the_rest(concept_ws, tmp_path):
    from scipy.ndimage import binary_dilation, binary_erosion

    from conceptgen.render import DEFAULT_MEAN, fill_from_mean

    out = tmp_path / "export"
    # 48 px synth frames at side 48: the mask-mode context window is the whole frame, unscaled
    export_concepts(concept_ws, ["actors"], out, mode="mask", num_frames=8, side=48)
    ex = read_manifest(out)["concepts"][0]["examples"][0]
    first = read_frames(out / ex["clip"])[0].astype(int)
    mask = decode_rle(json.loads((out / ex["masks"]).read_text())["rle"][0])
    fill = np.array(fill_from_mean(DEFAULT_MEAN))
    outside = ~binary_dilation(mask, iterations=3)
    inside = binary_erosion(mask, iterations=2)
    assert outside.any() and inside.any()
    assert np.median(np.abs(first[outside] - fill)) <= 3  # H.264 noise only
    assert np.abs(first[inside] - fill).mean() > 30  # saturated actor colour kept


def test_reexport_is_byte_identical(concept_ws, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    export_concepts(concept_ws, "actors,distractors", a, static=True, num_frames=8, side=32)
    export_concepts(concept_ws, "actors,distractors", b, static=True, num_frames=8, side=32)
    files_a, files_b = _files(a), _files(b)
    assert files_a.keys() == files_b.keys()
    assert len([f for f in files_a if f.endswith("_static.mp4")]) == 4
    for rel in files_a:
        assert files_a[rel] == files_b[rel], rel


def test_static_variant_repeats_one_frame(concept_ws, tmp_path):
    out = tmp_path / "export"
    export_concepts(concept_ws, ["actors"], out, static=True, num_frames=8, side=32)
    examples = read_manifest(out)["concepts"][0]["examples"]
    assert [e["variant"] for e in examples] == ["dynamic", "static", "dynamic", "static"]
    static = examples[1]
    assert static["derived_from"] == 0 and static["masks"] == examples[0]["masks"]
    frames = read_frames(out / static["clip"]).astype(int)
    dynamic = read_frames(out / examples[0]["clip"]).astype(int)
    # H.264 noise aside, a static clip does not change over time; the moving actor does
    assert np.abs(np.diff(frames, axis=0)).mean() < np.abs(np.diff(dynamic, axis=0)).mean()
    assert np.abs(np.diff(frames, axis=0)).mean() < 2.0


def test_verify_reports_a_corrupted_file(concept_ws, tmp_path, capsys):
    out = tmp_path / "export"
    export_concepts(concept_ws, ["actors"], out, num_frames=8, side=32)
    assert verify_export(out).ok
    clip = out / read_manifest(out)["concepts"][0]["examples"][1]["clip"]
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 0xFF
    clip.write_bytes(bytes(data))
    (out / "stray.txt").write_text("added later")

    report = verify_export(out)
    assert {(p.path, p.problem) for p in report.problems} == {
        (clip.relative_to(out).as_posix(), "checksum mismatch"), ("stray.txt", "unexpected file")}
    capsys.readouterr()
    code = main(["--workspace", str(concept_ws.root), "--quiet", "verify", str(out)])
    captured = capsys.readouterr()
    assert code != 0 and clip.name in captured.out and "Traceback" not in captured.err
    assert captured.err.startswith("error:") and captured.err.count("\n") == 1


def test_verify_detects_an_edited_manifest(concept_ws, tmp_path):
    out = tmp_path / "export"
    export_concepts(concept_ws, ["actors"], out, num_frames=8, side=32)
    manifest = out / MANIFEST
    manifest.write_text(manifest.read_text().replace('"the moving actor"', '"something else"'))
    assert [(p.path, p.problem) for p in verify_export(out).problems] == [(MANIFEST, "checksum mismatch")]


def test_interrupted_export_leaves_nothing_behind(concept_ws, tmp_path):
    out = tmp_path / "exports" / "interrupted"
    written = []

    def fail_on_third_file(rel):
        written.append(rel)
        if len(written) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_concepts(concept_ws, "all-approved", out, num_frames=8, side=32, on_file=fail_on_third_file)
    assert len(written) == 3
    assert list(out.parent.iterdir()) == []
    # and the next attempt succeeds from scratch
    export_concepts(concept_ws, "all-approved", out, num_frames=8, side=32)
    assert verify_export(out).ok


def test_existing_target_needs_overwrite_and_is_replaced_atomically(concept_ws, tmp_path):
    out = tmp_path / "export"
    export_concepts(concept_ws, ["actors"], out, num_frames=8, side=32)
    with pytest.raises(ConfigError, match="--overwrite"):
        export_concepts(concept_ws, ["actors"], out, num_frames=8, side=32)
    export_concepts(concept_ws, ["distractors"], out, num_frames=8, side=32, overwrite=True)
    assert [c["name"] for c in read_manifest(out)["concepts"]] == ["distractors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "ws"]


def test_missing_source_video_is_recorded_and_the_rest_exported(concept_ws, tmp_path):
    with concept_ws.session() as s:
        concept = s.query(Concept).filter_by(name="actors").one()
        concept.versions[0].examples[0].tube.video.path = str(tmp_path / "moved.mp4")
    out = tmp_path / "export"
    report = export_concepts(concept_ws, ["actors"], out, num_frames=8, side=32)
    assert len(report.skipped) == 1 and "moved.mp4 is missing" in report.skipped[0].reason
    entry = read_manifest(out)["concepts"][0]
    assert [e["position"] for e in entry["examples"]] == [1]
    assert entry["skipped"][0]["reason"] == report.skipped[0].reason
    assert verify_export(out).ok


def test_unknown_names_and_modes_are_one_line_errors(concept_ws, tmp_path, capsys):
    with pytest.raises(NotFoundError, match="known concepts: actors, distractors"):
        export_concepts(concept_ws, ["nope"], tmp_path / "x")
    capsys.readouterr()
    code = main(["--workspace", str(concept_ws.root), "--quiet", "export", "--concepts", "nope",
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: unknown concept(s) nope") and err.count("\n") == 1
    with pytest.raises(ConfigError, match="render mode"):
        export_concepts(concept_ws, ["actors"], tmp_path / "y", mode="sepia")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_export_then_verify(concept_ws, tmp_path, capsys):
    out = tmp_path / "cli-export"
    root = str(concept_ws.root)
    assert main(["--workspace", root, "--quiet", "export", "--concepts", "all-approved", "--out", str(out),
                 "--mode", "blur", "--num-frames", "8", "--side", "32"]) == 0
    assert "exported 2 concept(s), 4 clip(s)" in capsys.readouterr().out
    assert read_manifest(out)["render"]["mode"] == "blur"
    assert main(["--workspace", root, "--quiet", "verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith("ok:")
