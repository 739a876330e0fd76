"""`conceptgen serve | user add | user list`: thin adapters over the annotator."""
from __future__ import annotations

import getpass
import os

PASSWORD_ENV = "CONCEPTGEN_PASSWORD"
DEFAULT_THREADS = 8
# One process per core (at most 4): a Python process runs on one core at a time (the GIL).
DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1)) if hasattr(os, "fork") else 1


def register(sub) -> None:
    p = sub.add_parser("serve", help="start the review web app (waitress) on this machine")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"threads per worker process (default {DEFAULT_THREADS})")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help="worker processes sharing the port; each uses at most one CPU core "
                        f"(default {DEFAULT_WORKERS}: one per core, at most 4)")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("user", help="manage annotator accounts")
    users = p.add_subparsers(dest="user_command", metavar="ACTION")
    users.required = True
    q = users.add_parser("add", help="create an annotator account")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--password", default=None,
                   help=f"the password (default ${PASSWORD_ENV}, else asked for without echo)")
    q.set_defaults(handler=_user_add)
    q = users.add_parser("list", help="list annotator accounts")
    q.set_defaults(handler=_user_list)


def _serve(args, ctx):
    from annotator.server import serve

    serve(ctx.workspace, host=args.host, port=args.port, threads=args.threads,
          workers=args.workers, announce=ctx.echo)


def _password(args) -> str:
    if args.password is not None:
        return args.password
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("repeat it: ") != first:
        from conceptgen.errors import ConfigError

        raise ConfigError("the two passwords differ; run the command again")
    return first


def _user_add(args, ctx):
    from conceptgen.review.users import create_user

    password = _password(args)
    with ctx.workspace.session() as s:
        user = create_user(s, args.name, password)
        ctx.echo(f"created user {user.name!r} (id {user.id})")


def _user_list(args, ctx):
    from conceptgen.review.users import list_users

    with ctx.workspace.session() as s:
        users = list_users(s)
        for user in users:
            ctx.echo(f"{user.id}\t{user.name}\t{user.created_at:%Y-%m-%d %H:%M}")
        if not users:
            ctx.echo("no users yet; add one with `conceptgen user add NAME`")
