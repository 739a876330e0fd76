"""The `conceptgen` command: a thin adapter over the library.

Each command group lives in its own module under ``conceptgen.cli`` and exposes
``register(subparsers)``; each command's handler is ``handler(args, ctx) -> int | None``.
User errors (ConceptgenError), and a database that went away, print one line and exit
non-zero; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError

from conceptgen import db
from conceptgen.errors import ConceptgenError
from conceptgen.progress import set_quiet
from conceptgen.workspace import Workspace

# One module per command group; each owns its subcommands.
COMMAND_MODULES = (
    "conceptgen.cli.db_commands",      # db upgrade|downgrade|current
    "conceptgen.cli.media_commands",   # synth, train-demo-model, models
    "conceptgen.cli.engine_commands",  # ingest, extract, cluster, runs
    "conceptgen.cli.annotator_commands",  # serve, user add
    "conceptgen.cli.tcav_commands",    # tcav, gradcam
    "conceptgen.cli.export_commands",  # export, verify, import-concepts
    "conceptgen.cli.demo_commands",    # demo
)


@dataclass
class CliContext:
    workspace_dir: str | None
    db_url: str | None
    quiet: bool = False
    debug: bool = False
    _workspace: Workspace | None = field(default=None, repr=False)

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = Workspace.resolve(self.workspace_dir, self.db_url)
        return self._workspace

    def echo(self, message: str = "") -> None:
        print(message, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conceptgen",
        description="Discover, review, score and export spatiotemporal concepts for video models.",
    )
    parser.add_argument("--workspace", default=None,
                        help="workspace folder (default ./workspace, or $CONCEPTGEN_WORKSPACE)")
    parser.add_argument("--db-url", default=None,
                        help="SQLAlchemy database URL (default sqlite in the workspace, or $CONCEPTGEN_DB_URL)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = CliContext(args.workspace, args.db_url, quiet=args.quiet, debug=args.debug)
    set_quiet(args.quiet)
    if not args.debug:
        warnings.filterwarnings("ignore")
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        code = args.handler(args, ctx)
    except ConceptgenError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except DBAPIError as err:  # a store that went away outside a session scope: still one line
        if args.debug or not db.is_outage(err):
            raise
        lost = db.outage_error(ctx.workspace.db_url, err)
        print(f"error: {lost}", file=sys.stderr)
        return lost.exit_code
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if ctx._workspace is not None:
            ctx._workspace.close()
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
