"""One database session per request, opened lazily and closed at teardown."""
from __future__ import annotations

from flask import current_app, g
from sqlalchemy.orm import Session

from conceptgen.workspace import Workspace


def workspace() -> Workspace:
    return current_app.extensions["conceptgen_workspace"]


def db() -> Session:
    """This request's session (the app's teardown closes it; uncommitted work rolls back)."""
    if "db" not in g:
        g.db = workspace().sessions()
    return g.db
