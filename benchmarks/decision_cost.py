"""CPU time of each kind of review decision, in-process, on the real-clip workload
(``annotator_load.py --real-clips``: 30 clusters of skewed sizes, the largest 464 tubes).

    python benchmarks/decision_cost.py [--repeats 10]

Each decision runs through ``conceptgen.review.decisions`` in its own session and is
committed, as the annotator's API does; what is timed is this process's CPU time
(``time.process_time``), so the figure does not move with other work on the machine —
unlike the latency under 20 clients (``annotator_load.py``), which queues behind other
decisions and shares the cores. ``merge`` and ``undo`` touch every member of the largest
cluster. The last line is JSON (median and max milliseconds per kind).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from annotator.testing import create_user, seed_bulk_workspace  # noqa: E402
from annotator_load import REAL_CLIP_SIZES  # noqa: E402
from conceptgen.orm import ClusterMember, User  # noqa: E402
from conceptgen.review import decisions  # noqa: E402
from conceptgen.workspace import Workspace  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="decisions of each kind (default 10)")
    args = ap.parse_args(argv)
    n = args.repeats
    with tempfile.TemporaryDirectory(prefix="decision-cost-") as tmp:
        ws = Workspace.resolve(Path(tmp) / "ws")
        info = seed_bulk_workspace(ws, n_videos=7, cluster_sizes=REAL_CLIP_SIZES)
        create_user(ws, "bench", "benchmark-password")
        import conceptgen.cluster  # noqa: F401  (imported by the server before serving; not a decision's cost)
        import conceptgen.embed  # noqa: F401

        with ws.session() as s:
            user = s.scalar(select(User.id))
        big, ids = info.cluster_ids[0], info.cluster_ids
        if len(ids) < 2 + 2 * n:
            raise SystemExit(f"--repeats {n} needs {2 + 2 * n} clusters; use at most {(len(ids) - 2) // 2}")

        def member(s, cluster_id):
            return s.scalar(select(ClusterMember.id).where(ClusterMember.cluster_id == cluster_id,
                                                           ClusterMember.excluded.is_(False)).limit(1))

        kinds = {  # i = 0 .. n-1; merges take a fresh small cluster into the largest each time
            "rename": lambda s, i: decisions.rename(s, user, ids[1 + i], None, name=f"name {i}"),
            "accept": lambda s, i: decisions.accept(s, user, ids[1 + i], None, name=f"concept {i}", description="d"),
            "reject": lambda s, i: decisions.reject(s, user, ids[1 + i], None),
            "remove_member": lambda s, i: decisions.set_member_excluded(s, user, member(s, big), None),
            "representative": lambda s, i: decisions.set_representative(s, user, member(s, big), None,
                                                                         representative=i % 2 == 0),
            "accept_largest": lambda s, i: decisions.accept(s, user, big, None, name=f"largest {i}", description="d"),
            "merge_into_largest": lambda s, i: decisions.merge(s, user, {big: None, ids[2 + n + i]: None}),
        }
        result = {"clusters": len(ids), "tubes": sum(REAL_CLIP_SIZES), "largest": REAL_CLIP_SIZES[0], "repeats": n}
        for kind, decide in kinds.items():
            times = []
            for i in range(n):
                session = ws.sessions()
                t = time.process_time()
                decide(session, i)
                session.commit()
                times.append((time.process_time() - t) * 1000)
                session.close()
                if kind == "merge_into_largest":  # undo it at once so the next merge starts from 464 again
                    with ws.session() as s:
                        decisions.undo_last(s, user)
            result[f"{kind}_cpu_ms"] = round(statistics.median(times), 1)
            result[f"{kind}_cpu_max_ms"] = round(max(times), 1)
            print(f"{kind:20s} median {statistics.median(times):7.1f} ms CPU  max {max(times):7.1f} ms", flush=True)
        # undo of a merge, timed on its own: merge (untimed), then undo (timed)
        times = []
        for i in range(n):
            with ws.session() as s:
                decisions.merge(s, user, {big: None, ids[2 + n + i]: None})
            session = ws.sessions()
            t = time.process_time()
            decisions.undo_last(session, user)
            session.commit()
            times.append((time.process_time() - t) * 1000)
            session.close()
        result["undo_merge_cpu_ms"] = round(statistics.median(times), 1)
        result["undo_merge_cpu_max_ms"] = round(max(times), 1)
        print(f"{'undo_merge':20s} median {statistics.median(times):7.1f} ms CPU  max {max(times):7.1f} ms", flush=True)
        ws.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
