"""`conceptgen synth`, `conceptgen train-demo-model` and `conceptgen models`."""
from __future__ import annotations

from pathlib import Path


from conceptgen.cli.model_options import add_model_options, model_source


def register(sub) -> None:
    p = sub.add_parser("synth", help="write synthetic action videos with exact ground truth")
    p.add_argument("--out", required=True, type=Path, help="output folder (empty, or a set to resume)")
    p.add_argument("--videos", type=int, default=200, help="number of videos (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--frames", type=int, default=16, help="frames per video (default 16)")
    p.add_argument("--size", type=int, default=112, help="frame side in pixels (default 112)")
    p.set_defaults(handler=_synth)

    p = sub.add_parser("train-demo-model", help="train the demo model on a synthetic set")
    p.add_argument("--data", required=True, type=Path, help="folder written by `conceptgen synth`")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default from TrainConfig)")
    p.add_argument("--force", action="store_true", help="retrain even if a matching checkpoint exists")
    p.set_defaults(handler=_train_demo_model)

    p = sub.add_parser("models", help="list model names, or one model's layers")
    p.add_argument("--layers", metavar="NAME", default=None,
                   help="print the layer names of model NAME; [pooled] marks layers after global pooling; "
                        "a transformer's layers show their tokens (N, D) and (D, T, H, W)")
    add_model_options(p, model_flag=False)
    p.set_defaults(handler=_models)


def _synth(args, ctx):
    from conceptgen.synth import generate_synthetic_set
    dataset = generate_synthetic_set(args.out, n_videos=args.videos, seed=args.seed,
                                     num_frames=args.frames, size=args.size)
    n_test = len(dataset.split("test"))
    ctx.echo(f"wrote {len(dataset.videos)} videos ({len(dataset.videos) - n_test} train, "
             f"{n_test} test) to {dataset.root}")


def _train_demo_model(args, ctx):
    from conceptgen.demo_model import train_demo_model
    report = train_demo_model(args.data, ctx.workspace, seed=args.seed, epochs=args.epochs,
                              force=args.force)
    how = "reused existing checkpoint" if report.reused else f"trained in {report.seconds:.1f} s"
    ctx.echo(f"{how}: {report.checkpoint}")
    ctx.echo(f"train accuracy {report.train_accuracy:.3f} ({report.n_train} videos)")
    ctx.echo(f"held-out accuracy {report.test_accuracy:.3f} ({report.n_test} videos)")


def _models(args, ctx):
    from conceptgen import registry
    if args.layers is None:
        for name in registry.available_models():
            ctx.echo(name)
        ctx.echo("(or a conceptgen checkpoint path, a model card .json/.yaml, or package.module:function)")
        return
    loaded = registry.load_model(model_source(args, args.layers), workspace=ctx.workspace)
    transformer = loaded.tokens is not None or "tokens_note" in loaded.metadata
    if loaded.tokens is not None:
        ctx.echo(f"# patch tokens: {loaded.tokens.describe()}; token layers are read as (D, T, H, W)")
    for layer in registry.describe_layers(loaded):
        ctx.echo(_layer_line(layer, transformer))


def _layer_line(layer, transformer: bool) -> str:
    """``name [pooled]``; a transformer's layers also show their tokens and shape."""
    line = f"{layer.name} [pooled]" if layer.pooled else layer.name
    if not transformer or layer.shape is None or layer.pooled:
        return line
    if layer.tokens is not None:
        line += f"  tokens {layer.tokens} -> {layer.shape}"
    else:
        line += f"  {layer.shape}"
    return line + (f"  (CAVs only, no temporal views: {layer.note})" if layer.note else "")
