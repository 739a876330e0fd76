"""Concept discovery on real video, scored against hand-made boxes.

    python benchmarks/real_discovery.py --quick      # the labelled clips + a 96-frame stress clip
    python benchmarks/real_discovery.py              # the same with a 300-frame stress clip
    python benchmarks/real_discovery.py --contact-sheet docs/images/real_clip_tubes.png
    python benchmarks/real_discovery.py --quick --sam-checkpoint sam_vit_b_01ec64.pth --device cuda

The labelled clips are ../shared/data/real-clips (absent: the benchmark says so and
exits 0); their boxes are benchmarks/data/real_clips_boxes.json (how they were made is
in the file). Everything runs with extract's defaults (motion,supervoxel,foreground, max side 256,
mask render mode; ``--segmenters`` and ``--sam-checkpoint`` change the segmenters) and ``--model x3d_xs`` with random weights (no weights can be
downloaded here; the segmenters dominate the cost), then ``cluster --k auto``.

Figures (definitions in conceptgen.box_truth.py), pooled over the labelled clips:
  object_recall             labelled objects covered by a tube (box IoU >= 0.5 on at least
                            half of the object's labelled frames), over all tubes
  candidate_recall          the same over the candidates only (the tubes a reviewer sees first)
  mean_object_coverage      the mean over objects of the best single tube's share of the
                            object's labelled frames (IoU >= 0.5): progress below recall's bar
  background_fraction       candidate tubes (not tagged background) that lie on no labelled object
  identity_switch_fraction  tube-frames of candidate tubes whose best match is another thing
                            than the tube's majority
  slowest_over_median       seconds per megapixel-frame (processed pixels) of the slowest clip
                            over the median clip, the stress clip included: a stage that
                            stalls on one scene shows here
  layer_separates           conceptgen.cluster.layer_separation of the clustered layer
Also per clip: seconds, tubes, candidates, recall, background, switches. The last line is
JSON; a missed target exits 1 (--no-targets: 0).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from conceptgen.cluster import cluster_run  # noqa: E402
from conceptgen.extract import ExtractConfig, extract  # noqa: E402
from conceptgen.box_truth import TubeBoxes, load_ground_truth, pool_scores, score_clip  # noqa: E402
from conceptgen.ingest import ingest  # noqa: E402
from conceptgen.orm import RunVideo, Tube, Video  # noqa: E402
from conceptgen.progress import set_quiet  # noqa: E402
from conceptgen.synth import uniform_mat_frames  # noqa: E402
from conceptgen.tubes import TubeRecord  # noqa: E402
from conceptgen.workspace import Workspace  # noqa: E402
from targets import Target, add_flag, check, exit_status  # noqa: E402

TARGETS = (Target("object_recall", ">=", 0.8), Target("background_fraction", "<=", 0.5),
           Target("identity_switch_fraction", "<=", 0.05), Target("slowest_over_median", "<=", 3.0),
           Target("layer_separates", "==", True))
REAL_CLIPS = REPO.parent / "shared" / "data" / "real-clips"
TRUTH = REPO / "benchmarks" / "data" / "real_clips_boxes.json"
STRESS_CLIP = "stress_uniform_mat_1280x720.mp4"


def write_stress_clip(path: Path, num_frames: int) -> None:
    """The pathological scene of issue 20 (one uniform mat touching many blocks) as H.264."""
    from conceptgen.videoio import write_video

    write_video(path, uniform_mat_frames(num_frames=num_frames), fps=30.0)


def clip_rows(ws: Workspace, run_id: int) -> list[dict]:
    """Per video: name, size, processed megapixel-frames, seconds and its tubes."""
    rows = []
    with ws.session() as s:
        for video, rv in s.execute(select(Video, RunVideo).join(RunVideo, RunVideo.video_id == Video.id)
                                   .where(RunVideo.run_id == run_id).order_by(Video.id)):
            tubes = s.scalars(select(Tube).where(Tube.run_id == run_id, Tube.video_id == video.id)
                              .order_by(Tube.track_index)).all()
            records = [(TubeRecord.from_row(t), bool(t.background), float(t.objectness or 0.0)) for t in tubes]
            mask_h, mask_w = (tubes[0].mask_height, tubes[0].mask_width) if tubes else (0, 0)
            rows.append({"clip": Path(video.path).name, "status": rv.status, "error": rv.error,
                         "seconds": float(rv.seconds or 0.0), "size": (video.width, video.height),
                         "frames": int(video.frame_count or 0), "mask_size": (mask_h, mask_w),
                         "tubes": records, "path": video.path})
    return rows


def megapixel_frames(row: dict, max_side: int, max_frames: int | None) -> float:
    """Processed megapixel-frames: the frames as the pipeline sees them (downscaled, maybe cut)."""
    w, h = row["size"]
    scale = min(1.0, max_side / max(w, h))
    frames = min(row["frames"], max_frames or row["frames"])
    return (w * scale) * (h * scale) * frames / 1e6


def contact_sheet(rows: list[dict], truth_names: set[str], out: Path, *, per_clip: int = 6) -> None:
    """The first ``per_clip`` candidate tubes of each labelled clip (highest objectness first),
    each at its middle frame with its region outlined."""
    import cv2

    from conceptgen.render import contact_sheet as render_sheet
    from conceptgen.videoio import read_frames

    tiles = []
    for row in rows:
        if row["clip"] not in truth_names:
            continue
        ranked = sorted((t for t in row["tubes"] if not t[1]), key=lambda t: -t[2])
        candidates = ranked[:per_clip]
        wanted = [r.frame_indices[len(r.frame_indices) // 2] for r, _, _ in candidates]
        if not wanted:
            continue
        frames = dict(zip(wanted, read_frames(row["path"], indices=wanted, max_side=512)))
        for (record, _, objectness), f in zip(candidates, wanted):
            mask = record.mask(record.frame_indices.index(f))
            tiles.append((frames[f], mask, f"{Path(row['clip']).stem[:14]} f{f} obj {objectness:.2f}"))
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(render_sheet(tiles, columns=per_clip), cv2.COLOR_RGB2BGR))
    print(f"contact sheet: {out} ({len(tiles)} tubes)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 96-frame stress clip instead of 300 frames")
    parser.add_argument("--model", default="x3d_xs")
    parser.add_argument("--clips", type=Path, default=REAL_CLIPS)
    parser.add_argument("--truth", type=Path, default=TRUTH)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".work" / "real_discovery")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contact-sheet", type=Path, default=None, metavar="PNG")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="only the first N frames of each clip, scored against their labels (a smoke run)")
    parser.add_argument("--segmenters", default=None, help="extract's --segmenter (default: extract's default)")
    parser.add_argument("--sam-checkpoint", type=Path, default=None, metavar="PATH",
                        help="a Segment Anything checkpoint: adds SAM proposals (needs a GPU to be practical)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the model's and SAM's device)")
    add_flag(parser)
    args = parser.parse_args(argv)
    truth = load_ground_truth(args.truth)
    clips = [args.clips / name for name in sorted(truth) if (args.clips / name).is_file()]
    if not clips:
        print(f"real clips: none of {', '.join(sorted(truth))} in {args.clips}; skipped")
        result = {"skipped": True}
        print(json.dumps(result))
        return result
    set_quiet(True)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    stress = args.work / STRESS_CLIP
    write_stress_clip(stress, min(96 if args.quick else 300, args.max_frames or 300))
    ws = Workspace.resolve(args.work / "ws")
    ingest(ws, [str(p) for p in clips] + [str(stress)])
    config = ExtractConfig.from_options(model=args.model, seed=args.seed, max_frames=args.max_frames,
                                        segmenter=args.segmenters, sam_checkpoint=args.sam_checkpoint)
    started = time.perf_counter()
    report = extract(ws, config, device=args.device)
    extract_seconds = time.perf_counter() - started
    clustering = cluster_run(ws, report.run_id, k="auto", seed=args.seed)
    rows = clip_rows(ws, report.run_id)

    scores, candidate_recalled = [], []
    print(f"\n{'clip':<32} {'status':<7} {'s':>6} {'s/MPf':>6} {'tubes':>5} {'cand':>5} {'recall':>6} "
          f"{'bg':>5} {'switch':>6}  missed")
    for row in rows:
        row["s_per_mpf"] = row["seconds"] / max(megapixel_frames(row, config.max_side, config.max_frames), 1e-9)
        candidates = [r for r, background, _ in row["tubes"] if not background]
        line = (f"{row['clip'][:32]:<32} {row['status']:<7} {row['seconds']:>6.1f} {row['s_per_mpf']:>6.2f} "
                f"{len(row['tubes']):>5} {len(candidates):>5}")
        t = truth.get(row["clip"])
        t = t.up_to(config.max_frames) if t is not None else None
        if t is not None and row["status"] == "done":
            recall_score = score_clip(t, [TubeBoxes.from_record(r.frame_indices, r.boxes, r.mask_size, row["size"])
                                          for r, _, _ in row["tubes"]])
            cand_score = score_clip(t, [TubeBoxes.from_record(r.frame_indices, r.boxes, r.mask_size, row["size"])
                                        for r in candidates])
            # Recall counts every tube (background-tagged ones are kept and reachable); background and
            # switches count the candidates a reviewer sees, and so does candidate_recall.
            candidate_recalled.append((cand_score.n_recalled, cand_score.n_objects))
            cand_score.n_recalled, cand_score.recalled, cand_score.missed, cand_score.coverage = (
                recall_score.n_recalled, recall_score.recalled, recall_score.missed, recall_score.coverage)
            scores.append(cand_score)
            line += (f" {cand_score.object_recall:>6.2f} {cand_score.background_fraction:>5.2f} "
                     f"{cand_score.identity_switch_fraction:>6.3f}  {','.join(cand_score.missed)}")
        elif row["error"]:
            line += f"  {row['error']}"
        print(line)
    pooled = pool_scores(scores)
    done = [r for r in rows if r["status"] == "done"]
    rates = sorted(r["s_per_mpf"] for r in done)
    labelled = [r for r in done if r["clip"] in truth]
    sep = clustering.separation
    result = {
        **{k: round(v, 4) for k, v in pooled.items()},
        "candidate_recall": round(sum(r for r, _ in candidate_recalled) / max(sum(n for _, n in candidate_recalled), 1), 4),
        "slowest_over_median": round(rates[-1] / float(np.median(rates)), 3) if rates else None,
        "layer_separates": bool(sep.separates) if sep else None,
        "layer_check": sep.as_dict() if sep else None,
        "seconds_per_video": round(float(np.mean([r["seconds"] for r in labelled])), 2) if labelled else None,
        "tubes_per_video": round(float(np.mean([len(r["tubes"]) for r in labelled])), 1) if labelled else None,
        "candidates_per_video": round(float(np.mean([sum(not b for _, b, _ in r["tubes"]) for r in labelled])), 1)
        if labelled else None,
        "stress_clip_s_per_mpf": next((round(r["s_per_mpf"], 3) for r in done if r["clip"] == STRESS_CLIP), None),
        "median_s_per_mpf": round(float(np.median(rates)), 3) if rates else None,
        "extract_seconds": round(extract_seconds, 1),
        "failed_videos": [(r["clip"], r["error"]) for r in rows if r["status"] != "done"],
        "clusters": clustering.k, "clustered_tubes": clustering.n_tubes, "layer": clustering.layer,
        "per_clip": {s.clip: {"recall": round(s.object_recall, 3), "background": round(s.background_fraction, 3),
                              "switches": round(s.identity_switch_fraction, 4), "missed": s.missed,
                              "coverage": {k: round(v, 2) for k, v in s.coverage.items()}} for s in scores},
    }
    if args.contact_sheet:
        contact_sheet(rows, set(truth), args.contact_sheet)
    result.update(check(result, TARGETS, enforce=not args.no_targets))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(exit_status(main()))
