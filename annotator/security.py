"""The annotator's server-side safety settings and the headers on every response.

:class:`ServerSettings` is what ``conceptgen serve`` passes to :func:`annotator.create_app`
(session idle time, HTTPS behind a proxy, login limits); the app keeps it in its
config, where tests may override single keys (``CLOCK``, ``LOGIN_LIMITS``,
``SESSION_IDLE``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from conceptgen.errors import ConfigError
from conceptgen.orm import utcnow
from conceptgen.review.throttle import LoginLimits
from conceptgen.review.users import SESSION_IDLE_MINUTES

if TYPE_CHECKING:
    from flask import Flask, Response

# Scripts only from our own files (no inline script, no eval, no javascript: URLs);
# style *attributes* stay allowed because progress bars set their width inline.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "style-src-attr 'unsafe-inline'",
    "img-src 'self'",
    "media-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",  # no other site can frame the review pages (clickjacking)
))
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",  # the same, for browsers without frame-ancestors
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=31536000"


@dataclass(frozen=True)
class ServerSettings:
    """``session_idle_minutes``: a session unused this long ends (log in again).
    ``https``: browsers reach the server over HTTPS (a TLS reverse proxy in front), so
    the session cookie gets the Secure flag and responses carry HSTS.
    ``proxies``: how many reverse proxies in front to trust for X-Forwarded-For/-Proto/
    -Host/-Prefix (0: none; the client address is then the connection's).
    ``login``: the login throttle's limits per user name and per client address."""

    session_idle_minutes: float = SESSION_IDLE_MINUTES
    https: bool = False
    proxies: int = 0
    login: LoginLimits = field(default_factory=LoginLimits)

    def __post_init__(self) -> None:
        if self.session_idle_minutes <= 0:
            raise ConfigError(f"--session-idle-minutes must be positive, not {self.session_idle_minutes:g}")
        if self.proxies < 0:
            raise ConfigError(f"--proxies must be 0 or more, not {self.proxies}")

    def flask_config(self) -> dict[str, Any]:
        idle = timedelta(minutes=self.session_idle_minutes)
        return {
            "SESSION_IDLE": idle,
            # The cookie ends with the idle time too (re-sent on each request), and
            # Flask refuses a cookie signed longer ago than this.
            "PERMANENT_SESSION_LIFETIME": idle,
            "SESSION_REFRESH_EACH_REQUEST": True,
            "SESSION_COOKIE_SECURE": self.https,
            "PREFERRED_URL_SCHEME": "https" if self.https else "http",
            "HTTPS": self.https,
            "PROXIES": self.proxies,
            "LOGIN_LIMITS": self.login,
            "CLOCK": utcnow,  # naive UTC datetime; tests set their own
        }


def install(app: Flask) -> None:
    """Security headers on every response (pages, API, static files, media, errors),
    and the proxy fix when the config trusts reverse proxies."""
    https = bool(app.config.get("HTTPS"))

    @app.after_request
    def _headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if https:
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        return response

    proxies = int(app.config.get("PROXIES") or 0)
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies, x_prefix=proxies)
