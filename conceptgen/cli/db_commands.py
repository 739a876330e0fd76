"""`conceptgen db upgrade|downgrade|current` and `conceptgen doctor`."""
from __future__ import annotations

from conceptgen import db


def register(sub) -> None:
    p = sub.add_parser("db", help="database migrations")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dbsub.required = True
    up = dbsub.add_parser("upgrade", help="upgrade the schema (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(handler=_upgrade)
    down = dbsub.add_parser("downgrade", help="downgrade the schema (default: to base)")
    down.add_argument("revision", nargs="?", default="base")
    down.set_defaults(handler=_downgrade)
    cur = dbsub.add_parser("current", help="print the current revision")
    cur.set_defaults(handler=_current)

    doc = sub.add_parser("doctor", help="check that the store, the workspace's media and its caches belong "
                                        "together (exit 1 on a problem)")
    doc.add_argument("--verify-hashes", action="store_true",
                     help="also re-hash every preview and imported clip against its recorded checksum")
    doc.set_defaults(handler=_doctor)


def _engine(ctx):
    ctx.workspace.ensure_dirs()
    return db.make_engine(ctx.workspace.db_url)


def _upgrade(args, ctx):
    engine = _engine(ctx)
    db.upgrade(engine, args.revision)
    ctx.echo(f"database at {db.current_revision(engine) or 'base'}")


def _downgrade(args, ctx):
    engine = _engine(ctx)
    db.downgrade(engine, args.revision)
    ctx.echo(f"database at {db.current_revision(engine) or 'base'}")


def _current(args, ctx):
    engine = _engine(ctx)
    rev = db.current_revision(engine)
    head = db.head_revision()
    ctx.echo(f"{rev or 'base'}{' (head)' if rev == head else f' (head is {head})'}")


def _doctor(args, ctx):
    from conceptgen.doctor import check_workspace

    findings = check_workspace(ctx.workspace, verify_hashes=args.verify_hashes)
    for f in findings:
        ctx.echo(f"{'ok' if f.ok else 'FAIL':<5} {f.area}: {f.message}")
    problems = sum(not f.ok for f in findings)
    ctx.echo(f"doctor: {problems} problem(s)" if problems else "doctor: no problems")
    return 1 if problems else 0
