"""Linear classifiers that turn two sets of activations into a CAV.

The extension point is :class:`CavClassifier`; every implementation is seeded,
holds out a stated, stratified share of the examples (``HELD_OUT_FRACTION``,
split with the same seed) and reports its accuracy on it. The returned vector is
the separating hyperplane's normal oriented *towards the concept* (label 1),
scaled to unit length (TCAV sign counts and the bounded magnitude are both
invariant to the scale).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from conceptgen.errors import ConfigError, DataError

HELD_OUT_FRACTION = 0.33  # as Captum's DefaultClassifier (test_split_ratio)
MIN_EXAMPLES_PER_SIDE = 2  # a stratified split needs one of each side in train and test


@dataclass(frozen=True)
class LinearFit:
    """A trained separator. ``vector`` (D,) float32 unit-norm, towards the concept;
    ``accuracy`` on the held-out split, in [0, 1]; ``n_train``/``n_test`` examples;
    ``bias``: activations ``x`` with ``x . vector + bias > 0`` are called the concept."""

    vector: np.ndarray
    accuracy: float
    n_train: int
    n_test: int
    bias: float = 0.0


def stratified_split(labels: np.ndarray, seed: int, held_out: float = HELD_OUT_FRACTION
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): ``held_out`` of each label's examples (at least one) go to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        n_test = min(max(1, int(round(held_out * len(idx)))), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class CavClassifier(ABC):
    """Fits a linear separator between concept (label 1) and other (label 0) activations."""

    name: str = "abstract"

    def fit(self, concept: np.ndarray, other: np.ndarray, *, seed: int) -> LinearFit:
        """``concept`` (Nc, D) and ``other`` (No, D) activations -> :class:`LinearFit`."""
        concept = np.ascontiguousarray(concept, dtype=np.float32).reshape(len(concept), -1)
        other = np.ascontiguousarray(other, dtype=np.float32).reshape(len(other), -1)
        if min(len(concept), len(other)) < MIN_EXAMPLES_PER_SIDE:
            raise DataError(
                f"a CAV needs at least {MIN_EXAMPLES_PER_SIDE} examples on each side, "
                f"got {len(concept)} and {len(other)}: add examples to the concept or the random pool")
        x = np.concatenate([concept, other])
        y = np.concatenate([np.ones(len(concept), np.int64), np.zeros(len(other), np.int64)])
        train, test = stratified_split(y, seed)
        weights = self._weights(x[train], y[train], seed=seed)
        norm = float(np.linalg.norm(weights))
        vector = (weights / norm if norm > 0 else weights).astype(np.float32)
        bias = -float(self._threshold(x[train], y[train], vector))
        predicted = (x[test] @ vector + bias) > 0
        accuracy = float(np.mean(predicted == (y[test] == 1)))
        return LinearFit(vector=vector, accuracy=accuracy, n_train=len(train), n_test=len(test), bias=bias)

    @abstractmethod
    def _weights(self, x: np.ndarray, y: np.ndarray, *, seed: int) -> np.ndarray:
        """(D,) normal of the separator, positive side = label 1."""

    def _threshold(self, x: np.ndarray, y: np.ndarray, vector: np.ndarray) -> float:
        """Decision offset along the unit ``vector``; sklearn models keep their own."""
        return self._offset


class _SklearnLinear(CavClassifier):
    def _model(self, seed: int):
        raise NotImplementedError

    def _weights(self, x, y, *, seed):
        model = self._model(seed).fit(x, y)
        weights = np.asarray(model.coef_, dtype=np.float64).reshape(-1)
        norm = np.linalg.norm(weights)
        self._offset = float(-np.asarray(model.intercept_).reshape(-1)[0] / norm) if norm > 0 else 0.0
        return weights


class SgdHingeClassifier(_SklearnLinear):
    """scikit-learn SGDClassifier with hinge loss, alpha=0.01, as TF TCAV and Captum."""

    name = "sgd"

    def __init__(self, alpha: float = 0.01, max_iter: int = 1000, tol: float = 1e-3):
        self.alpha, self.max_iter, self.tol = alpha, max_iter, tol

    def _model(self, seed):
        from sklearn.linear_model import SGDClassifier
        return SGDClassifier(loss="hinge", alpha=self.alpha, max_iter=self.max_iter, tol=self.tol,
                             random_state=seed)


class LogisticClassifier(_SklearnLinear):
    """L2-regularised logistic regression (lbfgs)."""

    name = "logistic"

    def __init__(self, c: float = 1.0, max_iter: int = 1000):
        self.c, self.max_iter = c, max_iter

    def _model(self, seed):
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression(C=self.c, max_iter=self.max_iter, random_state=seed)


class LinearSvmClassifier(_SklearnLinear):
    """scikit-learn LinearSVC (squared hinge, dual coordinate descent)."""

    name = "svm"

    def __init__(self, c: float = 1.0, max_iter: int = 5000):
        self.c, self.max_iter = c, max_iter

    def _model(self, seed):
        from sklearn.svm import LinearSVC
        return LinearSVC(C=self.c, max_iter=self.max_iter, random_state=seed)


class MeanDifferenceClassifier(CavClassifier):
    """FastCAV: the CAV is mean(concept) - mean(other); the boundary is the midpoint."""

    name = "mean-diff"

    def _weights(self, x, y, *, seed):
        return x[y == 1].mean(axis=0).astype(np.float64) - x[y == 0].mean(axis=0)

    def _threshold(self, x, y, vector):
        return float(0.5 * (x[y == 1].mean(axis=0) + x[y == 0].mean(axis=0)) @ vector)

    @staticmethod
    def train_weights(n_concept: int, n_other: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Weights w_c (Nc,), w_o (No,) with w_c . x_c + w_o . x_o = mean of the train
        concept clips - mean of the train other clips, for :meth:`fit`'s split at ``seed``
        (held-out clips weigh 0): the CAV is this combination, up to its norm."""
        y = np.concatenate([np.ones(n_concept, np.int64), np.zeros(n_other, np.int64)])
        train, _ = stratified_split(y, seed)
        w = np.zeros(len(y))
        for label, sign in ((1, 1.0), (0, -1.0)):
            chosen = train[y[train] == label]
            w[chosen] = sign / len(chosen)
        return w[:n_concept], w[n_concept:]

    @classmethod
    def tcav_from_projections(cls, concept: np.ndarray, other: np.ndarray, *, seed: int) -> float:
        """The TCAV score that :meth:`fit` (same ``seed``, so the same split) followed by
        sign counting gives, from projections alone: ``concept`` (n, Nc) and ``other``
        (n, No) hold grad . activation for each class example (row) and clip (column).
        S = g . (mean_c - mean_o) is linear in the clips, so no D-sized vector is needed."""
        w_c, w_o = cls.train_weights(concept.shape[1], other.shape[1], seed=seed)
        return float(np.mean(concept @ w_c + other @ w_o > 0))


CLASSIFIERS: dict[str, type[CavClassifier]] = {
    cls.name: cls for cls in (SgdHingeClassifier, LogisticClassifier, LinearSvmClassifier,
                              MeanDifferenceClassifier)
}


def make_classifier(name: str) -> CavClassifier:
    """A classifier by CLI name (sgd | logistic | svm | mean-diff)."""
    if name not in CLASSIFIERS:
        raise ConfigError(f"unknown CAV classifier {name!r}: use one of {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name]()
