"""SAM segmenter speed: seconds per keyframe of segment-anything's automatic mask
generator, run through conceptgen's SamSegmenter loading a checkpoint file exactly as
``conceptgen extract --segmenter sam --sam-checkpoint PATH`` does.

    python benchmarks/sam_speed.py [--device cuda] [--sam-model vit_b] [--frames 9] [--sam-checkpoint PATH]

Without ``--sam-checkpoint`` (no weights can be downloaded here) a randomly initialised
model of the chosen architecture is saved to a temporary checkpoint first. Its time per
keyframe is that of real weights: the same network, the same 16 x 16 point prompts. Its
masks mean nothing, so no mask figure is reported for it. vit_b took 69 s per keyframe
on 2 CPU cores and 0.14 s on an H200. The first keyframe (CUDA start-up, lazy build) is
timed apart.
Last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="SAM keyframe speed through SamSegmenter")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--sam-model", default="vit_b", help="vit_b | vit_l | vit_h")
    p.add_argument("--sam-checkpoint", type=Path, default=None, help="real weights (default: random weights)")
    p.add_argument("--frames", type=int, default=9, help="video length; keyframes are every 4th and the last")
    p.add_argument("--size", type=int, default=256, help="frame side in pixels")
    args = p.parse_args(argv)

    import torch

    from conceptgen.progress import set_quiet
    from conceptgen.segment import SamSegmenter
    from conceptgen.synth import generate_synthetic_set
    from conceptgen.videoio import read_frames

    set_quiet(True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: CUDA is not available on this machine; run with --device cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = generate_synthetic_set(tmp / "synth", n_videos=1, seed=0, num_frames=args.frames,
                                       size=args.size).videos[0]
        frames = read_frames(video.video_path)
        checkpoint = args.sam_checkpoint
        if checkpoint is None:
            from segment_anything import sam_model_registry

            torch.manual_seed(0)
            checkpoint = tmp / f"random_{args.sam_model}.pth"
            torch.save(sam_model_registry[args.sam_model]().state_dict(), checkpoint)
        segmenter = SamSegmenter(checkpoint=checkpoint, model_type=args.sam_model, device=args.device)
        keyframes = segmenter.keyframes(len(frames))
        seconds = []
        masks = 0
        for k in keyframes:
            t0 = time.perf_counter()
            masks += len(segmenter.segment(frames[k:k + 1])[0])  # one frame: its only keyframe
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
    steady = seconds[1:] or seconds
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"{where}; SAM {args.sam_model} ({'random weights' if args.sam_checkpoint is None else 'checkpoint'}), "
          f"{len(keyframes)} keyframes of {args.size}x{args.size}")
    print(f"first keyframe (build + load + warm-up): {seconds[0]:.2f} s; then {sum(steady) / len(steady):.3f} s "
          "per keyframe")
    result = {"device": args.device, "where": where, "sam_model": args.sam_model,
              "random_weights": args.sam_checkpoint is None, "keyframes": len(keyframes),
              "first_keyframe_seconds": round(seconds[0], 3),
              "seconds_per_keyframe": round(sum(steady) / len(steady), 4)}
    if args.sam_checkpoint is not None:
        result["masks_per_keyframe"] = round(masks / len(keyframes), 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
