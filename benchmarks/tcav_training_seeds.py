"""The TCAV benchmark's verdicts over several trainings of the demo model.

    python benchmarks/tcav_training_seeds.py                 # training seeds 0-4, ~1 min each on 2 cores
    python benchmarks/tcav_training_seeds.py --train-seeds 3

``benchmarks/tcav_synthetic.py --quick`` scores one demo model, trained with one seed. Its
false-discovery count is a property of that model: trained again on the same videos with
another seed, the same recipe gives another count (and which static close-ups come out
significant, for which class and with which sign, changes with it). A training recipe is
judged here over K seeds: per seed, the quick run's planted concepts found, its false
discoveries (which cells) and its misses, then how many seeds meet the quick run's two
ground-truth targets (planted 4/4, 0 false discoveries). Without Captum and the engine's
discovered concepts (the figures compared here do not need them). No target: a diagnostic.
Prints a table; the last line is JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import tcav_synthetic  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="the quick TCAV benchmark over several trainings of the demo model")
    p.add_argument("--train-seeds", type=int, default=5, help="train with seeds 0 .. K-1")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".work",
                   help="as tcav_synthetic.py (the data, and one model per training seed, are reused)")
    p.add_argument("--seed", type=int, default=0, help="tcav_synthetic.py's --seed: its data and random-set draws")
    p.add_argument("--counterfactual-weight", type=float, default=None,
                   help="the recipe, as tcav_synthetic.py's option (default: TrainConfig's)")
    p.add_argument("--empty-background-share", type=float, default=None,
                   help="the recipe, as tcav_synthetic.py's option (default: TrainConfig's)")
    args = p.parse_args(argv)
    recipe = tcav_synthetic.training_recipe(args.counterfactual_weight, args.empty_background_share)
    w, share = recipe.counterfactual_weight, recipe.empty_background_share
    print(f"recipe: counterfactual weight {w:g}, empty-background share {share:g}")
    rows = []
    for train_seed in range(args.train_seeds):
        log = args.work / "tcav" / f"training-seed{train_seed}-twins{w:g}-empty{share:g}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out, contextlib.redirect_stdout(out):
            r = tcav_synthetic.main(["--quick", "--no-captum", "--no-discovered", "--no-targets",
                                     "--work", str(args.work), "--seed", str(args.seed),
                                     "--train-seed", str(train_seed),
                                     "--counterfactual-weight", str(w), "--empty-background-share", str(share)])
        rows.append({"train_seed": train_seed, "demo_test_accuracy": r["demo_test_accuracy"],
                     "planted_found": r["planted_found"], "false_discoveries": r["false_discoveries"],
                     "false_discovery_cells": r["false_discovery_cells"], "planted_missed": r["planted_missed"],
                     "log": str(log)})
        print(f"training seed {train_seed}: held-out accuracy {r['demo_test_accuracy']}, planted found "
              f"{r['planted_found']}, {r['false_discoveries']} false discoveries", flush=True)
        for cell in r["false_discovery_cells"]:
            print(f"    false discovery: {cell}")
        for cell in r["planted_missed"]:
            print(f"    planted missed:  {cell}")
    met = [row["train_seed"] for row in rows
           if row["false_discoveries"] == 0 and row["planted_found"].split("/")[0] == row["planted_found"].split("/")[1]]
    result = {"train_seeds": args.train_seeds, "counterfactual_weight": w, "empty_background_share": share,
              "seeds_meeting_both_targets": met,
              "false_discoveries_by_seed": [row["false_discoveries"] for row in rows],
              "planted_found_by_seed": [row["planted_found"] for row in rows], "rows": rows}
    print(f"\nseeds with every planted concept found and no false discovery: {len(met)} of {args.train_seeds} {met}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
