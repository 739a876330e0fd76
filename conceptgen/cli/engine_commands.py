"""`conceptgen ingest | extract | cluster | runs`: thin adapters over
conceptgen.ingest, conceptgen.extract and conceptgen.cluster."""
from __future__ import annotations


from conceptgen.cli.model_options import add_model_options, model_source


def register(sub) -> None:
    p = sub.add_parser("ingest", help="add videos (files, folders, globs) to the workspace")
    p.add_argument("paths", nargs="+", metavar="PATH", help="video files, folders (recursive) or globs")
    p.add_argument("--labels", metavar="FILE.csv",
                   help="CSV with columns path|filename,label[,split] (default: parent folder name)")
    p.add_argument("--split", metavar="NAME", help="split name for these videos (e.g. train, test)")
    p.set_defaults(handler=_ingest)

    p = sub.add_parser("extract", help="segment, track, embed and preview every video into a run (resumable)")
    add_model_options(p, required=False)
    p.add_argument("--segmenter", default=None,
                   help="comma-separated: motion,supervoxel,foreground,sam (default motion,supervoxel,foreground; "
                        "sam,motion with --sam-checkpoint)")
    p.add_argument("--sam-checkpoint", metavar="PATH")
    p.add_argument("--sam-model", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    p.add_argument("--layers", default=None, help="comma-separated dotted layer names (default: the model's default)")
    p.add_argument("--pooling", default="mean", choices=("mean", "time"))
    p.add_argument("--mode", default=None, help="render mode: mask|crop|blur (default mask; recorded in the run for tcav)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--amp", action="store_true", help="mixed precision (GPU only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, default=256, help="downscale frames so max(H, W) <= this (pixels)")
    p.add_argument("--max-frames", type=int, default=None, help="process only the first N frames of each video")
    p.add_argument("--videos", default="all", help="'all' or 'label=NAME'")
    p.add_argument("--video-time-limit", type=float, default=1800.0, metavar="SECONDS",
                   help="a video still running after this long is recorded as failed and the run goes on "
                        "(default 1800; 0: no limit)")
    p.add_argument("--run", type=int, default=None, metavar="ID", help="resume this run (its stored config)")
    add_executor_options(p)
    p.set_defaults(handler=_extract)

    p = sub.add_parser("cluster", help="cluster a run's tube embeddings into candidate concepts")
    p.add_argument("--run", type=int, required=True, metavar="ID")
    p.add_argument("--layer", default=None,
                   help="layer to cluster (default: the stored layer that separates the run's tubes best)")
    p.add_argument("--include-background", action="store_true",
                   help="also cluster tubes tagged background (large, static, edge-touching, weak-edged regions)")
    p.add_argument("--k", default="auto", help="'auto' (best silhouette) or a number of clusters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=5, help="clusters smaller than this are marked unsupported")
    p.add_argument("--min-videos", type=int, default=3,
                   help="clusters spanning fewer distinct videos are marked unsupported")
    p.set_defaults(handler=_cluster)

    p = sub.add_parser("runs", help="list extraction runs, or show one run's videos")
    p.add_argument("run_id", nargs="?", type=int, metavar="ID")
    p.set_defaults(handler=_runs)


def add_executor_options(p) -> None:
    """--executor/--address/--workers/--num-gpus-per-task (extract and tcav share them)."""
    p.add_argument("--executor", default="inprocess", choices=("inprocess", "ray"),
                   help="where the model work runs: this process (default) or a Ray cluster")
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="Ray cluster to join: 'auto' (this node's cluster) or the head's HOST:PORT "
                        "(default: start a private Ray on this machine, never another cluster)")
    p.add_argument("--connect-timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for the Ray head to answer before giving up (default 30)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray workers (default: one per CPU, or per --num-gpus-per-task GPUs, of the cluster)")
    p.add_argument("--num-gpus-per-task", type=float, default=0.0, metavar="F",
                   help="GPUs per Ray worker, e.g. 1 or 0.5 (workers then run on CUDA)")


def executor_from_args(args):
    from conceptgen.executors import make_executor
    from conceptgen.ray_connection import RAY_CONNECT_TIMEOUT_S

    return make_executor(args.executor, address=args.address, workers=args.workers,
                         num_gpus_per_task=args.num_gpus_per_task,
                         connect_timeout_s=RAY_CONNECT_TIMEOUT_S if args.connect_timeout is None
                         else args.connect_timeout)


def _ingest(args, ctx):
    from conceptgen.ingest import ingest

    report = ingest(ctx.workspace, args.paths, labels_csv=args.labels, split=args.split)
    for line in report.summary_lines():
        ctx.echo(line)


def _extract(args, ctx):
    from conceptgen.extract import ExtractConfig, check_default_model_fits, extract

    if args.run is None and args.model is None:  # no model named: the demo model, on synthetic videos only
        check_default_model_fits(ctx.workspace, args.videos)
        args.model = "demo"
    config = None if args.run is not None else ExtractConfig.from_options(
        source=model_source(args), segmenter=args.segmenter,
        sam_checkpoint=args.sam_checkpoint, sam_model=args.sam_model, layers=args.layers,
        pooling=args.pooling, mode=args.mode, amp=args.amp, seed=args.seed,
        max_side=args.max_side, max_frames=args.max_frames, videos=args.videos)
    ctx.workspace.engine  # an unreachable database fails here, before Ray starts
    with executor_from_args(args) as executor:
        report = extract(ctx.workspace, config, run_id=args.run, batch_size=args.batch_size, device=args.device,
                         executor=executor, video_time_limit=args.video_time_limit or None)
    for line in report.summary_lines():
        ctx.echo(line)
    _warn_layers(ctx, report.run_id)
    return 1 if report.n_failed and not report.n_done else 0


def _warn_layers(ctx, run_id: int) -> None:
    """One warning line per stored layer that does not separate the run's tubes."""
    from conceptgen.cluster import check_run_layers
    from conceptgen.errors import DataError

    try:
        checks = check_run_layers(ctx.workspace, run_id)
    except DataError:
        return
    for check in checks:
        if check.warning():
            ctx.echo(f"warning: {check.warning()}")


def _cluster(args, ctx):
    from conceptgen.cluster import cluster_run

    k = args.k if args.k == "auto" else _int_option("--k", args.k)
    rep = cluster_run(ctx.workspace, args.run, layer=args.layer, k=k, seed=args.seed,
                      min_size=args.min_size, min_videos=args.min_videos,
                      include_background=args.include_background)
    for check in rep.layer_checks:
        ctx.echo(f"layer {check.layer}: {'separates' if check.separates else 'does NOT separate'} the tubes "
                 f"({check.reason})")
    if len(rep.layer_checks) > 1 and args.layer is None:
        ctx.echo(f"clustering at {rep.layer}, the layer that separates best (choose another with --layer)")
    if rep.separation is not None and rep.separation.warning():
        ctx.echo(f"warning: {rep.separation.warning()}")
    background = (f", {rep.n_background} background tubes left out (--include-background keeps them)"
                  if rep.n_background else "")
    ctx.echo(f"clustering {rep.clustering_id}: run {rep.run_id}, layer {rep.layer}, {rep.n_tubes} tubes, "
             f"k={rep.k}, {rep.n_supported} supported{background}")
    ctx.echo("cohesion: 1 = identical members, 0 = as loose as two random tubes of the run")
    ctx.echo(f"{'cluster':>7} {'size':>5} {'videos':>6} {'cohesion':>8} {'outliers':>8} supported")
    for c in rep.clusters:
        ctx.echo(f"{c.label:>7} {len(c.members):>5} {c.n_videos:>6} {c.cohesion:>8.3f} "
                 f"{int(c.outliers.sum()):>8} {'yes' if c.supported else 'no'}")


def _runs(args, ctx):
    from conceptgen.extract import describe_run, list_runs

    if args.run_id is not None:
        for line in describe_run(ctx.workspace, args.run_id):
            ctx.echo(line)
        return
    rows = list_runs(ctx.workspace)
    if not rows:
        ctx.echo("no runs yet; start one with `conceptgen extract`")
        return
    ctx.echo(f"{'run':>4} {'status':<9} {'model':<12} {'done':>5} {'failed':>6} {'tubes':>6} {'clusterings':>11} created")
    for r in rows:
        ctx.echo(f"{r.id:>4} {r.status:<9} {r.model_name:<12} {r.n_done:>5} {r.n_failed:>6} {r.n_tubes:>6} "
                 f"{r.n_clusterings:>11} {r.created_at:%Y-%m-%d %H:%M}")


def _int_option(name: str, value: str) -> int:
    from conceptgen.errors import ConfigError

    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be 'auto' or an integer, got {value!r}") from None
