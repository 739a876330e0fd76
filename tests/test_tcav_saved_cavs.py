"""Every experiment saves its CAVs; `conceptgen tcav apply` scores new videos with them
without retraining and refuses a model with another fingerprint. Real mp4 files, a
real checkpoint of the toy 3D CNN, a real SQLite workspace."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from conceptgen import registry
from conceptgen.cli import main
from tcav.saved_cavs import load_cavs
N_SETS = 4


def _run(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def experiment(toy_tcav_clips, tmp_path_factory):
    """One finished experiment (id 1) on the toy model: (workspace, checkpoint, clip root)."""
    root, ws = toy_tcav_clips, tmp_path_factory.mktemp("saved-cavs") / "ws"
    code = main(["--quiet", "--workspace", str(ws), "tcav", "--model", str(root / "toy.pt"),
                 "--layers", "conv2", "--target", "right", "--concepts", str(root / "concepts"),
                 "--class-examples", str(root / "classes"), "--random-sets", str(N_SETS),
                 "--random-set-size", "8", "--classifier", "mean-diff", "--seed", "1"])
    assert code == 0
    return ws, root / "toy.pt", root


def test_every_experiment_stores_its_cavs_with_their_provenance(experiment):
    ws, _checkpoint, _root = experiment
    saved = load_cavs(ws / "media" / "tcav" / "1")
    results = json.loads((ws / "media" / "tcav" / "1" / "results.json").read_text())
    # 2 concepts x (dynamic, static) x 1 layer x N random sets
    assert len(saved.cavs) == 2 * 2 * N_SETS
    assert len(saved.model_fingerprint) == 64
    for (concept, variant, layer), group in saved.groups().items():
        assert len(group) == N_SETS and layer == "conv2"
        for g in group:
            assert g.model_fingerprint == saved.model_fingerprint and g.cav.classifier == "mean-diff"
            assert np.linalg.norm(g.cav.vector) == pytest.approx(1.0, abs=1e-5)
            assert np.isfinite(g.cav.bias) and len(g.examples_sha256) == 64 and g.concept_version is None
        # the stored CAVs are the ones the experiment scored with: same held-out accuracies, in order
        row = next(r for r in results["results"] if (r["concept"], r["variant"], r["layer"], r["comparison"])
                   == (concept, variant, layer, "random"))
        assert [g.cav.accuracy for g in group] == pytest.approx(row["details"]["cav_accuracies"])


def test_apply_on_the_experiments_own_class_videos_reproduces_its_tcav_scores(experiment, capsys, tmp_path):
    ws, _checkpoint, root = experiment
    out = tmp_path / "applied.json"
    code, stdout, err = _run(capsys, "--workspace", ws, "tcav", "apply", "--experiment", 1,
                             "--videos", root / "classes", "--out", out)
    assert code == 0, err
    assert "rightward" in stdout and f"scores: {out}" in stdout
    applied = json.loads(out.read_text())
    results = json.loads((ws / "media" / "tcav" / "1" / "results.json").read_text())["results"]
    for score in applied["scores"]:
        row = next(r for r in results if (r["concept"], r["variant"], r["layer"], r["target"], r["comparison"])
                   == (score["concept"], score["variant"], score["layer"], score["target"], "random"))
        assert score["tcav_mean"] == pytest.approx(row["tcav_mean"])
        assert score["n_cavs"] == N_SETS and len(score["videos"]) == 6


def test_apply_scores_new_videos_per_video(experiment, capsys):
    ws, _checkpoint, root = experiment
    code, _stdout, err = _run(capsys, "--workspace", ws, "tcav", "apply", "--experiment", 1, "--videos", root / "new")
    assert code == 0, err
    applied = json.loads((ws / "media" / "tcav" / "1" / "applied.json").read_text())
    assert {s["target"] for s in applied["scores"]} == {"right"}
    for score in applied["scores"]:
        assert len(score["videos"]) == 6
        for v in score["videos"]:
            assert 0 <= v["positive_fraction"] <= 1 and 0 <= v["concept_presence"] <= 1
        fractions = [v["positive_fraction"] for v in score["videos"]]
        # TCAV per CAV averaged over CAVs = per-video positive share averaged over videos
        assert score["tcav_mean"] == pytest.approx(np.mean(fractions))


def test_apply_refuses_a_model_with_another_fingerprint_in_one_line(experiment, tcav_toy, capsys, tmp_path):
    ws, _checkpoint, root = experiment
    other = copy.deepcopy(tcav_toy.model)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    path = tmp_path / "other.pt"
    registry.save_checkpoint(path, builder="tcav_toy", builder_kwargs={}, model=other, spec=tcav_toy.spec,
                             class_names=tcav_toy.class_names)
    code, _out, err = _run(capsys, "--workspace", ws, "tcav", "apply", "--experiment", 1,
                           "--videos", root / "new", "--model", path)
    assert code == 2
    assert err.startswith("error: the CAVs of experiment 1 were trained on model") and "fingerprint" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_apply_to_an_unknown_experiment_and_tcav_without_options_are_one_line_errors(experiment, capsys):
    ws, _checkpoint, root = experiment
    code, _out, err = _run(capsys, "--workspace", ws, "tcav", "apply", "--experiment", 99, "--videos", root / "new")
    assert code == 2 and "no TCAV experiment 99" in err and len(err.strip().splitlines()) == 1
    code, _out, err = _run(capsys, "--workspace", ws, "tcav", "--layers", "conv2")
    assert code == 2 and "needs --model, --target, --concepts" in err


def test_database_concepts_record_their_version_and_static_cavs_their_variant(tmp_path):
    from tcav.cav import CAV
    from tcav.examples import ConceptExamples, Example
    from tcav.saved_cavs import save_cavs

    clips = [Example.from_array(np.full((2, 4, 4, 3), i, np.uint8)) for i in range(3)]
    concept = ConceptExamples("sq", "dynamic", clips, concept_id=7, source="db", version=3)
    vector = np.ones(4, np.float32) / 2
    cavs = [CAV("sq", "random:0", "conv2", vector, 0.75, "sgd", 11, -0.5),
            CAV("sq [static]", "random:0", "conv2", -vector, 0.5, "sgd", 12, 0.25)]
    save_cavs(cavs, [concept], model_name="toy", model_fingerprint="a" * 64, experiment_folder=tmp_path,
              experiment_id=4)
    saved = load_cavs(tmp_path)
    assert saved.experiment_id == 4 and [s.variant for s in saved.cavs] == ["dynamic", "static"]
    for s, cav in zip(saved.cavs, cavs):
        assert (s.concept, s.concept_id, s.concept_version) == ("sq", 7, 3)
        assert (s.cav.bias, s.cav.accuracy, s.cav.seed, s.cav.layer) == (cav.bias, cav.accuracy, cav.seed, "conv2")
        np.testing.assert_array_equal(s.cav.vector, cav.vector)
    assert saved.cavs[0].examples_sha256 != saved.cavs[1].examples_sha256   # static clips differ
