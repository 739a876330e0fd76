"""The annotator hardened: the secret key made atomically however many workers start
at once, login throttling shared through the database, security headers, HTTPS
behind a proxy, session expiry, and `conceptgen user password|remove`.

Time is a settable clock (the app's ``CLOCK``), never a sleep."""
from __future__ import annotations

import multiprocessing
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from annotator import create_app
from annotator.app import SECRET_FILE, load_secret_key
from annotator.security import ServerSettings
from conceptgen.cli import main
from conceptgen.errors import ConfigError
from conceptgen.orm import AuditLog, LoginFailure, User
from conceptgen.review.throttle import LoginLimits, ThrottlePolicy, wait_seconds
from conceptgen.review.users import authenticate, set_password
from conceptgen.workspace import Workspace

PASSWORD = "correct-horse"
START = datetime(2026, 1, 1, 12, 0, 0)


class Clock:
    """The app's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _token(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


def _login(client, name="alice", password=PASSWORD, address="198.51.100.1"):
    token = _token(client.get("/login").text)
    return client.post("/login", data={"username": name, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": address})


def _app(ws, clock, *, limits=None, idle_minutes=10.0, **config):
    settings = ServerSettings(session_idle_minutes=idle_minutes, login=limits or LoginLimits())
    return create_app(ws, {"TESTING": True, "CLOCK": clock, **config}, settings=settings)


# --- the secret key ------------------------------------------------------------------
KEY_PROCESSES, KEY_TRIALS = 8, 150


def _start_many(base: str, barrier, results, index: int) -> None:
    keys = []
    for trial in range(KEY_TRIALS):
        ws = Workspace(Path(base) / f"trial{trial}", "sqlite://")
        barrier.wait(timeout=60)  # every process calls at the same moment, on a fresh workspace
        try:
            keys.append(load_secret_key(ws))
        except Exception as err:  # noqa: BLE001 - recorded and asserted on in the parent
            keys.append(f"error: {type(err).__name__}: {err}")
    results[index] = keys


def test_many_workers_starting_at_once_all_get_the_one_complete_key(tmp_path):
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        barrier, shared = ctx.Barrier(KEY_PROCESSES), manager.dict()
        procs = [ctx.Process(target=_start_many, args=(str(tmp_path), barrier, shared, i))
                 for i in range(KEY_PROCESSES)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        results = dict(shared)
    for trial in range(KEY_TRIALS):
        seen = {results[i][trial] for i in range(KEY_PROCESSES)}
        on_disk = (tmp_path / f"trial{trial}" / SECRET_FILE).read_text()
        assert seen == {on_disk}, f"trial {trial}: the processes got {sorted(seen)}, the file holds {on_disk!r}"
        assert re.fullmatch(r"[0-9a-f]{64}", on_disk)
        assert sorted(p.name for p in (tmp_path / f"trial{trial}").iterdir()) == [SECRET_FILE]  # no temp file left


def _write_key_with_no_room(root: str) -> None:
    """Make the key in a process that may not write a single byte (as on a full disk)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    try:
        load_secret_key(Workspace(Path(root), "sqlite://"))
    except ConfigError:  # one clear line, not a traceback
        os._exit(3)
    except BaseException:
        os._exit(4)
    os._exit(0)


def test_a_key_writer_stopped_midway_leaves_no_empty_key_behind(tmp_path):
    """The state a second worker saw in the race (key file there, key not yet written),
    held still: the writer fails between creating and filling the key."""
    proc = multiprocessing.get_context("fork").Process(target=_write_key_with_no_room, args=(str(tmp_path),))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 3, "the write should have failed with a ConfigError"
    assert not (tmp_path / SECRET_FILE).exists(), "a key file was left behind unwritten"
    key = load_secret_key(Workspace(tmp_path, "sqlite://"))
    assert re.fullmatch(r"[0-9a-f]{64}", key) and (tmp_path / SECRET_FILE).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]


