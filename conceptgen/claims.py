"""Exclusive claims on a run's videos, so no two drivers or workers compute one video.

A claim is the video's ``run_videos`` row with status 'claimed', the claiming
driver's ``owner`` token (``host:pid:random``) and a ``heartbeat_at`` the driver
refreshes while it works. The unique (run_id, video_id) key and compare-and-set
UPDATEs make a claim exclusive on SQLite and PostgreSQL alike (portable SQL, no
advisory locks), across processes and machines. A claim is taken over when it is
stale: its heartbeat is older than ``CLAIM_TTL_S``, or its owner was a process on
this host that no longer exists (a killed driver resumes at once).

The video's result is committed with :func:`finish_claim` inside the store's own
transaction: if the claim was lost meanwhile, the whole write rolls back, so
nothing is written twice.
"""
from __future__ import annotations

import os
import secrets
import socket
import threading
from datetime import timedelta

import sqlalchemy.exc
from sqlalchemy import and_, delete, select, update
from sqlalchemy.orm import Session

from conceptgen.errors import ConceptgenError, StoreUnavailableError
from conceptgen.orm import RunVideo, utcnow
from conceptgen.processes import pid_alive
from conceptgen.workspace import Workspace

CLAIM_TTL_S = 120.0  # a claim not refreshed for this long belongs to a dead driver
HEARTBEAT_EVERY_S = CLAIM_TTL_S / 4


class ClaimLostError(ConceptgenError):
    """This driver's claim on a video was taken over (it was presumed dead); its result is dropped."""


class AlreadyFinishedError(ClaimLostError):
    """This driver already committed the video: an earlier attempt (on a worker that died
    before it could answer) finished it. The new result is dropped; ``n_tubes`` were stored."""

    def __init__(self, run_id: int, video_id: int, n_tubes: int):
        super().__init__(f"video {video_id} of run {run_id} was already stored by this driver")
        self.n_tubes = n_tubes


def new_owner() -> str:
    """A token naming this driver: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` was a process on this host that no longer exists."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def is_stale(row: RunVideo, *, ttl_s: float = CLAIM_TTL_S) -> bool:
    beat = row.heartbeat_at
    return beat is None or utcnow() - beat > timedelta(seconds=ttl_s) or _owner_is_dead(row.claimed_by)


def claim_video(workspace: Workspace, run_id: int, video_id: int, owner: str) -> bool:
    """Claims the video for ``owner``; False when it is done, or claimed by a live driver."""
    try:
        with workspace.session() as s:
            row = s.scalar(select(RunVideo).where(RunVideo.run_id == run_id, RunVideo.video_id == video_id))
            if row is None:
                s.add(RunVideo(run_id=run_id, video_id=video_id, status="claimed", claimed_by=owner,
                               heartbeat_at=utcnow(), n_tubes=0))
                s.flush()  # a racing insert fails here on the unique (run, video) key
                return True
            if row.status == "done" or (row.status == "claimed" and row.claimed_by != owner and not is_stale(row)):
                return False
            # Compare-and-set against what was read: of two drivers taking over, one wins.
            same = and_(RunVideo.id == row.id, RunVideo.status == row.status,
                        RunVideo.claimed_by.is_(None) if row.claimed_by is None else RunVideo.claimed_by == row.claimed_by)
            taken = s.execute(update(RunVideo).where(same).values(
                status="claimed", claimed_by=owner, heartbeat_at=utcnow(), error=None, n_tubes=0))
            return taken.rowcount == 1
    except sqlalchemy.exc.IntegrityError:
        return False


def finish_claim(session: Session, run_id: int, video_id: int, owner: str, *, status: str,
                 n_tubes: int = 0, error: str | None = None, seconds: float | None = None) -> None:
    """Turns ``owner``'s claim into the video's outcome, in ``session``'s transaction.
    Raises ClaimLostError (roll the transaction back) when the claim is no longer ours.
    On PostgreSQL the UPDATE also row-locks the claim until commit, so a takeover waits."""
    done = session.execute(update(RunVideo).where(
        RunVideo.run_id == run_id, RunVideo.video_id == video_id, RunVideo.status == "claimed",
        RunVideo.claimed_by == owner).values(status=status, n_tubes=n_tubes, error=error, seconds=seconds,
                                             finished_at=utcnow(), heartbeat_at=None))
    if done.rowcount != 1:
        stored = session.execute(select(RunVideo.status, RunVideo.claimed_by, RunVideo.n_tubes).where(
            RunVideo.run_id == run_id, RunVideo.video_id == video_id)).one_or_none()
        if stored is not None and stored.status == "done" and stored.claimed_by == owner:
            raise AlreadyFinishedError(run_id, video_id, stored.n_tubes)
        raise ClaimLostError(f"video {video_id} of run {run_id} was taken over by another driver; "
                             "its result from this one is discarded")


def heartbeat(workspace: Workspace, owner: str) -> None:
    with workspace.session() as s:
        s.execute(update(RunVideo).where(RunVideo.claimed_by == owner, RunVideo.status == "claimed")
                  .values(heartbeat_at=utcnow()))


def release_all(workspace: Workspace, owner: str) -> None:
    """Drops ``owner``'s unfinished claims (the driver is stopping; others may take them now)."""
    with workspace.session() as s:
        s.execute(delete(RunVideo).where(RunVideo.claimed_by == owner, RunVideo.status == "claimed"))


class ClaimKeeper:
    """``with ClaimKeeper(ws) as owner:`` heartbeats owner's claims from a thread and
    releases the unfinished ones on exit (also on Ctrl-C and errors)."""

    def __init__(self, workspace: Workspace, *, every_s: float = HEARTBEAT_EVERY_S):
        self.workspace, self.every_s = workspace, every_s
        self.owner = new_owner()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="claim-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                heartbeat(self.workspace, self.owner)
            except (sqlalchemy.exc.SQLAlchemyError, StoreUnavailableError):  # busy or briefly away: next beat
                pass

    def __enter__(self) -> str:
        self._thread.start()
        return self.owner

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            release_all(self.workspace, self.owner)
        except (sqlalchemy.exc.SQLAlchemyError, StoreUnavailableError):
            # The store is gone (its error is already on its way): the claims stay, and the
            # next driver takes them over (this pid is dead, or the heartbeat expires).
            pass
