"""`conceptgen user add|list` and `conceptgen serve` (the real waitress server on loopback)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import requests

from conceptgen.review.users import authenticate
from conceptgen.cli import main
from conceptgen.workspace import Workspace


def _check(ws_root, name, password):
    ws = Workspace.resolve(ws_root)
    try:
        with ws.session() as s:
            return authenticate(s, name, password) is not None
    finally:
        ws.close()


def test_user_add_from_flag_env_and_prompt(tmp_path, monkeypatch, capsys):
    root = str(tmp_path / "ws")
    assert main(["--workspace", root, "user", "add", "ann", "--password", "flag-password"]) == 0
    monkeypatch.setenv("CONCEPTGEN_PASSWORD", "env-password")
    assert main(["--workspace", root, "user", "add", "ben"]) == 0
    monkeypatch.delenv("CONCEPTGEN_PASSWORD")
    answers = iter(["typed-password", "typed-password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert main(["--workspace", root, "user", "add", "cat"]) == 0
    assert _check(root, "ann", "flag-password") and _check(root, "ben", "env-password")
    assert _check(root, "cat", "typed-password") and not _check(root, "cat", "flag-password")
    capsys.readouterr()
    assert main(["--workspace", root, "user", "list"]) == 0
    names = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert names == ["ann", "ben", "cat"]


def test_password_is_stored_salted_not_plain(tmp_path):
    root = str(tmp_path / "ws")
    main(["--workspace", root, "user", "add", "a1", "--password", "same-password"])
    main(["--workspace", root, "user", "add", "a2", "--password", "same-password"])
    ws = Workspace.resolve(root)
    with ws.engine.connect() as conn:
        hashes = [r[0] for r in conn.exec_driver_sql("SELECT password_hash FROM users ORDER BY name")]
    ws.close()
    assert hashes[0] != hashes[1] and all("same-password" not in h for h in hashes)


def test_user_add_errors_are_one_line(tmp_path, capsys, monkeypatch):
    root = str(tmp_path / "ws")
    assert main(["--workspace", root, "user", "add", "ann", "--password", "short"]) == 2
    assert main(["--workspace", root, "user", "add", "bad name", "--password", "long-enough"]) == 2
    main(["--workspace", root, "user", "add", "ann", "--password", "long-enough"])
    assert main(["--workspace", root, "user", "add", "ann", "--password", "long-enough"]) == 2
    answers = iter(["one-password", "two-password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert main(["--workspace", root, "user", "add", "dan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)
    assert "at least 8" in err[0] and "already exists" in err[2] and "differ" in err[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_waitress_on_loopback(review_ws):
    ws, info = review_ws
    port = _free_port()
    env = {**os.environ, "CONCEPTGEN_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "conceptgen", "--workspace", str(ws.root), "serve",
                             "--port", str(port), "--threads", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/login", timeout=2)
                break
            except requests.RequestException:  # not listening yet, or still loading
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "server did not start within 60 s"
                time.sleep(0.3)
        assert r.status_code == 200 and r.headers["Server"] == "conceptgen"
        assert requests.get(f"http://127.0.0.1:{port}/api/runs", timeout=5).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert f"http://127.0.0.1:{port}/" in proc.stdout.read()
