"""Where the TCAV benchmark's static-variant false discoveries come from.

    python benchmarks/tcav_pool_kinds.py --checkpoint demo.pt     # the quick TCAV set

The pseudo-concept test ranks a concept's class-logit change: the mean over class videos of
the class-logit gradient at a layer, dotted with the concept's mean activation minus a random
set's (tcav.scoring.logit_changes). That is linear in the clips, so each clip has its own
projection: mean class gradient . activation. This prints, per class, the mean projection of
each kind of frozen clip (the static random pool's two kinds, drifting-distractor crops and
plain backgrounds, and each ground-truth concept's static variant, the clips
``benchmarks/tcav_synthetic.py`` scores) in pool standard deviations from the static pool's
mean, with each kind's spread in brackets. A concept whose clips all come from one kind of a
mixed pool stands out of the pseudo-concepts through its kind. No target: a diagnostic.
Prints a table; the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from tcav_synthetic import ground_truth_inputs  # noqa: E402

POOL_KINDS = ("drifting distractor", "plain background")  # tcav_synthetic's pool origins


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="per-kind projections of frozen clips on the class gradients")
    p.add_argument("--checkpoint", required=True, help="a trained demo checkpoint")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".work",
                   help="folder of the synthetic sets (shared with tcav_synthetic.py)")
    p.add_argument("--seed", type=int, default=0, help="tcav_synthetic.py's --seed (its TCAV set is seed + 1)")
    p.add_argument("--layer", default="stage2")
    args = p.parse_args(argv)
    import torch

    from conceptgen.progress import set_quiet
    from conceptgen.registry import load_model
    from conceptgen.synth import generate_synthetic_set
    from tcav.activations import ActivationStore
    from tcav.experiment import variant_pools

    torch.set_num_threads(2)
    set_quiet(True)
    loaded = load_model(args.checkpoint)
    tcav_set = generate_synthetic_set(args.work / "tcav" / "synth-tcav-quick", n_videos=40, seed=args.seed + 1)
    inputs = ground_truth_inputs(tcav_set, loaded.spec, list(loaded.class_names), max_per_concept=10)
    pool = variant_pools(sorted(inputs.random_pool, key=lambda e: e.key), ("static",))["static"]
    kinds = {f"pool: {k}": [e for e in pool if e.origin.endswith(k)] for k in POOL_KINDS}
    kinds.update({c.label: c.examples for c in inputs.concepts if c.variant == "static"})
    result = {"layer": args.layer, "counts": {k: len(v) for k, v in kinds.items()}, "offsets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore(tmp, loaded, [args.layer])
        pool_acts = store.activations(pool, args.layer)
        acts = {k: store.activations(v, args.layer) for k, v in kinds.items()}
        for target in loaded.class_names:
            examples = inputs.class_examples[target]
            g = store.gradients(examples, args.layer, loaded.class_index(target)).reshape(len(examples), -1).mean(0)
            own = pool_acts @ g
            mu, sd = float(own.mean()), float(own.std())
            result["offsets"][target] = {k: [round((float((a @ g).mean()) - mu) / sd, 2),
                                             round(float((a @ g).std()) / sd, 2)] for k, a in acts.items()}
    print(f"mean projection on the class gradient at {args.layer}, in static-pool s.d. from its mean (spread)")
    for kind, n in result["counts"].items():
        print(f"{kind:<32} n={n:<3} " + " ".join(f"{t} {m:+.2f} ({s:.2f})" for t, per in result["offsets"].items()
                                                  for m, s in [per[kind]]))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
