"""CAV stability across seeds, per CAV classifier, on the demo model and on a small
``pytorchvideo.models.resnet.create_resnet`` network (random weights, 3 classes).

    python benchmarks/cav_stability.py --quick --checkpoint PATH/demo.pt

Concepts, class examples and the random pool are the ground-truth ones of
benchmarks/tcav_synthetic.py (a synthetic set the demo model did not train on). Each
(model, classifier) runs ``conceptgen tcav``'s scoring with K = 3 draws of the random
sets and reads calibration.json's figures: ``cav_stability`` (with K >= 2, the cosine
across the draws of each concept's CAV averaged over the draw's random sets; its worst
concept and layer in ``seed_cosine_min``) and ``single`` (the mean pairwise cosine of
the single CAVs, one per random set, with its range and worst concept and layer).
Target: the default classifier's ``cav_stability`` >= 0.8 on both models. Prints a
table; the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from conceptgen.progress import set_quiet  # noqa: E402
from targets import Target, add_flag, check, exit_status  # noqa: E402

TARGETS = (Target("demo_mean_diff", ">=", 0.8), Target("resnet_mean_diff", ">=", 0.8))


def small_resnet(class_names):
    """A 3-class create_resnet with random weights (seeded), 8 x 32 x 32 input."""
    import torch
    from pytorchvideo.models.resnet import create_resnet

    from conceptgen.registry import InputSpec, as_loaded

    torch.manual_seed(0)
    net = create_resnet(input_channel=3, model_depth=50, model_num_class=len(class_names), stem_dim_out=4,
                        head_pool_kernel_size=(8, 1, 1))
    spec = InputSpec(num_frames=8, side=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    return as_loaded(net, spec=spec, class_names=list(class_names))


def stability(loaded, inputs, layers, classifier: str, cache: Path, seed: int) -> dict:
    from tcav.experiment import TcavConfig, run_tcav

    config = TcavConfig(layers=layers, targets=tuple(loaded.class_names), random_sets=10, seed=seed,
                        classifier=classifier, seeds=3, random_set_size=20, relative=False)
    cal = run_tcav(loaded, inputs, config, cache_dir=cache).calibration
    rows = cal.cav_stability_by_concept
    worst = min(rows, key=lambda r: r["mean_cosine"])
    return {"cav_stability": round(cal.cav_stability, 3), "basis": cal.cav_stability_basis,
            "single": round(cal.cav_stability_single, 3),
            "worst_single": f"{worst['concept']} at {worst['layer']}: {worst['mean_cosine']:.2f}",
            "range_single": [round(min(r["mean_cosine"] for r in rows), 3),
                             round(max(r["mean_cosine"] for r in rows), 3)],
            "seed_cosine_min": round(float(np.min([r["seed_cosine"] for r in rows])), 3),
            "unstable_rows": sum(not r["stable"] for r in rows), "rows": len(rows)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="CAV stability across seeds per classifier")
    p.add_argument("--quick", action="store_true", help="fewer videos and clips per concept")
    p.add_argument("--checkpoint", default=None, help="the trained demo model (default: train one as tcav_synthetic)")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".work")
    p.add_argument("--seed", type=int, default=0)
    add_flag(p)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    set_quiet(True)
    from conceptgen.registry import load_model
    from conceptgen.synth import generate_synthetic_set
    from tcav.experiment import TcavInputs
    from tcav_synthetic import ground_truth_inputs

    work = args.work / "tcav"
    tcav_set = generate_synthetic_set(work / ("synth-tcav-quick" if args.quick else "synth-tcav-full"),
                                      n_videos=40 if args.quick else 80, seed=args.seed + 1)
    if args.checkpoint:
        demo = load_model(args.checkpoint)
    else:
        from conceptgen.demo_model import train_demo_model
        from conceptgen.workspace import Workspace

        train_set = generate_synthetic_set(work / "synth-train", n_videos=200, seed=args.seed)
        ws = Workspace.resolve(work / "workspace")
        train_demo_model(train_set.root, ws, seed=args.seed)
        demo = load_model("demo", workspace=ws)
    per_concept = 10 if args.quick else 20
    resnet = small_resnet(demo.class_names[:3])
    result, table = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name, loaded, layers in (("demo", demo, ("stage2",)), ("resnet", resnet, ("blocks.1", "blocks.2"))):
            inputs = ground_truth_inputs(tcav_set, loaded.spec, demo.class_names, max_per_concept=per_concept)
            inputs = TcavInputs(inputs.concepts, {c: inputs.class_examples[c] for c in loaded.class_names},
                                inputs.random_pool)
            for classifier in ("mean-diff", "sgd"):
                figures = stability(loaded, inputs, layers, classifier, Path(tmp) / name, args.seed)
                result[f"{name}_{classifier.replace('-', '_')}"] = figures["cav_stability"]
                result[f"{name}_{classifier.replace('-', '_')}_detail"] = figures
                table.append((name, classifier, figures))
    print(f"{'model':<8} {'classifier':<10} {'stability':>9} {'min':>6} {'single':>7} {'single range':>15} "
          f"{'unstable':>9}  worst single")
    for name, classifier, f in table:
        print(f"{name:<8} {classifier:<10} {f['cav_stability']:9.3f} {f['seed_cosine_min']:6.3f} {f['single']:7.3f} "
              f"{str(f['range_single']):>15} {f['unstable_rows']:>4}/{f['rows']:<4}  {f['worst_single']}")
    result.update(check(result, TARGETS, enforce=not args.no_targets))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(exit_status(main()))
