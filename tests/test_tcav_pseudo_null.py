"""The pseudo-concept null (tcav.stats ``pseudo`` test): calibrated on pure noise,
powerful on a planted concept, seeded, and independent of the concept list."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as sps

from tcav import scoring, stats
from tcav.classifiers import MeanDifferenceClassifier
from tcav.examples import ConceptExamples, Example
from tcav.experiment import TcavConfig, TcavInputs, run_tcav
from conceptgen.toy_model import ToyWorld, class_clips, noise_clip
from tcav.toy import toy_tcav_inputs

W = ToyWorld()


def _arrays(clips):
    return [Example.from_array(c) for c in clips]


def test_pseudo_p_is_exact_two_sided_and_floors_at_one_over_m_plus_one():
    rng = np.random.default_rng(0)
    m = 99
    # exchangeable continuous draws: p-values uniform on {1..M+1}/(M+1)
    ps = [stats.pseudo_concept_p(draw[0], draw[1:]).p_value
          for draw in (rng.normal(0.5, 0.1, m + 1) for _ in range(400))]
    assert sps.kstest(ps, "uniform").pvalue > 0.001
    # on a coarse grid (TCAV scores k/12) ties are counted against the concept: conservative
    tied = np.array([stats.pseudo_concept_p(draw[0], draw[1:]).p_value
                     for draw in (rng.integers(0, 13, m + 1) / 12 for _ in range(400))])
    for level in (0.05, 0.1, 0.25, 0.5):
        assert np.mean(tied <= level) <= level + 0.03
    null = rng.normal(0.5, 0.05, m)
    assert stats.pseudo_concept_p(0.95, null).p_value == pytest.approx(1 / (m + 1))   # high side
    assert stats.pseudo_concept_p(0.05, null).p_value == pytest.approx(1 / (m + 1))   # low side
    assert stats.min_achievable_p(10, 10, test="pseudo", n_null_sets=m) == pytest.approx(1 / (m + 1))


def test_power_warning_reports_the_pseudo_floor():
    check = stats.power_check(10, 48, test="pseudo", n_null_sets=99)
    assert not check.possible and check.min_p == pytest.approx(0.01)
    assert "--null-sets" in check.warning and "0.01" in check.warning
    assert stats.power_check(10, 48, test="pseudo", n_null_sets=stats.auto_null_sets(48)).possible


def test_projection_path_equals_fitted_mean_difference_cavs():
    rng = np.random.default_rng(1)
    grads, concept, other = rng.normal(size=(9, 30)), rng.normal(0.3, 1, (12, 30)), rng.normal(size=(20, 30))
    for seed in range(5):
        fit = MeanDifferenceClassifier().fit(concept, other, seed=seed)
        direct = float(scoring.tcav_score(scoring.directional_derivatives(grads, fit.vector)))
        assert MeanDifferenceClassifier.tcav_from_projections(grads @ concept.T, grads @ other.T,
                                                              seed=seed) == direct


@pytest.mark.parametrize("statistic", ["logit-change", "tcav"])
def test_pseudo_null_p_values_are_uniform_for_pure_noise_concepts(tcav_toy, tmp_path, statistic):
    """Concepts that are just more clips from the pool's distribution: raw p ~ U(0, 1)."""
    rng = np.random.default_rng(11)
    pool = _arrays([noise_clip(rng, W) for _ in range(40)])
    concepts = [ConceptExamples(f"noise{i}", "dynamic", _arrays([noise_clip(rng, W) for _ in range(8)]))
                for i in range(12)]
    inputs = TcavInputs(concepts, {"right": _arrays(class_clips("right", 10, seed=4)),
                                   "left": _arrays(class_clips("left", 10, seed=5))}, pool)
    config = TcavConfig(layers=("conv1", "conv2"), targets=("right", "left"), random_sets=8, seed=2,
                        classifier="mean-diff", test="pseudo", statistic=statistic, null_sets=99,
                        random_set_size=10, with_static=False, relative=False)
    rep = run_tcav(tcav_toy, inputs, config, cache_dir=tmp_path)
    ps = np.array([r.p_value for r in rep.tested() if r.layer == "conv1" or not rep.null_for(r).diagnosis.degenerate])
    assert len(ps) >= 24
    assert sps.kstest(ps, "uniform").pvalue > 0.001, np.sort(ps)
    assert not any(r.significant for r in rep.tested())
    assert rep.power.min_p == pytest.approx(1 / 100)


@pytest.fixture(scope="module", params=["logit-change", "tcav"])
def planted_report(tcav_toy, tmp_path_factory, request):
    # 30 class examples: with few, pool sets too often tie the concept at TCAV 1.0
    config = TcavConfig(layers=("conv1",), targets=("right",), random_sets=6, seed=3, classifier="mean-diff",
                        test="pseudo", statistic=request.param, null_sets=199, with_static=False, relative=False)
    return run_tcav(tcav_toy, toy_tcav_inputs(seed=0, n_class=30), config, cache_dir=tmp_path_factory.mktemp("cache"))


