"""What the segmenters leave for tracking to find: per-frame detection coverage of the labelled real clips.

    python benchmarks/detection_bound.py                    # extract's default segmenters
    python benchmarks/detection_bound.py --segmenters motion,foreground
    python benchmarks/detection_bound.py --sam-checkpoint sam_vit_b_01ec64.pth --device cuda

For each labelled object of benchmarks/data/real_clips_boxes.json, its *detection coverage*
(conceptgen.box_truth): the share of its labelled frames on which one single-frame detection
fits it (box IoU >= 0.5), per segmenter and for any segmenter. An object below 0.5 cannot be
recalled by any tracking of these detections, so ``recall_bound`` (the share of objects at
0.5 or more) caps real_discovery.py's ``object_recall``: a miss under the bound is tracking's,
a miss over it is segmentation's. Frames are decoded as ``extract`` does (``--max-side 256``).
The last line is JSON. No stated targets: a diagnosis, not a goal.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from conceptgen.box_truth import detection_coverage, load_ground_truth, scale_box  # noqa: E402
from conceptgen.extract import ExtractConfig  # noqa: E402
from conceptgen.masks import mask_box  # noqa: E402
from conceptgen.segment import optical_flow  # noqa: E402
from conceptgen.videoio import read_frames  # noqa: E402
from real_discovery import REAL_CLIPS, TRUTH  # noqa: E402  (this folder is on sys.path when run)


def clip_coverage(path: Path, truth, config: ExtractConfig, device: str) -> dict[str, dict[str, float]]:
    """Source ("any" for all together) -> object id -> detection coverage, for one clip
    (its first ``config.max_frames`` frames when set; ``truth`` cut to them)."""
    indices = range(config.max_frames) if config.max_frames else None
    frames = read_frames(path, indices=indices, max_side=config.max_side)
    flows = optical_flow(frames)
    mask_size, video_size = frames.shape[1:3], (truth.width, truth.height)
    boxes: dict[str, dict[int, list]] = {"any": {}}
    for segmenter in config.build_segmenters(device):
        per_frame = boxes.setdefault(segmenter.name, {})
        for f, dets in enumerate(segmenter.segment(frames, flows=flows)):
            found = [scale_box(mask_box(d.mask), mask_size, video_size) for d in dets]
            per_frame[f] = found
            boxes["any"].setdefault(f, []).extend(found)
    return {source: detection_coverage(truth, per_frame) for source, per_frame in boxes.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=REAL_CLIPS)
    parser.add_argument("--truth", type=Path, default=TRUTH)
    parser.add_argument("--segmenters", default=None, help="extract's --segmenter (default: extract's default)")
    parser.add_argument("--sam-checkpoint", type=Path, default=None, metavar="PATH")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="only each clip's first N frames")
    args = parser.parse_args(argv)
    truth = load_ground_truth(args.truth)
    clips = [name for name in sorted(truth) if (args.clips / name).is_file()]
    if not clips:
        result = {"skipped": f"none of {', '.join(sorted(truth))} in {args.clips}"}
        print(json.dumps(result))
        return result
    config = ExtractConfig.from_options(model="x3d_xs", seed=args.seed, segmenter=args.segmenters,
                                        sam_checkpoint=args.sam_checkpoint, max_frames=args.max_frames)
    truth = {name: t.up_to(args.max_frames) for name, t in truth.items()}
    per_clip, above = {}, []
    for name in clips:
        coverage = clip_coverage(args.clips / name, truth[name], config, args.device)
        per_clip[name] = coverage
        sources = list(coverage)
        print(f"\n{name}\n  {'object':<28}" + "".join(f"{s:>12}" for s in sources))
        for obj in truth[name].objects:
            print(f"  {obj.id:<28}" + "".join(f"{coverage[s][obj.id]:>12.2f}" for s in sources))
            above.append(coverage["any"][obj.id] >= 0.5)
    result = {"recall_bound": round(sum(above) / len(above), 4), "objects": len(above),
              "objects_over_bound": sum(above), "segmenters": config.segmenters,
              "per_clip": {c: {s: {o: round(v, 3) for o, v in cov.items()} for s, cov in src.items()}
                           for c, src in per_clip.items()}}
    print(f"\nrecall bound: {result['objects_over_bound']}/{result['objects']} objects have a fitting detection "
          f"on at least half their labelled frames ({result['recall_bound']:.2f})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
