"""The annotator's Flask app factory. Nothing happens at import time."""
from __future__ import annotations

import os
import secrets
from typing import Any
from urllib.parse import quote

from flask import Flask, g, redirect, request, url_for
from flask_wtf.csrf import CSRFProtect

from annotator.fragments import FragmentCache
from conceptgen.workspace import Workspace

SECRET_FILE = "annotator_secret_key"
PER_PAGE_CLUSTERS = 16  # four rows of four cards at 1366 px
PER_PAGE_MEMBERS = 24


def load_secret_key(workspace: Workspace) -> str:
    """The session-signing key: WORKSPACE/annotator_secret_key, created once with mode 0600."""
    path = workspace.root / SECRET_FILE
    workspace.root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path.read_text().strip()


def create_app(workspace: Workspace | None = None, test_config: dict[str, Any] | None = None) -> Flask:
    """Build the annotator for a workspace (default: $CONCEPTGEN_WORKSPACE or ./workspace)."""
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
    )
    if test_config:
        app.config.update(test_config)
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
