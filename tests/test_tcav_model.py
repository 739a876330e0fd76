"""Video-TCAV on a real (tiny, trained) 3D CNN: the cache, diagnostics, the null,
determinism, bad input, and agreement with Captum's TCAV."""
from __future__ import annotations

import copy
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from conceptgen.errors import ConfigError, DataError, LayerNotFoundError, UnknownClassError
from conceptgen.registry import get_layer
from tcav import diagnostics, scoring
from tcav.activations import ActivationStore
from tcav.classifiers import make_classifier
from tcav.examples import ConceptExamples, Example, file_example, static_example
from tcav.experiment import TcavConfig, TcavInputs, draw_random_sets, run_tcav
from conceptgen.toy_model import ToyWorld, class_clips, moving_square_clip, noise_clip
from tcav.toy import toy_tcav_inputs

W = ToyWorld()


@pytest.fixture(scope="module")
def inputs():
    return toy_tcav_inputs(seed=0)


@pytest.fixture(scope="module")
def report(tcav_toy, inputs, tmp_path_factory):
    config = TcavConfig(layers=("conv2", "pool"), targets=("right",), random_sets=6, seed=3,
                        classifier="mean-diff")
    return run_tcav(tcav_toy, inputs, config, cache_dir=tmp_path_factory.mktemp("cache"))


def _arrays(clips):
    return [Example.from_array(c) for c in clips]


# --- the activation/gradient cache -------------------------------------------------
def test_all_layers_come_from_one_forward_per_clip_and_are_cached(tcav_toy, tmp_path):
    calls = []
    handle = tcav_toy.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        store = ActivationStore(tmp_path, tcav_toy, ["conv1", "conv2", "pool"], batch_size=4)
        examples = _arrays(class_clips("right", 10, seed=1))
        store.ensure(examples, targets=[0, 1])
        assert len(calls) == 10                     # one forward per clip, all layers at once
        store.ensure(examples, targets=[0, 1])
        grads = store.gradients(examples, "conv2", 0)
        assert len(calls) == 10                     # everything came from the cache
    finally:
        handle.remove()
    assert grads.shape == (10, 16, 8, 8, 8)
    # The cached gradient equals autograd's on a single example.
    x = tcav_toy.prepare(examples[4].load()[None])
    captured = {}
    h = get_layer(tcav_toy, "conv2").register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        logits = tcav_toy.model(x)
    finally:
        h.remove()
    (direct,) = torch.autograd.grad(logits[0, 0], captured["a"])
    assert np.allclose(grads[4], direct[0].numpy(), atol=1e-6)


def test_cache_invalidates_when_weights_change(tcav_toy, tmp_path):
    examples = _arrays(class_clips("left", 4, seed=2))
    first = ActivationStore(tmp_path, tcav_toy, ["conv1"])
    before = first.activations(examples, "conv1")
    assert first.computed == 4
    again = ActivationStore(tmp_path, tcav_toy, ["conv1"])
    again.activations(examples, "conv1")
    assert again.computed == 0
    edited = copy.deepcopy(tcav_toy)
    with torch.no_grad():
        get_layer(edited, "conv1").weight.mul_(1.5)
    changed = ActivationStore(tmp_path, edited, ["conv1"])
    after = changed.activations(examples, "conv1")
    assert changed.computed == 4 and not np.allclose(before, after)


def test_blob_cache_uses_large_pages_and_still_reads_a_file_of_the_first_layout(tmp_path):
    import sqlite3

    from tcav.activations import PAGE_SIZE, BlobCache

    fresh = BlobCache(tmp_path / "new.sqlite")
    array = np.arange(5000, dtype=np.float32).reshape(50, 100)
    fresh.put_many([("a", array)])
    assert fresh._db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    np.testing.assert_array_equal(fresh.get_many(["a"])[0], array)
    # a cache written by the first layout (default pages, WITHOUT ROWID) keeps working as it is
    old = sqlite3.connect(tmp_path / "old.sqlite")
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE arrays (key TEXT PRIMARY KEY, dtype TEXT NOT NULL, shape TEXT NOT NULL, "
                "data BLOB NOT NULL) WITHOUT ROWID")
    old.execute("INSERT INTO arrays VALUES (?, ?, ?, ?)", ("b", array.dtype.str, "50,100", array.tobytes()))
    old.commit()
    old.close()
    reopened = BlobCache(tmp_path / "old.sqlite")
    np.testing.assert_array_equal(reopened.get_many(["b"])[0], array)
    reopened.put_many([("b", array * 2), ("c", array)])
    assert reopened.present(["a", "b", "c"]) == {"b", "c"}
    np.testing.assert_array_equal(reopened.get_many(["b"])[0], array * 2)


