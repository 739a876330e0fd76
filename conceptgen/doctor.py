"""Does this workspace folder belong with this database? Checks of the store, the media and
the caches, for `conceptgen doctor` and for extract before it trusts a run's 'done' rows.

The database records files by path relative to the workspace (tube previews and imported
clips under media/, FAISS indexes under cache/). A workspace pointed at another one's
database (``--db-url``) sees that database's runs as done while it holds none of their
files; :func:`check_run_media` turns that into one line instead of "N already done".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from conceptgen import db
from conceptgen.errors import ConceptgenError, ConfigError
from conceptgen.hashing import sha256_file
from conceptgen.orm import Clustering, ConceptExample, Run, RunVideo, Tube, Video
from conceptgen.workspace import Workspace

EXAMPLES = 2  # missing files named per finding


@dataclass(frozen=True)
class Finding:
    area: str       # store, media, videos, cache, claims
    ok: bool        # False: something the user must fix (the doctor exits non-zero)
    message: str    # one line


def check_workspace(workspace: Workspace, *, verify_hashes: bool = False) -> list[Finding]:
    """Every check, in order: store, media (previews, imported clips), source videos, caches,
    claims. ``verify_hashes`` also re-hashes every media file against its recorded sha256."""
    store, empty = _check_store(workspace)
    if not store.ok or empty:  # nothing to check, and nothing created by looking
        return [store]
    with workspace.session() as s:
        out = [store, *_check_previews(s, workspace, verify_hashes), _check_clips(s, workspace, verify_hashes),
               _check_videos(s), _check_indexes(s, workspace)]
        out.append(_check_claims(s))
    return out


def check_run_media(workspace: Workspace, run_id: int) -> None:
    """ConfigError (one line) when previews of the run's stored tubes are missing from this
    workspace's media: the database belongs to another workspace folder (or they were deleted)."""
    with workspace.session() as s:
        missing, total = _missing_previews(s, workspace, run_id)
    if missing:
        raise ConfigError(
            f"run {run_id} in the database at {db.safe_url(workspace.db_url)} has {total} stored tube previews "
            f"but {len(missing)} are missing under {workspace.media} (e.g. {missing[0]}): this workspace is not "
            "the one that database belongs to (check --workspace and --db-url), or its media were deleted; "
            "`conceptgen doctor` lists what is missing")


# --- the checks --------------------------------------------------------------------
def _check_store(workspace: Workspace) -> tuple[Finding, bool]:
    """Reachable, and at the code's schema revision (checked without upgrading it); and
    whether the database is still empty."""
    where = db.safe_url(workspace.db_url)
    workspace.ensure_dirs()
    engine = db.make_engine(workspace.db_url)
    try:
        current, head = db.current_revision(engine), db.head_revision()
    except ConceptgenError as err:
        return Finding("store", False, str(err)), False
    finally:
        engine.dispose()
    if current == head:
        return Finding("store", True, f"{where}: reachable, schema at {head} (head)"), False
    if current is None:
        return Finding("store", True, f"{where}: reachable, empty (its tables are made on first use)"), True
    return Finding("store", False, f"{where}: schema at {current}, this code expects {head}: run "
                                   "`conceptgen db upgrade` (or use the code that wrote it)"), False


def _missing_previews(session, workspace: Workspace, run_id: int) -> tuple[list[str], int]:
    paths = session.scalars(select(Tube.preview_path).where(Tube.run_id == run_id,
                                                            Tube.preview_path.is_not(None))).all()
    return [p for p in paths if not (workspace.media / p).is_file()], len(paths)


