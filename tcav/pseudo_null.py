"""The pseudo-concept null of ``--test pseudo``: M random-pool sets of a concept's size,
scored against the experiment's own N random sets exactly as the concept.

Statistics apart from the orchestrator (:mod:`tcav.experiment`): which pool clips
pseudo-concepts come from, how they are drawn (their own seeded stream, prefix-stable:
pseudo-concept j depends only on (seed, size, j), so raising M or scoring other
concepts moves none of the first M), how many are needed, and their statistic.
Activations are read through the :class:`tcav.activations.ActivationStore` given;
nothing here touches the model or files.

Cost. The logit change is linear in the clips, so M pseudo-concepts against N random
sets cost one projection grad . clip per pool clip and class, then sums over index
sets: on the demo model at stage2, M = 11,999 for 4 classes x 2 variants takes 0.12 s
against 0.01 s for M = 99 (``benchmarks/pseudo_null_cost.py``). That is what
lets M be chosen so that a clear effect gets a p-value far below the threshold
(:func:`tcav.stats.auto_null_sets`). The TCAV sign count with mean-difference CAVs is
scored from the same projections but set by set (M x N), and other classifiers fit
M x N CAVs: their automatic M is capped lower, and the power check says so.
"""
from __future__ import annotations

from math import ceil
from typing import Sequence

import numpy as np

from tcav import scoring, stats
from tcav.classifiers import MIN_EXAMPLES_PER_SIDE, MeanDifferenceClassifier

PSEUDO_POOL_CAP = 500   # pool clips pseudo-concepts are drawn from (a seeded subset of larger pools)
DRAW_BLOCK = 1024       # pseudo-concepts drawn per seeded block (prefix-stable whatever M)
CHUNK = 4096            # pseudo-concepts scored at once (bounds the membership matrix in RAM)


def pseudo_pool_indices(n_pool: int, seed: int, cap: int = PSEUDO_POOL_CAP) -> list[int]:
    """The pool clips pseudo-concepts are drawn from: all of them, or a seeded
    ``cap`` of a large pool (stream "pseudo-pool"), so a database-wide pool of
    thousands of tubes does not all go through the model."""
    if n_pool <= cap:
        return list(range(n_pool))
    return sorted(np.random.default_rng(stats.derive_seed(seed, "pseudo-pool")).permutation(n_pool)[:cap].tolist())


def draw_pseudo_concepts(candidates: Sequence[int], m: int, size: int, seed: int) -> np.ndarray:
    """(M, size) pool indices (each row sorted) out of ``candidates``: M pseudo-concepts.
    Rows are drawn in blocks of ``DRAW_BLOCK``, block b from the stream (seed, size, b),
    so row j depends only on (seed, size, j): the first M rows are the same for any
    larger M, and the null does not move when the concept list changes."""
    candidates = np.asarray(candidates)
    if not 0 < size <= len(candidates):
        raise ValueError(f"pseudo-concepts of {size} clips out of {len(candidates)} candidates")
    blocks = []
    for b in range(ceil(m / DRAW_BLOCK)):
        keys = np.random.default_rng(stats.derive_seed(seed, "pseudo-concepts", size, b)).random(
            (DRAW_BLOCK, len(candidates)))
        chosen = np.argpartition(keys, size - 1, axis=1)[:, :size]   # a uniform size-subset per row
        blocks.append(np.sort(candidates[chosen], axis=1))
    return np.concatenate(blocks)[:m] if blocks else np.zeros((0, size), dtype=np.int64)


def pseudo_test_fits(pool_size: int, concept_size: int, random_set_size: int) -> bool:
    """Whether the pool holds a pseudo-concept of the concept's size beside a whole
    random set: smaller pools leave random sets that pseudo-concepts swallow."""
    return pool_size >= concept_size + random_set_size


def is_cheap(config) -> bool:
    """The logit change (and mean-difference TCAV scores) need no classifier fit per pseudo-concept."""
    return config.test_statistic == "logit-change" or config.classifier == MeanDifferenceClassifier.name