# --- diagnostics ---------------------------------------------------------------------
def test_pooled_layer_is_degenerate_and_an_earlier_conv_layer_is_not(tcav_toy, tmp_path):
    store = ActivationStore(tmp_path, tcav_toy, ["conv1", "pool"])
    examples = _arrays(class_clips("right", 8, seed=4))
    pooled = diagnostics.diagnose_layer("pool", "right", store.gradients(examples, "pool", 0).reshape(8, -1),
                                        ["conv1"])
    conv = diagnostics.diagnose_layer("conv1", "right", store.gradients(examples, "conv1", 0).reshape(8, -1))
    assert pooled.degenerate and "all-or-nothing" in pooled.message and "conv1" in pooled.message
    assert not conv.degenerate and conv.gradient_cosine < pooled.gradient_cosine


def test_report_flags_degenerate_layer_and_never_calls_it_significant(report):
    assert report.degenerate_layers() == ["pool"]
    pooled = [r for r in report.tested() if r.layer == "pool"]
    assert pooled and all(not r.significant and "degenerate layer" in r.flags for r in pooled)
    assert any("degenerate" in w for w in report.warnings)


def test_null_mean_stays_near_half_on_pure_noise(tcav_toy, tmp_path):
    rng = np.random.default_rng(8)
    noise = _arrays([noise_clip(rng, W) for _ in range(40)])
    concept = ConceptExamples("noise", "dynamic", _arrays([noise_clip(rng, W) for _ in range(12)]))
    inputs = TcavInputs([concept], {"right": _arrays(class_clips("right", 12, seed=5))}, noise)
    config = TcavConfig(layers=("conv1",), targets=("right",), random_sets=20, seed=1, classifier="mean-diff",
                        random_set_size=12, with_static=False, relative=False)
    rep = run_tcav(tcav_toy, inputs, config, cache_dir=tmp_path)
    (layer,) = rep.layer_reports
    assert abs(layer.null_mean - 0.5) < 0.2
    assert not rep.find("noise", "conv1", "right").significant


# --- the experiment ------------------------------------------------------------------
def test_every_dynamic_concept_gets_its_static_counterpart_and_a_temporal_curve(report, inputs):
    names = {c.name for c in inputs.concepts}
    for name in names:
        dynamic = report.find(name, "conv2", "right", "dynamic")
        static = report.find(name, "conv2", "right", "static")
        assert len(dynamic.scores) == len(static.scores) == 6
        assert dynamic.temporal.contribution.shape == (8,)     # conv2 keeps T = 8
    relative = report.find("rightward", "conv2", "right", comparison="relative")
    assert sorted(relative.against) == ["blob", "leftward"]
    assert all(r.p_value is not None and r.p_corrected >= r.p_value for r in report.tested())


def test_same_seed_gives_identical_results_and_another_seed_other_random_sets(tcav_toy, inputs, report, tmp_path):
    again = run_tcav(tcav_toy, inputs, report.config, cache_dir=tmp_path)
    for a, b in zip(report.results, again.results):
        assert np.array_equal(a.scores, b.scores) and a.p_value == b.p_value and a.verdict == b.verdict
    pool = sorted(inputs.random_pool, key=lambda e: e.key)
    assert draw_random_sets(pool, 3, 10, seed=3) != draw_random_sets(pool, 3, 10, seed=4)
    # Raising N keeps the first sets: set i depends only on (seed, i).
    assert draw_random_sets(pool, 5, 10, seed=3)[:3] == draw_random_sets(pool, 3, 10, seed=3)


