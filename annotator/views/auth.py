"""Log in and out; :func:`login_required` is the one authorization helper."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from flask import Blueprint, flash, g, jsonify, redirect, render_template, request, session, url_for
from sqlalchemy import bindparam, select

from annotator.db import db
from conceptgen.review.users import authenticate
from conceptgen.orm import User

bp = Blueprint("auth", __name__)


@dataclass(frozen=True)
class SignedInUser:
    """Who is making this request (``g.user``): just what the views and pages use."""

    id: int
    name: str


_USER = select(User.id, User.name).where(User.id == bindparam("user"))


@bp.before_app_request
def load_user() -> None:
    user_id = session.get("user_id")
    row = db().connection().execute(_USER, {"user": user_id}).first() if user_id is not None else None
    g.user = SignedInUser(row.id, row.name) if row is not None else None


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def login_required(view: Callable) -> Callable:
    """Anonymous requests get 401 JSON (API) or a redirect to the login page."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if g.get("user") is None:
            if wants_json():
                return jsonify(error="log in first: POST /login with your user name and password"), 401
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
        user = authenticate(db(), request.form.get("username", ""), request.form.get("password", ""))
        if user is None:
            flash("Wrong user name or password.", "error")
            return render_template("login.html", next=request.form.get("next", "")), 401
        session.clear()
        session["user_id"] = user.id
        return redirect(_safe_next(request.form.get("next")))
    return render_template("login.html", next=request.args.get("next", ""))


@bp.route("/logout", methods=["POST"])
def logout():
    session.clear()
    return redirect(url_for("auth.login"))
