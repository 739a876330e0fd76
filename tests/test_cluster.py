"""FAISS clustering: properties of the k-means, the ranking/outlier maths, and the
stored clusterings with their similarity index."""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from conceptgen.cli import main
from conceptgen.cluster import (auto_k_range, canonical_labels, choose_k, cluster_run, clustering_labels,
                                flag_outliers, greedy_kmeanspp, index_path, kmeans, l2_normalise,
                                similar_tubes, split_cluster_members, summarise_clusters)
from conceptgen.embed import vector_to_blob
from conceptgen.errors import ConfigError, NotFoundError
from conceptgen.hashing import sha256_file
from conceptgen.orm import Cluster, Clustering, ClusterMember, Embedding, Run, Tube, Video
from conceptgen.workspace import Workspace


def blobs(n_per=30, k=4, d=24, spread=0.25, seed=0):
    """k well-separated Gaussian blobs: (k*n_per, d) vectors and their true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    x = np.concatenate([c + spread * rng.normal(size=(n_per, d)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(k), n_per)


def same_partition(a, b) -> bool:
    from sklearn.metrics import adjusted_rand_score
    return adjusted_rand_score(a, b) == 1.0


# --- pure maths ----------------------------------------------------------------
def test_same_seed_gives_identical_clusters():
    x, _ = blobs(seed=1)
    a, b = kmeans(x, 4, seed=7), kmeans(x, 4, seed=7)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_objective_never_increases_over_iterations():
    x, _ = blobs(n_per=50, k=6, spread=1.5, seed=2)
    for seed in range(3):
        obj = np.array(kmeans(x, 6, seed=seed, niter=20, init="random").objective)
        assert 2 <= len(obj) <= 20
        assert np.all(np.diff(obj) <= 1e-3 * obj[0])


def test_more_centroids_give_lower_error():
    x = np.random.default_rng(3).normal(size=(400, 16)).astype(np.float32)
    inertias = [kmeans(x, k, seed=0, nredo=2).inertia for k in (1, 2, 4, 8, 16, 32)]
    assert all(b < a for a, b in zip(inertias, inertias[1:]))


def test_greedy_seeding_is_seeded_and_puts_one_seed_in_every_separated_blob():
    x, truth = blobs(n_per=40, k=12, d=32, seed=5)
    a, b = greedy_kmeanspp(x, 12, seed=3), greedy_kmeanspp(x, 12, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, greedy_kmeanspp(x, 12, seed=4))
    rows = [int(np.flatnonzero((x == c).all(axis=1))[0]) for c in a]  # seeds are data points
    assert sorted(truth[rows]) == list(range(12))


def test_greedy_seeding_misses_at_most_one_of_many_noisy_high_dimensional_blobs():
    # 40 blobs in 256-D with unit noise: D² is only ~2x larger on a blob without a seed,
    # the regime where 2 + ln k candidates per step miss 1-4 blobs (see greedy_kmeanspp).
    for seed in range(4):
        rng = np.random.default_rng(seed)
        truth = np.repeat(np.arange(40), 30)
        x = rng.normal(size=(40, 256)).astype(np.float32)[truth] + rng.standard_normal((1200, 256), np.float32)
        rows = [int(np.flatnonzero((x == c).all(axis=1))[0]) for c in greedy_kmeanspp(x, 40, seed=seed)]
        assert len(set(truth[rows])) >= 39


def test_lloyd_steps_on_every_point_after_subsample_training_lower_the_inertia():
    x, _ = blobs(n_per=100, k=8, d=32, spread=2.0, seed=6)
    # 16 points per centroid: FAISS trains on a 128-point subsample of the 800
    inertias = [kmeans(x, 8, seed=1, max_points_per_centroid=16, full_steps=s).inertia for s in (0, 1, 2)]
    assert inertias[1] < inertias[0] and inertias[2] <= inertias[1]


def test_greedy_seeding_survives_duplicate_points():
    x = np.repeat(np.eye(3, 8, dtype=np.float32), 20, axis=0)  # 3 distinct points, 5 seeds wanted
    seeds = greedy_kmeanspp(x, 5, seed=0)
    assert seeds.shape == (5, 8) and np.isfinite(seeds).all()
    assert len(np.unique(seeds, axis=0)) == 3
    assert kmeans(x, 3, seed=0).inertia == 0.0


def test_recovers_well_separated_blobs_and_auto_k_finds_their_number():
    x, truth = blobs(n_per=25, k=5, seed=4)
    unit = l2_normalise(x)
    assert choose_k(unit, seed=0) == 5
    assert same_partition(kmeans(unit, 5, seed=0, nredo=3).labels, truth)


def test_auto_k_range_follows_the_stated_rule():
    assert list(auto_k_range(12)) == [2]
    assert list(auto_k_range(50)) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert max(auto_k_range(10_000)) == 30


def test_outlier_rule_flags_only_far_members():
    d = np.r_[np.linspace(0.10, 0.12, 20), 0.9]
    flags = flag_outliers(d)
    assert flags[-1] and not flags[:-1].any()
    assert not flag_outliers(np.full(10, 0.3)).any()


def test_summaries_rank_by_distance_and_apply_support_filters():
    x, truth = blobs(n_per=10, k=3, seed=5)
    x[0] = -x[0]  # an obvious stray in cluster 0
    videos = np.r_[np.arange(10) % 5, np.zeros(10), np.arange(10) % 2]
    stats = summarise_clusters(l2_normalise(x), truth, videos, min_size=5, min_videos=3)
    for st in stats:
        assert np.all(np.diff(st.distances) >= 0)
        assert sorted(st.members) == list(np.flatnonzero(truth == st.label))
        assert -1 <= st.cohesion <= 1
    assert [s.n_videos for s in stats] == [5, 1, 2]
    assert [s.supported for s in stats] == [True, False, False]
    assert stats[0].members[-1] == 0 and stats[0].outliers[-1]
    assert stats[1].cohesion > stats[0].cohesion  # the stray lowers cluster 0's cohesion


def test_canonical_labels_put_the_largest_first():
    np.testing.assert_array_equal(canonical_labels(np.array([5, 2, 2, 9, 2, 5])), [1, 0, 0, 2, 0, 1])


def test_split_cluster_members_is_deterministic_and_separates_sub_groups():
    x, truth = blobs(n_per=12, k=2, seed=6)
    a = split_cluster_members(x, 2, seed=3)
    np.testing.assert_array_equal(a, split_cluster_members(x, 2, seed=3))
    assert same_partition(a, truth)
    with pytest.raises(ConfigError):
        split_cluster_members(x[:3], 5, seed=0)


# --- stored clusterings ----------------------------------------------------------
@pytest.fixture
def run_ws(tmp_path):
    """A workspace with one run of 60 tubes over 12 videos whose embeddings form 3 blobs."""
    ws = Workspace.resolve(tmp_path / "ws")
    x, truth = blobs(n_per=20, k=3, d=16, seed=8)
    with ws.session() as s:
        videos = [Video(path=f"/v{i}.mp4", sha256=f"{i:064d}", label="x") for i in range(12)]
        s.add_all(videos)
        run = Run(config={"layers": ["blocks.3", "blocks.4"], "pooling": "mean", "render_mode": "mask"},
                  config_hash="h" * 64, model_name="demo", model_fingerprint="f" * 64, code_version="t")
        s.add(run)
        s.flush()
        for i, (vec, lab) in enumerate(zip(x, truth)):
            tube = Tube(run_id=run.id, video_id=videos[i % 12].id, track_index=i, start_frame=0, end_frame=4,
                        frame_indices=[0, 1, 2, 3], kind="motion", mask_height=8, mask_width=8,
                        masks_rle=[], boxes=[], area=0.1)
            s.add(tube)
            s.flush()
            for layer, v in (("blocks.3", vec), ("blocks.4", -vec)):
                s.add(Embedding(tube_id=tube.id, layer=layer, pooling="mean", render_mode="mask",
                                dim=len(v), dtype="float16", vector=vector_to_blob(v)))
        run_id = run.id
    ws.test_truth, ws.test_run = truth, run_id
    yield ws
    ws.close()


def test_cluster_run_stores_clusters_members_and_index(run_ws):
    rep = cluster_run(run_ws, run_ws.test_run, k="auto", seed=0, min_size=5, min_videos=3)
    assert rep.k == 3 and rep.layer == "blocks.3" and rep.n_tubes == 60
    with run_ws.session() as s:
        clustering = s.get(Clustering, rep.clustering_id)
        clusters = s.scalars(select(Cluster).where(Cluster.clustering_id == clustering.id)
                             .order_by(Cluster.label_index)).all()
        assert [c.size for c in clusters] == [20, 20, 20]
        assert all(c.supported and c.n_videos == 12 and c.cohesion > 0.9 for c in clusters)
        members = s.scalars(select(ClusterMember).where(ClusterMember.cluster_id == clusters[0].id)
                            .order_by(ClusterMember.rank)).all()
        assert [m.rank for m in members] == list(range(20))
        assert all(a.distance <= b.distance for a, b in zip(members, members[1:]))
        assert sum(m.representative for m in members) == 5
        path = run_ws.cache / clustering.index_path
        assert path == index_path(run_ws, clustering.id) and sha256_file(path) == clustering.index_sha256
    labels = clustering_labels(run_ws, rep.clustering_id)
    tube_ids = sorted(labels)
    assert same_partition([labels[t] for t in tube_ids], run_ws.test_truth)


def test_same_seed_same_stored_clusters_and_reclustering_needs_no_extract(run_ws):
    a = cluster_run(run_ws, run_ws.test_run, k=3, seed=4)
    b = cluster_run(run_ws, run_ws.test_run, k=3, seed=4)
    c = cluster_run(run_ws, run_ws.test_run, k=6, seed=1, layer="blocks.4")
    assert len({a.clustering_id, b.clustering_id, c.clustering_id}) == 3
    assert clustering_labels(run_ws, a.clustering_id) == clustering_labels(run_ws, b.clustering_id)
    assert c.k == 6 and c.layer == "blocks.4"
    with run_ws.session() as s:
        assert s.get(Clustering, a.clustering_id).index_sha256 == s.get(Clustering, b.clustering_id).index_sha256


def test_similar_tubes_come_from_the_same_blob_and_survive_a_deleted_cache(run_ws):
    rep = cluster_run(run_ws, run_ws.test_run, k=3, seed=0)
    labels = clustering_labels(run_ws, rep.clustering_id)
    query = sorted(labels)[0]
    hits = similar_tubes(run_ws, rep.clustering_id, query, k=8)
    assert len(hits) == 8 and query not in [t for t, _ in hits]
    assert all(labels[t] == labels[query] for t, _ in hits)
    sims = [v for _, v in hits]
    assert sims == sorted(sims, reverse=True) and sims[0] <= 1.0 + 1e-5
    index_path(run_ws, rep.clustering_id).unlink()
    assert similar_tubes(run_ws, rep.clustering_id, query, k=8) == hits


def test_bad_cluster_requests_give_clear_errors(run_ws):
    with pytest.raises(NotFoundError, match="conceptgen runs"):
        cluster_run(run_ws, 999)
    with pytest.raises(ConfigError, match="choose 1..60"):
        cluster_run(run_ws, run_ws.test_run, k=61)
    with pytest.raises(ConfigError, match="blocks.3"):
        cluster_run(run_ws, run_ws.test_run, layer="head")


def test_cluster_cli_prints_a_table(run_ws, capsys):
    code = main(["--quiet", "--workspace", str(run_ws.root), "cluster", "--run", str(run_ws.test_run),
                 "--k", "3", "--min-videos", "20"])
    out = capsys.readouterr().out
    assert code == 0 and "k=3, 0 supported" in out and out.count(" no") == 3
    assert main(["--quiet", "--workspace", str(run_ws.root), "cluster", "--run", "1", "--k", "x"]) == 2
    assert "--k must be" in capsys.readouterr().err


# --- scores relative to the run's spread, and the layer check ----------------------
def test_cohesion_is_measured_against_random_pairs_of_the_run():
    from conceptgen.cluster import mean_pair_distance

    x, truth = blobs(n_per=20, k=3, seed=2)
    u = l2_normalise(x)
    tight = summarise_clusters(u, truth, np.zeros(len(u)), min_size=1, min_videos=1)
    assert all(st.cohesion > 0.8 for st in tight)
    everything = summarise_clusters(u, np.zeros(len(u), dtype=np.int64), np.zeros(len(u)), min_size=1, min_videos=1)[0]
    assert everything.cohesion < 0.02  # a cluster of every tube is no tighter than random pairs
    assert np.median(everything.distances) > 0.3  # distances in units of the run's spread
    same = l2_normalise(np.ones((30, 8), np.float32))
    collapsed = summarise_clusters(same, np.zeros(30, dtype=np.int64), np.zeros(30), min_size=1, min_videos=1)[0]
    assert collapsed.cohesion == 0.0  # no spread to measure against: not "1.00"
    # the exact mean pair distance equals the brute-force one
    pairs = [1 - float(u[i] @ u[j]) for i in range(len(u)) for j in range(len(u)) if i != j]
    assert mean_pair_distance(u) == pytest.approx(np.mean(pairs), abs=1e-6)


def test_the_layer_check_tells_structure_from_collapse_and_noise():
    from conceptgen.cluster import layer_separation

    x, _ = blobs(n_per=20, k=4, seed=3)
    good = layer_separation(l2_normalise(x), "good")
    assert good.separates and good.warning() is None
    collapsed = layer_separation(l2_normalise(np.ones((40, 16), np.float32) + 1e-4 * blobs(n_per=10, k=4, d=16)[0]),
                                 "head.pool")
    assert not collapsed.separates and "mean distance" in collapsed.reason
    assert collapsed.warning().startswith("layer head.pool does not separate") and "--layers" in collapsed.warning()
    noise = layer_separation(l2_normalise(np.random.default_rng(0).normal(size=(300, 256)).astype(np.float32)), "noise")
    assert not noise.separates and "nearest neighbours" in noise.reason


@pytest.fixture
def collapsed_first_layer_ws(run_ws):
    """run_ws with blocks.3 replaced by near-constant vectors: blocks.4 holds the blobs."""
    with run_ws.session() as s:
        for e in s.scalars(select(Embedding).where(Embedding.layer == "blocks.3")):
            e.vector = vector_to_blob(np.ones(e.dim, np.float32))
    return run_ws


def test_cluster_picks_the_stored_layer_that_separates_and_warns_about_the_other(collapsed_first_layer_ws, capsys):
    ws = collapsed_first_layer_ws
    rep = cluster_run(ws, ws.test_run, k="auto", seed=0)
    assert rep.layer == "blocks.4" and rep.separation.separates
    assert [c.layer for c in rep.layer_checks] == ["blocks.4", "blocks.3"]
    assert main(["--quiet", "--workspace", str(ws.root), "cluster", "--run", str(ws.test_run), "--layer", "blocks.3",
                 "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "warning: layer blocks.3 does not separate" in out
    with ws.session() as s:
        params = s.scalars(select(Clustering.params).order_by(Clustering.id.desc())).first()
        assert params["layer_check"]["separates"] is False
        assert {c.cohesion for c in s.scalars(select(Cluster).where(Cluster.clustering_id == rep.clustering_id + 1))} == {0.0}


def test_background_tubes_are_left_out_of_clustering_unless_asked(run_ws):
    with run_ws.session() as s:
        first_blob = [t for t in s.scalars(select(Tube).order_by(Tube.id))][:60]
        for tube, label in zip(first_blob, run_ws.test_truth):
            tube.background = bool(label == 0)
    rep = cluster_run(run_ws, run_ws.test_run, k="auto", seed=0)
    assert rep.n_tubes == 40 and rep.n_background == 20 and rep.k == 2
    assert cluster_run(run_ws, run_ws.test_run, k=3, seed=0, include_background=True).n_tubes == 60
    # the index rebuilt from the stored embeddings holds the same tubes as the clustering
    with run_ws.session() as s:
        path = run_ws.cache / s.get(Clustering, rep.clustering_id).index_path
    path.unlink()
    kept = [t for t in clustering_labels(run_ws, rep.clustering_id)]
    assert similar_tubes(run_ws, rep.clustering_id, kept[0], k=3)
    with run_ws.session() as s:
        for tube in s.scalars(select(Tube)):
            tube.background = True
    from conceptgen.errors import DataError
    with pytest.raises(DataError, match="--include-background"):
        cluster_run(run_ws, run_ws.test_run)
