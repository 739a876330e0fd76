"""Embedding throughput: the pipeline's embedding stage against the model's bare forward.

    python benchmarks/embedding.py [--tubes 96] [--batch-size 16] [--device cuda [--amp]] [--quick]

Tubes are the ground-truth object tubes of a small synthetic set (so segmentation is
not timed). The pipeline stage = render each tube clip (render.render_tube_clip) +
LoadedModel.prepare + forward with hooks + pooling, batch by batch (embed.embed_clips;
each clip its own forward on one intra-op thread, clips concurrent: conceptgen.capture).
The bare model = the same network's batched forward on the same, already prepared
batches, at the process's thread count: so the overhead includes what bit-identical
results per clip cost.
The demo network is used (trained weights when ``--workspace`` holds demo.pt, else
random weights: throughput does not depend on the weights), or ``--model ARCH``, a
registry architecture with random weights, or any other ``--model`` that ``conceptgen``
takes: a ``save_pretrained`` folder of a Hugging Face video classifier (VideoMAE,
TimeSformer, ViViT; its token layers are embedded as (D, T, H, W), see conceptgen.tokens),
a checkpoint, a model card. CPU with 2 threads, or ``--device cuda``
(every timed step then ends with a CUDA synchronise; ``--amp`` runs both the pipeline
and the bare forward under float16 autocast).
Overhead = pipeline seconds / bare seconds - 1 (target <= 0.30). Also timed on their
own, to show where the overhead goes: rendering the clips, and embedding the already
rendered clips (prepare + forward with hooks + pooling). The four are measured batch by
batch, interleaved, so each batch's four figures see the same machine load; each
figure is the sum over batches of the best of ``--repeats`` rounds. The 1-minute load
average is printed because the machine may be shared. Last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from targets import Target, add_flag, check, exit_status  # noqa: E402

# The stated target is on the CPU (README, Benchmarks); on CUDA the CPU-side rendering sets
# the pace and no target is stated. The run exits 1 on a miss (--no-targets: 0).
CPU_TARGETS = (Target("overhead", "<=", 0.30),)


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


def load_demo(workspace: Path | None, name: str = "demo", device: str = "cpu"):
    import torch

    from conceptgen.demo_model import DEMO_SPEC, build_demo_network
    from conceptgen.registry import LoadedModel, load_model, model_fingerprint
    from conceptgen.workspace import Workspace

    if name != "demo":
        return load_model(name, device=device)  # an architecture (random weights), an HF folder, a checkpoint
    if workspace is not None and (workspace / "models" / "demo.pt").is_file():
        return load_model("demo", workspace=Workspace.resolve(workspace), device=device)
    torch.manual_seed(0)
    model = build_demo_network().eval().to(device)
    return LoadedModel(name="demo-random", model=model, spec=DEMO_SPEC, class_names=["a", "b", "c", "d"],
                       fingerprint=model_fingerprint(model), device=torch.device(device))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="embedding throughput vs bare forward")
    p.add_argument("--tubes", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mode", default=None, help="render mode (default: extract's default)")
    p.add_argument("--layers", default=None, help="layers (default: the model's default layer)")
    p.add_argument("--workspace", type=Path, default=None)
    p.add_argument("--model", default="demo",
                   help="demo, a registry architecture (random weights, e.g. x3d_xs), or a Hugging Face "
                        "save_pretrained folder, checkpoint or model card")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    p.add_argument("--quick", action="store_true", help="a correctness run: 32 tubes, 2 repeats")
    add_flag(p)
    args = p.parse_args(argv)
    if args.quick:
        args.tubes, args.repeats = 32, 2

    import torch

    from conceptgen.embed import HookEmbedder, batched, embed_clips
    from conceptgen.extract import DEFAULT_RENDER_MODE, default_layers
    from conceptgen.progress import set_quiet
    from conceptgen.render import fill_from_mean, render_tube_clip

    set_quiet(True)
    torch.set_num_threads(2)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("error: CUDA is not available on this machine; run without --device cuda")
    loaded = load_demo(args.workspace, args.model, args.device)
    layers = tuple(args.layers.split(",")) if args.layers else default_layers(loaded)
    mode = args.mode or DEFAULT_RENDER_MODE
    spec = loaded.spec
    fill = fill_from_mean(spec.mean)
    with tempfile.TemporaryDirectory() as tmp:
        tubes = ground_truth_tubes(args.tubes, args.seed, Path(tmp))
    embedder = HookEmbedder(loaded, layers, pooling="mean", amp=args.amp)

    def render(t):
        frames, idx, masks, boxes = t
        return render_tube_clip(frames, idx, masks, boxes, mode=mode, num_frames=spec.num_frames,
                                side=spec.side, fill=fill)

    # The bare model's input: the same clips, rendered and prepared beforehand (not timed).
    batches = list(batched(tubes, args.batch_size))
    clips = [np.stack([render(t) for t in batch]) for batch in batches]
    prepared = [loaded.prepare(c) for c in clips]

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def bare_forward(x):
        with torch.inference_mode(), torch.autocast("cuda", enabled=args.amp):
            loaded.model(x)

    embed_clips(embedder, (render(t) for t in batches[0]), batch_size=args.batch_size)  # warm-up
    bare_forward(prepared[0])

    # Interleaved batch by batch, so every measure of a batch sees the same machine load
    # (the machine may be shared); per batch the best of --repeats, summed over batches.
    steps = ("pipeline", "bare", "render", "embed")
    best_per_batch = {name: np.full(len(batches), np.inf) for name in steps}
    for _ in range(args.repeats):
        for b, batch in enumerate(batches):
            times = {"pipeline": timed(lambda: embed_clips(embedder, (render(t) for t in batch),
                                                           batch_size=args.batch_size)),
                     "bare": timed(lambda: bare_forward(prepared[b])),
                     "render": timed(lambda: [render(t) for t in batch]),
                     "embed": timed(lambda: embedder.embed(clips[b]))}
            for name, seconds in times.items():
                best_per_batch[name][b] = min(best_per_batch[name][b], seconds)
    best = {name: float(v.sum()) for name, v in best_per_batch.items()}
    n = len(tubes)
    pipe, bare = best["pipeline"], best["bare"]
    load = os.getloadavg()[0]
    where = torch.cuda.get_device_name(0) + (", amp" if args.amp else "") if cuda else "cpu, 2 threads"
    print(f"{where}; model {loaded.name}, layers {','.join(layers)}, mode {mode}, {n} tubes, batch {args.batch_size}, "
          f"clip {spec.num_frames}x{spec.side}x{spec.side}, frames {tubes[0][0].shape[2]}x{tubes[0][0].shape[1]}, "
          f"load average {load:.2f}")
    print(f"{'':<26} {'seconds':>8} {'tubes/s':>8} {'ms/tube':>8}")
    for label, key in (("pipeline (render+embed)", "pipeline"), ("bare forward", "bare"),
                       ("  render alone", "render"), ("  embed rendered clips", "embed")):
        print(f"{label:<26} {best[key]:>8.3f} {n / best[key]:>8.1f} {1e3 * best[key] / n:>8.3f}")
    result = {"device": args.device, "amp": args.amp, "model": args.model, "tubes": n, "batch_size": args.batch_size,
              "mode": mode, "layers": list(layers),
              "pipeline_tubes_per_s": round(n / pipe, 2), "bare_tubes_per_s": round(n / bare, 2),
              "overhead": round(pipe / bare - 1, 4),
              "render_ms_per_tube": round(1e3 * best["render"] / n, 3),
              "embed_ms_per_tube": round(1e3 * best["embed"] / n, 3),
              "bare_ms_per_tube": round(1e3 * bare / n, 3), "load_average_1min": round(load, 2)}
    result.update(check(result, CPU_TARGETS if not cuda else (), enforce=not args.no_targets))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(exit_status(main()))
