"""`conceptgen tcav`, `conceptgen tcav apply` and `conceptgen gradcam`: glue over tcav.workflow,
tcav.apply and tcav.gradcam."""
from __future__ import annotations

from conceptgen.cli.engine_commands import add_executor_options, executor_from_args
from conceptgen.cli.model_options import add_model_options, model_source
from pathlib import Path

from conceptgen.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("tcav", help="score concepts for a class with Video-TCAV, with significance tests "
                                    "(`conceptgen tcav apply`: score new videos with an experiment's saved CAVs)")
    # --model, --layers, --target and --concepts are required for scoring (checked in _tcav), not for `apply`
    add_model_options(p, required=False)
    p.add_argument("--layers", help="comma-separated layer names (`conceptgen models --layers`) (required)")
    p.add_argument("--target", help="class name(s) or index(es), comma-separated (required)")
    p.add_argument("--concepts",
                   help="comma-separated approved concept names or globs of them ('auto-*'), all-approved, a folder "
                        "(one sub-folder of clips per concept, or a `conceptgen export` folder), or concept "
                        "folders by name or quoted glob (DIR/a,DIR/b or 'DIR/str*') (required)")
    p.add_argument("--random-sets", default="10",
                   help="N random sets (2-500, default 10) or auto; or random-set folders used exactly as the N "
                        "sets, as TF-TCAV and Captum keep them (a quoted glob 'DIR/random500_*' or DIR1,DIR2,...)")
    p.add_argument("--random-set-size", type=int, default=20, help="clips per random set (default 20)")
    p.add_argument("--random-pool", default=None,
                   help="folder of random clips (default: random* sub-folders of --concepts DIR, else "
                        "every database tube that is in no concept)")
    p.add_argument("--class-examples", default=None,
                   help="folder of class videos (DIR/<class>/*.mp4 or DIR/*.mp4; default: labelled videos in the DB)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    p.add_argument("--classifier", default="mean-diff", choices=("sgd", "logistic", "svm", "mean-diff"),
                   help="CAV classifier (default mean-diff: stable across seeds, see calibration.json; "
                        "sgd: hinge loss, as TF TCAV and Captum)")
    p.add_argument("--test", default="pseudo", choices=("pseudo", "permutation", "ttest"),
                   help="pseudo (default): rank against M random-pool pseudo-concepts scored on the same random "
                        "sets; or a two-sample test against random-vs-random TCAV scores: permutation, or "
                        "ttest as the Video-TCAV paper")
    p.add_argument("--statistic", default="auto", choices=("auto", "logit-change", "tcav"),
                   help="what --test pseudo ranks: the class-logit change towards the concept (auto's choice) "
                        "or the mean TCAV score; the two-sample tests always use the TCAV score")
    p.add_argument("--null-sets", type=int, default=0,
                   help="with --test pseudo: M pseudo-concepts (0 = auto: the smallest corrected p is alpha/100)")
    p.add_argument("--seeds", type=int, default=0,
                   help="score K draws of the random sets and report in how many each verdict holds "
                        "(0 = auto: 3 with --test pseudo and mean-diff CAVs on a pool of up to 500 clips, else 1)")
    p.add_argument("--family", default="target-layer", choices=("target-layer", "target", "experiment"),
                   help="hypotheses corrected together: each target at each layer (default; a verdict does not "
                        "change when other targets or layers join), each target, or the whole experiment")
    p.add_argument("--calibration-sets", type=int, default=20,
                   help="with --test permutation|ttest: pseudo-concepts per layer, class and variant scored as "
                        "concepts for calibration.json (default 20; each costs one CAV fit per random set, nearly "
                        "free with --classifier mean-diff; 0 = none). --test pseudo measures on its own null")
    p.add_argument("--correction", default="bonferroni", choices=("bonferroni", "holm"),
                   help="family-wise correction within each --family (default bonferroni)")
    p.add_argument("--mode", default="crop", help="render mode of database tubes: mask, crop (default) or blur")
    p.add_argument("--batch-size", type=int, default=8, help="clips per forward/backward (default 8)")
    add_executor_options(p)
    p.set_defaults(handler=_tcav)
    actions = p.add_subparsers(dest="tcav_action", metavar="ACTION")
    a = actions.add_parser("apply", help="score new videos with an experiment's saved CAVs (no retraining)")
    a.add_argument("--experiment", type=int, required=True, help="TCAV experiment id")
    a.add_argument("--videos", required=True, help="folder of videos (DIR/*.mp4, or DIR/<class>/*.mp4)")
    a.add_argument("--model", dest="apply_model", metavar="MODEL", default=None,
                   help="model name or checkpoint (default: the experiment's); its fingerprint must match")
    a.add_argument("--weights", dest="apply_weights", metavar="WEIGHTS", default=None, help="weights file (default: the experiment's)")
    a.add_argument("--target", dest="apply_target", metavar="CLASS", default=None,
                   help="class name(s), comma-separated (default: the experiment's targets)")
    a.add_argument("--device", dest="apply_device", metavar="DEVICE", default="cpu", help="cpu or cuda (default cpu)")
    a.add_argument("--out", default=None, help="JSON report (default WORKSPACE/media/tcav/<id>/applied.json)")
    a.set_defaults(handler=_tcav_apply)

    p = sub.add_parser("gradcam", help="Grad-CAM overlay video and per-frame heat curve for one video")
    p.add_argument("--video", required=True, help="video file")
    add_model_options(p)
    p.add_argument("--layer", required=True, help="a layer with time and space (C, T, H, W)")
    p.add_argument("--target", required=True, help="class name or index")
    p.add_argument("--out", default=None, help="output folder (default WORKSPACE/media/gradcam)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(handler=_gradcam)


def _split(value: str, flag: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise ConfigError(f"{flag} is empty: give at least one name")
    return items


def _random_sets(value: str) -> int | str:
    """N, auto, or (folders given as the sets) the default N, replaced by the folder count."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        if _random_set_folders(value):
            return 10
        raise ConfigError(f"--random-sets must be a number, auto, or random-set folders (a quoted glob such as "
                          f"'DIR/random500_*', or DIR1,DIR2,...), got {value!r}") from None


def _random_set_folders(value: str) -> str | None:
    """``--random-sets`` as folders (TF-TCAV's random500_0 ... random500_N), else None."""
    from tcav.examples import GLOB_CHARS

    parts = [p.strip() for p in value.split(",") if p.strip()]
    if parts and all(any(c in p for c in GLOB_CHARS) or Path(p).is_dir() for p in parts):
        return value
    return None


def tcav_config(args):
    """The command line's :class:`tcav.experiment.TcavConfig`: the one config type from the
    flags to the stored experiment (``--mode`` is its ``render_mode``, ``--target`` its ``targets``)."""
    from tcav.experiment import TcavConfig

    return TcavConfig(layers=_split(args.layers, "--layers"), targets=_split(args.target, "--target"),
                      random_sets=_random_sets(args.random_sets), seed=args.seed, classifier=args.classifier,
                      test=args.test, statistic=args.statistic, correction=args.correction, family=args.family,
                      seeds=args.seeds,
                      random_set_size=args.random_set_size, render_mode=args.mode, null_sets=args.null_sets,
                      calibration_sets=args.calibration_sets)


def _tcav(args, ctx) -> int:
    from tcav.experiment import family_summary
    from tcav.workflow import TcavRequest, run_experiment

    missing = [flag for flag, value in (("--model", args.model), ("--layers", args.layers),
                                        ("--target", args.target), ("--concepts", args.concepts)) if not value]
    if missing:
        raise ConfigError(f"conceptgen tcav needs {', '.join(missing)}: see `conceptgen tcav --help`")

    request = TcavRequest(model=model_source(args), concepts=args.concepts, config=tcav_config(args),
                          class_examples=args.class_examples, random_pool=args.random_pool,
                          random_set_folders=_random_set_folders(args.random_sets),
                          device=args.device, amp=args.amp, batch_size=args.batch_size)
    ctx.workspace.engine  # an unreachable database fails here, before Ray starts
    with executor_from_args(args) as executor:
        outcome = run_experiment(ctx.workspace, request, executor=executor)
    for line in format_table(outcome.report):
        ctx.echo(line)
    for warning in outcome.report.warnings:
        ctx.echo(f"warning: {warning}")
    if (cal := outcome.report.calibration) is not None and cal.n_families:
        stability = "n/a" if cal.cav_stability is None else f"{cal.cav_stability:.2f}"
        ctx.echo(f"calibration: false-positive rate {cal.false_positive_rate:.3g} ({cal.families_rejected}/"
                 f"{cal.n_families} null families, {cal.n_null_hypotheses} null hypotheses) vs alpha {cal.alpha}; "
                 f"CAV stability across seeds {stability}")
    ctx.echo(f"experiment {outcome.experiment_id}: {outcome.report.n_random_sets} random sets; "
             f"{family_summary(outcome.report)}")
    ctx.echo(f"results: {', '.join(str(p) for p in outcome.files)}")
    ctx.echo(f"plots: {', '.join(str(p) for p in outcome.plots)}")
    return 0


def _tcav_apply(args, ctx) -> int:
    from tcav.apply import apply_experiment

    report = apply_experiment(ctx.workspace, args.experiment, args.videos, model=args.apply_model,
                              weights=args.apply_weights, device=args.apply_device, out=args.out,
                              targets=_split(args.apply_target, "--target") if args.apply_target else ())
    ctx.echo(f"{'concept':<24} {'variant':<8} {'layer':<20} {'class':<14} {'TCAV':>5} {'±':>5} {'CAVs':>5} {'videos':>6}")
    for s in report.scores:
        ctx.echo(f"{s.concept[:24]:<24} {s.variant:<8} {s.layer[:20]:<20} {s.target[:14]:<14} "
                 f"{s.tcav_mean:5.2f} {s.tcav_std:5.2f} {s.n_cavs:5d} {len(s.videos):6d}")
    if report.skipped:
        ctx.echo(f"warning: skipped {len(report.skipped)} video(s) that failed to load, e.g. "
                 f"{next(iter(report.skipped.values()))}")
    ctx.echo(f"scores: {report.out}")
    return 0


def format_table(report) -> list[str]:
    """The CLI's result table: one line per concept variant, class and layer."""
    head = (f"{'concept':<24} {'variant':<8} {'layer':<20} {'class':<14} {'TCAV':>5} {'±':>5} "
            f"{'null':>5} {'CAVacc':>6} {'z':>6} {'p':>8} {'p_corr':>8}  verdict")
    lines = [head, "-" * len(head)]
    for r in report.tested():
        null = report.null_for(r)
        layer = r.layer + (" (degenerate)" if null.diagnosis.degenerate else "")
        lines.append(f"{r.concept[:24]:<24} {r.variant:<8} {layer:<20} {r.target[:14]:<14} "
                     f"{r.tcav_mean:5.2f} {r.tcav_std:5.2f} {null.null_mean:5.2f} "
                     f"{float(r.cav_accuracies.mean()):6.2f} {'-' if r.z is None else f'{r.z:+.1f}':>6} "
                     f"{r.p_value:8.3g} {r.p_corrected:8.3g}  {r.verdict}")
    relative = [r for r in report.results if r.comparison == "relative"]
    if relative:
        lines.append("relative TCAV (concept vs the other concepts):")
        lines += [f"  {r.concept} [{r.variant}] {r.layer} {r.target}: {r.tcav_mean:.2f}" for r in relative]
    return lines


def _gradcam(args, ctx) -> int:
    from pathlib import Path

    from conceptgen.registry import load_model
    from tcav.gradcam import gradcam_video
    from tcav.workflow import check_devices

    check_devices(args.device, False)
    loaded = load_model(model_source(args), device=args.device, workspace=ctx.workspace)
    out = Path(args.out) if args.out else Path(ctx.workspace.media) / "gradcam"
    files = gradcam_video(args.video, loaded, args.layer, args.target, out)
    ctx.echo(f"overlay video: {files.video}")
    ctx.echo(f"heat curve: {files.curve_csv}, {files.curve_png}")
    return 0
