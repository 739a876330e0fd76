"""Memory over repeated extraction: the real clips extracted ``--rounds`` times in one
process, each round in a fresh workspace, with RSS printed after each round. A leak
grows every round; memory the allocator keeps for reuse (conceptgen/malloc_tuning.py)
grows once and then stays.

    python benchmarks/real_clip_memory.py [--rounds 4]

Needs ../shared/data/real-clips/ and the demo model that ``python benchmarks/discovery.py``
trains (benchmarks/.work/model/models/demo.pt). Last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from discovery import REAL_CLIPS, rss_mb  # noqa: E402

DEMO_CHECKPOINT = REPO / "benchmarks" / ".work" / "model" / "models" / "demo.pt"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="RSS over repeated extraction of the real clips")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--max-frames", type=int, default=16)
    p.add_argument("--max-side", type=int, default=256)
    args = p.parse_args(argv)

    from conceptgen.extract import ExtractConfig, extract
    from conceptgen.ingest import ingest
    from conceptgen.progress import set_quiet
    from conceptgen.workspace import Workspace

    clips = sorted(c for c in REAL_CLIPS.glob("*") if c.suffix.lower() in (".mp4", ".avi")) \
        if REAL_CLIPS.is_dir() else []
    if not clips:
        sys.exit(f"error: no real clips at {REAL_CLIPS}; this benchmark needs them")
    if not DEMO_CHECKPOINT.is_file():
        sys.exit(f"error: no demo model at {DEMO_CHECKPOINT}; run `python benchmarks/discovery.py --quick` first")
    set_quiet(True)
    config = ExtractConfig.from_options(model="demo", max_frames=args.max_frames, max_side=args.max_side)
    rss = []
    for round_index in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            ws = Workspace.resolve(Path(tmp) / "workspace")
            ws.ensure_dirs()
            shutil.copy2(DEMO_CHECKPOINT, ws.models / "demo.pt")
            ingest(ws, clips)
            report = extract(ws, config, batch_size=16)
            ws.close()
        rss.append(rss_mb())
        print(f"round {round_index + 1}: {len(clips)} clips, {report.n_tubes} tubes, {report.n_failed} failed, "
              f"RSS {rss[-1]:.1f} MB", flush=True)
    result = {"clips": len(clips), "rounds": args.rounds, "rss_mb": [round(r, 1) for r in rss],
              "growth_after_round_2_mb": round(rss[-1] - rss[1], 1) if len(rss) > 2 else None}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
