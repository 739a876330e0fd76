"""A throwaway PostgreSQL server under a temporary directory, for tests and benchmarks.

    with ThrowawayPostgres.start() as pg:          # initdb + pg_ctl start, on 127.0.0.1 only
        url = pg.create_database("case1")         # postgresql+psycopg://postgres@127.0.0.1:PORT/case1
    # stopped and deleted on exit

It uses the server binaries of the machine (Debian's ``postgresql`` package: ``initdb``
and ``pg_ctl`` on PATH or under /usr/lib/postgresql/*/bin). PostgreSQL refuses to run
as root, so as root the cluster runs as the ``postgres`` user through ``runuser``.
Authentication is ``trust`` on loopback and fsync is off: for tests only, never data.
``python -m conceptgen.pgtemp`` prints a URL and serves until interrupted.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from conceptgen.errors import ConfigError

SERVICE_USER = "postgres"


def server_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ThrowawayPostgres:
    root: Path   # temporary folder: data/, the socket and the log
    port: int
    bindir: Path

    @classmethod
    def start(cls, bindir: Path | None = None) -> "ThrowawayPostgres":
        bindir = bindir or server_bindir()
        if bindir is None:
            raise ConfigError("PostgreSQL server binaries not found; install them with "
                              "`apt-get install postgresql` (or give a server's URL)")
        root = Path(tempfile.mkdtemp(prefix="conceptgen-pg-"))
        server = cls(root, _free_port(), bindir)
        try:
            if os.geteuid() == 0:
                shutil.chown(root, SERVICE_USER)
            server._run("initdb", "-D", str(root / "data"), "--auth=trust", "-N", "-U", "postgres", "-E", "UTF8")
            server.resume()
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return server

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SERVICE_USER, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = (self.root / "log").read_text()[-800:] if (self.root / "log").exists() else ""
            raise ConfigError(f"{tool} failed: {' '.join((done.stderr or done.stdout).split())[:400]} {log}")

    def resume(self) -> None:
        """Starts the server on its folder and port (after ``start`` made it, or ``halt``)."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-w", "-l", str(self.root / "log"), "-o",
                  f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                  "-c full_page_writes=off -c max_connections=200", "start")

    def halt(self) -> None:
        """Stops the server and keeps its data, as an operator's ``pg_ctl stop`` does (open
        connections are cut); ``resume`` starts it again."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """A new database, empty or a copy of ``template``; returns its URL."""
        return create_database_at(self.url(), name, template=template)

    def stop(self) -> None:
        try:
            if (self.root / "data" / "postmaster.pid").exists():  # not halted
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "ThrowawayPostgres":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def create_database_at(server_url: str, name: str, *, template: str | None = None) -> str:
    """A new database on the server of ``server_url`` (any database of it), empty or a copy
    of the database ``template`` (which must have no open connections); returns its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                         dbname=url.database or "postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return url.set(database=name).render_as_string(hide_password=False)


if __name__ == "__main__":  # pragma: no cover - a manual helper
    import time

    with ThrowawayPostgres.start() as pg:
        print(pg.url(), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
