"""Who may reach the console: allowed hosts, the login, the session, CSRF-safe posts.

* **Hosts**: every request but ``/healthz`` and ``/readyz`` (probes come by IP) must name
  an allowed host in its ``Host`` header (Starlette's ``TrustedHostMiddleware``), so a DNS
  rebinding page cannot reach a console bound to loopback.
* **Login**: user/password or token, compared in constant time, from the settings'
  ``SecretStr`` fields. The session is Starlette's signed cookie (itsdangerous),
  HttpOnly, SameSite=Strict, Secure behind TLS (``auth.https_only``). Scripts may send
  ``Authorization: Bearer <token>`` instead of logging in.
* **Posts**: a cookie-authenticated POST must come from the console's own origin
  (``Origin`` header, else ``Sec-Fetch-Site: same-origin``); with SameSite=Strict a
  cross-site form never carries the cookie in the first place.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.dashboard.settings import AuthSettings

#: Served to any host and without a login (probes, the login page and its assets).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
PUBLIC_PATHS = OPEN_PATHS | {"/login", "/static/login.js", "/static/console.css"}

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
     b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'"),
]

Handler = Callable[[Request], Awaitable[Response]]


class HostCheck:
    """``TrustedHostMiddleware`` for everything but the probes' paths."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.checked = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts,
                                             www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the host, unless the path is a probe's."""
        if scope["type"] == "http" and scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
        else:
            await self.checked(scope, receive, send)


class SecurityHeaders:
    """Adds the security headers (CSP, nosniff, no framing, no caching) to every reply."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to the reply."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)


def session_secret(auth: AuthSettings) -> str:
    """The cookie-signing key: the configured one, or a random one for this process."""
    if auth.session_secret is not None:
        return auth.session_secret.get_secret_value()
    return secrets.token_urlsafe(32)


def _same(given: str, secret: Any) -> bool:
    return secret is not None and hmac.compare_digest(
        given.encode("utf-8"), secret.get_secret_value().encode("utf-8"))


def check_login(auth: AuthSettings, body: dict[str, Any]) -> str | None:
    """The user a login body names when its credentials are right, else ``None``.

    ``{"username", "password"}`` or ``{"token", "username"?}``; a token login is recorded
    as ``token:<username>`` (``token:operator`` when no name is given).
    """
    username = str(body.get("username") or "").strip()[:64]
    if "token" in body:
        if _same(str(body.get("token") or ""), auth.token):
            return f"token:{username or 'operator'}"
        return None
    password = str(body.get("password") or "")
    user_ok = hmac.compare_digest(username.encode("utf-8"), auth.username.encode("utf-8"))
    return auth.username if _same(password, auth.password) and user_ok else None


def current_user(request: Request, auth: AuthSettings) -> str | None:
    """The logged-in user: from the session cookie or an ``Authorization: Bearer`` token."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return "token:api" if _same(header[7:].strip(), auth.token) else None
    user = request.session.get("user")
    return user if isinstance(user, str) and user else None


def same_origin(request: Request) -> bool:
    """Whether a cookie-authenticated POST comes from the console's own pages."""
    if request.headers.get("authorization", "").lower().startswith("bearer "):
        return True  # a browser never adds this header on its own: no CSRF
    origin = request.headers.get("origin")
    if origin is not None:
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        forwarded = request.headers.get("x-forwarded-proto")
        alternatives = {expected} | ({f"{forwarded}://{request.headers.get('host', '')}"}
                                     if forwarded else set())
        return origin in alternatives
    return request.headers.get("sec-fetch-site") == "same-origin"


def login_required(auth: AuthSettings, handler: Handler, page: bool = False) -> Handler:
    """Wrap a route: no user -> 401 (API) or a redirect to ``/login`` (page)."""

    async def guarded(request: Request) -> Response:
        user = current_user(request, auth)
        if user is None:
            if page:
                return RedirectResponse("/login", status_code=303)
            return JSONResponse({"error": "login required"}, status_code=401)
        if request.method == "POST" and not same_origin(request):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        request.state.user = user
        return await handler(request)

    return guarded
