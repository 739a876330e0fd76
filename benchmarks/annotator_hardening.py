"""The annotator's hardening, measured against the real code and the real server.

1. Secret key race: PROCESSES processes call ``load_secret_key`` at the same moment on a
   fresh workspace, TRIALS times; a trial is bad when any process got an empty key or a
   key that differs from another's. Run for today's ``annotator.app.load_secret_key`` and,
   for comparison, for the previous implementation (kept below as ``_old_load_secret_key``).
2. Login throttling: ``conceptgen serve --workers 2`` on a fresh workspace with one user;
   WRONG wrong passwords for that user in a row (each through the login form on a fresh
   connection), then the right one: the status codes, the Retry-After given, and the
   time taken. Then the security headers of the login page.

    python benchmarks/annotator_hardening.py [--processes 8] [--trials 300] [--wrong 30]

Prints readable lines, then one JSON line (the last line). No targets: figures only.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _old_load_secret_key(workspace) -> str:
    """``load_secret_key`` before the fix: O_EXCL create, then write (readers could see it empty)."""
    path = workspace.root / "annotator_secret_key"
    workspace.root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path.read_text().strip()


def _caller(which: str, base: str, trials: int, barrier, results, index: int) -> None:
    from annotator.app import load_secret_key
    from conceptgen.workspace import Workspace

    load = load_secret_key if which == "new" else _old_load_secret_key
    keys = []
    for t in range(trials):
        ws = Workspace(Path(base) / f"t{t}", "sqlite://")
        barrier.wait(timeout=120)
        try:
            keys.append(load(ws))
        except Exception as err:  # noqa: BLE001 - counted as a bad trial
            keys.append(f"error {err}")
    results[index] = keys


def key_race(which: str, processes: int, trials: int) -> int:
    """How many of ``trials`` gave some process an empty or differing key."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(processes), ctx.Manager().dict()
    with tempfile.TemporaryDirectory() as base:
        procs = [ctx.Process(target=_caller, args=(which, base, trials, barrier, results, i)) for i in range(processes)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = 0
        for t in range(trials):
            got = {results[i][t] for i in range(processes)}
            bad += len(got) != 1 or "" in got or any(k.startswith("error") for k in got)
    return bad


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def login_throttle(wrong: int) -> dict:
    import requests

    from annotator.testing import create_user
    from conceptgen.workspace import Workspace

    def attempt(port: int, password: str) -> requests.Response:
        with requests.Session() as http:
            page = http.get(f"http://127.0.0.1:{port}/login", timeout=30).text
            token = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
            return http.post(f"http://127.0.0.1:{port}/login", allow_redirects=False, timeout=30,
                             data={"username": "alice", "password": password, "csrf_token": token})

    with tempfile.TemporaryDirectory() as root:
        ws = Workspace.resolve(Path(root) / "ws")
        create_user(ws, "alice", "correct-horse")
        ws.close()
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "conceptgen", "--workspace", str(ws.root), "serve",
                                 "--port", str(port), "--workers", "2", "--threads", "4"],
                                env={**os.environ, "CONCEPTGEN_QUIET": "1", "PYTHONPATH": str(REPO)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    headers = requests.get(f"http://127.0.0.1:{port}/login", timeout=5).headers
                    break
                except requests.RequestException:
                    if time.monotonic() > deadline:
                        raise SystemExit("the server did not start within 120 s")
                    time.sleep(0.3)
            start = time.perf_counter()
            answers = [attempt(port, f"wrong-password-{i}") for i in range(wrong)]
            seconds = time.perf_counter() - start
            right = attempt(port, "correct-horse")
            waited = int(right.headers.get("Retry-After", 0))
            time.sleep(waited)
            after_wait = attempt(port, "correct-horse")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    codes = [r.status_code for r in answers]
    return {"wrong_codes": dict(Counter(codes)), "first_429_at": codes.index(429) + 1 if 429 in codes else None,
            "retry_after_last_s": int(answers[-1].headers.get("Retry-After", 0)),
            "right_password_code": right.status_code, "waited_s": waited,
            "right_password_after_wait_code": after_wait.status_code, "wrong_seconds": round(seconds, 2),
            "headers": {k: headers.get(k) for k in ("X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy",
                                                     "Content-Security-Policy")}}


def patient_guesses(horizon_s: float) -> int:
    """Failures one user name can collect in ``horizon_s`` under the default policy, for a
    guesser who tries again the moment each wait ends (the pure policy, no server)."""
    from datetime import datetime, timedelta

    from conceptgen.review.throttle import ThrottlePolicy, wait_seconds

    policy, now, failures = ThrottlePolicy(), datetime(2026, 1, 1), []
    end = now + timedelta(seconds=horizon_s)
    while now < end:
        failures.append(now)
        now += timedelta(seconds=max(wait_seconds(failures, now, policy), 0.1))
    return len(failures)


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--wrong", type=int, default=30)
    args = ap.parse_args()
    result = {"processes": args.processes, "trials": args.trials}
    for which in ("old", "new"):
        result[f"key_bad_trials_{which}"] = key_race(which, args.processes, args.trials)
        print(f"secret key, {which} code: {result[f'key_bad_trials_{which}']} of {args.trials} trials gave a "
              f"process an empty or differing key ({args.processes} processes at once)", flush=True)
    result.update(login_throttle(args.wrong))
    print(f"{args.wrong} wrong passwords for one user in {result['wrong_seconds']} s: {result['wrong_codes']} "
          f"(first 429 at try {result['first_429_at']}, last Retry-After {result['retry_after_last_s']} s); "
          f"then the right password: {result['right_password_code']}, and after waiting "
          f"{result['waited_s']} s: {result['right_password_after_wait_code']}")
    result["guesses_per_name_first_hour"] = patient_guesses(3600)
    result["guesses_per_name_first_day"] = patient_guesses(86400)
    print(f"a guesser that always waits exactly Retry-After (default limits, simulated with wait_seconds): "
          f"{result['guesses_per_name_first_hour']} guesses per user name in the first hour, "
          f"{result['guesses_per_name_first_day']} in the first day")
    print("headers:", result["headers"])
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
    sys.exit(0)