@pytest.mark.parametrize("damage", ["empty", "short", "directory"])
def test_a_bad_key_file_is_one_clear_error_at_start(tmp_path, capsys, damage):
    root = tmp_path / "ws"
    root.mkdir()
    key = root / SECRET_FILE
    if damage == "directory":  # unreadable, whoever runs the test (root reads any mode)
        key.mkdir()
    else:
        key.write_text("" if damage == "empty" else "0123456789abcdef\n")
    with pytest.raises(ConfigError, match="secret key"):
        create_app(Workspace.resolve(root))
    code = main(["--workspace", str(root), "serve", "--port", "1", "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(key) in err[0] and "delete it" in err[0], err


# --- headers -------------------------------------------------------------------------
def _assert_hardened(response):
    csp = dict(part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";"))
    assert csp["frame-ancestors"] == "'none'" and csp["script-src"] == "'self'"
    assert "unsafe" not in csp["default-src"] + csp["script-src"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_every_kind_of_response_carries_the_security_headers(review_ws):
    ws, info = review_ws
    app = _app(ws, Clock())
    client = app.test_client()
    responses = [client.get("/login"), client.get("/api/runs"), client.get("/static/app.js"), client.get("/runs")]
    login = _login(client)
    assert login.status_code == 302
    responses += [client.get("/runs"), client.get("/api/runs"), client.get("/media/previews/run1/c0_t0.mp4"),
                  client.get("/no/such/page"), client.get("/media/../concepts.db")]
    assert [r.status_code for r in responses] == [200, 401, 200, 302, 200, 200, 200, 404, 404]
    for r in responses:
        _assert_hardened(r)
        assert "Strict-Transport-Security" not in r.headers
    _assert_hardened(login)
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


def test_error_pages_link_back_without_script(review_ws):
    ws, _ = review_ws
    client = _app(ws, Clock()).test_client()
    _login(client)
    page = client.get("/clusters/999999", headers={"Referer": "http://localhost/runs?page=2"}).text
    assert 'href="/runs?page=2">Go back' in page and "javascript:" not in page
    foreign = client.get("/clusters/999999", headers={"Referer": "http://evil.example/x"}).text
    assert "Go back" not in foreign and "evil.example" not in foreign


def test_behind_an_https_proxy_the_cookie_is_secure_and_the_client_address_is_used(review_ws):
    ws, _ = review_ws
    clock = Clock()
    settings = ServerSettings(https=True, proxies=1)
    app = create_app(ws, {"TESTING": True, "CLOCK": clock}, settings=settings)
    client = app.test_client()
    # the proxy speaks HTTPS to the browser and forwards the client's address
    proxied = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "Referer": "https://localhost/login"}
    token = _token(client.get("/login", headers=proxied).text)
    r = client.post("/login", headers=proxied, data={"username": "alice", "password": "wrong-one",
                                                      "csrf_token": token})
    assert r.status_code == 401 and r.headers["Strict-Transport-Security"].startswith("max-age=")
    ok = client.post("/login", headers=proxied, data={"username": "alice", "password": PASSWORD, "csrf_token": token})
    assert ok.status_code == 302 and "Secure" in ok.headers["Set-Cookie"] and "HttpOnly" in ok.headers["Set-Cookie"]
    with ws.session() as s:
        audit = s.scalars(select(AuditLog).where(AuditLog.action == "login-failed")).one()
    assert audit.after["info"] == {"name": "alice", "address": "203.0.113.7"}


# --- login throttling ----------------------------------------------------------------
def test_wait_grows_by_doubling_then_locks_and_ends():
    policy = ThrottlePolicy(slow_after=3, lock_after=6, lockout_s=600)
    one_s = timedelta(seconds=1)
    failures = [START + i * one_s for i in range(2)]
    assert wait_seconds(failures, START + 2 * one_s, policy) == 0  # below slow_after: free
    waits = []
    for n in range(3, 7):
        failures = [START + i * one_s for i in range(n)]
        waits.append(wait_seconds(failures, failures[-1], policy))  # asked at once after the n-th failure
    assert waits == [1, 2, 4, 600]
    assert wait_seconds(failures, failures[-1] + timedelta(seconds=599), policy) == 1
    assert wait_seconds(failures, failures[-1] + timedelta(seconds=600), policy) == 0
    again = failures + [failures[-1] + timedelta(seconds=600)]  # one more guess once the lockout ends ...
    assert wait_seconds(again, again[-1], policy) == 600  # ... locks again: the earlier ones still count
    assert wait_seconds(again, again[-1] + timedelta(hours=2), policy) == 0
    later = failures + [failures[-1] + timedelta(seconds=3600)]  # a failure after the window counts alone
    assert wait_seconds(later, later[-1], policy) == 0
    with pytest.raises(ConfigError, match="lock-after"):
        ThrottlePolicy(slow_after=5, lock_after=4)
    with pytest.raises(ConfigError, match="window"):
        ThrottlePolicy(lockout_s=600, window_s=300)


def test_failed_logins_are_slowed_then_refused_with_429_and_a_correct_login_after_the_wait_works(review_ws):
    ws, _ = review_ws
    clock = Clock()
    app = _app(ws, clock, limits=LoginLimits(ThrottlePolicy(2, 4, 600), ThrottlePolicy(50, 50, 600)))
    client = app.test_client()
    codes = [_login(client, password="wrong-pass").status_code]  # 1 failure: free
    codes.append(_login(client, password="wrong-pass").status_code)  # 2: the next try waits 1 s
    refused = _login(client, password=PASSWORD)  # even the right password is not checked now
    assert codes == [401, 401] and refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "too many failed logins" in refused.text.lower()
    clock.advance(1)
    assert _login(client, password="wrong-pass").status_code == 401  # 3: waits 2 s
    clock.advance(1)
    assert _login(client, password="wrong-pass").headers["Retry-After"] == "1"
    clock.advance(1)
    assert _login(client, password="wrong-pass").status_code == 401  # 4: locked for 600 s
    locked = _login(client, password=PASSWORD)
    assert locked.status_code == 429 and locked.headers["Retry-After"] == "600"
    clock.advance(599)
    assert _login(client, password=PASSWORD).headers["Retry-After"] == "1"
    clock.advance(1)
    assert _login(client, password=PASSWORD).status_code == 302  # after the wait: in
    assert _login(app.test_client(), password="wrong-pass").status_code == 401  # success cleared the count
    with ws.session() as s:
        actions = list(s.scalars(select(AuditLog.action).where(AuditLog.target_type == "user")
                                 .order_by(AuditLog.id)))
        alice = s.scalar(select(User.id).where(User.name == "alice"))
        assert set(s.scalars(select(AuditLog.target_id).where(AuditLog.target_type == "user"))) == {alice}
        assert s.scalar(select(AuditLog.user_id).where(AuditLog.target_type == "user")) is None  # not undoable
    assert actions == ["login-failed", "login-throttled", "login-throttled", "login-throttled", "login-failed"]


@pytest.mark.parametrize("review_backend", ["sqlite", "postgresql"], indirect=True)
def test_the_throttle_is_shared_by_worker_apps_through_the_database(review_ws):
    """Two apps with their own engines on one database, as two worker processes have."""
    ws, _ = review_ws
    clock = Clock()
    limits = LoginLimits(ThrottlePolicy(3, 3, 300), ThrottlePolicy(5, 5, 300))
    first, second = _app(ws, clock, limits=limits), _app(Workspace.resolve(ws.root, ws.db_url), clock, limits=limits)
    a, b = first.test_client(), second.test_client()
    # per user name, from three addresses, alternating between the workers
    assert [_login(c, password="nope-nope", address=f"192.0.2.{i}").status_code
            for i, c in enumerate((a, b, a))] == [401, 401, 401]
    assert _login(b, password=PASSWORD, address="192.0.2.9").status_code == 429
    # per address, across user names (unknown ones too: no hint which names exist)
    assert [_login(c, name=n, password="nope-nope", address="192.0.2.50").status_code
            for c, n in ((a, "bob"), (b, "carol"), (a, "dave"), (b, "erin"), (a, "frank"))] == [401] * 5
    r = _login(b, name="grace", password="whatever-1", address="192.0.2.50")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) == 300
    with ws.session() as s:
        assert s.query(LoginFailure).filter_by(address="192.0.2.50").count() == 5
    clock.advance(301)
    assert _login(a, password=PASSWORD, address="192.0.2.50").status_code == 302
    with ws.session() as s:  # old rows go as new ones arrive; alice's went with her success
        assert s.query(LoginFailure).filter_by(name="alice").count() == 0


