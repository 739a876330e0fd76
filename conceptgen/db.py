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
from sqlalchemy.orm import Session, sessionmaker

import migrations
from conceptgen.errors import ConfigError, NotFoundError

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL journaling, foreign keys and a busy timeout."""
    is_sqlite = url.startswith("sqlite")
    kwargs = {"connect_args": {"timeout": 30, "check_same_thread": False}} if is_sqlite else {}
    engine = create_engine(url, **kwargs)
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
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_or_raise(session: Session, model, key: int, what: str, hint: str = ""):
    """``session.get(model, key)``, or a one-line NotFoundError naming ``what`` and what to do."""
    row = session.get(model, int(key))
    if row is None:
        raise NotFoundError(f"{what} {key} does not exist" + (f"; {hint}" if hint else ""))
    return row
