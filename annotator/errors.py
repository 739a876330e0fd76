"""Errors become a friendly page or a JSON ``{"error": ...}`` — never a traceback."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from conceptgen.review.decisions import NameTakenError
from conceptgen.errors import ConceptgenError, NotFoundError, StaleVersionError

STATUS = ((NotFoundError, 404), (StaleVersionError, 409), (NameTakenError, 409))
CSRF_MESSAGE = ("this request is missing its security token (CSRF) or the token expired; "
                "reload the page and try again")


def status_of(err: ConceptgenError) -> int:
    return next((code for cls, code in STATUS if isinstance(err, cls)), 400)


def error_response(message: str, code: int):
    from annotator.views.auth import wants_json

    if wants_json():
        return jsonify(error=message, status=code), code
    return render_template("error.html", message=message, code=code, back=_back_url()), code


def _back_url() -> str | None:
    """The referring page when it is on this site (a plain link: the pages allow no inline script)."""
    ref = urlsplit(request.referrer or "")
    if ref.netloc != request.host or not ref.path.startswith("/") or ref.path.startswith("//"):
        return None
    return ref.path + (f"?{ref.query}" if ref.query else "")


def register(app: Flask) -> None:
    @app.errorhandler(ConceptgenError)
    def _user_error(err: ConceptgenError):
        return error_response(str(err), status_of(err))

    @app.errorhandler(CSRFError)
    def _csrf(_err: CSRFError):
        return error_response(CSRF_MESSAGE, 400)

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException):
        messages = {404: "there is nothing at this address; go back to the runs page",
                    405: "this address does not accept that kind of request",
                    413: "the request is too large"}
        return error_response(messages.get(err.code, err.description or err.name), err.code or 500)

    @app.errorhandler(OperationalError)
    def _busy(err: OperationalError):
        app.logger.warning("database operational error: %s", err)
        return error_response("the database is busy; wait a moment and try again", 503)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        app.logger.exception("unexpected error")
        return error_response("something went wrong on the server (it was logged); reload and try again", 500)
