"""The workspace: one folder holding the database and every file the tool writes.

    WORKSPACE/
      concepts.db   SQLite database (or any SQLAlchemy URL via --db-url)
      media/        preview clips, imported clips, plots (the annotator serves only this)
      cache/        activation caches and FAISS indexes (safe to delete)
      exports/      concept datasets written by `conceptgen export`
      models/       the demo model checkpoint and other local checkpoints
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from conceptgen import db

DEFAULT_WORKSPACE = "./workspace"


@dataclass
class Workspace:
    root: Path
    db_url: str
    _engine: Engine | None = field(default=None, repr=False)
    _sessions: sessionmaker[Session] | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, root: str | Path | None = None, db_url: str | None = None) -> "Workspace":
        """From explicit values, else CONCEPTGEN_WORKSPACE / CONCEPTGEN_DB_URL, else defaults."""
        root = Path(root or os.environ.get("CONCEPTGEN_WORKSPACE") or DEFAULT_WORKSPACE).resolve()
        url = db_url or os.environ.get("CONCEPTGEN_DB_URL") or f"sqlite:///{root / 'concepts.db'}"
        return cls(root=root, db_url=url)

    @property
    def media(self) -> Path:
        return self.root / "media"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def ensure_dirs(self) -> None:
        for d in (self.root, self.media, self.cache, self.exports, self.models):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def engine(self) -> Engine:
        """The database engine; a new database is upgraded to head on first use."""
        if self._engine is None:
            self.ensure_dirs()
            engine = db.make_engine(self.db_url)
            if db.current_revision(engine) != db.head_revision():
                db.upgrade(engine)
            self._engine = engine
        return self._engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            self._sessions = db.session_factory(self.engine)
        return self._sessions

    def session(self):
        """Context manager: ``with ws.session() as s: ...`` commits on success."""
        return db.session_scope(self.sessions)

    def __getstate__(self) -> dict:
        """Pickles (to Ray workers) as its folder and URL; the engine is made again on use."""
        return {"root": self.root, "db_url": self.db_url, "_engine": None, "_sessions": None}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._sessions = None
