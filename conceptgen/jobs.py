"""Background jobs: long work a person starts from the browser (an export, ...).

A job is a row of ``jobs`` (``conceptgen.orm.Job``) and a function run by the
serving process's own one-thread pool (:class:`JobRunner`): no broker, no new
service. The function reports through a :class:`JobReporter` — ``set_total`` once,
``advance`` per unit of work — which writes ``done``/``total`` to the row at most a
few times a second and raises :class:`JobCancelled` once someone asked to cancel.
The row names its owner process (host:pid); :func:`fail_orphaned_jobs`, called when
a server starts, marks the unfinished jobs of a process that is gone as failed, so
nothing stays "running" forever.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from conceptgen.errors import ConceptgenError, ConfigError, NotFoundError
from conceptgen.orm import Job, utcnow
from conceptgen.processes import pid_alive

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
ORPHANED = "the server stopped before this job finished; start it again"
WRITE_EVERY_S = 0.5  # progress writes per job: a few a second is enough for a progress bar
log = logging.getLogger(__name__)


class JobCancelled(ConceptgenError):
    """Raised inside a job's work when a person asked to cancel it."""


@dataclass
class JobStatus:
    """What ``GET /api/jobs/<id>`` answers: ``eta_s`` is the time left at the rate so far."""

    id: int
    kind: str
    state: str
    done: int
    total: int
    eta_s: float | None
    error: str | None
    result: dict[str, Any] | None
    params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("created_at", "started_at", "finished_at"):
            out[key] = out[key].isoformat() + "Z" if out[key] else None
        return out


def eta_seconds(done: int, total: int, started_at: datetime | None, now: datetime) -> float | None:
    """Seconds left if the rest goes at the rate so far; None before the first unit is done."""
    if started_at is None or done <= 0 or total <= done:
        return 0.0 if total and done >= total else None
    elapsed = (now - started_at).total_seconds()
    return round(elapsed * (total - done) / done, 1)


def status_of(job: Job, now: datetime | None = None) -> JobStatus:
    eta = eta_seconds(job.done, job.total, job.started_at, now or utcnow()) if job.state == "running" else None
    return JobStatus(job.id, job.kind, job.state, job.done, job.total, eta, job.error, job.result,
                     dict(job.params or {}), job.created_at, job.started_at, job.finished_at)


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_status(session: Session, job_id: int) -> JobStatus:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist; it may belong to another workspace")
    return status_of(job)


def list_jobs(session: Session, *, kind: str | None = None, active_only: bool = False, limit: int = 20
              ) -> list[JobStatus]:
    """The newest jobs first (active ones only with ``active_only``)."""
    q = select(Job).order_by(Job.id.desc()).limit(limit)
    if kind:
        q = q.where(Job.kind == kind)
    if active_only:
        q = q.where(Job.state.in_(ACTIVE))
    now = utcnow()
    return [status_of(j, now) for j in session.scalars(q)]


def request_cancel(session: Session, job_id: int) -> JobStatus:
    """Ask a job to stop: a queued job is cancelled at once, a running one at its next step."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist; it may belong to another workspace")
    if job.state in FINISHED:
        raise ConfigError(f"job {job_id} already {job.state}; there is nothing to cancel")
    job.cancel_requested = True
    if job.state == "queued":
        job.state, job.finished_at, job.error = "cancelled", utcnow(), "cancelled before it started"
    session.commit()
    return status_of(job)


def fail_orphaned_jobs(workspace) -> int:
    """Mark queued or running jobs of a dead process on this host failed; returns how many."""
    host = socket.gethostname()
    n = 0
    with workspace.session() as s:
        for job in s.scalars(select(Job).where(Job.state.in_(ACTIVE))):
            owner_host, _, pid = (job.owner or ":").rpartition(":")
            if owner_host == host and pid.isdigit() and pid_alive(int(pid)):
                continue
            if owner_host not in (host, ""):
                continue  # another machine's server: only it can tell
            job.state, job.error, job.finished_at = "failed", ORPHANED, utcnow()
            n += 1
    return n


class JobReporter:
    """Handed to a job's work function: ``set_total(n)``, then ``advance()`` per unit."""

    def __init__(self, workspace, job_id: int, *, write_every_s: float = WRITE_EVERY_S) -> None:
        self.workspace, self.job_id, self.write_every_s = workspace, job_id, write_every_s
        self.done, self.total = 0, 0
        self._last = 0.0

    def set_total(self, total: int) -> None:
        self.total = int(total)
        self._write(force=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._write(force=self.done >= self.total)

    def progress(self, done: int, total: int) -> None:
        """The ``on_progress(done, total)`` hook shape that library functions take."""
        self.done, self.total = int(done), int(total)
        self._write(force=done >= total)

    def _write(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.write_every_s:
            return
        self._last = now
        with self.workspace.session() as s:
            s.execute(update(Job).where(Job.id == self.job_id).values(done=self.done, total=self.total))
            cancel = s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
        if cancel:
            raise JobCancelled(f"job {self.job_id} was cancelled")


Work = Callable[[JobReporter], dict[str, Any]]


class JobRunner:
    """One worker thread per server process that runs jobs one after another.

    Jobs share the process with the requests it serves (export is mostly video
    encoding in PyAV, which releases the GIL); one at a time keeps a burst of
    exports from starving the reviewers."""

    def __init__(self, workspace) -> None:
        self.workspace = workspace
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():  # a forked worker needs its own thread
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conceptgen-job")
                self._pid = os.getpid()
            return self._pool

    def submit(self, kind: str, params: dict[str, Any], work: Work, *, user_id: int | None = None) -> int:
        """Store a queued job and start it in the background; returns its id at once."""
        with self.workspace.session() as s:
            job = Job(kind=kind, state="queued", params=dict(params), owner=owner_id(), user_id=user_id,
                      done=0, total=0, cancel_requested=False)
            s.add(job)
            s.flush()
            job_id = job.id
        self._executor().submit(self._run, job_id, work)
        return job_id

    def _set(self, job_id: int, **values: Any) -> None:
        with self.workspace.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(**values))

    def _run(self, job_id: int, work: Work) -> None:
        with self.workspace.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.state != "queued":  # cancelled while it waited
                return
            job.state, job.started_at = "running", utcnow()
        try:
            result = work(JobReporter(self.workspace, job_id))
        except JobCancelled:
            self._set(job_id, state="cancelled", error="cancelled by a user", finished_at=utcnow())
        except ConceptgenError as err:
            self._set(job_id, state="failed", error=str(err), finished_at=utcnow())
        except Exception as err:  # a job must never die silently; the page shows the reason
            log.exception("job %s failed", job_id)
            self._set(job_id, state="failed", finished_at=utcnow(),
                      error=f"unexpected error ({type(err).__name__}: {err}); see the server log")
        else:
            self._set(job_id, state="done", result=result, finished_at=utcnow())

    def shutdown(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
