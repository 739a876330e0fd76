"""FastCAV speed: mean-difference CAVs against SGD (hinge) CAVs on the demo model's activations.

    python benchmarks/cav_speed.py --quick          # < 2 min on 2 CPU cores once the demo model exists
    python benchmarks/cav_speed.py                  # more clips, every conv stage, more seeds

Concept clips are one class's synthetic videos, the other side the other classes'
(a synthetic set the demo model did not train on), at the model's input spec. Per
layer, both classifiers fit the same activations with seeds 0..S-1 (each seed its
own stratified held-out split, as in ``conceptgen tcav``). Figures (last line, JSON):
  mean_diff_seconds, sgd_seconds   total fit time over the seeds and layers (median of repeats)
  speedup                          sgd_seconds / mean_diff_seconds
  cosine_across_seeds_mean_diff,   mean pairwise cosine of the S CAVs of one layer
  cosine_across_seeds_sgd          (averaged over layers): 1 = the seed does not matter
  accuracy_mean_diff, accuracy_sgd mean held-out accuracy
  stability_gain                   cosine_across_seeds_mean_diff - cosine_across_seeds_sgd
Targets (exit 1 when one is missed, unless --no-targets): speedup >= 3 (both fits share
the stacking and splitting of the activations, which dominates at wide layers: stage1 has
16,384 dimensions), cosine_across_seeds_mean_diff >= 0.85 and stability_gain >= 0
(mean-difference CAVs at least as stable across seeds as SGD's).
The demo model is --checkpoint, else benchmarks/.work/model/models/demo.pt (written by
benchmarks/discovery.py), else trained once into benchmarks/.work/cav_speed/model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from conceptgen.progress import set_quiet  # noqa: E402
from tcav.cav import mean_pairwise_cosine  # noqa: E402
from tcav.classifiers import MeanDifferenceClassifier, SgdHingeClassifier  # noqa: E402
from targets import Target, add_flag, check, exit_status  # noqa: E402

DISCOVERY_CHECKPOINT = REPO / "benchmarks" / ".work" / "model" / "models" / "demo.pt"
TARGETS = (Target("speedup", ">=", 3.0), Target("cosine_across_seeds_mean_diff", ">=", 0.85),
           Target("stability_gain", ">=", 0.0))


def demo_checkpoint(args) -> Path:
    """The demo model to read activations from (trained once if none exists)."""
    if args.checkpoint:
        return Path(args.checkpoint)
    if DISCOVERY_CHECKPOINT.is_file():
        return DISCOVERY_CHECKPOINT
    from conceptgen.demo_model import train_demo_model
    from conceptgen.synth import generate_synthetic_set
    from conceptgen.workspace import Workspace

    data = generate_synthetic_set(args.work / "train-synth", n_videos=200, seed=0)
    return train_demo_model(data.root, Workspace.resolve(args.work / "model"), seed=0).checkpoint


def activations(args, checkpoint: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layer -> (concept (Nc, D), other (No, D)) activations of the demo model."""
    from conceptgen.registry import load_model
    from conceptgen.synth import generate_synthetic_set
    from tcav.activations import ActivationStore
    from tcav.examples import file_example

    loaded = load_model(str(checkpoint))
    data = generate_synthetic_set(args.work / f"clips-n{args.videos}-seed{args.seed + 1}", n_videos=args.videos,
                                  seed=args.seed + 1)
    concept_class = data.class_names[0]
    concept = [file_example(v.video_path, loaded.spec) for v in data.videos if v.class_name == concept_class]
    other = [file_example(v.video_path, loaded.spec) for v in data.videos if v.class_name != concept_class]
    store = ActivationStore(args.work / "cache", loaded, args.layers, batch_size=16)
    store.ensure(concept + other)
    return {layer: (store.activations(concept, layer), store.activations(other, layer)) for layer in args.layers}


def time_fits(classifier, concept, other, seeds: int, repeats: int):
    """(median seconds to fit all seeds, (S, D) vectors, mean held-out accuracy)."""
    times, fits = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        fits = [classifier.fit(concept, other, seed=s) for s in range(seeds)]
        times.append(time.perf_counter() - start)
    return float(np.median(times)), np.stack([f.vector for f in fits]), float(np.mean([f.accuracy for f in fits]))


def measure(acts, seeds: int, repeats: int) -> dict:
    out = {"mean_diff_seconds": 0.0, "sgd_seconds": 0.0}
    cos = {"mean_diff": [], "sgd": []}
    acc = {"mean_diff": [], "sgd": []}
    for layer, (concept, other) in acts.items():
        for key, classifier in (("mean_diff", MeanDifferenceClassifier()), ("sgd", SgdHingeClassifier())):
            seconds, vectors, accuracy = time_fits(classifier, concept, other, seeds, repeats)
            out[f"{key}_seconds"] += seconds
            cos[key].append(mean_pairwise_cosine(vectors))
            acc[key].append(accuracy)
    out["speedup"] = out["sgd_seconds"] / max(out["mean_diff_seconds"], 1e-9)
    for key in cos:
        out[f"cosine_across_seeds_{key}"] = float(np.mean(cos[key]))
        out[f"accuracy_{key}"] = float(np.mean(acc[key]))
    out["stability_gain"] = out["cosine_across_seeds_mean_diff"] - out["cosine_across_seeds_sgd"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clips, one layer, fewer seeds")
    parser.add_argument("--checkpoint", default=None, help="demo model checkpoint (default: see the docstring)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".work" / "cav_speed",
                        help="folder for the clips, the activation cache and a trained demo model")
    add_flag(parser)
    args = parser.parse_args(argv)
    args.videos = 120 if args.quick else 240
    args.layers = ["stage2"] if args.quick else ["stage1", "stage2", "stage3"]
    seeds, repeats = (5, 3) if args.quick else (10, 5)
    set_quiet(True)
    import torch

    torch.manual_seed(args.seed)
    acts = activations(args, demo_checkpoint(args))
    figures = {"quick": args.quick, "layers": args.layers, "seeds": seeds,
               "n_concept": len(next(iter(acts.values()))[0]), "n_other": len(next(iter(acts.values()))[1]),
               "dims": {layer: int(c.shape[1]) for layer, (c, _) in acts.items()},
               **measure(acts, seeds, repeats)}
    figures["targets"] = {t.key: f"{t.op} {t.value}" for t in TARGETS}
    figures.update(check(figures, TARGETS, enforce=not args.no_targets))
    print(json.dumps(figures))
    return exit_status(figures)


if __name__ == "__main__":
    sys.exit(main())
