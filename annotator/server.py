"""Serve the annotator with waitress: one process, or several worker processes that
share one listening socket.

Python runs one thread at a time per process (the GIL), so one waitress process
uses at most one CPU core however many threads it has. With ``workers > 1`` the
parent binds the socket, forks the workers (each with its own app, database
connections and caches) and the kernel hands each new connection to one of them.
Decisions still take turns across all workers (:func:`annotator.db.writer_turn`).
The parent only imports the engine before forking; it must not have run torch/FAISS
work (OpenMP thread pools do not survive a fork), which is why the demo serves with one.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Callable

from conceptgen.errors import ConceptgenError, ConfigError
from conceptgen.workspace import Workspace

if TYPE_CHECKING:
    from annotator.security import ServerSettings

LISTEN_BACKLOG = 1024
SWITCH_INTERVAL_S = 0.001


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (raises ConfigError if it is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host") from None
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def _serve_one(workspace: Workspace, sock: socket.socket, threads: int, settings: ServerSettings | None) -> None:
    """Run waitress on an already bound socket in this process until stopped."""
    import logging

    from waitress import serve as waitress_serve

    from annotator import create_app

    app = create_app(workspace, settings=settings)
    # A thread back from SQLite or a socket waits up to this long for the GIL while another
    # thread renders a page (Python's default is 5 ms): a decision in the writers' turn makes
    # a dozen such calls, and every other decision waits for it (annotator_load.py --real-clips).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # a busy queue is not an error
    waitress_serve(app, sockets=[sock], threads=threads, ident="conceptgen")


def serve(workspace: Workspace, *, host: str, port: int, threads: int, workers: int,
          settings: ServerSettings | None = None, announce: Callable[[str], None] = print) -> None:
    """Serve until interrupted: ``workers`` processes of ``threads`` threads each
    (``conceptgen serve`` holds the defaults: one worker per core, 4 threads);
    ``settings``: session idle time, HTTPS, proxies, login limits."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a TCP port; use 1-65535")
    if threads < 1 or workers < 1:
        raise ConfigError("--threads and --workers must be 1 or more")
    if workers > 1 and not hasattr(os, "fork"):
        raise ConfigError("--workers above 1 needs a system with fork(); use --workers 1 here")
    if workers > 1 and (":memory:" in workspace.db_url or workspace.db_url.rstrip("/") == "sqlite:"):
        raise ConfigError("an in-memory database cannot be shared by worker processes; use --workers 1")
    workspace.engine  # migrate once, in the parent, before any worker opens the database
    from annotator.app import load_secret_key

    load_secret_key(workspace)  # made (or found bad: one clear error) before any worker starts
    # Import the engine (torch, FAISS) now: done lazily, the first merge or split would stall every request.
    import conceptgen.cluster  # noqa: F401
    import conceptgen.embed  # noqa: F401

    sock = bind_socket(host, port)  # last: a client that can connect is served within moments

    announce(f"conceptgen annotator on http://{host}:{port}/  ({workers} worker(s) x {threads} threads; "
             f"workspace {workspace.root}; Ctrl-C stops)")
    if workers == 1:
        _serve_one(workspace, sock, threads, settings)
        return
    workspace.close()  # no pooled SQLite connection may cross a fork
    children = [_fork_worker(workspace, sock, threads, settings) for _ in range(workers)]
    _supervise(children)


def _fork_worker(workspace: Workspace, sock: socket.socket, threads: int, settings: ServerSettings | None) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:  # the child: SIGTERM ends it; Ctrl-C reaches the whole process group, and the parent handles it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _serve_one(workspace, sock, threads, settings)
    except BaseException as err:  # a worker must never return into the parent's code
        print(f"annotator worker {os.getpid()} stopped: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        os._exit(code)


def _supervise(children: list[int]) -> None:
    """Wait for the workers; SIGTERM/SIGINT (or any worker dying) stops them all."""
    stopping = False

    def stop(_signum=None, _frame=None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    failed = None
    try:
        alive = set(children)
        while alive:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            alive.discard(pid)
            if not stopping:
                failed = f"annotator worker {pid} exited (status {status}); the others were stopped"
                stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if failed:
        raise ConceptgenError(f"{failed}; see the messages above and start `conceptgen serve` again")
