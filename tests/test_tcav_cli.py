"""`conceptgen tcav` and `conceptgen gradcam` end to end: real mp4 files, a real
checkpoint, a real SQLite workspace; results checked through the library."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from sqlalchemy import select

from conceptgen import registry
from conceptgen.cli import main
from conceptgen.orm import TcavExperiment, TcavResult
from tcav.experiment import TcavConfig
from conceptgen.videoio import probe_video, write_video
from conceptgen.workspace import Workspace
from conceptgen.toy_model import ToyWorld, _background, class_clips, moving_square_clip, static_blob

W = ToyWorld()


@pytest.fixture
def toy_checkpoint(tcav_toy, tmp_path):
    """The toy network saved as a conceptgen checkpoint that load_model reads back
    (registry.PROJECT_BUILDERS names the "tcav_toy" builder)."""
    path = tmp_path / "toy.pt"
    registry.save_checkpoint(path, builder="tcav_toy", builder_kwargs={}, model=tcav_toy.model,
                             spec=tcav_toy.spec, class_names=tcav_toy.class_names)
    return path


def _write_clips(folder, clips):
    folder.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(clips):
        write_video(folder / f"{i:03d}.mp4", clip)


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory):
    """DIR/<concept>/*.mp4 with a random/ pool, and CLASSES/<class>/*.mp4."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    _write_clips(root / "concepts" / "rightward", [moving_square_clip(rng, W, "right", distractor=False)
                                                   for _ in range(8)])
    _write_clips(root / "concepts" / "blob", [static_blob(_background(rng, W), rng, W) for _ in range(8)])
    _write_clips(root / "concepts" / "random", [moving_square_clip(rng, W, "static") for _ in range(20)])
    _write_clips(root / "classes" / "right", list(class_clips("right", 6, seed=3)))
    write_video(root / "short.mp4", class_clips("right", 1, seed=4)[0][:3])
    return root


def _run(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tcav_command_scores_stores_exports_and_plots(toy_checkpoint, clip_folders, tmp_path, capsys, db_url):
    ws = tmp_path / "ws"  # the store at db_url: SQLite and PostgreSQL
    code, out, err = _run(capsys, "--workspace", ws, "--db-url", db_url, "tcav", "--model", toy_checkpoint, "--layers", "conv2,pool",
                          "--target", "right", "--concepts", clip_folders / "concepts", "--class-examples",
                          clip_folders / "classes", "--random-sets", 4, "--random-set-size", 8,
                          "--classifier", "mean-diff", "--seed", 1)
    assert code == 0, err
    assert "verdict" in out and "(degenerate)" in out and "warning: layer pool is degenerate" in out
    workspace = Workspace.resolve(ws, db_url)
    with workspace.session() as s:
        exp = s.scalars(select(TcavExperiment)).one()
        results = s.scalars(select(TcavResult).where(TcavResult.comparison == "random")).all()
        assert exp.status == "finished" and exp.layers == ["conv2", "pool"] and exp.seed == 1
        # one config type from the flags to the stored row
        assert TcavConfig.from_stored(exp.config) == TcavConfig(
            layers=("conv2", "pool"), targets=("right",), random_sets=4, random_set_size=8,
            classifier="mean-diff", seed=1)
        assert exp.summary["degenerate_layers"] == ["pool"]
        # 2 concepts x (dynamic, static) x 2 layers, each with its 4 per-random-set scores
        assert len(results) == 8 and all(len(r.details["scores"]) == 4 for r in results)
        assert {r.variant for r in results} == {"dynamic", "static"}
        plots = list(exp.plots)
    workspace.close()
    assert plots and all((ws / "media" / p).is_file() for p in plots)
    with open(ws / "media" / "tcav" / str(exp.id) / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["concept"] for r in rows} == {"rightward", "blob"}


@pytest.mark.parametrize("extra, message", [
    (["--device", "cuda"] if not __import__("torch").cuda.is_available() else ["--device", "nope"], "device"),
    (["--amp"], "--amp needs --device cuda"),
    (["--layers", "conv9"], "close matches"),
    (["--target", "upward"], "no class 'upward'"),
    (["--random-sets", "many"], "--random-sets must be a number, auto, or random-set folders"),
])
def test_tcav_bad_input_is_one_line_without_traceback(toy_checkpoint, clip_folders, tmp_path, capsys,
                                                       extra, message):
    args = {"--layers": "conv2", "--target": "right"}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    argv = ["--workspace", tmp_path / "ws", "tcav", "--model", toy_checkpoint, "--concepts",
            clip_folders / "concepts", "--class-examples", clip_folders / "classes"]
    for flag, value in args.items():
        argv += [flag, value]
    if extra == ["--amp"]:
        argv.append("--amp")
    code, _out, err = _run(capsys, *argv)
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_tcav_from_database_concepts_needs_enough_examples(concept_ws, toy_checkpoint, clip_folders, capsys):
    """Approved concepts come from the DB (2 examples each here: below the minimum)."""
    code, _out, err = _run(capsys, "--workspace", concept_ws.root, "tcav", "--model", toy_checkpoint,
                           "--layers", "conv2", "--target", "right", "--concepts", "all-approved",
                           "--class-examples", clip_folders / "classes")
    assert code == 2 and "fewer than the minimum" in err and "actors" in err


def test_gradcam_writes_h264_overlay_and_heat_curve(toy_checkpoint, clip_folders, tmp_path, capsys):
    video = clip_folders / "classes" / "right" / "000.mp4"
    code, out, err = _run(capsys, "--workspace", tmp_path / "ws", "gradcam", "--video", video, "--model",
                          toy_checkpoint, "--layer", "conv2", "--target", "right", "--out", tmp_path / "cam")
    assert code == 0, err
    (mp4,) = (tmp_path / "cam").glob("gradcam_*.mp4")
    info = probe_video(mp4)
    assert info.codec == "h264" and info.frame_count == W.num_frames
    (curve,) = (tmp_path / "cam").glob("heat_*.csv")
    rows = list(csv.DictReader(open(curve)))
    assert len(rows) == W.num_frames and all(0 <= float(r["heat_mean"]) <= 1 for r in rows)
    assert max(float(r["heat_max"]) for r in rows) == pytest.approx(1.0, abs=1e-3)
    assert list((tmp_path / "cam").glob("heat_*.png"))
    code, _out, err = _run(capsys, "--workspace", tmp_path / "ws", "gradcam", "--video", clip_folders / "short.mp4",
                           "--model", toy_checkpoint, "--layer", "conv2", "--target", "right")
    assert code == 2 and "shorter than the model's input" in err
    code, _out, err = _run(capsys, "--workspace", tmp_path / "ws", "gradcam", "--video", video,
                           "--model", toy_checkpoint, "--layer", "pool", "--target", "right")
    assert code == 2 and "earlier layer" in err


def test_database_concepts_render_tubes_with_static_twins_and_a_pool_outside_every_concept(
        toy_checkpoint, clip_folders, tmp_path_factory):
    """Approved concepts from a real workspace DB: tubes rendered from their videos,
    static variants rendered from the same tubes, the random pool = tubes in no concept."""
    from conceptgen.orm import ConceptExample, Tube
    from conceptgen.synth import generate_synthetic_set
    from tcav.workflow import TcavRequest, run_experiment
    from conftest import build_concept_workspace

    synth = generate_synthetic_set(tmp_path_factory.mktemp("synth"), n_videos=10, seed=2, num_frames=8, size=48)
    ws = build_concept_workspace(tmp_path_factory.mktemp("dbws") / "ws", synth,
                                 concepts=(("actors", "moving actors", 6), ("distractors", "small objects", 6)))
    config = TcavConfig(layers=("conv2",), targets=("right",), random_sets=3, random_set_size=6,
                        classifier="mean-diff", render_mode="crop")
    request = TcavRequest(model=str(toy_checkpoint), concepts="all-approved", config=config,
                          class_examples=str(clip_folders / "classes"))
    outcome = run_experiment(ws, request)
    with ws.session() as s:
        n_tubes = s.query(Tube).count()
        in_concepts = s.query(ConceptExample.tube_id).distinct().count()
        stored = s.scalars(select(TcavResult).where(TcavResult.experiment_id == outcome.experiment_id,
                                                    TcavResult.comparison == "random")).all()
        assert {(r.concept_name, r.variant) for r in stored} == {
            ("actors", "dynamic"), ("actors", "static"), ("distractors", "dynamic"), ("distractors", "static")}
        assert all(r.concept_id is not None for r in stored)
    assert n_tubes - in_concepts >= 12          # enough tubes outside every concept for two sets of 6
    assert outcome.report.n_random_sets == 3 and not outcome.report.skipped
    ws.close()


def test_export_folder_concepts_keep_their_exported_static_variants(concept_ws, tmp_path):
    from conceptgen.export import export_concepts
    from conceptgen.registry import InputSpec
    from tcav.examples import concepts_from_folder

    out = tmp_path / "export"
    export_concepts(concept_ws, "all-approved", out, mode="crop", static=True, num_frames=8, side=32)
    spec = InputSpec(num_frames=8, side=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    concepts = concepts_from_folder(out, spec)
    assert {(c.name, c.variant) for c in concepts} == {("actors", "dynamic"), ("actors", "static"),
                                                      ("distractors", "dynamic"), ("distractors", "static")}
    clip = concepts[0].examples[0].load()
    assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8
    static = next(c for c in concepts if c.variant == "static").examples[0].load()
    assert all(np.array_equal(static[0], f) for f in static)   # one frame repeated
    assert len({e.key for c in concepts for e in c.examples}) == sum(len(c.examples) for c in concepts)
