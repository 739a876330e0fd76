"""`conceptgen serve --workers N` (waitress in N processes on one socket) and the
writer's turn that keeps decisions one at a time across those processes."""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from annotator.db import WriterTurn
from conceptgen.cli import main
from conceptgen.workspace import Workspace

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not Path("/proc/self/stat").exists(),
                                reason="worker processes need fork() and /proc")


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until_serving(proc: subprocess.Popen, url: str, seconds: float = 60) -> requests.Response:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return requests.get(url, timeout=2)
        except requests.RequestException:  # not listening yet, or still loading
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, f"server did not start within {seconds} s"
            time.sleep(0.3)


def _try_login(port: int, name: str, password: str, http: requests.Session | None = None) -> requests.Response:
    """Log in through the form (a fresh connection, so any worker may answer, unless ``http`` is given)."""
    with requests.Session() as fresh:
        http = http or fresh
        page = http.get(f"http://127.0.0.1:{port}/login", timeout=10).text
        token = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        return http.post(f"http://127.0.0.1:{port}/login", allow_redirects=False, timeout=10,
                         data={"username": name, "password": password, "csrf_token": token})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("stop", ["sigterm-to-serve", "ctrl-c-to-the-group"])
def test_two_workers_serve_one_port_and_stop_together(review_ws, stop):
    ws, info = review_ws
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "conceptgen", "--workspace", str(ws.root), "serve",
                             "--port", str(port), "--threads", "2", "--workers", "2",
                             "--login-slow-after", "2", "--login-lock-after", "2", "--login-lockout-minutes", "60"],
                            env={**os.environ, "CONCEPTGEN_QUIET": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert _wait_until_serving(proc, f"http://127.0.0.1:{port}/login").status_code == 200
        workers = _children(proc.pid)
        assert len(workers) == 2 and all(_alive(w) for w in workers)
        # fresh connections, so both workers take some: every one answers correctly
        codes = {requests.get(f"http://127.0.0.1:{port}/api/runs", timeout=10).status_code for _ in range(12)}
        assert codes == {401}
        # failed logins are counted in the database: after two, every worker refuses the name
        tries = [_try_login(port, "mallory", "not-the-password") for _ in range(8)]
        assert [r.status_code for r in tries] == [401, 401] + [429] * 6
        assert all(0 < int(r.headers["Retry-After"]) <= 3600 for r in tries[2:])
        assert all(r.headers["X-Frame-Options"] == "DENY" for r in tries)
        with requests.Session() as http:
            r = _try_login(port, info.user, info.password, http)
            assert r.status_code == 302
            assert http.get(f"http://127.0.0.1:{port}/api/runs", timeout=10).json()["runs"][0]["id"] == info.run_id
    finally:
        if stop == "sigterm-to-serve":
            proc.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C signals every process of the foreground group at once
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    output = proc.stdout.read()
    assert proc.returncode == 0 and "exited" not in output and "Traceback" not in output, output
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "a worker outlived `conceptgen serve`"


def test_serve_on_a_taken_port_is_one_clear_line(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["--workspace", str(tmp_path / "ws"), "serve", "--port", str(port), "--workers", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "--port" in err[0]


def _hold_turns(root: str, log: str, n: int) -> None:
    turn, ws = WriterTurn(), Workspace.resolve(root)
    for _ in range(n):
        with turn(ws):
            start = time.monotonic()
            time.sleep(0.02)
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} {start} {time.monotonic()}\n")


def test_writer_turns_never_overlap_across_processes(tmp_path):
    log = tmp_path / "turns.log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hold_turns, args=(str(tmp_path / "ws"), str(log), 6)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    spans = sorted((float(a), float(b), pid) for pid, a, b in (line.split() for line in log.read_text().splitlines()))
    assert len(spans) == 18 and len({pid for _, _, pid in spans}) == 3
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:])), "two processes held the turn at once"


@pytest.mark.parametrize("argv, says", [(["--workers", "0"], "--workers"), (["--threads", "0"], "--threads"),
                                        (["--port", "70000"], "--port")])
def test_bad_serve_options_are_one_clear_line(tmp_path, capsys, argv, says):
    code = main(["--workspace", str(tmp_path / "ws"), "serve", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and says in err[0]


def test_workers_refuse_an_in_memory_database(tmp_path, capsys):
    code = main(["--workspace", str(tmp_path / "ws"), "--db-url", "sqlite://", "serve", "--workers", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--workers 1" in err[0]
