"""What the pseudo-concept null costs as M grows: ``run_tcav`` on the TCAV benchmark's quick
ground-truth inputs (demo model, stage2, every class, stated hypotheses, one draw of the
random sets), with M = 99 and with the automatic M (smallest corrected p at alpha/100).

    python benchmarks/pseudo_null_cost.py --checkpoint PATH/demo.pt

The activations are cached by the first run; each M is then timed twice (the second of
each printed). Figures: ``m``, the families' M; ``null_seconds``, the time in
``_pseudo_concept_null`` (cProfile); ``run_seconds``, the whole ``run_tcav``. Prints a
table; the last line is JSON.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="cost of the pseudo-concept null against M")
    p.add_argument("--checkpoint", required=True, help="a trained demo model (benchmarks/tcav_synthetic.py trains one)")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".work")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    from conceptgen.progress import set_quiet
    from conceptgen.registry import load_model
    from conceptgen.synth import generate_synthetic_set
    from tcav.experiment import TcavConfig, run_tcav
    from tcav_synthetic import ground_truth_inputs, stated_hypotheses

    set_quiet(True)
    loaded = load_model(args.checkpoint)
    dataset = generate_synthetic_set(args.work / "tcav" / "synth-tcav-quick", n_videos=40, seed=1)
    inputs = ground_truth_inputs(dataset, loaded.spec, loaded.class_names, max_per_concept=10)
    result = {}
    with tempfile.TemporaryDirectory() as cache:
        for null_sets in (99, 0, 99, 0):   # the first pass fills the activation cache
            config = TcavConfig(layers=("stage2",), targets=tuple(loaded.class_names), random_sets=10, seed=0,
                                seeds=1, null_sets=null_sets, random_set_size=20, relative=False,
                                hypotheses=stated_hypotheses(loaded.class_names))
            profile, started = cProfile.Profile(), time.perf_counter()
            profile.enable()
            report = run_tcav(loaded, inputs, config, cache_dir=cache)
            profile.disable()
            run_s = time.perf_counter() - started
            null_s = next(v[3] for k, v in pstats.Stats(profile).stats.items() if k[2] == "_pseudo_concept_null")
            result["auto" if null_sets == 0 else str(null_sets)] = {
                "m": sorted({f.null_sets for f in report.families}), "families": len(report.families),
                "null_seconds": round(null_s, 3), "run_seconds": round(run_s, 3)}
    print(f"{'M':<8} {'families':>8} {'null s':>8} {'run s':>8}")
    for name, row in result.items():
        print(f"{name:<8} {row['families']:>8} {row['null_seconds']:>8.3f} {row['run_seconds']:>8.3f}  M={row['m']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
