"""`conceptgen export`, `verify` and `import-concepts`: glue over conceptgen.export
and conceptgen.import_concepts."""
from __future__ import annotations

from conceptgen.errors import IntegrityError


def register(sub) -> None:
    p = sub.add_parser("export", help="write approved concepts as a self-describing, checksummed dataset folder, "
                                      "a FiftyOne video dataset or CVAT for video tasks")
    p.add_argument("--concepts", required=True,
                   help="comma-separated concept names, or all-approved")
    p.add_argument("--out", required=True, help="folder to create (must not exist unless --overwrite)")
    p.add_argument("--mode", default="crop",
                   help="how clips show the region: mask (rest filled), crop (box, default) or blur (rest blurred)")
    p.add_argument("--static", action="store_true", help="also write a static variant of every example")
    p.add_argument("--num-frames", type=int, default=16, help="frames per clip (default 16)")
    p.add_argument("--side", type=int, default=112, help="clip width and height in pixels (default 112)")
    p.add_argument("--overwrite", action="store_true", help="replace --out atomically if it exists")
    p.add_argument("--format", default="native", choices=("native", "fiftyone", "cvat-video"),
                   help="native (default: rendered clips + manifest), fiftyone (FiftyOneVideoLabelsDataset: "
                        "source videos with per-frame detections, the tube id as track index) or cvat-video "
                        "(CVAT for video 1.1 XML with box and mask tracks, one task folder per video)")
    p.add_argument("--no-masks", action="store_true", help="fiftyone / cvat-video: boxes only")
    p.set_defaults(handler=_export)

    p = sub.add_parser("verify", help="check every checksum of an export folder")
    p.add_argument("dir", help="folder written by `conceptgen export`")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("import-concepts",
                       help="import an export folder, CVAT for video 1.1 XML (tracks become a new version of "
                            "each concept), or a folder with one sub-folder of clips per concept")
    p.add_argument("dir", help="export folder (has manifest.json), a CVAT annotations.xml or folder of them, "
                               "or a folder of concept sub-folders")
    p.add_argument("--user", default=None, help="record this existing user as the importer")
    p.add_argument("--min-clips", type=int, default=2,
                   help="fewest readable clips a plain-folder concept needs (default 2)")
    p.set_defaults(handler=_import)


def _export(args, ctx) -> int:
    from conceptgen.export import export_concepts
    from conceptgen.export_formats import export_for_tool

    if args.format == "native":
        report = export_concepts(ctx.workspace, args.concepts, args.out, mode=args.mode, static=args.static,
                                 num_frames=args.num_frames, side=args.side, overwrite=args.overwrite)
        what = "clip(s)"
    else:
        report = export_for_tool(ctx.workspace, args.concepts, args.out, args.format, masks=not args.no_masks,
                                 overwrite=args.overwrite)
        what = "tube(s)"
    ctx.echo(f"exported {len(report.concepts)} concept(s), {report.n_clips} {what}, "
             f"{report.n_files} file(s) to {report.out_dir}")
    for item in report.skipped:
        ctx.echo(f"skipped {item.item}: {item.reason}")
    return 0


def _verify(args, ctx) -> int:
    from conceptgen.export import verify_export

    report = verify_export(args.dir)
    for problem in report.problems:
        ctx.echo(f"{problem.problem}: {problem.path}")
    if not report.ok:
        raise IntegrityError(f"{len(report.problems)} problem(s) in {report.export_dir}; "
                             "re-export the concepts or restore the listed files")
    ctx.echo(f"ok: {report.n_files} files verified in {report.export_dir}")
    return 0


def _import(args, ctx) -> int:
    from conceptgen.import_concepts import import_concepts

    report = import_concepts(ctx.workspace, args.dir, user=args.user, min_clips=args.min_clips)
    ctx.echo(f"imported {len(report.concepts)} concept(s) with {report.n_examples} clip(s) "
             f"from {report.kind} {report.source_dir}")
    for item in report.skipped:
        ctx.echo(f"skipped {item.item}: {item.reason}")
    return 0
