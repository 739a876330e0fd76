"""Log in and out; :func:`login_required` is the one authorization helper.

A session ends when it has been idle for ``SESSION_IDLE``, when the user's password
changes (the session carries a stamp of the password hash it logged in with) or when
the user is removed. Logins go through the shared throttle (``conceptgen.review.throttle``).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import urlsplit

from flask import (Blueprint, current_app, flash, g, jsonify, redirect, render_template, request, session,
                   url_for)
from sqlalchemy import bindparam, select

from annotator.db import db
from conceptgen.orm import User
from conceptgen.review import throttle

bp = Blueprint("auth", __name__)


@dataclass(frozen=True)
class SignedInUser:
    """Who is making this request (``g.user``): just what the views and pages use."""

    id: int
    name: str


_USER = select(User.id, User.name, User.password_hash).where(User.id == bindparam("user"))
EXPIRED_MESSAGE = "your session ended (idle too long, or your password changed); log in again"
SEEN_STEP_S = 30  # the last-seen time is rewritten at most this often (it is re-signed into the cookie)


def _now() -> datetime:
    return current_app.config["CLOCK"]()


def _epoch(at: datetime) -> float:
    return at.replace(tzinfo=timezone.utc).timestamp()


def password_stamp(password_hash: str) -> str:
    """A short keyed digest of the password hash: a session is valid only while it matches."""
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, password_hash.encode(), hashlib.sha256).hexdigest()[:32]


@bp.before_app_request
def load_user() -> None:
    g.user, g.session_ended = None, False
    user_id = session.get("user_id")
    if user_id is None:
        return
    row = db().connection().execute(_USER, {"user": user_id}).first()
    now = _epoch(_now())
    idle = current_app.config["SESSION_IDLE"].total_seconds()
    seen = session.get("seen")
    if (row is None or not isinstance(seen, (int, float)) or now - seen > idle
            or not hmac.compare_digest(str(session.get("stamp", "")), password_stamp(row.password_hash))):
        session.clear()
        g.session_ended = True
        return
    if now - seen >= min(SEEN_STEP_S, idle / 10):
        session["seen"] = now
    g.user = SignedInUser(row.id, row.name)


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def login_required(view: Callable) -> Callable:
    """Anonymous requests get 401 JSON (API) or a redirect to the login page."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if g.get("user") is None:
            ended = g.get("session_ended")
            if wants_json():
                message = EXPIRED_MESSAGE if ended else "log in first: POST /login with your user name and password"
                return jsonify(error=message), 401
            if ended:
                flash(EXPIRED_MESSAGE[0].upper() + EXPIRED_MESSAGE[1:] + ".", "error")
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths, so the login form cannot redirect elsewhere."""
    parts = urlsplit(target or "")
    if not target or parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("runs.index")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST":
        name, address = request.form.get("username", ""), request.remote_addr or "unknown"
        try:
            user = throttle.login(db(), name, request.form.get("password", ""), address, _now(),
                                  current_app.config["LOGIN_LIMITS"])
        except throttle.LoginThrottledError as err:
            current_app.logger.warning("login refused (throttled) for %r from %s", name[:100], address)
            flash(str(err)[0].upper() + str(err)[1:] + ".", "error")
            page = render_template("login.html", next=request.form.get("next", ""))
            return page, 429, {"Retry-After": str(max(1, math.ceil(err.retry_after_s)))}
        if user is None:
            flash("Wrong user name or password.", "error")
            return render_template("login.html", next=request.form.get("next", "")), 401
        session.clear()
        session.permanent = True  # the cookie expires with the idle time too
        session.update(user_id=user.id, seen=_epoch(_now()), stamp=password_stamp(user.password_hash))
        return redirect(_safe_next(request.form.get("next")))
    return render_template("login.html", next=request.args.get("next", ""))


@bp.route("/logout", methods=["POST"])
def logout():
    session.clear()
    return redirect(url_for("auth.login"))
