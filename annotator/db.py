"""One database session per request, opened lazily and closed at teardown; and the
writer's turn that decisions take one at a time."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

from flask import current_app, g
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from conceptgen.workspace import Workspace

try:
    import fcntl
except ImportError:  # not POSIX: one server process, the thread lock alone suffices
    fcntl = None

WRITE_LOCK_FILE = "annotator.write.lock"
# PostgreSQL: the decisions' turn is this transaction-scoped advisory lock, shared by
# every worker on every machine that serves the database (a file lock is one machine's).
DECISION_LOCK_KEY = 0x636F6E63  # "conc"


def workspace() -> Workspace:
    return current_app.extensions["conceptgen_workspace"]


def db() -> Session:
    """This request's session (the app's teardown closes it; uncommitted work rolls back)."""
    if "db" not in g:
        g.db = workspace().sessions()
    return g.db


class WriterTurn:
    """Decisions take turns: a thread lock inside a process, plus an exclusive
    ``flock`` on ``WORKSPACE/annotator.write.lock`` across the server's worker
    processes. SQLite has one writer anyway, and a queue here is fairer and faster
    than SQLite's sleeping busy-wait; the version checks keep other writers safe.
    On PostgreSQL the turn is a database advisory lock instead, so servers on several
    machines take turns too (and multi-row decisions such as merges cannot deadlock)."""

    def __init__(self) -> None:
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = -1

    def _file(self, ws: Workspace) -> int | None:
        if fcntl is None:
            return None
        if self._pid != os.getpid():  # opened per process: flock is per open file, not inherited safely
            ws.root.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(ws.root / WRITE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    @contextmanager
    def __call__(self, ws: Workspace) -> Iterator[None]:
        if make_url(ws.db_url).get_backend_name() == "postgresql":
            # Held by this request's transaction until its commit or rollback.
            db().execute(select(func.pg_advisory_xact_lock(DECISION_LOCK_KEY)))
            yield
            return
        with self._thread_lock:
            fd = self._file(ws)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)


writer_turn = WriterTurn()
