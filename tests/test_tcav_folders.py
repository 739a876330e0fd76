"""TF-TCAV's and Captum's folder conventions (issue 22): random folders random500_0 ...
random500_N used exactly as the N random sets, concept folders picked by name or glob,
and every file that is not a video reported by name. Real mp4 files, the toy 3D CNN
checkpoint, a real SQLite workspace."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conceptgen.cli import main
from conceptgen.errors import ConfigError
from conceptgen.registry import load_model
from tcav import examples as ex
from tcav import stats
from tcav.activations import ActivationStore
from tcav.classifiers import MeanDifferenceClassifier
from tcav.experiment import TcavConfig, run_tcav
from tcav.workflow import TcavRequest, gather_inputs


@pytest.fixture()
def tf_layout(toy_tcav_clips, tmp_path):
    """tf/rightward, tf/blob (each with a stray notes.txt), tf/random500_0..3 (5 clips each, one README.md)."""
    root = tmp_path / "tf"
    for name in ("rightward", "blob"):
        shutil.copytree(toy_tcav_clips / "concepts" / name, root / name)
    (root / "rightward" / "notes.txt").write_text("not a clip")
    clips = sorted((toy_tcav_clips / "concepts" / "random").glob("*.mp4"))
    for i in range(4):
        (root / f"random500_{i}").mkdir()
        for clip in clips[5 * i:5 * i + 5]:
            shutil.copy2(clip, root / f"random500_{i}" / clip.name)
    (root / "random500_1" / "README.md").write_text("random clips")
    return root


def test_random_folders_are_the_random_sets_exactly(toy_tcav_clips, tf_layout, tmp_path):
    loaded = load_model(str(toy_tcav_clips / "toy.pt"))
    config = TcavConfig(layers=("conv2",), targets=("right",), seed=1, with_static=False, relative=False)
    request = TcavRequest(model="toy", concepts=f"{tf_layout}/right*", config=config,
                          class_examples=str(toy_tcav_clips / "classes"),
                          random_set_folders=f"{tf_layout}/random500_*")
    inputs = gather_inputs(None, request, loaded.spec)
    assert [c.name for c in inputs.concepts] == ["rightward"]   # picked by glob; blob left out
    assert [len(s) for s in inputs.random_sets] == [5, 5, 5, 5]
    assert set(inputs.rejected) == {str(tf_layout / "rightward" / "notes.txt"),
                                    str(tf_layout / "random500_1" / "README.md")}
    report = run_tcav(loaded, inputs, config, cache_dir=tmp_path / "cache")
    assert report.n_random_sets == 4 and report.config.random_set_size == 5 and len(report.seeds) == 1
    # each CAV is the concept against one folder, in folder order: nothing pooled or redrawn
    store = ActivationStore(tmp_path / "cache", loaded, ["conv2"])
    concept = store.activations(inputs.concepts[0].examples, "conv2")
    for i, cav in enumerate(c for c in report.cavs if c.concept == "rightward"):
        folder = store.activations(sorted(inputs.random_sets[i], key=lambda e: e.key), "conv2")  # pool order
        fit = MeanDifferenceClassifier().fit(concept, folder, seed=stats.derive_seed(1, "cav", "rightward", "conv2", i))
        assert cav.against == f"random:{i}" and np.allclose(cav.vector, fit.vector, atol=1e-6)
    assert any("skipped 2 file(s) that are not videos" in w and "notes.txt" in w and "README.md" in w
               for w in report.warnings)
    assert set(report.skipped) >= set(inputs.rejected)


def test_the_cli_takes_tf_tcav_folders_and_names_what_it_skipped(toy_tcav_clips, tf_layout, tmp_path, capsys):
    ws = tmp_path / "ws"
    code = main(["--quiet", "--workspace", str(ws), "tcav", "--model", str(toy_tcav_clips / "toy.pt"),
                 "--layers", "conv2", "--target", "right", "--concepts", f"{tf_layout}/rightward,{tf_layout}/blob",
                 "--class-examples", str(toy_tcav_clips / "classes"), "--random-sets", f"{tf_layout}/random500_*",
                 "--seed", "1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "4 random sets" in out.out and "notes.txt" in out.out and "README.md" in out.out
    stored = json.loads((ws / "media" / "tcav" / "1" / "results.json").read_text())
    assert stored["config"]["random_sets"] == 4 and stored["config"]["random_set_size"] == 5
    assert {r["concept"] for r in stored["results"]} == {"rightward", "blob"}
    # the hypothesis count printed is the correction's m, with what was left out
    assert "bonferroni within each target and layer: 4 hypotheses in family right/conv2" in out.out


def test_folder_specs_that_match_nothing_are_one_line_errors(tf_layout, capsys):
    with pytest.raises(ConfigError, match="matches no folder"):
        ex.folders_matching(f"{tf_layout}/nothing_*", "--random-sets")
    with pytest.raises(ConfigError, match="at least 2"):
        ex.random_sets_from_folders(f"{tf_layout}/random500_0", None)
    code = main(["--quiet", "tcav", "--model", "x", "--layers", "a", "--target", "b", "--concepts", "c",
                 "--random-sets", "ten"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "'DIR/random500_*'" in err
