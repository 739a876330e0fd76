"""End to end through the CLI: ingest -> extract -> cluster -> runs on a small synthetic
set, with the ground-truth figures above loose floors (the benchmark holds the targets)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from conceptgen.cli import main
from conceptgen.cluster import clustering_labels, similar_tubes
from conceptgen.orm import Cluster, Clustering, Run
from conceptgen.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from discovery import match_ground_truth, purity  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def e2e_set(tmp_path_factory):
    """Twelve 16-frame 64x64 synthetic videos, three per motion class."""
    from conceptgen.synth import generate_synthetic_set

    return generate_synthetic_set(tmp_path_factory.mktemp("e2e-synth"), n_videos=12, seed=5,
                                  num_frames=16, size=64)


def test_ingest_extract_cluster_meet_loose_floors(tmp_path, demo_workspace, e2e_set, capsys):
    ws = Workspace.resolve(tmp_path / "ws")
    ws.ensure_dirs()
    shutil.copy2(Path(demo_workspace.models) / "demo.pt", ws.models / "demo.pt")
    cli = ["--quiet", "--workspace", str(ws.root)]

    assert main([*cli, "ingest", str(e2e_set.root / "videos")]) == 0
    assert "added 12, duplicates 0, failed 0" in capsys.readouterr().out
    assert main([*cli, "extract", "--seed", "0", "--batch-size", "8"]) == 0
    assert "12 videos done, 0 failed" in capsys.readouterr().out
    with ws.session() as s:
        run_id = s.scalars(select(Run.id)).one()
    assert main([*cli, "cluster", "--run", str(run_id), "--k", "auto", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}" in out and "supported" in out
    assert main([*cli, "runs"]) == 0
    assert "finished" in capsys.readouterr().out

    rows, actor_tubes = match_ground_truth(ws, run_id, e2e_set)
    actors = [r for r in rows if r["role"] == "actor"]
    mean_iou = np.mean([r["iou"] for r in rows])
    recall = np.mean([r["iou"] >= 0.5 for r in actors])
    with ws.session() as s:
        clustering = s.scalars(select(Clustering)).one()
        n_supported = len(s.scalars(select(Cluster).where(Cluster.supported)).all())
    labels = clustering_labels(ws, clustering.id)
    ids = sorted(actor_tubes)
    pur = purity(np.array([labels[i] for i in ids]), np.array([actor_tubes[i] for i in ids]))
    print(f"mean_iou={mean_iou:.3f} recall={recall:.3f} purity={pur:.3f} k={clustering.k} "
          f"supported={n_supported}")
    assert mean_iou >= 0.5 and recall >= 0.6 and pur >= 0.4
    assert 2 <= clustering.k <= 30 and n_supported >= 1

    hits = similar_tubes(ws, clustering.id, ids[0], k=5)
    assert len(hits) == 5 and all(-1.0 <= v <= 1.0 + 1e-5 for _, v in hits)
    ws.close()
