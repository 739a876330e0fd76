"""Embedding throughput: the pipeline's embedding stage against the model's bare forward.

    python benchmarks/embedding.py [--tubes 96] [--batch-size 16]

Tubes are the ground-truth object tubes of a small synthetic set (so segmentation is
not timed). The pipeline stage = render each tube clip (render.render_tube_clip) +
LoadedModel.prepare + forward with hooks + pooling, batch by batch (embed.embed_clips).
The bare model = the same network's forward on the same, already prepared batches.
The demo network is used (trained weights when ``--workspace`` holds demo.pt, else
random weights: throughput does not depend on the weights), or ``--model ARCH``, a
registry architecture with random weights. CPU, 2 threads.
Overhead = pipeline seconds / bare seconds - 1 (target <= 0.30). Last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def ground_truth_tubes(n_tubes: int, seed: int, work: Path):
    """[(frames (T,H,W,3), tube frame indices, masks, boxes)] from synthetic ground truth."""
    from conceptgen.masks import mask_box
    from conceptgen.synth import generate_synthetic_set
    from conceptgen.videoio import read_frames

    dataset = generate_synthetic_set(work / "synth", n_videos=max(4, n_tubes // 3), seed=seed)
    tubes = []
    for video in dataset.videos:
        frames = read_frames(video.video_path)
        for gt in video.load_masks():
            idx = [t for t in range(len(gt)) if gt[t].any()]
            if len(idx) >= 2:
                tubes.append((frames, idx, [gt[t] for t in idx], [mask_box(gt[t]) for t in idx]))
            if len(tubes) == n_tubes:
                return tubes
    return tubes


def load_demo(workspace: Path | None, name: str = "demo"):
    import torch

    from conceptgen.demo_model import DEMO_SPEC, build_demo_network
    from conceptgen.registry import LoadedModel, load_model, model_fingerprint
    from conceptgen.workspace import Workspace

    if name != "demo":
        return load_model(name)  # a registry architecture with random weights
    if workspace is not None and (workspace / "models" / "demo.pt").is_file():
        return load_model("demo", workspace=Workspace.resolve(workspace))
    torch.manual_seed(0)
    model = build_demo_network().eval()
    return LoadedModel(name="demo-random", model=model, spec=DEMO_SPEC, class_names=["a", "b", "c", "d"],
                       fingerprint=model_fingerprint(model), device=torch.device("cpu"))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="embedding throughput vs bare forward")
    p.add_argument("--tubes", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mode", default=None, help="render mode (default: extract's default)")
    p.add_argument("--layers", default=None, help="layers (default: the model's default layer)")
    p.add_argument("--workspace", type=Path, default=None)
    p.add_argument("--model", default="demo", help="demo, or a registry architecture (random weights), e.g. x3d_xs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from conceptgen.embed import HookEmbedder, batched, embed_clips
    from conceptgen.extract import DEFAULT_RENDER_MODE, default_layers
    from conceptgen.progress import set_quiet
    from conceptgen.render import fill_from_mean, render_tube_clip

    set_quiet(True)
    torch.set_num_threads(2)
    loaded = load_demo(args.workspace, args.model)
    layers = tuple(args.layers.split(",")) if args.layers else default_layers(loaded)
    mode = args.mode or DEFAULT_RENDER_MODE
    spec = loaded.spec
    fill = fill_from_mean(spec.mean)
    with tempfile.TemporaryDirectory() as tmp:
        tubes = ground_truth_tubes(args.tubes, args.seed, Path(tmp))
    embedder = HookEmbedder(loaded, layers, pooling="mean")

    def render(t):
        frames, idx, masks, boxes = t
        return render_tube_clip(frames, idx, masks, boxes, mode=mode, num_frames=spec.num_frames,
                                side=spec.side, fill=fill)

    # The bare model's input: the same clips, rendered and prepared beforehand (not timed).
    prepared = [loaded.prepare(np.stack([render(t) for t in batch])) for batch in batched(tubes, args.batch_size)]
    embed_clips(embedder, (render(t) for t in tubes[: args.batch_size]), batch_size=args.batch_size)  # warm-up

    pipeline_s, bare_s = [], []
    for _ in range(args.repeats):  # interleaved, best of N: both see the same machine load
        t0 = time.perf_counter()
        embed_clips(embedder, (render(t) for t in tubes), batch_size=args.batch_size)
        pipeline_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in prepared:
                loaded.model(x)
        bare_s.append(time.perf_counter() - t0)
    n = len(tubes)
    pipe, bare = min(pipeline_s), min(bare_s)
    print(f"model {loaded.name}, layers {','.join(layers)}, mode {mode}, {n} tubes, batch {args.batch_size}, "
          f"clip {spec.num_frames}x{spec.side}x{spec.side}")
    print(f"{'':<22} {'seconds':>8} {'tubes/s':>8}")
    print(f"{'pipeline (render+embed)':<22} {pipe:>8.3f} {n / pipe:>8.1f}")
    print(f"{'bare forward':<22} {bare:>8.3f} {n / bare:>8.1f}")
    result = {"tubes": n, "batch_size": args.batch_size, "mode": mode, "layers": list(layers),
              "pipeline_tubes_per_s": round(n / pipe, 2), "bare_tubes_per_s": round(n / bare, 2),
              "overhead": round(pipe / bare - 1, 4)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
