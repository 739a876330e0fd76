"""Database engine, sessions and Alembic migrations. Portable SQL only."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.util.exc import CommandError
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

import migrations
from conceptgen.errors import ConfigError, NotFoundError, StoreUnavailableError, UnreachableError

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


CONNECT_TIMEOUT_S = 10  # a server that does not answer within this is reported unreachable


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL journaling, foreign keys and a busy timeout;
    a server database gets a connect timeout and pre-ping (connections survive restarts)."""
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        kwargs = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    else:
        kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    try:
        engine = create_engine(url, **kwargs)
    except ArgumentError as err:
        raise ConfigError(f"--db-url {safe_url(url)!r} is not a database URL ({err}); use e.g. "
                          "sqlite:///path/concepts.db or postgresql+psycopg://user:password@host:5432/db") from None
    except ModuleNotFoundError as err:
        raise ConfigError(f"the driver for {safe_url(url)} is not installed ({err.name}); "
                          "install it, e.g. pip install 'conceptgen[distributed]' for PostgreSQL") from None
    if is_sqlite:
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no branch
            cur = dbapi_conn.cursor()
            if ":memory:" not in url:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    return engine


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _migrate(engine: Engine, step, revision: str) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, revision)
    except CommandError as err:
        raise ConfigError(f"cannot migrate to {revision!r}: {err}; run `conceptgen db current` to see the revisions") from err


def upgrade(engine: Engine, revision: str = "head") -> None:
    _migrate(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    _migrate(engine, command.downgrade, revision)


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision; UnreachableError (one line) when the server does not answer."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DBAPIError as err:
        if not err.connection_invalidated and not _is_connect_failure(err):
            raise
        reason = " ".join(str(err.orig).split())[:200] if err.orig is not None else type(err).__name__
        raise UnreachableError(f"cannot reach the database at {safe_url(engine.url.render_as_string(False))}: "
                               f"{reason}; check --db-url (host, port, user, password) and that the server "
                               "is running") from None


def _is_connect_failure(err: DBAPIError) -> bool:
    """An error raised while connecting (refused, timed out, unknown host, bad password, no such database)."""
    return isinstance(err, (OperationalError, InterfaceError))


# PostgreSQL SQLSTATE classes that mean the server or the link is gone: connection exception,
# operator intervention (shutdown, crash), insufficient resources, system error.
_OUTAGE_SQLSTATE_CLASSES = ("08", "57", "53", "58")
# SQLite result codes that mean the file is unusable: I/O error, disk full, cannot open.
_OUTAGE_SQLITE_CODES = (10, 13, 14)


def is_outage(err: BaseException) -> bool:
    """True when ``err`` says the store itself went away (server stopped or restarted,
    connection lost, database file gone), not that a statement was wrong or lost a race."""
    if not isinstance(err, DBAPIError):
        return False
    if err.connection_invalidated:
        return True
    orig = err.orig
    if hasattr(orig, "sqlstate"):  # psycopg: no sqlstate at all means the client lost the server
        state = orig.sqlstate
        return _is_connect_failure(err) and (state is None or state[:2] in _OUTAGE_SQLSTATE_CLASSES)
    code = getattr(orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _OUTAGE_SQLITE_CODES


def outage_error(url: str, err: BaseException) -> StoreUnavailableError:
    """The one line for a store that went away: which store (password hidden), why, and that
    rerunning resumes."""
    orig = getattr(err, "orig", None) or err
    reason = " ".join(str(orig).split())[:200] or type(orig).__name__
    return StoreUnavailableError(
        f"lost the database at {safe_url(url)} ({reason}); what was committed before is kept: "
        "start the server (or restore the connection) and run the same command again to resume")


def _quietly(step) -> None:
    """Runs a cleanup step that must not raise over the error being handled (a dead server)."""
    try:
        step()
    except SQLAlchemyError:
        pass


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error. A store that went away
    raises StoreUnavailableError (one line); cleanup on a dead server never raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException as err:
        _quietly(session.rollback)
        if is_outage(err):
            raise outage_error(factory.kw["bind"].url.render_as_string(hide_password=False), err) from err
        raise
    finally:
        _quietly(session.close)


def get_or_raise(session: Session, model, key: int, what: str, hint: str = ""):
    """``session.get(model, key)``, or a one-line NotFoundError naming ``what`` and what to do."""
    row = session.get(model, int(key))
    if row is None:
        raise NotFoundError(f"{what} {key} does not exist" + (f"; {hint}" if hint else ""))
    return row
