"""The annotator's Flask app factory. Nothing happens at import time."""
from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import Flask, g, redirect, request, url_for
from flask_wtf.csrf import CSRFProtect

from annotator import security
from annotator.fragments import FragmentCache
from annotator.security import ServerSettings
from conceptgen.errors import ConfigError
from conceptgen.workspace import Workspace

SECRET_FILE = "annotator_secret_key"
PER_PAGE_CLUSTERS = 16  # four rows of four cards at 1366 px
PER_PAGE_MEMBERS = 24
MIN_KEY_CHARS = 32


def load_secret_key(workspace: Workspace) -> str:
    """The session-signing key: WORKSPACE/annotator_secret_key (mode 0600), made once.

    Made atomically: the key is written and synced under a temporary name, then
    hard-linked to its final name, which fails if another process got there first
    (that one's key is then used). So the file is never seen empty or half-written,
    however many workers start at once. An empty, short or unreadable key file is a
    ConfigError."""
    path = workspace.root / SECRET_FILE
    workspace.root.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _create_key_file(path)
    try:
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the annotator's secret key {path} ({getattr(err, 'strerror', None) or err}); "
                          "make it readable by this user, or delete it to make a new one (everyone logs in again)"
                          ) from None
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"the annotator's secret key {path} is empty or too short (under {MIN_KEY_CHARS} "
                          "characters); delete it and start again to make a new one (everyone logs in again)")
    return key


def _create_key_file(path: Path) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{SECRET_FILE}.", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic, and never replaces a key another process already made
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    except OSError as err:  # full disk, read-only folder, a filesystem without hard links
        raise ConfigError(f"cannot create the annotator's secret key {path} ({err.strerror or err}); free or fix "
                          f"the workspace folder, or write {MIN_KEY_CHARS * 2} random hex characters into that "
                          "file yourself (mode 0600)") from None


def create_app(workspace: Workspace | None = None, test_config: dict[str, Any] | None = None,
               settings: ServerSettings | None = None) -> Flask:
    """Build the annotator for a workspace (default: $CONCEPTGEN_WORKSPACE or ./workspace);
    ``settings``: session idle time, HTTPS, proxies, login limits (default ServerSettings())."""
    from annotator import errors
    from annotator.views import api, audit, auth, clusters, concepts, experiments, jobs, media, runs
    from conceptgen.jobs import JobRunner, fail_orphaned_jobs

    workspace = workspace or Workspace.resolve()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=load_secret_key(workspace),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # tokens live as long as the login session
        PER_PAGE_CLUSTERS=PER_PAGE_CLUSTERS,
        PER_PAGE_MEMBERS=PER_PAGE_MEMBERS,
        MAX_CONTENT_LENGTH=1 << 20,
        **(settings or ServerSettings()).flask_config(),
    )
    if test_config:
        app.config.update(test_config)
    security.install(app)
    app.extensions["conceptgen_workspace"] = workspace
    workspace.engine  # upgrade the schema before the first request, not during one
    fail_orphaned_jobs(workspace)  # a job whose server process is gone will never finish
    app.extensions["conceptgen_jobs"] = JobRunner(workspace)
    CSRFProtect(app)

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db", None)
        if session is not None:
            session.close()

    for bp in (auth.bp, runs.bp, clusters.bp, concepts.bp, media.bp, api.bp, audit.bp, jobs.bp,
               experiments.bp):
        app.register_blueprint(bp)
    errors.register(app)
    fragments = FragmentCache()
    app.extensions["annotator_fragments"] = fragments
    app.jinja_env.globals.update(media_url=media_url, cluster_url=cluster_url, highlight_url=highlight_url,
                                 fragment=fragments.render)
    app.add_url_rule("/", "index", lambda: redirect(url_for("runs.index")))
    return app


def media_url(relpath: str) -> str:
    """URL of a file under media/ (what url_for('media.serve') builds, without its per-call cost)."""
    return f"{request.script_root}/media/{quote(relpath)}"


def cluster_url(cluster_id: int) -> str:
    """URL of a cluster's detail page (the gallery builds dozens; url_for costs ~0.1 ms each)."""
    return f"{request.script_root}/clusters/{int(cluster_id)}"


def highlight_url(tube_id: int) -> str:
    """URL of a tube's source video with the tube highlighted (``media.highlight``)."""
    return f"{request.script_root}/tubes/{int(tube_id)}/highlight"
