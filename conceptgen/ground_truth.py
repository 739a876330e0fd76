"""Tubes and clusters measured against a synthetic set's ground truth (conceptgen.synth).

* :func:`tube_object_iou`: mean per-frame IoU of a tube and one ground-truth object.
* :func:`match_ground_truth`: each ground-truth object's best tube of a run (IoU >= 0.5
  counts as found), and which tubes are which object (role and motion).
* :func:`ground_truth_clusters`: the clusters the ground truth says carry each class's
  motion (the cluster holding most of that class's actor tubes, when they are the
  majority of its matched tubes), and one distractor cluster (the one holding most
  distractor tubes and no actor) to read the class clusters against.

Used by the headless demo's acceptance rule and the discovery and TCAV benchmarks.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

MATCH_IOU = 0.5        # a tube "is" an object when their mean per-frame IoU reaches this
MIN_PURITY = 0.5       # a cluster stands for a class when more than this share of its matched tubes are its actors


def tube_object_iou(tube_frames: list[int], tube_masks: list[np.ndarray], gt: np.ndarray) -> float:
    """Mean per-frame IoU between a tube and one object's masks gt (T, H, W) bool, over
    frames where either is non-empty."""
    by_frame = dict(zip(tube_frames, tube_masks))
    scores = []
    for t in range(gt.shape[0]):
        m = by_frame.get(t)
        g = gt[t]
        if m is None and not g.any():
            continue
        if m is None:
            scores.append(0.0)
            continue
        union = np.logical_or(m, g).sum()
        if union:
            scores.append(float(np.logical_and(m, g).sum() / union))
    return float(np.mean(scores)) if scores else 0.0


@dataclass(frozen=True)
class TubeTruth:
    """What a matched tube is: ``role`` actor | distractor, ``motion`` its class or distractor motion."""

    role: str
    motion: str


def match_objects(ws, run_id: int, dataset) -> tuple[list[dict], dict[int, TubeTruth]]:
    """Per ground-truth object: its best tube of ``run_id`` and IoU (rows); and every
    object's best tube with IoU >= ``MATCH_IOU`` -> :class:`TubeTruth`."""
    from conceptgen.masks import resize_mask
    from conceptgen.orm import Tube, Video
    from conceptgen.tubes import TubeRecord

    by_sha = {v.sha256: v for v in dataset.videos}
    rows, matched = [], {}
    with ws.session() as s:
        videos = {v.id: by_sha[v.sha256] for v in s.query(Video).all() if v.sha256 in by_sha}
        tubes_by_video: dict[int, list] = {}
        for tube in s.query(Tube).filter(Tube.run_id == run_id).order_by(Tube.id):
            tubes_by_video.setdefault(tube.video_id, []).append(tube)
        for video_id, sv in videos.items():
            gt_all = sv.load_masks()
            decoded = []
            for tube in map(TubeRecord.from_row, tubes_by_video.get(video_id, [])):
                h, w = gt_all.shape[2:]
                decoded.append((tube.id, tube.frame_indices, [resize_mask(m, h, w) for m in tube.masks()]))
            for obj in sv.objects:
                ious = [tube_object_iou(frames, masks, gt_all[obj.index]) for _, frames, masks in decoded]
                best = int(np.argmax(ious)) if ious else -1
                iou = ious[best] if ious else 0.0
                rows.append({"video": sv.id, "role": obj.role, "motion": obj.motion, "iou": iou})
                if iou >= MATCH_IOU:
                    matched[decoded[best][0]] = TubeTruth(obj.role, obj.motion)
    return rows, matched


def match_ground_truth(ws, run_id: int, dataset) -> tuple[list[dict], dict[int, str]]:
    """(rows, actor tube -> class): :func:`match_objects` restricted to the actors."""
    rows, matched = match_objects(ws, run_id, dataset)
    return rows, {tube: t.motion for tube, t in matched.items() if t.role == "actor"}


@dataclass(frozen=True)
class GroundTruthCluster:
    cluster_id: int
    label_index: int
    stands_for: str    # a class name, or "distractor"
    matched: int       # its tubes matched to that (class actors, or distractors)
    purity: float      # their share of the cluster's matched tubes


def ground_truth_clusters(ws, clustering_id: int, dataset, *, candidates_only: bool = False
                          ) -> list[GroundTruthCluster]:
    """Per class, the cluster with most of its actor tubes (purity > ``MIN_PURITY``), then
    the distractor cluster: most distractor tubes, no actor tube, not already picked.
    ``candidates_only``: only clusters still ``candidate`` (or accepted) are eligible."""
    from sqlalchemy import select

    from conceptgen.orm import Cluster, ClusterMember, Clustering

    with ws.session() as s:
        run_id = s.get(Clustering, clustering_id).run_id
        clusters = {c.id: c for c in s.scalars(select(Cluster).where(Cluster.clustering_id == clustering_id))}
        members = s.execute(select(ClusterMember.cluster_id, ClusterMember.tube_id)
                            .where(ClusterMember.cluster_id.in_(list(clusters)))).all()
        eligible = {cid for cid, c in clusters.items()
                    if not candidates_only or c.status in ("candidate", "accepted")}
        labels = {cid: c.label_index for cid, c in clusters.items()}
    _rows, matched = match_objects(ws, run_id, dataset)
    counts: dict[int, Counter] = {}
    for cluster_id, tube_id in members:
        truth = matched.get(tube_id)
        if truth is not None:
            key = truth.motion if truth.role == "actor" else "distractor"
            counts.setdefault(cluster_id, Counter())[key] += 1
    out: list[GroundTruthCluster] = []
    for name in [*dataset.class_names, "distractor"]:
        pool = [cid for cid in sorted(counts) if cid in eligible and cid not in {g.cluster_id for g in out}
                and counts[cid][name]
                and (name != "distractor" or not any(counts[cid][c] for c in dataset.class_names))]
        if not pool:
            continue
        best = max(pool, key=lambda cid: (counts[cid][name], -labels[cid]))
        share = counts[best][name] / sum(counts[best].values())
        if name == "distractor" or share > MIN_PURITY:
            out.append(GroundTruthCluster(best, labels[best], name, counts[best][name], round(share, 3)))
    return out