def null_set_count(config, n_hypotheses: int) -> int:
    """M for a family of ``n_hypotheses``: ``config.null_sets``, or automatic so that the
    smallest corrected p is at most alpha / ``stats.RESOLUTION`` (capped by cost)."""
    if config.null_sets:
        return int(config.null_sets)
    if config.test_statistic == "logit-change":
        cap = stats.MAX_AUTO_NULL_SETS
    elif config.classifier == MeanDifferenceClassifier.name:
        cap = stats.MAX_AUTO_NULL_SETS_SET_BY_SET
    else:
        cap = stats.MAX_AUTO_NULL_SETS_FITTED
    return stats.auto_null_sets(n_hypotheses, config.alpha, cap=cap)


def pseudo_null_means(store, classifier, pool, pseudo_sets: np.ndarray, random_sets, layer,
                      grads: dict[str, np.ndarray], seed: int, statistic: str,
                      memo: dict | None = None) -> dict[str, np.ndarray]:
    """Each pseudo-concept scored like a concept against each random set (less any
    clip it shares with the pseudo-concept), averaged over the N sets: its logit
    change, or its TCAV score with one CAV per random set. ``grads`` target ->
    (n, ...) class-logit gradients at ``layer``. Returns target -> (M,), NaN for a
    pseudo-concept that covers every random set (small pools); a random set it
    covers entirely is left out of its mean."""
    if statistic == "logit-change":
        projections, column_of, randoms = pseudo_projections(store, pool, pseudo_sets, random_sets, layer,
                                                             flat(grads), memo)
        columns = _as_columns(pseudo_sets, column_of)
        return {t: _chunked_logit_changes(proj.mean(axis=0), columns, randoms) for t, proj in projections.items()}
    per_set = pseudo_tcav_per_set(store, classifier, pool, pseudo_sets, random_sets, layer, grads, seed)
    return {t: np.array([np.mean(row[~np.isnan(row)]) if not np.isnan(row).all() else np.nan for row in m])
            for t, m in per_set.items()}


def _chunked_logit_changes(projection: np.ndarray, columns: np.ndarray, randoms: np.ndarray) -> np.ndarray:
    """:func:`tcav.scoring.pseudo_logit_changes` over ``CHUNK`` pseudo-concepts at a time."""
    out = [scoring.pseudo_logit_changes(projection, membership(columns[i:i + CHUNK], len(projection)), randoms)
           for i in range(0, len(columns), CHUNK)]
    return np.concatenate(out) if out else np.zeros(0)


