"""Alembic migrations: round trip on a real SQLite file, and no drift from the models."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from conceptgen import db
from conceptgen.orm import Base
from conceptgen.workspace import Workspace


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade_round_trip(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'rt.db'}")
    assert db.current_revision(engine) is None

    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    assert _tables(engine) == set(Base.metadata.tables)

    db.downgrade(engine, "base")
    assert db.current_revision(engine) is None
    assert _tables(engine) == set()

    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    assert _tables(engine) == set(Base.metadata.tables)


def test_autogenerate_finds_no_difference_from_models(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'diff.db'}")
    db.upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"


def test_new_workspace_is_upgraded_on_first_use(tmp_path):
    ws = Workspace.resolve(tmp_path / "ws")
    assert db.current_revision(ws.engine) == db.head_revision()
    for sub in ("media", "cache", "exports"):
        assert (tmp_path / "ws" / sub).is_dir()
    assert (tmp_path / "ws" / "concepts.db").is_file()
    ws.close()


def test_sqlite_runs_with_wal_and_foreign_keys(tmp_path):
    ws = Workspace.resolve(tmp_path / "ws")
    with ws.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    ws.close()


def test_workspace_and_db_url_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTGEN_WORKSPACE", str(tmp_path / "envws"))
    monkeypatch.setenv("CONCEPTGEN_DB_URL", f"sqlite:///{tmp_path / 'other.db'}")
    ws = Workspace.resolve()
    assert ws.root == (tmp_path / "envws").resolve()
    assert ws.db_url.endswith("other.db")
    ws.engine  # creates and upgrades the database at the URL, not in the workspace
    assert (tmp_path / "other.db").is_file()
    assert not (tmp_path / "envws" / "concepts.db").exists()
    ws.close()


def test_migrations_round_trip_without_drift_on_every_database(db_url):
    """Upgrade, no autogenerate diff, downgrade to base and up again: on SQLite and PostgreSQL."""
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"models and migrations disagree on {engine.dialect.name}: {diff}"
    db.downgrade(engine, "base")
    assert _tables(engine) == set()
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()