# --- sessions ------------------------------------------------------------------------
def test_a_session_ends_after_the_idle_time(review_ws):
    ws, _ = review_ws
    clock = Clock()
    client = _app(ws, clock, idle_minutes=10).test_client()
    assert _login(client).status_code == 302
    for _ in range(3):  # in use: each visit within 10 minutes of the last keeps it alive
        clock.advance(9 * 60)
        assert client.get("/runs").status_code == 200
    clock.advance(10 * 60 + 1)
    r = client.get("/runs")
    assert r.status_code == 302 and r.location.startswith("/login")
    assert "session ended" in client.get(r.location).text
    assert client.get("/api/runs").status_code == 401  # and it stays ended
    assert _login(client).status_code == 302 and client.get("/runs").status_code == 200


def test_a_password_change_ends_open_sessions(review_ws):
    ws, _ = review_ws
    app = _app(ws, Clock())
    client = app.test_client()
    assert _login(client).status_code == 302 and client.get("/api/runs").status_code == 200
    assert main(["--workspace", str(ws.root), "--db-url", ws.db_url, "user", "password", "alice",
                 "--password", "a-new-password"]) == 0
    r = client.get("/api/runs")
    assert r.status_code == 401 and "session ended" in r.get_json()["error"]
    assert _login(client).status_code == 401
    assert _login(client, password="a-new-password").status_code == 302 and client.get("/api/runs").status_code == 200