def test_planted_concept_gets_a_small_p(planted_report):
    r = planted_report.find("rightward", "conv1", "right")
    assert r.tcav_mean > 0.9
    if planted_report.config.test_statistic == "tcav":
        # ~2% of pool sets also reach TCAV ~1 on this toy: that, not 1/(M+1), bounds the p here
        assert 1 / 200 <= r.p_value <= 0.05
    else:  # the logit change does not saturate: few pool sets come near the planted concept
        assert r.p_value <= 0.02 and r.z > 2
        assert r.logit_change_mean > 0
    assert planted_report.find("blob", "conv1", "right").p_value > 0.1   # the distractor is not


def test_pseudo_null_is_seeded_and_does_not_move_with_the_concept_list(tcav_toy, planted_report, tmp_path):
    inputs = toy_tcav_inputs(seed=0, n_class=30)
    fewer = TcavInputs([c for c in inputs.concepts if c.name == "rightward"], inputs.class_examples,
                       inputs.random_pool)
    again = run_tcav(tcav_toy, fewer, planted_report.config, cache_dir=tmp_path)
    (before,), (after,) = planted_report.layer_reports, again.layer_reports
    size = len(inputs.concepts[0].examples)
    np.testing.assert_array_equal(before.pseudo_means[size], after.pseudo_means[size])
    assert again.find("rightward", "conv1", "right").p_value == \
        planted_report.find("rightward", "conv1", "right").p_value


def test_summary_exports_the_pseudo_null(planted_report):
    import json

    from tcav.results import summary

    (layer,) = json.loads(json.dumps(summary(planted_report)))["layers"]
    (null,) = layer["pseudo_null"].values()
    assert null["n"] == 199 and null["std"] > 0
    assert layer["null_logit_changes"] and len(layer["null_scores"]) == 6
    if planted_report.config.test_statistic == "tcav":
        assert 0.0 <= null["mean"] <= 1.0
    else:  # pool sets against random sets from the same pool: logit changes centre near 0
        assert abs(null["mean"]) < 3 * null["std"]


def test_logit_change_is_the_mean_first_order_change_of_the_class_logit():
    rng = np.random.default_rng(5)
    grads, concept, others = rng.normal(size=(7, 12)), rng.normal(1.0, 1, (9, 12)), rng.normal(size=(3, 11, 12))
    diffs = np.stack([scoring.mean_activation(concept) - scoring.mean_activation(o) for o in others])
    expected = [np.mean([g @ (concept.mean(0) - o.mean(0)) for g in grads]) for o in others]
    np.testing.assert_allclose(scoring.logit_changes(grads, diffs), expected)


def test_logit_change_needs_the_pseudo_test():
    from conceptgen.errors import ConfigError

    with pytest.raises(ConfigError, match="--test pseudo"):
        TcavConfig(layers=("a",), targets=("b",), test="ttest", statistic="logit-change").validate()
    assert TcavConfig(layers=("a",), targets=("b",)).test_statistic == "logit-change"
    assert TcavConfig(layers=("a",), targets=("b",), test="permutation").test_statistic == "tcav"


def test_vectorised_pseudo_logit_changes_equal_the_set_by_set_rule():
    rng = np.random.default_rng(8)
    proj = rng.normal(size=30)
    pseudo_sets = [sorted(rng.choice(30, 12, replace=False)) for _ in range(20)]
    random_sets = [sorted(rng.choice(30, 10, replace=False)) for _ in range(4)] + [list(range(10))]
    pseudo_sets.append(list(range(12)))   # covers the last random set entirely: left out of that mean

    def membership(sets):
        m = np.zeros((len(sets), 30))
        for j, x in enumerate(sets):
            m[j, x] = 1
        return m

    got = scoring.pseudo_logit_changes(proj, membership(pseudo_sets), membership(random_sets))
    for j, ps in enumerate(pseudo_sets):
        rests = [[i for i in rs if i not in ps] for rs in random_sets]
        expected = np.mean([proj[ps].mean() - proj[rest].mean() for rest in rests if rest])
        assert got[j] == pytest.approx(expected)


def test_a_pool_too_small_for_pseudo_concepts_gets_a_one_line_error(tcav_toy, tmp_path):
    from conceptgen.errors import DataError

    inputs = toy_tcav_inputs(seed=1, n_concept=15, n_pool=24)   # 24 < 15 concept clips + 10 per random set
    config = TcavConfig(layers=("conv1",), targets=("right",), random_sets=4, random_set_size=10,
                        with_static=False, relative=False)
    with pytest.raises(DataError) as error:
        run_tcav(tcav_toy, inputs, config, cache_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message and "24 clips" in message and "--test permutation" in message
    # the two-sample tests still run on the same pool
    report = run_tcav(tcav_toy, inputs, replace(config, test="permutation"), cache_dir=tmp_path)
    assert report.find("rightward", "conv1", "right").p_value is not None
