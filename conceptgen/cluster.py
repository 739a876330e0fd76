"""Cluster a run's tube embeddings into candidate concepts with FAISS k-means.

Recipe (ACE/VTCD style, with human review downstream):
  1. load the run's embeddings at one layer, L2-normalise them (cosine geometry);
  2. pick k: fixed, or ``auto`` = best silhouette over k in 2..min(30, n // 5) on a
     seeded sample of at most 2,000 vectors (ties go to the smaller k);
  3. FAISS k-means: greedy k-means++ seeding on a sample, then FAISS Lloyd iterations
     on a subsample (seeded, at most ``niter`` iterations) and one Lloyd step on every
     vector; best of ``nredo`` restarts;
  4. per cluster: members ranked by cosine distance to the centroid direction,
     outliers flagged, cohesion, distinct videos, ACE-style support filters;
  5. store a Clustering with its clusters and a FAISS similarity index.

Scores are relative to the run's own spread, so that a cluster of everything cannot
look tight: the *spread* is the mean cosine distance between two different tubes of
the run (exact, from the sum of the unit vectors). A cluster's **cohesion** is
``1 - (mean cosine distance between two of its members) / spread``, clipped to [0, 1]:
0 for a cluster no tighter than random pairs of the run, 1 for identical members; a
member's **distance** is its cosine distance to the cluster's centre divided by the
spread (1.0: as far from the centre as two random tubes are from each other).
Before clustering, :func:`layer_separation` checks that the layer tells the run's
tubes apart at all (spread, effective rank, nearest neighbours against random pairs).
Tubes tagged background (conceptgen.objectness) are left out unless asked.

Outlier rule: a member is an outlier when its cosine distance to the centroid
exceeds ``median + 3 * 1.4826 * MAD`` of its cluster's distances (a robust
z-score above 3; 1.4826 * MAD estimates the standard deviation).

Support filters: a cluster with fewer than ``min_size`` members or fewer than
``min_videos`` distinct videos keeps ``supported=False``; it is stored, not hidden.

The maths (``kmeans``, ``choose_k``, ``summarise_clusters``,
``split_cluster_members``) is pure numpy/FAISS; the database code is below it.
This module owns the FAISS index cache ``WORKSPACE/cache/faiss/``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
from scipy import sparse
from sklearn.metrics import silhouette_score
from sqlalchemy import select

from conceptgen.embed import load_embeddings
from conceptgen.errors import ConfigError, DataError, IntegrityError, NotFoundError
from conceptgen.hashing import sha256_file
from conceptgen.orm import Cluster, Clustering, ClusterMember, Run, Tube
from conceptgen.workspace import Workspace

OUTLIER_ROBUST_Z = 3.0
MAD_TO_SIGMA = 1.4826
AUTO_K_MAX = 30
AUTO_K_SAMPLE = 2000
N_REPRESENTATIVES = 5
KMEANS_PP_SAMPLE_PER_CENTROID = 20  # greedy k-means++ seeds from at most 20 * k points ...
KMEANS_PP_TRIALS_FACTOR = 4  # ... with 4 * (2 + ln k) candidates per centre (see greedy_kmeanspp)
FULL_LLOYD_STEPS = 1  # Lloyd steps on every point after FAISS trains on its subsample


# --- pure maths ---------------------------------------------------------------
@dataclass(frozen=True)
class KMeansResult:
    """centroids (k, D) float32 (not normalised); labels (N,) int64 in [0, k);
    sq_distances (N,) squared L2 to the assigned centroid; objective: the k-means
    objective (sum of squared distances) after each iteration of the best restart
    (FAISS stops early once it no longer improves, so it may be shorter than niter)."""

    centroids: np.ndarray
    labels: np.ndarray
    sq_distances: np.ndarray
    objective: list[float]

    @property
    def inertia(self) -> float:
        return float(self.sq_distances.sum())


def as_float32(vectors: np.ndarray) -> np.ndarray:
    """Contiguous float32 (N, D); the boundary format FAISS needs."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(f"expected a 2-D array of vectors, got shape {x.shape}")
    return x


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero). (N, D) -> (N, D) float32."""
    x = as_float32(vectors).copy()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def kmeans(vectors: np.ndarray, k: int, *, seed: int = 0, niter: int = 25, nredo: int = 1,
           init: str = "kmeans++", max_points_per_centroid: int | None = None,
           full_steps: int = FULL_LLOYD_STEPS) -> KMeansResult:
    """FAISS k-means on (N, D) vectors. Same inputs and seed give the same result.

    ``init``: ``kmeans++`` (the default) seeds with greedy k-means++
    (:func:`greedy_kmeanspp`, 4 (2 + ln k) trials per centre) on a seeded sample of at most
    ``KMEANS_PP_SAMPLE_PER_CENTROID * k`` points, then FAISS runs Lloyd iterations;
    plain D²-sampling (FAISS's own k-means++) misses whole clusters in high dimensions.
    ``random`` is FAISS's own random-points initialisation. FAISS trains on a seeded
    subsample of ``max_points_per_centroid * k`` points (default 256 per centroid:
    each centroid still averages ~256 points, and the time stops growing with N);
    every point is then assigned to its nearest centroid, and ``full_steps`` Lloyd
    steps on every point follow (centroids become the means of all their points, then
    every point is reassigned): this removes the subsample's estimation error, and
    each step can only lower the inertia.
    """
    x = as_float32(vectors)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ConfigError(f"k={k} is impossible with {n} vectors; choose 1 <= k <= {n}")
    if init not in ("kmeans++", "random"):
        raise ConfigError(f"unknown k-means init {init!r}; use kmeans++ or random")
    best: KMeansResult | None = None
    # Restarts are run here (not FAISS's nredo) so the objective trace is the winner's own.
    for redo in range(max(1, nredo)):
        redo_seed = (int(seed) + 15_485_863 * redo) % (2**31)
        km = faiss.Kmeans(d, k, niter=niter, seed=redo_seed, verbose=False, min_points_per_centroid=1,
                          max_points_per_centroid=max_points_per_centroid or 256)
        km.train(x, init_centroids=greedy_kmeanspp(x, k, seed=redo_seed) if init == "kmeans++" else None)
        centroids = np.asarray(km.centroids, dtype=np.float32).reshape(k, d)
        sq, labels = _assign(x, centroids)
        for _ in range(full_steps):
            centroids = _cluster_means(x, labels, centroids)
            sq, labels = _assign(x, centroids)
        result = KMeansResult(centroids=centroids, labels=labels, sq_distances=sq,
                              objective=[float(v) for v in km.obj])
        if best is None or result.inertia < best.inertia:
            best = result
    return best


def _assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row of x (N, D): squared L2 distances (N,) float64 and labels (N,) int64."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    sq, idx = index.search(x, 1)
    return sq[:, 0].astype(np.float64), idx[:, 0].astype(np.int64)


def _cluster_means(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(k, D) float32: the mean of each cluster's rows of x (N, D); an empty cluster keeps its centroid."""
    k = len(centroids)
    counts = np.bincount(labels, minlength=k)
    one_hot = sparse.csr_matrix((np.ones(len(labels), dtype=np.float32), (labels, np.arange(len(labels)))),
                                shape=(k, len(labels)))
    sums = np.asarray(one_hot @ x, dtype=np.float32)  # one sparse product: no (N, k) or (N, D) temporaries
    means = centroids.copy()
    filled = counts > 0
    means[filled] = sums[filled] / counts[filled, None]
    return means


def greedy_kmeanspp(x: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """(k, D) float32 initial centroids: greedy k-means++ on a seeded sample of x (N, D).

    Each new centre is the best of ``4 * (2 + ln k)`` D²-sampled candidates (the one
    that lowers the potential most), in float32 with one BLAS product per step.
    scikit-learn's ``kmeans_plusplus`` tries ``2 + ln k`` candidates over all points;
    in high dimensions the noise floor makes D² only ~2x larger on a cluster with no
    centre yet than on a covered one, so the last steps mostly miss the few uncovered
    clusters (k=200 blobs in 512-D: 8-13 missed). A sample of 20 points per centroid
    still estimates each candidate's gain well, and the same arithmetic then buys 4x
    the candidates with a quarter of the memory traffic (4-6 missed).
    """
    rng = np.random.default_rng(seed)
    m = min(len(x), KMEANS_PP_SAMPLE_PER_CENTROID * k)
    sample = x if m == len(x) else x[np.sort(rng.choice(len(x), size=m, replace=False))]
    sq_norms = np.einsum("ij,ij->i", sample, sample)
    n_trials = KMEANS_PP_TRIALS_FACTOR * (2 + int(np.log(k)))
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(m)
    closest = _sq_distances_to(sample, sq_norms, chosen[:1])[0]
    for c in range(1, k):
        cumulative = np.cumsum(closest, dtype=np.float64)  # float64: no drift over large samples
        candidates = np.minimum(np.searchsorted(cumulative, rng.random(n_trials) * cumulative[-1]), m - 1)
        trial = np.minimum(_sq_distances_to(sample, sq_norms, candidates), closest)
        best = int(np.argmin(trial.sum(axis=1, dtype=np.float64)))
        chosen[c], closest = candidates[best], trial[best]
    return np.ascontiguousarray(sample[chosen])


def _sq_distances_to(x: np.ndarray, sq_norms: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), N) float32 squared L2 distances from x[rows] to every row of x (N, D)."""
    d = sq_norms[rows, None] + sq_norms[None, :] - 2.0 * (x[rows] @ x.T)
    return np.maximum(d, 0.0, out=d)  # rounding can leave tiny negatives for duplicates


def auto_k_range(n: int) -> range:
    """The k values ``--k auto`` tries for n vectors: 2..min(30, n // 5) (at least 2..2)."""
    return range(2, max(2, min(AUTO_K_MAX, n // 5)) + 1)


def choose_k(vectors: np.ndarray, *, seed: int = 0, niter: int = 25) -> int:
    """Best silhouette (cosine) over :func:`auto_k_range`, on a seeded sample.

    vectors: (N, D), L2-normalised. Fewer than 4 vectors give k = 1."""
    x = as_float32(vectors)
    n = len(x)
    if n < 4:
        return 1
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, AUTO_K_SAMPLE), replace=False))
    xs = x[sample]
    best_k, best_score = 2, -np.inf
    for k in auto_k_range(n):
        if k >= len(xs):
            break
        labels = kmeans(xs, k, seed=seed, niter=niter).labels
        if len(np.unique(labels)) < 2:
            continue
        score = silhouette_score(xs, labels, metric="cosine")
        if score > best_score + 1e-9:  # strict: ties keep the smaller k
            best_k, best_score = k, score
    return best_k


def mean_pair_distance(unit_vectors: np.ndarray) -> float:
    """Mean cosine distance (1 - cos) over all pairs of different rows of (N, D) unit
    vectors, exactly: sum_{i != j} u_i . u_j = |sum u|^2 - N. 0.0 for N < 2."""
    x = np.asarray(unit_vectors, dtype=np.float64)
    n = len(x)
    if n < 2:
        return 0.0
    total = x.sum(axis=0)
    return float(max(0.0, 1.0 - (float(total @ total) - float(np.einsum("ij,ij->", x, x))) / (n * (n - 1))))


MIN_SPREAD = 0.02  # below: the layer embeds the run's tubes as (almost) one point
MIN_EFFECTIVE_RANK = 2.0
MAX_NN_RATIO = 0.8  # nearest neighbours this close to random-pair distance: no local structure
SEPARATION_SAMPLE = 2000


@dataclass(frozen=True)
class LayerSeparation:
    """Does a layer tell a run's tubes apart? ``spread``: mean cosine distance between two
    random tubes; ``effective_rank``: exp of the entropy of the centred embeddings'
    normalised singular values squared (1: one direction); ``nn_ratio``: median
    nearest-neighbour cosine distance / spread (near 1: neighbours are as far as random
    tubes). ``separates`` is all three within bounds; ``reason`` says which failed."""

    layer: str
    n: int
    spread: float
    effective_rank: float
    nn_ratio: float
    separates: bool
    reason: str

    def as_dict(self) -> dict:
        return {"layer": self.layer, "n": self.n, "spread": round(self.spread, 6),
                "effective_rank": round(self.effective_rank, 3), "nn_ratio": round(self.nn_ratio, 4),
                "separates": self.separates, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict) -> "LayerSeparation":
        return cls(str(d["layer"]), int(d["n"]), float(d["spread"]), float(d["effective_rank"]),
                   float(d["nn_ratio"]), bool(d["separates"]), str(d["reason"]))

    def warning(self) -> str | None:
        """One line for the CLI and the annotator's banner, or None when the layer separates."""
        if self.separates:
            return None
        return (f"layer {self.layer} does not separate this run's {self.n} tubes ({self.reason}); clusters "
                "and their scores will not mean much: extract at another layer (--layers), or use a model "
                "trained on videos like these (--model NAME --weights PATH, or your own model)")


def layer_separation(unit_vectors: np.ndarray, layer: str, *, seed: int = 0) -> LayerSeparation:
    """The separation check on a seeded sample of at most 2,000 of (N, D) unit vectors."""
    x = as_float32(unit_vectors)
    rng = np.random.default_rng(seed)
    if len(x) > SEPARATION_SAMPLE:
        x = x[np.sort(rng.choice(len(x), size=SEPARATION_SAMPLE, replace=False))]
    n = len(x)
    spread = mean_pair_distance(x)
    if n < 3:
        return LayerSeparation(layer, n, spread, 0.0, 1.0, False, f"only {n} tube(s)")
    centred = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    sv = np.linalg.svd(centred, compute_uv=False) ** 2
    p = sv / sv.sum() if sv.sum() > 0 else np.ones(1)
    p = p[p > 0]
    effective_rank = float(np.exp(-(p * np.log(p)).sum()))
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nn = 1.0 - sims.max(axis=1)
    nn_ratio = float(np.median(nn) / spread) if spread > 0 else 1.0
    failed = []
    if spread < MIN_SPREAD:
        failed.append(f"mean distance between tubes {spread:.3f} < {MIN_SPREAD}")
    if effective_rank < MIN_EFFECTIVE_RANK:
        failed.append(f"effective rank {effective_rank:.2f} < {MIN_EFFECTIVE_RANK:g}")
    if nn_ratio > MAX_NN_RATIO:
        failed.append(f"nearest neighbours at {nn_ratio:.2f} of the random-pair distance > {MAX_NN_RATIO}")
    reason = "; ".join(failed) or (f"spread {spread:.3f}, effective rank {effective_rank:.1f}, "
                                   f"nearest neighbours at {nn_ratio:.2f} of random pairs")
    return LayerSeparation(layer, n, spread, effective_rank, nn_ratio, not failed, reason)


def separation_rank(check: LayerSeparation) -> tuple:
    """Sort key, best layer first: separating layers, then the lowest nearest-neighbour ratio."""
    return (not check.separates, check.nn_ratio, -check.spread, check.layer)


@dataclass(frozen=True)
class ClusterStats:
    """One cluster. ``members``: row indices ranked nearest-first; ``distances``:
    their cosine distances (1 - cos) to the centroid direction divided by the run's
    spread, same order; ``outliers``: bool per member; ``centroid``: (D,) unit vector;
    ``cohesion``: 1 - mean member-pair distance / spread, in [0, 1]."""

    label: int
    members: np.ndarray
    distances: np.ndarray
    outliers: np.ndarray
    cohesion: float
    n_videos: int
    supported: bool
    centroid: np.ndarray


def flag_outliers(distances: np.ndarray) -> np.ndarray:
    """True where distance > median + 3 * 1.4826 * MAD (robust z-score above 3)."""
    d = np.asarray(distances, dtype=np.float64)
    if len(d) < 3:
        return np.zeros(len(d), dtype=bool)
    med = np.median(d)
    sigma = MAD_TO_SIGMA * np.median(np.abs(d - med))
    return d > med + OUTLIER_ROBUST_Z * sigma + 1e-12


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel so cluster 0 is the largest (ties: the one holding the lowest row)."""
    labels = np.asarray(labels)
    uniq = np.unique(labels)
    order = sorted(uniq, key=lambda c: (-int((labels == c).sum()), int(np.argmax(labels == c))))
    mapping = {int(old): new for new, old in enumerate(order)}
    return np.array([mapping[int(v)] for v in labels], dtype=np.int64)


def relative_cohesion(unit_vectors: np.ndarray, spread: float) -> float:
    """1 - mean pair distance of the rows / ``spread``, clipped to [0, 1]; 0 when it cannot
    be measured (fewer than 2 rows, or a run with no spread)."""
    if len(unit_vectors) < 2 or spread < 1e-6:
        return 0.0
    return float(np.clip(1.0 - mean_pair_distance(unit_vectors) / spread, 0.0, 1.0))


def summarise_clusters(unit_vectors: np.ndarray, labels: np.ndarray, video_ids: np.ndarray, *,
                       min_size: int, min_videos: int, spread: float | None = None) -> list[ClusterStats]:
    """Rank, flag and score each cluster. unit_vectors (N, D) L2-normalised;
    labels (N,) in [0, k); video_ids (N,) the source video of each row; ``spread``: the
    run's mean random-pair cosine distance (default: that of ``unit_vectors``)."""
    x = as_float32(unit_vectors)
    video_ids = np.asarray(video_ids)
    spread = mean_pair_distance(x) if spread is None else float(spread)
    scale = spread if spread >= 1e-6 else 1.0
    out = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        centroid = l2_normalise(x[rows].mean(axis=0, keepdims=True))[0]
        sims = x[rows] @ centroid
        order = np.lexsort((rows, -sims))  # nearest first; ties by row for determinism
        rows, sims = rows[order], sims[order]
        distances = np.maximum(1.0 - sims.astype(np.float64), 0.0) / scale
        n_videos = len(np.unique(video_ids[rows]))
        out.append(ClusterStats(
            label=int(c), members=rows, distances=distances, outliers=flag_outliers(distances),
            cohesion=relative_cohesion(x[rows], spread), n_videos=int(n_videos),
            supported=bool(len(rows) >= min_size and n_videos >= min_videos), centroid=centroid))
    return out


def split_cluster_members(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Split one cluster's members into k groups (for the annotator's 'split').

    vectors (N, D) raw embeddings -> labels (N,) int64 in [0, k), canonical order
    (group 0 the largest). Deterministic for a seed."""
    x = l2_normalise(vectors)
    k = int(k)
    if not 2 <= k <= len(x):
        raise ConfigError(f"cannot split {len(x)} members into {k} groups; choose 2 <= k <= {len(x)}")
    return canonical_labels(kmeans(x, k, seed=seed, nredo=3).labels)


def build_similarity_index(unit_vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """Exact inner-product (cosine on unit vectors) index keyed by tube id."""
    x = as_float32(unit_vectors)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(x.shape[1]))
    index.add_with_ids(x, np.asarray(ids, dtype=np.int64))
    return index


# --- database -----------------------------------------------------------------
@dataclass
class ClusteringReport:
    clustering_id: int
    run_id: int
    layer: str
    k: int
    n_tubes: int
    clusters: list[ClusterStats] = field(repr=False)
    tube_ids: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    separation: LayerSeparation | None = None  # the chosen layer's check
    layer_checks: list[LayerSeparation] = field(default_factory=list)  # every stored layer, best first
    n_background: int = 0  # tubes left out as background

    @property
    def n_supported(self) -> int:
        return sum(c.supported for c in self.clusters)


def index_path(workspace: Workspace, clustering_id: int) -> Path:
    return workspace.cache / "faiss" / f"clustering{clustering_id}.index"


def _run_layers(run: Run) -> list[str]:
    return list((run.config or {}).get("layers") or [])


def _run_embedding_key(run: Run, layer: str | None) -> tuple[str, str, str]:
    cfg = run.config or {}
    layers = list(cfg.get("layers") or [])
    if layer is None:
        if not layers:
            raise DataError(f"run {run.id} records no layers; pass --layer")
        layer = layers[0]
    elif layers and layer not in layers:
        raise ConfigError(f"run {run.id} has no embeddings at layer {layer!r}; "
                          f"choose one of {', '.join(layers)}")
    return layer, cfg.get("pooling", "mean"), cfg.get("render_mode", "crop")


def background_tube_ids(workspace: Workspace, run_id: int) -> set[int]:
    """Ids of the run's tubes tagged background by conceptgen.objectness."""
    with workspace.session() as s:
        return set(s.scalars(select(Tube.id).where(Tube.run_id == run_id, Tube.background.is_(True))))


@dataclass(frozen=True)
class _LayerCandidates:
    """One stored layer's unit embeddings of the tubes that clustering sees."""

    layer: str
    pooling: str
    render_mode: str
    tube_ids: np.ndarray
    video_ids: np.ndarray
    unit_vectors: np.ndarray
    n_left_out: int  # background tubes left out


def _load_candidates(workspace: Workspace, run_id: int, layers: Sequence[str | None] | None,
                     include_background: bool) -> list[_LayerCandidates]:
    """Per layer (``None``: every layer the run stored), its candidates' embeddings."""
    with workspace.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"run {run_id} does not exist; list runs with `conceptgen runs`")
        if layers is None:
            layers = _run_layers(run) or [None]
        keys = [_run_embedding_key(run, layer) for layer in layers]
        embs = [load_embeddings(s, run_id, layer=l, pooling=p, render_mode=m) for l, p, m in keys]
    skip = set() if include_background else background_tube_ids(workspace, run_id)
    out = []
    for (layer, pooling, mode), emb in zip(keys, embs):
        keep = np.array([int(t) not in skip for t in emb.tube_ids], dtype=bool)
        out.append(_LayerCandidates(layer, pooling, mode, emb.tube_ids[keep], emb.video_ids[keep],
                                    l2_normalise(emb.vectors[keep]), int((~keep).sum())))
    return out


def _layer_checks(candidates: Sequence[_LayerCandidates], seed: int) -> list[LayerSeparation]:
    return sorted((layer_separation(c.unit_vectors, c.layer, seed=seed) for c in candidates if len(c.tube_ids)),
                  key=separation_rank)


def check_run_layers(workspace: Workspace, run_id: int, *, include_background: bool = False,
                     seed: int = 0) -> list[LayerSeparation]:
    """:func:`layer_separation` for every layer the run stored, best layer first."""
    return _layer_checks(_load_candidates(workspace, run_id, None, include_background), seed)


def cluster_run(workspace: Workspace, run_id: int, *, layer: str | None = None, k: int | str = "auto",
                seed: int = 0, min_size: int = 5, min_videos: int = 3, niter: int = 25,
                nredo: int = 3, include_background: bool = False) -> ClusteringReport:
    """Cluster run ``run_id``'s tubes at ``layer`` and store a new Clustering.
    Re-clustering never re-extracts. ``layer`` None: the stored layer that separates
    the run's tubes best (:func:`check_run_layers`). Background tubes are left out
    unless ``include_background``."""
    stored = _load_candidates(workspace, run_id, None, include_background)
    checks = _layer_checks(stored, seed)
    if layer is None and checks:
        layer = checks[0].layer
    chosen = next((c for c in stored if c.layer == layer), None)
    if chosen is None:  # a layer the run does not list (old runs record none), or no candidates anywhere
        chosen = _load_candidates(workspace, run_id, [layer], include_background)[0]
    if len(chosen.tube_ids) + chosen.n_left_out == 0:
        raise DataError(f"run {run_id} has no embeddings at {chosen.layer!r}; run `conceptgen extract` first")
    if len(chosen.tube_ids) == 0:
        raise DataError(f"all {chosen.n_left_out} tubes of run {run_id} are tagged background (walls, floors, "
                        "water...): no candidates; cluster them anyway with --include-background")
    layer, pooling, mode = chosen.layer, chosen.pooling, chosen.render_mode
    tube_ids, video_ids, x = chosen.tube_ids, chosen.video_ids, chosen.unit_vectors
    separation = next((c for c in checks if c.layer == layer), None) or layer_separation(x, layer, seed=seed)
    k_value = _resolve_k(k, x, seed)
    labels = canonical_labels(kmeans(x, k_value, seed=seed, niter=niter, nredo=nredo).labels)
    stats = summarise_clusters(x, labels, video_ids, min_size=min_size, min_videos=min_videos,
                               spread=separation.spread)
    params = {"k": k if k == "auto" else int(k), "k_chosen": k_value, "seed": seed, "niter": niter,
              "nredo": nredo, "min_size": min_size, "min_videos": min_videos, "pooling": pooling,
              "render_mode": mode, "normalise": "l2", "outlier_rule": "d > median + 3*1.4826*MAD",
              "auto_k_rule": "max silhouette (cosine), k in 2..min(30, n//5), sample <= 2000",
              "include_background": include_background, "n_background_left_out": chosen.n_left_out,
              "scores": "cohesion = 1 - mean member-pair cosine distance / spread; member distance = "
                        "cosine distance to the centre / spread; spread = mean cosine distance of two run tubes",
              "layer_check": separation.as_dict(),
              "layer_checks": [c.as_dict() for c in checks]}
    clustering_id = _store_clustering(workspace, run_id, layer, k_value, seed, params, tube_ids, x, stats)
    return ClusteringReport(clustering_id, run_id, layer, k_value, len(x), stats, tube_ids, labels,
                            separation=separation, layer_checks=checks, n_background=chosen.n_left_out)


def _resolve_k(k: int | str, x: np.ndarray, seed: int) -> int:
    if k == "auto":
        return choose_k(x, seed=seed)
    try:
        k_value = int(k)
    except (TypeError, ValueError):
        raise ConfigError(f"--k must be 'auto' or a positive integer, got {k!r}") from None
    if not 1 <= k_value <= len(x):
        raise ConfigError(f"--k {k_value} but the run has {len(x)} tubes; choose 1..{len(x)} or --k auto")
    return k_value


def _store_clustering(workspace: Workspace, run_id: int, layer: str, k: int, seed: int, params: dict,
                      tube_ids: np.ndarray, unit_vectors: np.ndarray, stats: list[ClusterStats]) -> int:
    with workspace.session() as s:
        clustering = Clustering(run_id=run_id, params=params, layer=layer, k=k, seed=seed)
        s.add(clustering)
        s.flush()
        for st in stats:
            cluster = Cluster(clustering_id=clustering.id, label_index=st.label, size=len(st.members),
                              cohesion=st.cohesion, n_videos=st.n_videos, supported=st.supported,
                              centroid=st.centroid.astype(np.float32).tobytes())
            s.add(cluster)
            s.flush()
            inliers_seen = 0
            for rank, (row, dist, out) in enumerate(zip(st.members, st.distances, st.outliers)):
                rep = not out and inliers_seen < N_REPRESENTATIVES
                inliers_seen += int(not out)
                s.add(ClusterMember(cluster_id=cluster.id, tube_id=int(tube_ids[row]),
                                    distance=float(dist), rank=rank, is_outlier=bool(out),
                                    representative=rep))
        # The index file is written inside the transaction: a crash leaves at most an orphan file.
        path = index_path(workspace, clustering.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(build_similarity_index(unit_vectors, tube_ids), str(path))
        clustering.index_path = str(path.relative_to(workspace.cache))
        clustering.index_sha256 = sha256_file(path)
        return clustering.id


def _load_index(workspace: Workspace, clustering: Clustering) -> faiss.Index:
    """The clustering's index; rebuilt from the stored embeddings if the cache file was
    deleted. A file whose checksum differs from the row's is rebuilt too, and the
    rebuild must match the recorded checksum."""
    path = workspace.cache / (clustering.index_path or f"faiss/clustering{clustering.id}.index")
    if path.exists() and sha256_file(path) == clustering.index_sha256:
        return faiss.read_index(str(path))
    with workspace.session() as s:
        run = s.get(Run, clustering.run_id)
        _, pooling, mode = _run_embedding_key(run, clustering.layer)
        emb = load_embeddings(s, clustering.run_id, layer=clustering.layer, pooling=pooling, render_mode=mode)
    keep = np.ones(len(emb.tube_ids), dtype=bool)
    if not (clustering.params or {}).get("include_background", True):  # older clusterings kept every tube
        skip = background_tube_ids(workspace, clustering.run_id)
        keep = np.array([int(t) not in skip for t in emb.tube_ids], dtype=bool)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(build_similarity_index(l2_normalise(emb.vectors[keep]), emb.tube_ids[keep]), str(path))
    if clustering.index_sha256 and sha256_file(path) != clustering.index_sha256:
        raise IntegrityError(f"FAISS index of clustering {clustering.id} does not match its checksum "
                             f"after rebuilding; the run's embeddings changed — re-run `conceptgen cluster`")
    return faiss.read_index(str(path))


def similar_tubes(workspace: Workspace, clustering_id: int, tube_id: int, k: int = 8) -> list[tuple[int, float]]:
    """The k tubes most similar to ``tube_id`` in a clustering's embedding space,
    as (tube_id, cosine similarity), most similar first, the tube itself excluded."""
    with workspace.session() as s:
        clustering = s.get(Clustering, clustering_id)
        if clustering is None:
            raise NotFoundError(f"clustering {clustering_id} does not exist")
        if s.get(Tube, tube_id) is None:
            raise NotFoundError(f"tube {tube_id} does not exist")
        run = s.get(Run, clustering.run_id)
        _, pooling, mode = _run_embedding_key(run, clustering.layer)
        query = load_embeddings(s, clustering.run_id, layer=clustering.layer, pooling=pooling,
                                render_mode=mode, tube_ids=[tube_id])
    if len(query.tube_ids) == 0:
        raise NotFoundError(f"tube {tube_id} has no embedding in clustering {clustering_id}")
    index = _load_index(workspace, clustering)
    sims, ids = index.search(l2_normalise(query.vectors), min(int(k) + 1, index.ntotal))
    return [(int(i), float(v)) for i, v in zip(ids[0], sims[0]) if i != tube_id and i >= 0][:k]


def clustering_spread(params: dict | None) -> float | None:
    """The spread a stored clustering's scores are relative to (None: made before it was recorded)."""
    check = (params or {}).get("layer_check") or {}
    return float(check["spread"]) if "spread" in check else None


def clustering_labels(workspace: Workspace, clustering_id: int) -> dict[int, int]:
    """tube_id -> cluster label_index for a stored clustering."""
    with workspace.session() as s:
        rows = s.execute(select(ClusterMember.tube_id, Cluster.label_index)
                         .join(Cluster, Cluster.id == ClusterMember.cluster_id)
                         .where(Cluster.clustering_id == clustering_id)).all()
    return {int(t): int(c) for t, c in rows}
