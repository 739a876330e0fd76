"""CPU time of each kind of review decision, in-process, on the real-clip workload
(``annotator_load.py --real-clips``: 30 clusters of skewed sizes, the largest 464 tubes).

    python benchmarks/decision_cost.py [--repeats 10]

Each decision runs through ``conceptgen.review.decisions.run`` in its own session and is
committed, as the annotator's API does; what is timed is this process's CPU time
(``time.process_time``), so the figure does not move with other work on the machine —
unlike the latency under 20 clients (``annotator_load.py``), which queues behind other
decisions and shares the cores. Also timed: the part spent inside the writers' turn
(``*_in_turn_cpu_ms``; the reads and checks before it run beside other requests), which is
what every other decision waits for. ``merge`` and ``undo`` touch every member of the
largest cluster. The last line is JSON (median and max milliseconds per kind).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
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


def member_of(ws: Workspace):
    def member(cluster_id: int) -> int:
        with ws.session() as s:
            return s.scalar(select(ClusterMember.id).where(ClusterMember.cluster_id == cluster_id,
                                                           ClusterMember.excluded.is_(False)).limit(1))
    return member


def timed_run(ws: Workspace, fn, user: int, *args, **kwargs) -> tuple[float, float]:
    """(CPU ms of the whole decision, CPU ms of it inside the writers' turn)."""
    entered = []

    @contextmanager
    def turn():
        entered.append(time.process_time())
        yield

    session = ws.sessions()
    try:
        t = time.process_time()
        decisions.run(fn, session, user, *args, turn=turn, **kwargs)
        end = time.process_time()
    finally:
        session.close()
    return (end - t) * 1000, (end - entered[0]) * 1000


def report(result: dict, kind: str, times: list[tuple[float, float]]) -> None:
    total, in_turn = [t for t, _ in times], [u for _, u in times]
    result[f"{kind}_cpu_ms"] = round(statistics.median(total), 1)
    result[f"{kind}_cpu_max_ms"] = round(max(total), 1)
    result[f"{kind}_in_turn_cpu_ms"] = round(statistics.median(in_turn), 1)
    print(f"{kind:20s} median {statistics.median(total):7.1f} ms CPU  max {max(total):7.1f} ms  "
          f"in the writers' turn: median {statistics.median(in_turn):7.1f} ms", flush=True)


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

        member = member_of(ws)
        kinds = {  # i = 0 .. n-1; merges take a fresh small cluster into the largest each time
            "rename": lambda i: (decisions.rename, ids[1 + i], None, {"name": f"name {i}"}),
            "accept": lambda i: (decisions.accept, ids[1 + i], None, {"name": f"concept {i}", "description": "d"}),
            "reject": lambda i: (decisions.reject, ids[1 + i], None, {}),
            "remove_member": lambda i: (decisions.set_member_excluded, member(big), None, {}),
            "representative": lambda i: (decisions.set_representative, member(big), None,
                                         {"representative": i % 2 == 0}),
            "accept_largest": lambda i: (decisions.accept, big, None, {"name": f"largest {i}", "description": "d"}),
            "merge_into_largest": lambda i: (decisions.merge, {big: None, ids[2 + n + i]: None}, {}),
        }
        result = {"clusters": len(ids), "tubes": sum(REAL_CLIP_SIZES), "largest": REAL_CLIP_SIZES[0], "repeats": n}
        for kind, decision in kinds.items():
            times = []
            for i in range(n):
                fn, *args, kwargs = decision(i)
                times.append(timed_run(ws, fn, user, *args, **kwargs))
                if kind == "merge_into_largest":  # undo it at once so the next merge starts from 464 again
                    with ws.session() as s:
                        decisions.undo_last(s, user)
            report(result, kind, times)
        # undo of a merge, timed on its own: merge (untimed), then undo (timed)
        times = []
        for i in range(n):
            with ws.session() as s:
                decisions.merge(s, user, {big: None, ids[2 + n + i]: None})
            times.append(timed_run(ws, decisions.undo_last, user))
        report(result, "undo_merge", times)
        ws.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