def flat(grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # float64 on both sides: numpy's mixed float32 x float64 matmul skips BLAS (~300x slower)
    return {t: g.reshape(len(g), -1).astype(np.float64) for t, g in grads.items()}


def pseudo_tcav_per_set(store, classifier, pool, pseudo_sets, random_sets, layer, grads: dict[str, np.ndarray],
                        seed: int) -> dict[str, np.ndarray]:
    """Target -> (M, N) TCAV score of each pseudo-concept (row) against each random set
    (column) less the clips it shares with it, NaN where it covers the set: scored
    exactly as a concept (one CAV per random set; mean-difference CAVs from
    grad . clip projections, other classifiers fitted)."""
    g = flat(grads)
    base = [stats.derive_seed(seed, "pseudo-cav", len(pseudo_sets[0]), layer, j) for j in range(len(pseudo_sets))]
    split_seed = lambda j, i: base[j] + i  # noqa: E731  (default_rng hashes seeds: streams independent)
    if classifier.name != MeanDifferenceClassifier.name:
        return _fitted_tcav(store, classifier, pool, pseudo_sets, random_sets, layer, g, split_seed)
    projections, column_of, randoms = pseudo_projections(store, pool, pseudo_sets, random_sets, layer, g)
    pseudo = membership(_as_columns(pseudo_sets, column_of), randoms.shape[1])
    return {t: _mean_difference_tcav(proj, pseudo, randoms, split_seed) for t, proj in projections.items()}


def _fitted_tcav(store, classifier, pool, pseudo_sets, random_sets, layer, g, split_seed):
    """Target -> (M, N) TCAV score of each pseudo-concept, one classifier fit per random set."""
    acts_of = lambda idx: store.activations([pool[i] for i in idx], layer)  # noqa: E731
    out = {t: np.full((len(pseudo_sets), len(random_sets)), np.nan) for t in g}
    for j, ps in enumerate(pseudo_sets):
        x, mine = acts_of(ps), set(ps)
        fitted = [(i, classifier.fit(x, acts_of(other), seed=split_seed(j, i)).vector)
                  for i, other in enumerate([i for i in rs if i not in mine] for rs in random_sets)
                  if len(other) >= MIN_EXAMPLES_PER_SIDE]
        if not fitted:
            continue
        columns, cavs = [i for i, _ in fitted], np.stack([v for _, v in fitted])
        for t, grad in g.items():
            out[t][j, columns] = scoring.tcav_score(scoring.directional_derivatives(grad, cavs))
    return out


def pseudo_projections(store, pool, pseudo_sets, random_sets, layer, g, memo: dict | None = None):
    """grad . clip for every class example (row) and every clip any set uses (column),
    per target: (projections {target: (n, P)}, {pool index: column}, random sets' (N, P) 0/1 membership).
    ``memo`` ((layer, target, clip key) -> (n,)) keeps projections across the calls of one
    run (concept sizes, seeds): they depend on neither."""
    memo = {} if memo is None else memo
    columns = sorted(set(np.unique(np.asarray(pseudo_sets)).tolist()) | {i for rs in random_sets for i in rs})
    projections = {t: np.zeros((len(grad), len(columns))) for t, grad in g.items()}
    missing = [c for c, i in enumerate(columns) if any((layer, t, pool[i].key) not in memo for t in g)]
    for start in range(0, len(missing), 32):  # the clips stream through RAM in chunks
        chunk = missing[start:start + 32]
        acts = store.activations([pool[columns[c]] for c in chunk], layer)
        acts = acts.reshape(len(acts), -1).astype(np.float64)
        for t, grad in g.items():
            for c, column in zip(chunk, (grad @ acts.T).T):
                memo[(layer, t, pool[columns[c]].key)] = column
    for t in g:
        for c, i in enumerate(columns):
            projections[t][:, c] = memo[(layer, t, pool[i].key)]
    column_of = {i: c for c, i in enumerate(columns)}
    return projections, column_of, membership(_as_columns(random_sets, column_of), len(columns))


def _as_columns(sets, column_of: dict[int, int]) -> list[np.ndarray]:
    """Each set's pool indices as projection columns."""
    if isinstance(sets, np.ndarray) and sets.ndim == 2:   # pseudo-concepts: one vectorised lookup
        lookup = np.full(int(sets.max(initial=0)) + 1, -1, dtype=np.int64)
        for i, c in column_of.items():
            if i < len(lookup):
                lookup[i] = c
        return list(lookup[sets])
    return [np.array([column_of[int(i)] for i in s], dtype=np.int64) for s in sets]


def membership(sets: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """(len(sets), n) 0/1 matrix: row j marks the members of set j."""
    out = np.zeros((len(sets), n))
    if len(sets) and len({len(m) for m in sets}) == 1:   # equal sizes (pseudo-concepts): one fancy index
        out[np.arange(len(sets))[:, None], np.asarray(sets, dtype=np.int64)] = 1.0
        return out
    for j, members in enumerate(sets):
        out[j, np.asarray(members, dtype=np.int64)] = 1.0
    return out


def _mean_difference_tcav(projections: np.ndarray, pseudo: np.ndarray, randoms: np.ndarray,
                          split_seed) -> np.ndarray:
    """Mean-difference CAV TCAV scores of each pseudo-concept (rows of ``pseudo``)
    against each random set (columns) less their overlap: (M, N), NaN where the
    pseudo-concept covers the set. ``projections`` (n, P) grad . clip."""
    out = np.full((len(pseudo), len(randoms)), np.nan)
    for j, mine in enumerate(pseudo):
        for i, theirs in enumerate(randoms):
            c, o = np.flatnonzero(mine), np.flatnonzero((theirs > 0) & (mine == 0))
            if len(o):
                out[j, i] = MeanDifferenceClassifier.tcav_from_projections(
                    projections[:, c], projections[:, o], seed=split_seed(j, i))
    return out
