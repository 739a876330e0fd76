"""`conceptgen serve | user add | list | password | remove`: thin adapters over the annotator."""
from __future__ import annotations

import getpass
import os

from conceptgen.review.throttle import ADDRESS_FACTOR, ThrottlePolicy
from conceptgen.review.users import SESSION_IDLE_MINUTES

PASSWORD_ENV = "CONCEPTGEN_PASSWORD"
DEFAULT_LIMITS = ThrottlePolicy()
# Threads per worker: a thread mostly runs Python under the process's one GIL (waitress itself
# streams responses, media included), so more threads add no speed, only contention: with 8,
# a decision holding the writers' turn shares its core with 7 page renders while every other
# decision waits (annotator_load.py --real-clips, loaded machine: decision p95 224-278 ms with 4
# threads, 299-354 with 8; reads p95 139-204 against 92-133: the README's measured figures).
DEFAULT_THREADS = 4
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
    p.add_argument("--session-idle-minutes", type=float, default=SESSION_IDLE_MINUTES,
                   help=f"a session unused this long ends (default {SESSION_IDLE_MINUTES:g})")
    p.add_argument("--https", action="store_true",
                   help="browsers reach the server over HTTPS through a TLS reverse proxy: "
                        "Secure session cookie and HSTS")
    p.add_argument("--proxies", type=int, default=0,
                   help="reverse proxies in front whose X-Forwarded-For/-Proto/-Host/-Prefix to trust (default 0)")
    p.add_argument("--login-slow-after", type=int, default=DEFAULT_LIMITS.slow_after,
                   help="failed logins per user name (within the window) after which each further try "
                        f"waits 1, 2, 4 ... s (default {DEFAULT_LIMITS.slow_after}; per address {ADDRESS_FACTOR}x)")
    p.add_argument("--login-lock-after", type=int, default=DEFAULT_LIMITS.lock_after,
                   help="failed logins per user name after which tries are refused for the lockout time "
                        f"(default {DEFAULT_LIMITS.lock_after}; per address {ADDRESS_FACTOR}x)")
    p.add_argument("--login-lockout-minutes", type=float, default=DEFAULT_LIMITS.lockout_s / 60,
                   help=f"how long a locked name or address waits (default {DEFAULT_LIMITS.lockout_s / 60:g})")
    p.add_argument("--login-window-minutes", type=float, default=DEFAULT_LIMITS.window_s / 60,
                   help="failures count while they lie within this time before the latest one "
                        f"(default {DEFAULT_LIMITS.window_s / 60:g})")
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
    q = users.add_parser("password", help="reset an account's password (its open sessions end)")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--password", default=None,
                   help=f"the new password (default ${PASSWORD_ENV}, else asked for without echo)")
    q.set_defaults(handler=_user_password)
    q = users.add_parser("remove", help="delete an account (its decisions stay in the audit log)")
    q.add_argument("name", metavar="NAME")
    q.set_defaults(handler=_user_remove)


def _serve(args, ctx):
    from annotator.security import ServerSettings
    from annotator.server import serve
    from conceptgen.review.throttle import LoginLimits

    per_name = ThrottlePolicy(slow_after=args.login_slow_after, lock_after=args.login_lock_after,
                              lockout_s=args.login_lockout_minutes * 60, window_s=args.login_window_minutes * 60)
    settings = ServerSettings(session_idle_minutes=args.session_idle_minutes, https=args.https,
                              proxies=args.proxies, login=LoginLimits(per_name, per_name.scaled(ADDRESS_FACTOR)))
    serve(ctx.workspace, host=args.host, port=args.port, threads=args.threads,
          workers=args.workers, settings=settings, announce=ctx.echo)


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


def _user_password(args, ctx):
    from conceptgen.review.users import set_password

    password = _password(args)
    with ctx.workspace.session() as s:
        set_password(s, args.name, password)
    ctx.echo(f"new password set for {args.name!r}; the user's open sessions have ended")


def _user_remove(args, ctx):
    from conceptgen.review.users import remove_user

    with ctx.workspace.session() as s:
        remove_user(s, args.name)
    ctx.echo(f"removed user {args.name!r}; the user's decisions stay in the audit log")
