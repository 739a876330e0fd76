"""Scale-out benchmark: extraction on Ray workers against the in-process executor, and
the annotator on a PostgreSQL store.

    python benchmarks/distributed.py --quick        # 8 videos, x3d_xs, 2 Ray workers (a few minutes)
    python benchmarks/distributed.py                # 24 videos
    python benchmarks/distributed.py --device cuda --num-gpus-per-task 0.5   # on a GPU machine

What is measured (the synthetic set, ``--model`` with random weights: throughput does not
depend on the weights, but one random initialisation is saved and used by every run; segmenters motion,supervoxel; the store is a throwaway PostgreSQL
server when its binaries exist, else SQLite; every run is warmed up first on other videos
so model loading and Ray actor start-up are not timed):

* ``videos_per_min_inprocess``: the in-process executor given ONE worker's CPU share
  (torch and OpenCV limited to ``--cpus-per-worker`` threads);
* ``videos_per_min_ray``: ``--workers`` Ray workers of ``--cpus-per-worker`` CPUs each,
  on a local Ray started here (``--address`` joins an existing cluster instead);
* ``scaling_efficiency`` = (videos_per_min_ray / videos_per_min_inprocess) / workers:
  1.0 is perfect linear scaling of one worker's throughput (target >= 0.8);
* ``videos_per_min_inprocess_all_threads``: the ordinary in-process run (all cores), for
  comparison; ``speedup_vs_inprocess_all_threads`` = ray / that;
* ``duplicates``: tube rows beyond one per (run, video, track) plus claims left behind in
  the Ray run, and ``lost_videos``: videos without a 'done' row (targets: 0 and 0);
* ``identical_to_inprocess``: the Ray run's tubes and embeddings equal the in-process run's;
* ``postgres_annotator_p95_ms``: p95 latency (ms) of the annotator's decision API under 20
  concurrent reviewers, from ``benchmarks/annotator_load.py`` (``--quick`` when this runs
  with ``--quick``) on a PostgreSQL store, with its lost updates (target 0).

The figures depend on the machine and its load: the 1-minute load average is printed.
Exits 1 when a target is missed, unless ``--no-targets``. The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from sqlalchemy import func, select  # noqa: E402

from conceptgen.extract import ExtractConfig, extract  # noqa: E402
from conceptgen.ingest import ingest  # noqa: E402
from conceptgen.orm import RunVideo, Tube, Video  # noqa: E402
from conceptgen.progress import set_quiet  # noqa: E402
from conceptgen.workspace import Workspace  # noqa: E402
from targets import Target, add_flag, check, exit_status  # noqa: E402

SEGMENTERS = "motion,supervoxel"  # the README's figures were measured with these

# Duplicates, lost videos, lost updates and 5xx are targets of 0; the annotator's figures are
# absent (not checked) when it did not run (no PostgreSQL server, --skip-annotator).
TARGETS = (Target("scaling_efficiency", ">=", 0.8), Target("duplicates", "==", 0), Target("lost_videos", "==", 0),
           Target("postgres_annotator_lost_updates", "==", 0), Target("postgres_annotator_errors_5xx", "==", 0))


def limit_threads(n: int | None) -> None:
    """torch and OpenCV threads of this process (None: one per core, the default)."""
    import cv2
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    cv2.setNumThreads(n)


class Stores:
    """A fresh database per run: on a throwaway PostgreSQL server, or SQLite files."""

    def __init__(self, kind: str, work: Path):
        from conceptgen.pgtemp import ThrowawayPostgres, server_bindir

        self.work, self.server, self.n = work, None, 0
        if kind == "postgresql" or (kind == "auto" and server_bindir() is not None):
            self.server = ThrowawayPostgres.start()
        self.kind = "postgresql" if self.server else "sqlite"

    def workspace(self, name: str) -> Workspace:
        self.n += 1
        url = self.server.create_database(f"bench{self.n}") if self.server else None
        return Workspace.resolve(self.work / name, url)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def fixed_weights(model: str, work: Path, seed: int) -> str:
    """One random initialisation of ``model``, saved, so every run uses the same weights."""
    import torch

    from conceptgen.registry import load_model

    torch.manual_seed(seed)
    path = work / f"{model}-random.pt"
    torch.save(load_model(model).model.state_dict(), path)
    return str(path)


def timed_run(ws: Workspace, videos: Path, model: str, weights: str, warmup: int, executor=None,
              device: str = "cpu"):
    """Warm up on ``warmup`` videos (another seed: another run), then time a run over all.
    Returns (seconds, run id)."""
    ingest(ws, [videos])
    with ws.session() as s:
        ids = list(s.scalars(select(Video.id).order_by(Video.id)))
    extract(ws, ExtractConfig.from_options(model=model, weights=weights, seed=1, segmenter=SEGMENTERS), only_video_ids=ids[:warmup],
            executor=executor, device=device)
    t = time.perf_counter()
    report = extract(ws, ExtractConfig.from_options(model=model, weights=weights, seed=0, segmenter=SEGMENTERS), executor=executor,
                     device=device)
    return time.perf_counter() - t, report.run_id


def signature(ws: Workspace, run_id: int) -> dict:
    with ws.session() as s:
        rows = s.execute(select(Video.sha256, Tube).join(Tube, Tube.video_id == Video.id)
                         .where(Tube.run_id == run_id).order_by(Video.sha256, Tube.track_index)).all()
        return {(sha, t.track_index): (t.frame_indices, [r["counts"] for r in t.masks_rle],
                                       sorted((e.layer, e.vector) for e in t.embeddings)) for sha, t in rows}


def written_twice_and_lost(ws: Workspace, run_id: int, n_videos: int) -> tuple[int, int]:
    with ws.session() as s:
        rows = s.scalar(select(func.count()).select_from(Tube).where(Tube.run_id == run_id))
        keys = s.execute(select(Tube.video_id, Tube.track_index).where(Tube.run_id == run_id).distinct()).all()
        left_claims = s.scalar(select(func.count()).where(RunVideo.run_id == run_id, RunVideo.status != "done"))
        done = s.scalar(select(func.count()).where(RunVideo.run_id == run_id, RunVideo.status == "done"))
    return rows - len(keys) + left_claims, n_videos - done


def annotator_on_postgres(stores: Stores, quick: bool) -> dict | None:
    if stores.server is None:
        return None
    stores.n += 1
    url = stores.server.create_database(f"bench{stores.n}")
    cmd = [sys.executable, str(REPO / "benchmarks" / "annotator_load.py"), "--db-url", url,
           "--workspace", str(stores.work / "annotator")] + (["--quick"] if quick else [])
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CONCEPTGEN_QUIET": "1"})
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise SystemExit(f"annotator_load.py failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 videos and the annotator's --quick load")
    ap.add_argument("--videos", type=int, default=None, help="synthetic videos (default 24, --quick 8)")
    ap.add_argument("--frames", type=int, default=16, help="frames per video (default 16)")
    ap.add_argument("--size", type=int, default=112, help="video side in pixels (default 112)")
    ap.add_argument("--model", default="x3d_xs", help="registry architecture, random weights (default x3d_xs)")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--num-gpus-per-task", type=float, default=0.0, help="GPUs per Ray worker (GPU machines)")
    ap.add_argument("--device", default="cpu", help="device of the in-process runs (cuda on GPU machines)")
    ap.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local one")
    ap.add_argument("--db", default="auto", choices=("auto", "postgresql", "sqlite"))
    ap.add_argument("--skip-annotator", action="store_true", help="do not run the PostgreSQL annotator load")
    ap.add_argument("--seed", type=int, default=0)
    add_flag(ap)
    args = ap.parse_args(argv)
    n_videos = args.videos or (8 if args.quick else 24)
    set_quiet(True)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray stays on loopback

    from conceptgen.executors import RayExecutor
    from conceptgen.synth import generate_synthetic_set

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    work = Path(tempfile.mkdtemp(prefix="distributed-bench-"))
    stores = Stores(args.db, work)
    try:
        generate_synthetic_set(work / "synth", n_videos=n_videos, seed=args.seed, num_frames=args.frames,
                               size=args.size)
        videos = work / "synth" / "videos"
        warmup = max(1, args.workers)
        weights = fixed_weights(args.model, work, args.seed)

        limit_threads(args.cpus_per_worker)  # one worker's CPU share, in this process
        ws_one = stores.workspace("inprocess")
        s_one, run_one = timed_run(ws_one, videos, args.model, weights, 1, device=args.device)
        limit_threads(None)
        ws_all = stores.workspace("inprocess-all")
        s_all, _ = timed_run(ws_all, videos, args.model, weights, 1, device=args.device)
        print(f"in-process: {s_one:.1f} s with {args.cpus_per_worker} thread(s), {s_all:.1f} s with all", flush=True)

        # Without --address the executor starts a private Ray with workers x cpus-per-worker CPUs
        # (never the latest cluster named in Ray's temporary folder) and stops it on close.
        with RayExecutor(args.address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                         num_gpus_per_worker=args.num_gpus_per_task) as executor:
            ws_ray = stores.workspace("ray")
            s_ray, run_ray = timed_run(ws_ray, videos, args.model, weights, warmup, executor=executor)
            workers = executor.workers
        print(f"ray: {s_ray:.1f} s with {workers} worker(s)", flush=True)
        duplicates, lost = written_twice_and_lost(ws_ray, run_ray, n_videos)
        identical = signature(ws_ray, run_ray) == signature(ws_one, run_one)
        for ws in (ws_one, ws_all, ws_ray):
            ws.close()
        annotator = None if args.skip_annotator else annotator_on_postgres(stores, args.quick)
    finally:
        stores.close()
        shutil.rmtree(work, ignore_errors=True)

    vpm = lambda seconds: round(60.0 * n_videos / seconds, 2)  # noqa: E731
    efficiency = (s_one / s_ray) / workers
    result = {
        "videos": n_videos, "frames": args.frames, "size": args.size, "model": args.model, "store": stores.kind,
        "workers": workers, "cpus_per_worker": args.cpus_per_worker, "gpus_per_worker": args.num_gpus_per_task,
        "videos_per_min_inprocess": vpm(s_one), "videos_per_min_ray": vpm(s_ray),
        "scaling_efficiency": round(efficiency, 3),
        "videos_per_min_inprocess_all_threads": vpm(s_all), "speedup_vs_inprocess_all_threads": round(s_all / s_ray, 3),
        "duplicates": duplicates, "lost_videos": lost, "identical_to_inprocess": identical,
        "postgres_annotator_p95_ms": annotator["api_p95_ms"] if annotator else None,
        "postgres_annotator_lost_updates": annotator["lost_updates"] if annotator else None,
        "postgres_annotator_errors_5xx": annotator["errors_5xx"] if annotator else None,
        "cpu_count": os.cpu_count(), "load_average_before": round(load_before, 2),
    }
    result.update(check(result, TARGETS, enforce=not args.no_targets))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(exit_status(main()))
