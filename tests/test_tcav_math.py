"""Scores, CAV classifiers, CAV files and diagnostics: pure maths on arrays."""
from __future__ import annotations

import numpy as np
import pytest

from conceptgen.errors import ConfigError, DataError, IntegrityError, NotFoundError
from tcav import diagnostics, scoring
from tcav.cav import CAV
from tcav.classifiers import CLASSIFIERS, make_classifier, stratified_split


def test_tcav_and_magnitude_scores_follow_their_definitions():
    s = np.array([[1.0, -2.0], [3.0, -1.0], [-1.0, 0.0], [2.0, 4.0]])
    assert np.allclose(scoring.tcav_score(s), [3 / 4, 1 / 4])
    assert np.allclose(scoring.magnitude_score(s), [6 / 7, 4 / 7])
    assert np.all((scoring.magnitude_score(s) >= 0) & (scoring.magnitude_score(s) <= 1))
    assert np.allclose(scoring.mean_derivative(s), s.mean(axis=0))


def test_directional_derivative_is_gradient_dot_cav():
    rng = np.random.default_rng(0)
    g, v = rng.normal(size=(5, 2, 3, 4, 4)), rng.normal(size=(3, 2 * 3 * 4 * 4))
    s = scoring.directional_derivatives(g, v)
    assert s.shape == (5, 3)
    assert s[2, 1] == pytest.approx(float(g[2].ravel() @ v[1]))


def test_temporal_slices_sum_to_the_whole_derivative():
    rng = np.random.default_rng(1)
    g, v = rng.normal(size=(6, 2, 4, 3, 3)), rng.normal(size=2 * 4 * 3 * 3)
    st = scoring.temporal_derivatives(g, v)
    assert st.shape == (6, 4)
    assert np.allclose(st.sum(axis=1), scoring.directional_derivatives(g, v))
    profile = scoring.temporal_profile(st)
    assert profile.contribution.shape == (4,) and profile.fraction_positive.shape == (4,)
    assert np.all(np.abs(profile.contribution) <= 1)


def test_temporal_profile_finds_the_slice_that_matters():
    g = np.zeros((8, 1, 4, 2, 2))
    g[:, :, 2] = 1.0  # only the third time slice carries gradient
    v = np.ones(16)
    profile = scoring.temporal_profile(scoring.temporal_derivatives(g, v))
    assert int(np.argmax(profile.contribution)) == 2
    assert profile.fraction_positive[2] == 1.0 and profile.fraction_positive[0] == 0.0


def _separable(seed, n=30, d=20, shift=2.0):
    rng = np.random.default_rng(seed)
    concept = rng.normal(size=(n, d)) + shift * np.eye(d)[0]
    other = rng.normal(size=(n, d))
    return concept, other


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_every_classifier_orients_its_cav_towards_the_concept(name):
    concept, other = _separable(0)
    fit = make_classifier(name).fit(concept, other, seed=0)
    assert np.linalg.norm(fit.vector) == pytest.approx(1.0, abs=1e-5)
    assert fit.vector[0] > 0.5           # the planted direction dominates
    assert fit.accuracy >= 0.8
    again = make_classifier(name).fit(concept, other, seed=0)
    assert np.array_equal(fit.vector, again.vector) and fit.accuracy == again.accuracy


def test_classifier_on_indistinguishable_sets_is_near_chance():
    rng = np.random.default_rng(4)
    accs = [make_classifier("sgd").fit(rng.normal(size=(30, 20)), rng.normal(size=(30, 20)), seed=i).accuracy
            for i in range(10)]
    assert 0.3 <= np.mean(accs) <= 0.7


def test_stratified_split_holds_out_a_third_of_each_side():
    y = np.r_[np.ones(15), np.zeros(30)]
    train, test = stratified_split(y, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 45
    assert (y[test] == 1).sum() == 5 and (y[test] == 0).sum() == 10


def test_classifier_errors_are_one_line_and_actionable():
    with pytest.raises(ConfigError, match="use one of"):
        make_classifier("forest")
    with pytest.raises(DataError, match="at least 2"):
        make_classifier("sgd").fit(np.zeros((1, 3)), np.zeros((5, 3)), seed=0)


def test_cav_round_trips_and_rejects_corruption(tmp_path):
    cav = CAV("stripes", "random:3", "blocks.2", np.arange(6, dtype=np.float32) / 10, 0.875, "sgd", 9)
    path = cav.save(tmp_path / "c.npz")
    back = CAV.load(path)
    assert back.concept == cav.concept and back.accuracy == cav.accuracy and np.array_equal(back.vector, cav.vector)
    with pytest.raises(NotFoundError):
        CAV.load(tmp_path / "missing.npz")
    with np.load(path) as data:
        meta = str(data["meta"])
    np.savez(path, vector=np.zeros(6, np.float32), meta=np.array(meta))
    with pytest.raises(IntegrityError, match="checksum"):
        CAV.load(path)


def test_constant_gradients_are_degenerate_and_varied_ones_are_not():
    rng = np.random.default_rng(0)
    row = rng.normal(size=50)
    same = np.tile(row, (10, 1)) * rng.uniform(0.5, 2, size=(10, 1))  # scale does not matter
    assert diagnostics.diagnose_layer("pool", "k", same, ["conv"]).degenerate
    varied = rng.normal(size=(10, 50))
    d = diagnostics.diagnose_layer("conv", "k", varied)
    assert not d.degenerate and abs(d.gradient_cosine) < 0.2


def test_cav_quality_gate_separates_learnable_from_chance():
    null = np.array([0.45, 0.55, 0.5, 0.6, 0.4, 0.5, 0.55, 0.45, 0.5, 0.5])
    assert diagnostics.cav_quality(np.full(10, 0.95), null).learnable
    assert not diagnostics.cav_quality(null[::-1] + 0.02, null).learnable


def test_null_far_from_half_or_all_or_nothing_warns():
    assert diagnostics.null_warning("l", "k", np.full(10, 0.5)) is None
    assert "far from 0.5" in diagnostics.null_warning("l", "k", np.full(10, 0.1))
    all_or_nothing = diagnostics.null_warning("l", "k", np.array([0.0, 1.0] * 4 + [0.4, 0.6]))
    assert "all-or-nothing" in all_or_nothing and "far from 0.5" not in all_or_nothing
    assert diagnostics.null_warning("l", "k", np.array([0.0, 1.0, 0.3, 0.7, 0.4, 0.6])) is None
