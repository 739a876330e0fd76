"""`conceptgen serve | user add | user list`: thin adapters over the annotator."""
from __future__ import annotations

import getpass
import os

PASSWORD_ENV = "CONCEPTGEN_PASSWORD"


def register(sub) -> None:
    p = sub.add_parser("serve", help="start the review web app (waitress) on this machine")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
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
    import logging

    from waitress import serve

    from annotator import create_app
    from conceptgen.errors import ConfigError

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port; use 1-65535")
    app = create_app(ctx.workspace)
    # Import the engine (torch, FAISS) now: done lazily, the first merge or split would stall every request.
    import conceptgen.cluster  # noqa: F401
    import conceptgen.embed  # noqa: F401

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # a busy queue is not an error
    ctx.echo(f"conceptgen annotator on http://{args.host}:{args.port}/  (workspace {ctx.workspace.root}; Ctrl-C stops)")
    serve(app, host=args.host, port=args.port, threads=args.threads, ident="conceptgen")


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
    from annotator.users import create_user

    password = _password(args)
    with ctx.workspace.session() as s:
        user = create_user(s, args.name, password)
        ctx.echo(f"created user {user.name!r} (id {user.id})")


def _user_list(args, ctx):
    from annotator.users import list_users

    with ctx.workspace.session() as s:
        users = list_users(s)
        for user in users:
            ctx.echo(f"{user.id}\t{user.name}\t{user.created_at:%Y-%m-%d %H:%M}")
        if not users:
            ctx.echo("no users yet; add one with `conceptgen user add NAME`")