@pytest.mark.parametrize("review_backend", ["sqlite", "postgresql"], indirect=True)
def test_a_removed_user_is_logged_out_and_their_decisions_stay_audited(review_ws):
    ws, info = review_ws
    app = _app(ws, Clock())
    client = app.test_client()
    _login(client)
    token = _token(client.get("/runs").text)
    assert client.post(f"/api/clusters/{info.cluster_ids[0]}/reject", json={"version": 1},
                       headers={"X-CSRFToken": token}).status_code == 200
    assert main(["--workspace", str(ws.root), "--db-url", ws.db_url, "user", "remove", "alice"]) == 0
    assert client.get("/api/runs").status_code == 401
    with ws.session() as s:
        reject = s.scalars(select(AuditLog).where(AuditLog.action == "reject")).one()
        assert reject.user_id is None and reject.target_id == info.cluster_ids[0]
        assert s.scalars(select(AuditLog.action).where(AuditLog.target_type == "user")).all() == ["user-removed"]
        assert s.scalar(select(User).where(User.name == "alice")) is None


def test_user_password_and_remove_from_the_command_line(tmp_path, monkeypatch, capsys):
    root = str(tmp_path / "ws")
    assert main(["--workspace", root, "user", "add", "ann", "--password", "first-password"]) == 0
    monkeypatch.setenv("CONCEPTGEN_PASSWORD", "second-password")
    assert main(["--workspace", root, "user", "password", "ann"]) == 0
    ws = Workspace.resolve(root)
    with ws.session() as s:
        assert authenticate(s, "ann", "second-password") and not authenticate(s, "ann", "first-password")
    ws.close()
    assert main(["--workspace", root, "user", "password", "ann", "--password", "short"]) == 2
    assert main(["--workspace", root, "user", "password", "nobody", "--password", "long-enough"]) == 2
    assert main(["--workspace", root, "user", "remove", "nobody"]) == 2
    assert main(["--workspace", root, "user", "remove", "ann"]) == 0
    assert main(["--workspace", root, "serve", "--login-slow-after", "5", "--login-lock-after", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err), err
    assert "at least 8" in err[0] and "'nobody' does not exist" in err[1] and "user list" in err[2]
    assert "--login-lock-after" in err[3]
    ws = Workspace.resolve(root)
    with ws.session() as s:
        assert s.scalar(select(User).where(User.name == "ann")) is None
        with pytest.raises(Exception, match="does not exist"):
            set_password(s, "ann", "long-enough")
    ws.close()
