"""Reviewer accounts: salted password hashes (werkzeug's scrypt/pbkdf2, no Flask), nothing else.

A changed password ends the user's annotator sessions (each session carries a stamp of
the password hash it logged in with); a removed user's sessions end too. Both changes
are written to the audit log without a user (an admin made them at the command line)."""
from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from conceptgen.errors import ConfigError, NotFoundError
from conceptgen.orm import AuditLog, User

MIN_PASSWORD = 8
SESSION_IDLE_MINUTES = 120.0  # the annotator's default: a session unused this long ends
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")


def create_user(session: Session, name: str, password: str) -> User:
    """Add a user; names are 1-100 of letters, digits, ``_ . @ -``; passwords >= 8 characters."""
    if not _NAME.match(name or ""):
        raise ConfigError(f"user name {name!r} is not allowed; use 1-100 letters, digits, '_', '.', '@' or '-'")
    if len(password or "") < MIN_PASSWORD:
        raise ConfigError(f"the password is too short; use at least {MIN_PASSWORD} characters")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise ConfigError(f"user {name!r} already exists; choose another name")
    user = User(name=name, password_hash=generate_password_hash(password))
    session.add(user)
    session.flush()
    return user


def _existing(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFoundError(f"user {name!r} does not exist; see `conceptgen user list`, or create it with "
                            f"`conceptgen user add {name}`")
    return user


def set_password(session: Session, name: str, password: str) -> User:
    """Give ``name`` a new password; the user's open sessions end at their next request."""
    user = _existing(session, name)
    if len(password or "") < MIN_PASSWORD:
        raise ConfigError(f"the password is too short; use at least {MIN_PASSWORD} characters")
    user.password_hash = generate_password_hash(password)
    session.add(AuditLog(user_id=None, action="password-reset", target_type="user", target_id=user.id,
                         after={"info": {"name": name}}))
    return user


def remove_user(session: Session, name: str) -> None:
    """Delete the account; its decisions stay in the audit log without a name (the
    foreign keys are ON DELETE SET NULL) and its sessions end at their next request."""
    user = _existing(session, name)
    session.add(AuditLog(user_id=None, action="user-removed", target_type="user", target_id=user.id,
                         after={"info": {"name": name}}))
    session.delete(user)
    session.flush()


def authenticate(session: Session, name: str, password: str) -> User | None:
    """The user if the password matches, else None (same answer for unknown names)."""
    user = session.scalar(select(User).where(User.name == (name or "")))
    if user is None or not check_password_hash(user.password_hash, password or ""):
        return None
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))
