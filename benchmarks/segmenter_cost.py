"""CPU seconds of each segmenter and of tracking with and without linking, on one clip.

    python benchmarks/segmenter_cost.py                      # the dog clip of ../shared/data/real-clips
    python benchmarks/segmenter_cost.py --video my_clip.mp4

Decoded at extract's default ``--max-side 256``; flow is computed once and shared, as in
``extract``. Times are process CPU seconds on one thread (torch and OpenCV limited to one),
so they hold on a busy machine. The last line is JSON. No stated targets: a cost table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_CLIP = REPO.parent / "shared" / "data" / "real-clips" / "sam2_dog.mp4"


def cpu_seconds(fn):
    start = time.process_time()
    out = fn()
    return out, round(time.process_time() - start, 2)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--segmenters", default="motion,supervoxel,foreground")
    args = parser.parse_args(argv)
    if not args.video.is_file():
        result = {"skipped": f"{args.video} not found; pass --video PATH"}
        print(json.dumps(result))
        return result
    import cv2
    import torch

    from conceptgen.segment import build_segmenters, optical_flow
    from conceptgen.track import LinkRules, build_tubes
    from conceptgen.videoio import read_frames

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    frames = read_frames(args.video, max_side=args.max_side)
    flows, flow_s = cpu_seconds(lambda: optical_flow(frames))
    result = {"video": args.video.name, "frames": len(frames), "size": list(frames.shape[1:3]), "flow": flow_s}
    detections = [[] for _ in frames]
    for segmenter in build_segmenters(args.segmenters):
        dets, seconds = cpu_seconds(lambda: segmenter.segment(frames, flows=flows))
        result[segmenter.name] = seconds
        result[f"{segmenter.name}_detections"] = sum(len(d) for d in dets)
        for i, d in enumerate(dets):
            detections[i].extend(d)
    for name, link in (("track_unlinked", None), ("track_linked", LinkRules())):
        tubes, seconds = cpu_seconds(lambda: build_tubes(frames, detections, flows=flows, min_length=8, link=link))
        result[name], result[f"{name}_tubes"] = seconds, len(tubes)
    for key, value in result.items():
        print(f"{key:<28} {value}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