def test_power_warning_reaches_the_report_when_n_is_too_small(tcav_toy, inputs, tmp_path):
    config = TcavConfig(layers=("conv2",), targets=("right",), random_sets=3, classifier="mean-diff",
                        test="permutation")
    rep = run_tcav(tcav_toy, inputs, config, cache_dir=tmp_path)
    assert not rep.power.possible and any(w.startswith("power:") for w in rep.warnings)
    assert not any(r.significant for r in rep.tested())


def test_static_concepts_are_compared_with_random_clips_rendered_static(tcav_toy, tmp_path):
    # Frozen moving squares against moving squares differ by motion alone ("frozen vs
    # moving"); against the same kind of random clips frozen, they are no concept at all.
    pool = _arrays(class_clips("right", 24, seed=11))
    frozen = [static_example(e) for e in _arrays(class_clips("right", 10, seed=12))]
    outcome = {}
    for variant in ("static", "dynamic"):
        inputs = TcavInputs([ConceptExamples("noise", variant, frozen)], {"right": _arrays(class_clips("right", 8, 2))},
                            pool)
        config = TcavConfig(layers=("conv1",), targets=("right",), random_sets=4, seed=0, classifier="mean-diff",
                            random_set_size=10, with_static=False, relative=False)
        rep = run_tcav(tcav_toy, inputs, config, cache_dir=tmp_path)
        r = rep.find("noise", "conv1", "right", variant)
        assert rep.null_for(r).variant == variant
        outcome[variant] = r
    assert outcome["dynamic"].cav_accuracies.mean() > 0.9
    assert outcome["static"].cav_accuracies.mean() < 0.8
    assert not outcome["static"].significant and "unreliable CAV" in outcome["static"].flags


def test_correction_family_leaves_out_degenerate_layers_and_unstated_hypotheses(tcav_toy, inputs, report, tmp_path):
    healthy = [r for r in report.tested() if r.layer != "pool"]
    assert report.power.n_hypotheses == len(healthy) < len(report.tested())
    for r in healthy:
        assert r.p_corrected == pytest.approx(min(1.0, r.p_value * len(healthy)))
    stated = TcavConfig(layers=("conv2",), targets=("right",), random_sets=6, seed=3, classifier="mean-diff",
                        hypotheses=(("rightward", "right"),))
    rep = run_tcav(tcav_toy, inputs, stated, cache_dir=tmp_path)
    assert rep.power.n_hypotheses == 2       # rightward, dynamic and static
    for r in rep.tested():
        if r.concept == "rightward":
            assert r.p_corrected == pytest.approx(min(1.0, 2 * r.p_value))
        else:
            assert "not tested" in r.flags and not r.significant and r.p_corrected == 1.0
    with pytest.raises(ConfigError, match="unknown concepts or classes"):
        run_tcav(tcav_toy, inputs, replace(stated, hypotheses=(("nope", "right"),)), cache_dir=tmp_path)