def _check_previews(session, workspace: Workspace, verify_hashes: bool) -> list[Finding]:
    out = []
    for run_id, n_done in session.execute(
            select(Run.id, func.count(RunVideo.video_id)).outerjoin(
                RunVideo, (RunVideo.run_id == Run.id) & (RunVideo.status == "done"))
            .group_by(Run.id).order_by(Run.id)).all():
        missing, total = _missing_previews(session, workspace, run_id)
        bad = _hash_mismatches(session.execute(select(Tube.preview_path, Tube.preview_sha256).where(
            Tube.run_id == run_id, Tube.preview_path.is_not(None))).all(), workspace.media) if verify_hashes else []
        if missing:
            out.append(Finding("media", False, f"run {run_id}: {len(missing)} of {total} tube previews of its "
                               f"{n_done} done videos are missing under {workspace.media} "
                               f"(e.g. {', '.join(missing[:EXAMPLES])}): this workspace is not the one the "
                               "database belongs to (check --workspace and --db-url), or the files were deleted"))
        elif bad:
            out.append(Finding("media", False, f"run {run_id}: {len(bad)} tube previews differ from their "
                               f"recorded checksum (e.g. {', '.join(bad[:EXAMPLES])})"))
        else:
            checked = " and their checksums" if verify_hashes else ""
            out.append(Finding("media", True, f"run {run_id}: {n_done} done videos, all {total} tube "
                                              f"previews{checked} present"))
    return out or [Finding("media", True, "no runs yet")]


def _check_clips(session, workspace: Workspace, verify_hashes: bool) -> Finding:
    rows = session.execute(select(ConceptExample.clip_path, ConceptExample.clip_sha256)
                           .where(ConceptExample.clip_path.is_not(None))).all()
    missing = [p for p, _ in rows if not _media_file(workspace.media, p).is_file()]
    if missing:
        return Finding("media", False, f"{len(missing)} of {len(rows)} imported concept clips are missing "
                                       f"(e.g. {', '.join(missing[:EXAMPLES])}); import them again")
    bad = _hash_mismatches(rows, workspace.media) if verify_hashes else []
    if bad:
        return Finding("media", False, f"{len(bad)} imported concept clips differ from their recorded checksum "
                                       f"(e.g. {', '.join(bad[:EXAMPLES])}); import them again")
    return Finding("media", True, f"all {len(rows)} imported concept clips present")


def _check_videos(session) -> Finding:
    """Source videos are outside the workspace: a missing one only blocks extracting it again."""
    paths = session.scalars(select(Video.path)).all()
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        return Finding("videos", True, f"{len(missing)} of {len(paths)} ingested source videos are not on this "
                                       f"machine (e.g. {', '.join(missing[:EXAMPLES])}); stored runs stay usable, "
                                       "extracting them again needs the files")
    return Finding("videos", True, f"all {len(paths)} ingested source videos present")


def _check_indexes(session, workspace: Workspace) -> Finding:
    """FAISS indexes are a cache: a missing or stale one is rebuilt on use."""
    rows = session.execute(select(Clustering.index_path, Clustering.index_sha256)
                           .where(Clustering.index_path.is_not(None))).all()
    stale = [p for p, sha in rows if not (workspace.cache / p).is_file() or sha256_file(workspace.cache / p) != sha]
    writable = _writable(workspace.cache)
    if not writable:
        return Finding("cache", False, f"{workspace.cache} is not writable; caches cannot be rebuilt there")
    note = f"; {len(stale)} missing or stale, rebuilt on use" if stale else ""
    return Finding("cache", True, f"{workspace.cache}: writable, {len(rows)} similarity indexes{note}")


def _check_claims(session) -> Finding:
    n = session.scalar(select(func.count()).select_from(RunVideo).where(RunVideo.status == "claimed"))
    if n:
        return Finding("claims", True, f"{n} video(s) claimed by a running driver, or left by a stopped one "
                                       "(the next extract takes those over)")
    return Finding("claims", True, "no open claims")


def _media_file(media: Path, rel: str) -> Path:
    return Path(rel) if Path(rel).is_absolute() else media / rel


def _hash_mismatches(rows, root: Path) -> list[str]:
    return [p for p, sha in rows if sha and _media_file(root, p).is_file() and sha256_file(_media_file(root, p)) != sha]


def _writable(folder: Path) -> bool:
    try:
        probe = folder / ".doctor-probe"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False

