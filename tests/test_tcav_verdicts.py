"""Verdicts that hold (issue 22): resolved p-values, the same verdict whatever else is in
the run, verdicts over several draws of the random sets, and stable CAVs. The toy 3D CNN
(trained in the session), real activations and gradients."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tcav import stats
from tcav.calibration import CAV_STABILITY_MIN
from tcav.experiment import TcavConfig, family_summary, run_tcav
from tcav.pseudo_null import draw_pseudo_concepts
from tcav.toy import toy_tcav_inputs


def test_auto_m_puts_the_smallest_corrected_p_at_alpha_over_100():
    for m in (1, 6, 12, 32):
        n = stats.auto_null_sets(m, 0.05)
        smallest = stats.correct_p_values(np.full(m, 1 / (n + 1)))[0]
        assert smallest <= 0.05 / stats.RESOLUTION and n + 1 <= 100 * max(m, 1) / 0.05 + 1
    assert stats.auto_null_sets(12, 0.05) == 23_999


def test_a_tie_with_alpha_is_not_significant_and_rounding_cannot_make_one():
    assert not stats.is_significant(0.05, 0.05)
    assert not stats.is_significant(0.1 * 0.5, 0.05) and not stats.is_significant(0.05 + 1e-17, 0.05)
    assert not stats.is_significant(3 * (1 / 60), 0.05)   # 0.05000000000000001 in floating point
    assert stats.is_significant(0.0499, 0.05) and not stats.is_significant(None, 0.05)


def test_leave_one_out_p_equals_ranking_each_pseudo_concept_among_the_others():
    rng = np.random.default_rng(3)
    for m in (np.round(rng.normal(size=60), 1), rng.normal(size=61)):   # with ties, and without
        expected = [stats.pseudo_concept_p(m[j], np.delete(m, j)).p_value for j in range(len(m))]
        np.testing.assert_allclose(stats.leave_one_out_pseudo_p(m), expected)


def test_pseudo_concepts_are_prefix_stable_uniform_subsets():
    candidates = list(range(100, 140))
    small, large = draw_pseudo_concepts(candidates, 50, 6, seed=1), draw_pseudo_concepts(candidates, 3000, 6, seed=1)
    np.testing.assert_array_equal(small, large[:50])   # raising M moves none of the first M
    assert large.shape == (3000, 6) and all(len(set(row)) == 6 for row in large)
    counts = np.bincount(large.ravel() - 100, minlength=40)   # each clip in about 6/40 of the sets
    assert counts.min() > 0.7 * 3000 * 6 / 40 and counts.max() < 1.3 * 3000 * 6 / 40


@pytest.fixture(scope="module")
def alone(tcav_toy, tmp_path_factory):
    """One target at one layer, three draws of the random sets, automatic M."""
    config = TcavConfig(layers=("conv2",), targets=("right",), random_sets=6, seed=3, seeds=3)
    return run_tcav(tcav_toy, toy_tcav_inputs(seed=0), config, cache_dir=tmp_path_factory.mktemp("cache"))


def test_a_clear_effect_gets_a_p_far_below_alpha_with_its_z(alone):
    (family,) = alone.families
    r = alone.find("rightward", "conv2", "right")
    assert family.size == 6 and family.null_sets == stats.auto_null_sets(6)
    assert r.significant and r.p_corrected <= alone.config.alpha / stats.RESOLUTION
    assert r.z > 4 and f"z {r.z:+.1f}" in r.verdict
    others = [x for x in alone.tested() if x.concept != "rightward"]
    assert all(x.z is not None and abs(x.z) < r.z for x in others)


def test_the_verdict_holds_when_other_targets_and_layers_join(tcav_toy, alone, tmp_path):
    config = replace(alone.config, layers=("conv1", "conv2", "pool"), targets=("right", "left"))
    more = run_tcav(tcav_toy, toy_tcav_inputs(seed=0), config, cache_dir=tmp_path)
    assert len(more.families) == 4 and {f.size for f in more.families} == {6}   # pool: degenerate
    for r in alone.tested():
        twin = more.find(r.concept, r.layer, r.target, r.variant)
        assert (twin.p_value, twin.p_corrected, twin.significant, twin.verdict, twin.seeds_significant) == \
            (r.p_value, r.p_corrected, r.significant, r.verdict, r.seeds_significant), r.concept
    assert more.left_out == {"degenerate layer pool": 12}
    line = family_summary(more)
    assert "24 hypotheses in 4 families, m = 6" in line and "left out: 12 at a degenerate layer pool" in line
    # the experiment-wide family keeps the old behaviour: one correction over all 24
    wide = run_tcav(tcav_toy, toy_tcav_inputs(seed=0), replace(config, family="experiment", seeds=1),
                    cache_dir=tmp_path)
    (family,) = wide.families
    assert family.size == 24 and "24 hypotheses in family experiment" in family_summary(wide)
    r = wide.find("leftward", "conv2", "right")
    assert r.p_corrected == pytest.approx(min(1.0, 24 * r.p_value))


def test_each_row_says_in_how_many_seeds_it_holds(alone):
    assert len(alone.seeds) == 3 and alone.seeds[0] == alone.config.seed
    planted = alone.find("rightward", "conv2", "right")
    assert planted.n_seeds == 3 and planted.seeds_significant == 3 and "stable: 3/3 seeds" in planted.verdict
    for r in alone.tested():
        if r.seeds_significant is None:   # not learnable: the verdict already says why
            assert "unreliable CAV" in r.flags
            continue
        assert 0 <= r.seeds_significant <= 3 and r.seed_share == r.seeds_significant / 3
        unstable = 0 < r.seeds_significant < 3
        assert unstable == ("unstable across seeds" in r.flags) == ("unstable" in r.verdict)


def test_cav_stability_is_reported_per_concept_and_layer_and_low_rows_are_flagged(alone):
    by = {(s["concept"], s["layer"]): s for s in alone.calibration.cav_stability_by_concept}
    assert len(by) == 6   # 3 concepts x 2 variants at conv2
    assert all(s["n_seeds"] == 3 and -1 <= s["seed_cosine"] <= 1 for s in by.values())
    # averaging over the random sets steadies the direction: the per-seed means agree more
    assert np.mean([s["seed_cosine"] for s in by.values()]) >= np.mean([s["mean_cosine"] for s in by.values()])
    assert all(s["cosine"] == s["seed_cosine"] for s in by.values())   # K = 3: the set-averaged CAVs
    assert alone.calibration.cav_stability_basis == "set-averaged CAV across seeds"
    assert by[("rightward", "conv2")]["cosine"] >= CAV_STABILITY_MIN
    for r in alone.tested():
        label = r.concept if r.variant == "dynamic" else f"{r.concept} [static]"
        assert r.cav_stability == by[(label, "conv2")]["cosine"]
        assert ("unstable CAV" in r.flags) == (r.cav_stability < CAV_STABILITY_MIN)


def test_the_effect_plot_threshold_is_where_the_corrected_p_crosses_alpha(alone, tmp_path):
    from tcav.plots import null_threshold, plot_report

    null = np.random.default_rng(2).normal(size=1999)
    centre, reach = null_threshold(null, 4, 0.05)
    distances = np.sort(np.abs(null - centre))[::-1]
    beyond = stats.pseudo_concept_p(centre + reach * 1.01, null).p_value * 4
    inside = stats.pseudo_concept_p(centre + distances[30], null).p_value * 4
    assert beyond < 0.05 <= inside
    assert null_threshold(null, 400, 0.05)[1] == float("inf")   # no value can pass: no threshold drawn
    paths = plot_report(alone, tmp_path)
    effect = tmp_path / "effect_right.png"
    assert effect in paths and effect.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
