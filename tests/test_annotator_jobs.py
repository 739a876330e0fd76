"""Background jobs (``conceptgen.jobs``) on a real SQLite workspace: progress and ETA,
cancel, a failure's one-line reason, and a restarted server failing orphaned jobs."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from conceptgen import jobs
from conceptgen.errors import ConfigError, DataError
from conceptgen.orm import Job, utcnow
from conceptgen.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    ws = Workspace.resolve(tmp_path / "ws")
    yield ws
    ws.close()


def _wait_state(ws, job_id, states, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ws.session() as s:
            status = jobs.job_status(s, job_id)
        if status.state in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}")


def test_job_reports_progress_and_result(ws):
    runner = jobs.JobRunner(ws)
    seen = []

    def work(reporter):
        reporter.set_total(5)
        for _ in range(5):
            reporter.advance()
            seen.append(reporter.done)
        return {"answer": 42}

    job_id = runner.submit("test", {"x": 1}, work)
    status = _wait_state(ws, job_id, ("done",))
    assert (status.done, status.total, status.result, status.params) == (5, 5, {"answer": 42}, {"x": 1})
    assert seen == [1, 2, 3, 4, 5] and status.started_at <= status.finished_at
    runner.shutdown()


def test_running_job_can_be_cancelled_and_stops(ws):
    runner = jobs.JobRunner(ws)
    steps = []
    started = threading.Event()

    def work(reporter):
        reporter.set_total(10_000)
        started.set()
        for _ in range(10_000):
            time.sleep(0.01)
            steps.append(1)
            reporter.progress(len(steps), 10_000)
        return {}

    job_id = runner.submit("test", {}, work)
    assert started.wait(30)
    _wait_state(ws, job_id, ("running",))
    with ws.session() as s:
        jobs.request_cancel(s, job_id)
    status = _wait_state(ws, job_id, ("cancelled",))
    n = len(steps)
    time.sleep(0.3)
    assert len(steps) == n < 10_000 and status.error == "cancelled by a user"
    with ws.session() as s, pytest.raises(ConfigError, match="already cancelled"):
        jobs.request_cancel(s, job_id)
    runner.shutdown()


def test_failed_job_keeps_its_one_line_reason(ws):
    runner = jobs.JobRunner(ws)

    def work(reporter):
        raise DataError("concept x has no examples;\n accept a cluster first")

    status = _wait_state(ws, runner.submit("test", {}, work), ("failed",))
    assert "\n" not in status.error and "accept a cluster first" in status.error
    runner.shutdown()


def test_eta_is_the_time_left_at_the_rate_so_far():
    start = utcnow()
    assert jobs.eta_seconds(25, 100, start, start + timedelta(seconds=10)) == 30.0
    assert jobs.eta_seconds(0, 100, start, start + timedelta(seconds=10)) is None
    assert jobs.eta_seconds(100, 100, start, start + timedelta(seconds=10)) == 0.0


def test_restart_fails_jobs_of_a_dead_server_but_not_of_a_live_one(ws):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    with ws.session() as s:
        s.add_all([Job(kind="export", state="running", params={}, owner=f"{host}:{dead.pid}", started_at=utcnow()),
                   Job(kind="export", state="running", params={}, owner=jobs.owner_id(), started_at=utcnow()),
                   Job(kind="export", state="done", params={}, owner=f"{host}:{dead.pid}")])
    from annotator import create_app

    create_app(ws, {"TESTING": True})  # what a restarted server does first
    with ws.session() as s:
        states = [(j.state, j.error) for j in s.scalars(select(Job).order_by(Job.id))]
    assert states == [("failed", jobs.ORPHANED), ("running", None), ("done", None)]
