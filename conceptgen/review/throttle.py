"""Login throttling: repeated failed logins for one user name, or from one client
address, are slowed and then refused for a while.

The counts live in the database (``orm.LoginFailure``), so every worker process of
``conceptgen serve --workers N``, and every host sharing a PostgreSQL database, sees
the same ones. The arithmetic is the pure :func:`wait_seconds`; :func:`login` is the
one entry point the annotator calls. Each failure is one audit-log row: ``login-failed``,
or ``login-throttled`` (with the wait it starts) once the name or address must wait.
The rows name no user, so they are never anyone's "last decision" to undo. Tries
refused during a wait are not checked and not written (an attacker could otherwise
fill the database at line rate); the annotator logs them to its error log.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from conceptgen.errors import ConceptgenError, ConfigError
from conceptgen.orm import AuditLog, LoginFailure, User
from conceptgen.review.users import authenticate

NAME_CHARS = 100  # LoginFailure.name holds at most this many characters of what was typed
ADDRESS_FACTOR = 4  # an address may fail this many times more often than a name (reviewers behind one NAT)


@dataclass(frozen=True)
class ThrottlePolicy:
    """Failures count when they lie within ``window_s`` before the latest one. From
    ``slow_after`` of them on, the next try must wait 1 s after the latest failure,
    then 2, 4, 8 ... s ("slowed"); from ``lock_after`` on, it must wait ``lockout_s``
    ("refused for a while"), and each failure after a lockout, while the earlier ones
    still count, starts another. A correct login clears the user name's failures."""

    slow_after: int = 5
    lock_after: int = 10
    lockout_s: float = 900.0
    window_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 1 <= self.slow_after <= self.lock_after:
            raise ConfigError(f"login throttling needs 1 <= slow-after ({self.slow_after}) <= lock-after "
                              f"({self.lock_after}); change --login-slow-after or --login-lock-after")
        if not 0 < self.lockout_s <= self.window_s:
            raise ConfigError(f"login throttling needs 0 < lockout ({self.lockout_s / 60:g} min) <= window "
                              f"({self.window_s / 60:g} min); change --login-lockout-minutes or --login-window-minutes")

    def scaled(self, factor: int) -> "ThrottlePolicy":
        """The same policy allowing ``factor`` times as many failures (for a shared address)."""
        return replace(self, slow_after=self.slow_after * factor, lock_after=self.lock_after * factor)


@dataclass(frozen=True)
class LoginLimits:
    """The policy per user name, and per client address (looser by default: a lab's
    reviewers may share one address behind NAT)."""

    name: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    address: ThrottlePolicy = field(default_factory=lambda: ThrottlePolicy().scaled(ADDRESS_FACTOR))

    @property
    def window(self) -> timedelta:
        """How far back failures can still matter: a wait ends at most one lockout after
        the latest failure, and counts reach one window further back."""
        return timedelta(seconds=max(p.lockout_s + p.window_s for p in (self.name, self.address)))


class LoginThrottledError(ConceptgenError):
    """Too many failed logins lately for this user name or from this address."""

    def __init__(self, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(f"too many failed logins for this user name or from this address; "
                         f"wait {_human(retry_after_s)} and try again")


def _human(seconds: float) -> str:
    seconds = max(1, int(-(-seconds // 1)))
    return f"{seconds} s" if seconds < 120 else f"{-(-seconds // 60)} minutes"


def wait_seconds(failures: Sequence[datetime], now: datetime, policy: ThrottlePolicy) -> float:
    """How long (seconds, 0 = not at all) a new try must still wait, given the times of
    earlier failures. Pure: the caller supplies ``now``."""
    if not failures:
        return 0.0
    last = max(failures)
    n = sum(1 for t in failures if last - t < timedelta(seconds=policy.window_s))  # counted back from the latest
    if n < policy.slow_after:
        return 0.0
    delay = policy.lockout_s if n >= policy.lock_after else min(2.0 ** (n - policy.slow_after), policy.lockout_s)
    return max(0.0, (last + timedelta(seconds=delay) - now).total_seconds())


def _failures(session: Session, column, value: str, since: datetime) -> list[datetime]:
    return list(session.scalars(select(LoginFailure.at).where(column == value, LoginFailure.at > since)))


def retry_after(session: Session, name: str, address: str, now: datetime, limits: LoginLimits) -> float:
    """Seconds this name or address must still wait before its next try (0: it may try now)."""
    since = now - limits.window
    return max(wait_seconds(_failures(session, LoginFailure.name, name, since), now, limits.name),
               wait_seconds(_failures(session, LoginFailure.address, address, since), now, limits.address))


def _audit(session: Session, action: str, name: str, address: str, **info) -> None:
    user_id = session.scalar(select(User.id).where(User.name == name))
    session.add(AuditLog(user_id=None, action=action, target_type="user", target_id=user_id,
                         after={"info": {"name": name, "address": address, **info}}))


def login(session: Session, name: str, password: str, address: str, now: datetime,
          limits: LoginLimits) -> User | None:
    """The user if the password is right, None if not; LoginThrottledError (nothing
    checked) while the name or address must wait. Commits its own writes.

    The try is written down *before* the password is checked, so concurrent tries in
    other worker processes count it at once; a success deletes the name's failures."""
    name = (name or "")[:NAME_CHARS]
    address = (address or "unknown")[:64]
    wait = retry_after(session, name, address, now, limits)
    if wait > 0:
        raise LoginThrottledError(wait)
    session.execute(delete(LoginFailure).where(LoginFailure.at <= now - limits.window))
    session.add(LoginFailure(at=now, name=name, address=address))
    session.commit()
    user = authenticate(session, name, password)
    if user is not None:
        session.execute(delete(LoginFailure).where(LoginFailure.name == name))
        session.commit()
        return user
    wait = retry_after(session, name, address, now, limits)
    if wait > 0:  # this failure starts a wait
        _audit(session, "login-throttled", name, address, wait_s=round(wait, 1))
    else:
        _audit(session, "login-failed", name, address)
    session.commit()
    return None
