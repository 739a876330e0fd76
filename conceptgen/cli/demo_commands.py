"""`conceptgen demo [--headless]`: a thin adapter over conceptgen.demo."""
from __future__ import annotations

HEADLESS_HELP = (
    "run the loop without a person and exit: accept clusters automatically (--accept), run TCAV with "
    "static/dynamic comparison, store it and write the plots, and export the concepts to WORKSPACE/exports/demo")
ACCEPT_HELP = (
    "the headless rule: ground-truth (default: per class, the cluster the synthetic ground truth says carries "
    "its motion, named gt-<class>, and a distractor cluster, gt-distractor) or cohesion (candidate, supported "
    "clusters with >= {min_videos} distinct videos and >= {min_examples} members, ranked by cohesion x "
    "ln(size), until --top clusters are accepted; named auto-1, auto-2, ...); both leave >= {min_pool} tubes "
    "for TCAV's random sets")


def register(sub) -> None:
    from conceptgen.demo import DEFAULT_TOP_K, DEFAULT_VIDEOS, MIN_RANDOM_POOL, MIN_VIDEOS, DemoConfig
    from tcav.examples import MIN_CONCEPT_EXAMPLES

    p = sub.add_parser(
        "demo", help="the whole loop on a synthetic set: discover concepts, review them, score and export",
        description="Generate a synthetic set in WORKSPACE/synth, train or reuse the demo model, ingest, "
                    "extract and cluster, create the user 'demo' (password in WORKSPACE/demo_login.txt), "
                    "then start the annotator. Every step reuses what an earlier run made.")
    p.add_argument("--videos", type=int, default=DEFAULT_VIDEOS,
                   help=f"synthetic videos (default {DEFAULT_VIDEOS}, at least {MIN_VIDEOS})")
    p.add_argument("--seed", type=int, default=0, help="seed of every step (default 0)")
    p.add_argument("--port", type=int, default=8000, help="annotator TCP port on 127.0.0.1 (default 8000)")
    p.add_argument("--headless", action="store_true", help=HEADLESS_HELP)
    p.add_argument("--accept", default=DemoConfig.accept, choices=("ground-truth", "cohesion"),
                   help=ACCEPT_HELP.format(min_videos=DemoConfig.min_videos, min_examples=MIN_CONCEPT_EXAMPLES,
                                           min_pool=MIN_RANDOM_POOL))
    p.add_argument("--top", type=int, default=DEFAULT_TOP_K, metavar="K",
                   help=f"clusters to accept with --headless --accept cohesion (default {DEFAULT_TOP_K})")
    p.add_argument("--epochs", type=int, default=None, help="demo model training epochs, exactly (default: the model's, "
                                                                 "more on a small set to make 200 steps)")
    p.add_argument("--segmenter", default=DemoConfig.segmenters,
                   help=f"region proposals for extraction (default {DemoConfig.segmenters}; "
                        "motion alone is faster but matches few ground-truth objects)")
    p.set_defaults(handler=_demo)


def _demo(args, ctx) -> int:
    from annotator.server import serve
    from conceptgen import demo
    from conceptgen.errors import ConfigError

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port; use 1-65535")
    config = demo.DemoConfig(n_videos=args.videos, seed=args.seed, top_k=args.top, epochs=args.epochs,
                             segmenters=args.segmenter, accept=args.accept)
    if args.headless:
        for line in demo.summary_lines(demo.run_headless(ctx.workspace, config, log=ctx.echo)):
            ctx.echo(line)
        return 0
    prepared = demo.prepare_demo(ctx.workspace, config, log=ctx.echo)
    login = prepared.login
    ctx.echo(f"log in as user {login.name!r} with password {login.password!r} (kept in {login.path})")
    # One worker: forking after training in this process is unsafe (torch threads).
    serve(ctx.workspace, host="127.0.0.1", port=args.port, threads=8, workers=1, announce=ctx.echo)  # until Ctrl-C
    ctx.echo("annotator stopped; run `conceptgen demo` again to resume where you left off")
    return 0
