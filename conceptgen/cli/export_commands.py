"""`conceptgen export`, `verify` and `import-concepts`: glue over conceptgen.export
and conceptgen.import_concepts."""
from __future__ import annotations

from conceptgen.errors import ConfigError, IntegrityError


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
                        "(CVAT for video 1.1 XML with box and polygon tracks, one task folder per video)")
    p.add_argument("--no-masks", action="store_true", help="fiftyone / cvat-video: boxes only")
    p.set_defaults(handler=_export)

    p = sub.add_parser("verify", help="check an export folder of any format: its checksums and the videos it "
                                      "references")
    p.add_argument("dir", help="folder written by `conceptgen export` (native, fiftyone or cvat-video)")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("import-concepts",
                       help="import an export folder, CVAT for video 1.1 XML (tracks become a new version of "
                            "each concept), or a folder with one sub-folder of clips per concept")
    p.add_argument("dir", help="export folder (has manifest.json), a CVAT for video 1.1 .xml or folder of them, "
                               "or a folder of concept sub-folders")
    p.add_argument("--user", default=None, help="record this existing user as the importer")
    p.add_argument("--min-clips", type=int, default=2,
                   help="fewest readable clips a plain-folder concept needs (default 2)")
    p.add_argument("--plan", action="store_true",
                   help="CVAT XML: print per label the tubes that would be added, removed and edited; write nothing")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="CVAT XML: the label NEW is the concept OLD renamed (repeatable)")
    p.add_argument("--allow-new-labels", action="store_true",
                   help="CVAT XML: create a new approved concept for a label that is no concept here")
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
    from conceptgen.export_formats import verify_export

    report = verify_export(args.dir)
    for problem in report.problems:
        ctx.echo(f"{problem.problem}: {problem.path}")
    for note in report.notes:
        ctx.echo(f"cannot check: {note}")
    if not report.ok:
        raise IntegrityError(f"{len(report.problems)} problem(s) in the {report.kind} export {report.export_dir}; "
                             "re-export the concepts or restore the listed files")
    ctx.echo(f"ok: {report.n_files} files verified in the {report.kind} export {report.export_dir}")
    return 0


def _import(args, ctx) -> int:
    from conceptgen.import_concepts import import_concepts

    rename = {}
    for pair in args.rename:
        old, sep, new = pair.partition("=")
        if not (sep and old.strip() and new.strip()):
            raise ConfigError(f"--rename {pair!r}: write it as OLD=NEW (the concept's name, then the label in CVAT)")
        rename[old.strip()] = new.strip()
    report = import_concepts(ctx.workspace, args.dir, user=args.user, min_clips=args.min_clips,
                             plan_only=args.plan, rename=rename, allow_new_labels=args.allow_new_labels)
    for line in getattr(report, "lines", lambda: [])():
        ctx.echo(line)
    if args.plan:
        ctx.echo(f"plan only: nothing was written (run again without --plan to import {report.source_dir})")
        return 0
    ctx.echo(f"imported {len(report.concepts)} concept(s) with {report.n_examples} clip(s) "
             f"from {report.kind} {report.source_dir}")
    for item in report.skipped:
        ctx.echo(f"skipped {item.item}: {item.reason}")
    return 0
