"""Seed a workspace for the annotator's tests, browser tests and load benchmark.

:func:`seed_review_workspace` builds a small but real workspace through the engine's
library: H.264 source videos ingested with ``conceptgen.ingest``, tubes with H.264
preview clips (``conceptgen.videoio.write_video``), stored embeddings drawn around
one centre per intended cluster, and a clustering made by ``conceptgen.cluster.cluster_run``
(clusters, ranked members, outliers and the FAISS similarity index).
:func:`seed_bulk_workspace` inserts a large review workload in bulk, without
embeddings, for the load benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, insert, select

from conceptgen.orm import Cluster, Clustering, ClusterMember, Embedding, Run, RunVideo, Tube, User, Video
from conceptgen.progress import progress
from conceptgen.workspace import Workspace

LAYER = "blocks.1"
RUN_CONFIG = {"layers": [LAYER], "pooling": "mean", "render_mode": "crop", "segmenters": "motion",
              "model": "demo", "num_frames": 8}


@dataclass(frozen=True)
class SeedInfo:
    run_id: int
    clustering_id: int
    cluster_ids: list[int]  # largest first (label order)
    user: str
    password: str


def moving_square_clip(n_frames: int, size: tuple[int, int], colour: tuple[int, int, int], *, phase: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """A coloured square sliding right over a grey background: frames (T, H, W, 3)
    uint8 and the square's exact masks (T, H, W) bool."""
    h, w = size
    frames = np.full((n_frames, h, w, 3), 60, np.uint8)
    masks = np.zeros((n_frames, h, w), bool)
    side = max(4, min(h, w) // 3)
    for t in range(n_frames):
        x = (phase * 3 + t * max(1, (w - side) // max(1, n_frames))) % max(1, w - side)
        y = (h - side) // 2
        frames[t, y:y + side, x:x + side] = colour
        masks[t, y:y + side, x:x + side] = True
    return frames, masks


def create_user(ws: Workspace, name: str, password: str) -> None:
    from conceptgen.review.users import create_user as add

    with ws.session() as s:
        if s.scalar(select(User).where(User.name == name)) is None:
            add(s, name, password)


def seed_review_workspace(ws: Workspace, *, n_clusters: int = 4, tubes_per_cluster: int = 6, n_videos: int = 3,
                          dim: int = 8, seed: int = 0, user: str = "alice", password: str = "correct-horse"
                          ) -> SeedInfo:
    """A reviewable workspace: ``n_clusters`` well-separated groups of tubes clustered by the engine."""
    from conceptgen.cluster import cluster_run
    from conceptgen.embed import vector_to_blob
    from conceptgen.ingest import ingest
    from conceptgen.masks import encode_rle, mask_box
    from conceptgen.render import render_outlined_preview
    from conceptgen.videoio import write_video

    rng = np.random.default_rng(seed)
    ws.ensure_dirs()
    size, n_frames, length = (48, 64), 24, 8
    sources = []
    for v in range(n_videos):
        path = ws.root / "videos" / f"source{v}.mp4"
        frames, masks = moving_square_clip(n_frames, size, (40 + 60 * v, 200 - 50 * v, 90), phase=v)
        write_video(path, frames)
        sources.append((path, frames, masks))
    ingest(ws, [str(p) for p, _, _ in sources])
    centres = rng.normal(size=(n_clusters, dim)) * 4.0
    with ws.session() as s:
        videos = {Path(v.path).name: v for v in s.scalars(select(Video))}
        run = Run(config=RUN_CONFIG, config_hash="0" * 64, model_name="demo", model_fingerprint="f" * 64,
                  code_version="test", status="finished")
        s.add(run)
        s.flush()
        for c in range(n_clusters):
            for i in range(tubes_per_cluster):
                path, frames, masks = sources[(c + i) % n_videos]
                start = (2 * i) % (n_frames - length)
                span = list(range(start, start + length))
                preview = f"previews/run{run.id}/c{c}_t{i}.mp4"
                write_video(ws.media / preview, render_outlined_preview(frames, span, masks[span], max_side=64))
                tube = Tube(run_id=run.id, video_id=videos[path.name].id, track_index=c * tubes_per_cluster + i,
                            start_frame=start, end_frame=start + length, frame_indices=span, kind="motion",
                            mask_height=size[0], mask_width=size[1], masks_rle=[encode_rle(m) for m in masks[span]],
                            boxes=[mask_box(m) for m in masks[span]], area=float(masks[span].mean()), score=1.0,
                            preview_path=preview)
                s.add(tube)
                s.flush()
                vector = centres[c] + rng.normal(size=dim) * 0.3
                s.add(Embedding(tube_id=tube.id, layer=LAYER, pooling="mean", render_mode="crop", dim=dim,
                                dtype="float32", vector=vector_to_blob(vector, "float32")))
        for video in videos.values():
            s.add(RunVideo(run_id=run.id, video_id=video.id, status="done",
                           n_tubes=s.scalar(select(func.count(Tube.id)).where(Tube.run_id == run.id,
                                                                           Tube.video_id == video.id))))
        run_id = run.id
    report = cluster_run(ws, run_id, layer=LAYER, k=n_clusters, seed=seed, min_size=2, min_videos=1)
    create_user(ws, user, password)
    with ws.session() as s:
        ids = list(s.scalars(select(Cluster.id).where(Cluster.clustering_id == report.clustering_id)
                             .order_by(Cluster.label_index)))
    return SeedInfo(run_id, report.clustering_id, ids, user, password)


def seed_bulk_workspace(ws: Workspace, *, n_clusters: int = 1000, n_tubes: int = 100_000, n_videos: int = 1000,
                        n_preview_files: int = 8, seed: int = 0, chunk: int = 20_000,
                        cluster_sizes: list[int] | None = None) -> SeedInfo:
    """A large review workload inserted in bulk: one run, one clustering, ``n_clusters``
    clusters sharing ``n_tubes`` tubes round-robin (or ``cluster_sizes`` tubes each, in
    order: a skewed workspace like a real one); previews reuse a few real H.264 files."""
    from conceptgen.masks import encode_rle, mask_box
    from conceptgen.render import render_outlined_preview
    from conceptgen.videoio import write_video

    rng = np.random.default_rng(seed)
    ws.ensure_dirs()
    previews = []
    for p in range(n_preview_files):
        rel = f"previews/bulk/p{p}.mp4"
        frames, masks = moving_square_clip(8, (32, 32), (50 + 20 * p, 120, 200 - 15 * p), phase=p)
        write_video(ws.media / rel, render_outlined_preview(frames, range(8), masks))
        previews.append(rel)
    if cluster_sizes is not None:  # tube t's cluster, and its rank there (its position in tube order)
        n_clusters, n_tubes = len(cluster_sizes), int(sum(cluster_sizes))
        cluster_of = np.repeat(np.arange(n_clusters), cluster_sizes)
        rank_of = np.arange(n_tubes) - np.concatenate([[0], np.cumsum(cluster_sizes)[:-1]])[cluster_of]
    else:
        cluster_of, rank_of = np.arange(n_tubes) % n_clusters, np.arange(n_tubes) // n_clusters
    per_cluster = np.bincount(cluster_of, minlength=n_clusters)
    size = (32, 32)
    rles, boxes = [encode_rle(m) for m in masks[:4]], [mask_box(m) for m in masks[:4]]
    with ws.session() as s:
        s.execute(insert(Video), [{"path": f"/data/bulk/video{v}.mp4", "sha256": f"{v:064x}", "fps": 8.0,
                                   "frame_count": 8, "width": 32, "height": 32, "status": "ok"}
                                  for v in range(n_videos)])
        video_ids = list(s.scalars(select(Video.id).order_by(Video.id)))
        run = Run(config=RUN_CONFIG, config_hash="1" * 64, model_name="demo", model_fingerprint="f" * 64,
                  code_version="bench", status="finished")
        s.add(run)
        s.flush()
        clustering = Clustering(run_id=run.id, params={"k": n_clusters, "pooling": "mean", "render_mode": "crop"},
                                layer=LAYER, k=n_clusters, seed=seed)
        s.add(clustering)
        s.flush()
        s.execute(insert(Cluster), [{"clustering_id": clustering.id, "label_index": c, "size": int(per_cluster[c]),
                                     "cohesion": float(rng.uniform(0.2, 0.95)), "n_videos": int(min(per_cluster[c], n_videos)),
                                     "supported": bool(per_cluster[c] >= 5), "status": "candidate", "version": 1}
                                    for c in range(n_clusters)])
        cluster_ids = list(s.scalars(select(Cluster.id).where(Cluster.clustering_id == clustering.id)
                                     .order_by(Cluster.label_index)))
        first_tube = (s.scalar(select(Tube.id).order_by(Tube.id.desc()).limit(1)) or 0) + 1
        for lo in progress(range(0, n_tubes, chunk), desc="seed tubes", unit="chunk"):
            hi = min(n_tubes, lo + chunk)
            s.execute(insert(Tube), [{"id": first_tube + t, "run_id": run.id, "video_id": video_ids[t % n_videos],
                                      "track_index": t, "start_frame": 0, "end_frame": 4, "frame_indices": [0, 1, 2, 3],
                                      "kind": "motion", "mask_height": size[0], "mask_width": size[1],
                                      "masks_rle": rles, "boxes": boxes, "area": 1 / 9, "score": 1.0,
                                      "preview_path": previews[t % n_preview_files]} for t in range(lo, hi)])
            distances = rng.uniform(0.0, 1.0, size=hi - lo)
            s.execute(insert(ClusterMember), [{"cluster_id": cluster_ids[cluster_of[t]], "tube_id": first_tube + t,
                                               "distance": float(distances[t - lo]), "rank": int(rank_of[t]),
                                               "is_outlier": bool(distances[t - lo] > 0.97), "excluded": False,
                                               "representative": bool(rank_of[t] < 3)}
                                              for t in range(lo, hi)])
        run_id, clustering_id = run.id, clustering.id
    return SeedInfo(run_id, clustering_id, cluster_ids, "", "")
