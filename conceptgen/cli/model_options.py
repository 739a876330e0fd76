"""The model flags every command shares (`--model`, `--weights`, `--model-kwargs`,
`--input-spec`, `--classes`) and the one function that turns them into a
:class:`conceptgen.registry.ModelSource`."""
from __future__ import annotations


def add_model_options(p, *, model_flag: bool = True, model_default: str | None = None,
                      required: bool = True) -> None:
    """Add the model flags to parser ``p`` (``model_flag=False``: the command names the
    model elsewhere, as `models --layers NAME`; ``required=False``: the command checks)."""
    if model_flag:
        p.add_argument("--model", required=required and model_default is None, default=model_default,
                       help="a name from `conceptgen models`, demo, a conceptgen checkpoint, a model card "
                            "(.json/.yaml), a Hugging Face save_pretrained folder, or package.module:function "
                            "(your own network's builder)"
                            + ("" if required or model_default else " (required)"))
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="a state_dict for the model (a sidecar PATH.json with spec/class_names is read)")
    p.add_argument("--pretrained", action="store_true",
                   help="a registry model's published weights (downloaded where the network allows)")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="keyword arguments for the model's builder, e.g. '{\"model_depth\": 18}'")
    p.add_argument("--input-spec", default=None, metavar="JSON",
                   help='the clips the model eats: \'{"num_frames": 8, "side": 112[, "mean": [..], "std": [..], '
                        '"layout": "BCTHW"|"BTCHW"]}\' (layout: where time sits; default the model\'s own, else BCTHW)')
    p.add_argument("--classes", default=None, metavar="A,B,C|FILE",
                   help="class names, comma-separated or a file with one per line (default 0..N-1)")


def model_source(args, model: str | None = None):
    """The parsed flags as a ModelSource (``model`` overrides ``args.model``)."""
    from conceptgen.registry import ModelSource, parse_class_names, parse_input_spec, parse_model_kwargs

    return ModelSource(model if model is not None else args.model, weights=args.weights,
                       model_kwargs=parse_model_kwargs(args.model_kwargs), spec=parse_input_spec(args.input_spec),
                       class_names=parse_class_names(args.classes),
                       pretrained=bool(getattr(args, "pretrained", False)))