# --- bad input -----------------------------------------------------------------------
@pytest.mark.parametrize("change, error, text", [
    ({"layers": ("conv3",)}, LayerNotFoundError, "close matches: conv"),
    ({"targets": ("up",)}, UnknownClassError, "no class 'up'"),
    ({"classifier": "tree"}, ConfigError, "use one of"),
    ({"random_sets": 1}, ConfigError, "--random-sets"),
])
def test_bad_configuration_is_a_one_line_error(tcav_toy, inputs, tmp_path, change, error, text):
    config = TcavConfig(**{"layers": ("conv2",), "targets": ("right",), **change})
    with pytest.raises(error, match=text) as info:
        run_tcav(tcav_toy, inputs, config, cache_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_too_few_examples_and_empty_pool_are_one_line_errors(tcav_toy, inputs, tmp_path):
    config = TcavConfig(layers=("conv2",), targets=("right",))
    few = TcavInputs([ConceptExamples("tiny", "dynamic", inputs.concepts[0].examples[:3])],
                     inputs.class_examples, inputs.random_pool)
    with pytest.raises(DataError, match="fewer than the minimum"):
        run_tcav(tcav_toy, few, config, cache_dir=tmp_path)
    empty = TcavInputs(inputs.concepts, inputs.class_examples, [])
    with pytest.raises(DataError, match="random pool is empty"):
        run_tcav(tcav_toy, empty, config, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="--amp needs --device cuda"):
        run_tcav(tcav_toy, inputs, config, cache_dir=tmp_path, amp=True)


def test_video_shorter_than_the_input_spec_is_a_one_line_error(tcav_toy, tmp_path):
    from conceptgen.videoio import write_video

    path = tmp_path / "short.mp4"
    write_video(path, class_clips("right", 1, seed=0)[0][:4])
    with pytest.raises(DataError, match="shorter than the model's input of 8 frames"):
        file_example(path, tcav_toy.spec).load()


# --- agreement with Captum -------------------------------------------------------------
class _FixedCav:
    """A captum.concept Classifier that returns a given CAV instead of training one."""

    def __new__(cls, vector, concept_id, random_id):
        from captum.concept._utils.classifier import Classifier

        class Fixed(Classifier):
            def __init__(self):
                pass

            def train_and_eval(self, dataloader, **kwargs):
                return {"accs": torch.tensor(1.0)}

            def weights(self):
                v = torch.as_tensor(vector, dtype=torch.float32)
                return torch.stack([-v, v])

            def classes(self):
                return [random_id, concept_id]

        return Fixed()


def _captum_concept(cid, name, tensor):
    from captum.concept import Concept

    return Concept(cid, name, [tensor])  # one batch: the iterator Captum reads activations from


def _strong_effect_inputs(seed=0):
    """A concept with a strong effect for 'right': right-moving squares, against random
    sets of left-moving and static squares."""
    rng = np.random.default_rng(seed)
    concept = _arrays([moving_square_clip(rng, W, "right") for _ in range(16)])
    pool = _arrays([moving_square_clip(rng, W, "left" if i % 2 else "static") for i in range(40)])
    return concept, pool, _arrays(class_clips("right", 12, seed=seed + 50))


def test_same_cavs_give_captum_identical_sign_counts_and_matching_magnitudes(tcav_toy, tmp_path):
    from captum.concept import TCAV

    concept, pool, class_ex = _strong_effect_inputs()
    store = ActivationStore(tmp_path / "ours", tcav_toy, ["conv1", "conv2"])
    inputs = tcav_toy.prepare(np.stack([e.load() for e in class_ex]))
    for layer in ("conv1", "conv2"):
        for i, rs in enumerate(draw_random_sets(sorted(pool, key=lambda e: e.key), 3, 12, seed=0)):
            fit = make_classifier("sgd").fit(store.activations(concept, layer),
                                             store.activations([sorted(pool, key=lambda e: e.key)[j] for j in rs], layer),
                                             seed=i)
            s = scoring.directional_derivatives(store.gradients(class_ex, layer, 0).reshape(len(class_ex), -1),
                                                fit.vector)
            c = _captum_concept(0, "concept", tcav_toy.prepare(np.stack([e.load() for e in concept[:4]])))
            r = _captum_concept(1, "random", tcav_toy.prepare(np.stack([e.load() for e in pool[:4]])))
            tcav = TCAV(tcav_toy.model, [layer], model_id=f"m{layer}{i}", classifier=_FixedCav(fit.vector, 0, 1),
                        save_path=str(tmp_path / "captum"))
            out = tcav.interpret(inputs, [[c, r]], target=0)[f"0-1"][layer]
            assert float(out["sign_count"][0]) == pytest.approx(float(scoring.tcav_score(s)), abs=0)
            captum_mean = float(out["magnitude"][0])         # Captum: mean S, unbounded
            assert captum_mean == pytest.approx(float(scoring.mean_derivative(s)), rel=1e-4, abs=1e-9)
            bounded = float(scoring.magnitude_score(s))      # ours: sum(S>0) / sum|S|
            assert captum_mean == pytest.approx((2 * bounded - 1) * np.abs(s).mean(), rel=1e-4, abs=1e-9)


def test_captum_training_its_own_cavs_agrees_on_a_strong_concept(tcav_toy, tmp_path):
    from captum.concept import TCAV

    concept, pool, class_ex = _strong_effect_inputs(seed=1)
    n_sets, layer = 8, "relu1"
    # SGD hinge CAVs, as Captum's default classifier trains them (ours default to mean-difference)
    config = TcavConfig(layers=(layer,), targets=("right",), random_sets=n_sets, random_set_size=12,
                        with_static=False, relative=False, seed=0, classifier="sgd")
    ours = run_tcav(tcav_toy, TcavInputs([ConceptExamples("right-moving", "dynamic", concept)],
                                         {"right": class_ex}, pool), config, cache_dir=tmp_path / "ours")
    ordered = sorted(pool, key=lambda e: e.key)
    random.seed(0)
    torch.manual_seed(0)
    c = _captum_concept(0, "concept", tcav_toy.prepare(np.stack([e.load() for e in concept])))
    sets = [[c, _captum_concept(i + 1, f"random{i}", tcav_toy.prepare(np.stack([ordered[j].load() for j in rs])))]
            for i, rs in enumerate(draw_random_sets(ordered, n_sets, 12, seed=0))]
    tcav = TCAV(tcav_toy.model, [layer], save_path=str(tmp_path / "captum"))
    out = tcav.interpret(tcav_toy.prepare(np.stack([e.load() for e in class_ex])), sets, target=0)
    captum_scores = [float(out[f"0-{i + 1}"][layer]["sign_count"][0]) for i in range(n_sets)]
    ours_scores = ours.find("right-moving", layer, "right").scores
    assert np.mean(ours_scores) >= 0.7                      # a strong effect
    # Sampling tolerance: two standard errors of the difference of the two means.
    tolerance = max(0.1, 2 * np.sqrt((np.var(ours_scores) + np.var(captum_scores)) / n_sets))
    assert abs(np.mean(captum_scores) - np.mean(ours_scores)) <= tolerance


def test_interrupted_extraction_resumes_without_recomputing(tcav_toy, tmp_path):
    clips = class_clips("right", 8, seed=9)
    state = {"loads": 0}

    def loader(clip):
        def load():
            state["loads"] += 1
            if state["loads"] == 6:
                raise KeyboardInterrupt  # the user presses Ctrl-C in the second batch
            return clip
        return load

    examples = [Example(Example.from_array(c).key, "array", f"clip {i}", loader(c)) for i, c in enumerate(clips)]
    store = ActivationStore(tmp_path, tcav_toy, ["conv2"], batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        store.ensure(examples, [0])
    assert store.computed == 4                      # the first batch was written
    resumed = ActivationStore(tmp_path, tcav_toy, ["conv2"], batch_size=4)
    resumed.ensure(examples, [0])
    assert resumed.computed == 4                    # only the second batch, once


def test_a_clip_that_fails_to_load_is_recorded_and_the_rest_go_on(tcav_toy, inputs, tmp_path):
    from conceptgen.errors import VideoReadError

    def broken():
        raise VideoReadError("bad.mp4: video data is corrupt; re-export or re-download the video")

    bad = Example("0" * 64, "clip", "bad.mp4", broken)
    concept = inputs.concepts[0]
    damaged = TcavInputs([ConceptExamples(concept.name, "dynamic", concept.examples + [bad])] + inputs.concepts[1:],
                         inputs.class_examples, inputs.random_pool + [bad])
    config = TcavConfig(layers=("conv2",), targets=("right",), random_sets=3, classifier="mean-diff",
                        with_static=False, relative=False)
    rep = run_tcav(tcav_toy, damaged, config, cache_dir=tmp_path)
    assert list(rep.skipped.values()) == ["bad.mp4: video data is corrupt; re-export or re-download the video"]
    assert any("skipped 1 clip" in w for w in rep.warnings)
    assert len(rep.find(concept.name, "conv2", "right").scores) == 3


def test_auto_random_sets_stop_when_two_seeds_agree_or_at_the_cap(tcav_toy, inputs, tmp_path):
    config = TcavConfig(layers=("conv2",), targets=("right",), random_sets="auto", max_random_sets=20,
                        classifier="mean-diff", with_static=False, relative=False)
    rep = run_tcav(tcav_toy, inputs, config, cache_dir=tmp_path)
    assert rep.auto_history and rep.auto_history[0]["n"] == 10
    assert rep.n_random_sets == rep.auto_history[-1]["n"] <= 20
    assert rep.auto_history[-1]["stable"] or rep.n_random_sets == 20
    assert all(not h["stable"] for h in rep.auto_history[:-1])
