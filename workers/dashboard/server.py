"""The operator's console over HTTP: Starlette routes served by uvicorn.

Routes (all but the probes and the login behind a login, see :mod:`workers.dashboard.access`)::

    GET  /healthz, /readyz                         process up / Redis answers (any host)
    GET  /login, POST /login, POST /logout          the login page, its JSON post, logout
    GET  /                                          the console (overview, line, frame views)
    GET  /static/{name}                             its script and style sheet
    GET  /api/me                                    who is logged in
    GET  /api/overview                              one row per line x camera, worker health
    GET  /api/lines/{line}?count=&camera=&review=&min_score=   score series + alerts
    GET  /api/frames/{camera}/{frame_id}            a frame's result and review
    GET  /api/frames/{camera}/{frame_id}/image.jpg  the frame (full size)
    GET  /api/frames/{camera}/{frame_id}/heatmap.png  its heatmap
    POST /api/lines/{line}/alerts/{camera}/{frame_id}/review  {"verdict": ...}

Starlette routes and uvicorn serve it (instead of ``http.server``): the login session,
host check and JSON request bodies come from a maintained framework, not hand-written
parsing. The queries: :mod:`workers.dashboard.console`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from importlib import resources
from typing import Any

import redis
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pipeline.errors import SchemaError
from pipeline.wire.messages import is_valid_id
from workers.dashboard.access import (
    HostCheck,
    SecurityHeaders,
    check_login,
    login_required,
    same_origin,
    session_secret,
)
from workers.dashboard.console import Console
from workers.dashboard.settings import DashboardSettings

logger = logging.getLogger(__name__)

STATIC = {"console.js": "text/javascript; charset=utf-8",
          "login.js": "text/javascript; charset=utf-8",
          "console.css": "text/css; charset=utf-8"}
LOGIN_FAILURE_DELAY_S = 0.5


def _static(name: str) -> bytes:
    return resources.files("workers.dashboard").joinpath("static", name).read_bytes()


def _ids(request: Request, *names: str) -> list[str] | None:
    values = [request.path_params[name] for name in names]
    return values if all(is_valid_id(v) for v in values) else None


def _not_found(what: str = "not found") -> JSONResponse:
    return JSONResponse({"error": what}, status_code=404)


def create_app(settings: DashboardSettings, console: Console) -> Starlette:
    """The console's ASGI application."""
    auth = settings.auth

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        ready = await run_in_threadpool(console.reader.ping)
        return PlainTextResponse("ready\n" if ready else "redis unavailable\n",
                                 status_code=200 if ready else 503)

    async def login_page(_: Request) -> Response:
        return Response(_static("login.html"), media_type="text/html; charset=utf-8")

    async def login(request: Request) -> Response:
        if not same_origin(request):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        try:
            body = await request.json()
        except ValueError:
            body = None
        user = check_login(auth, body) if isinstance(body, dict) else None
        if user is None:
            await asyncio.sleep(LOGIN_FAILURE_DELAY_S)
            logger.warning("failed login from %s", request.client and request.client.host)
            return JSONResponse({"error": "wrong credentials"}, status_code=401)
        request.session.clear()
        request.session.update({"user": user, "since": time.time()})
        logger.info("%s logged in", user)
        return JSONResponse({"user": user})

    async def logout(request: Request) -> Response:
        request.session.clear()
        return JSONResponse({"user": None})

    async def page(_: Request) -> Response:
        return Response(_static("console.html"), media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return _not_found()
        return Response(_static(name), media_type=STATIC[name])

    async def me(request: Request) -> Response:
        return JSONResponse({"user": request.state.user, "refresh_ms": settings.refresh_ms,
                             "offline_after_s": settings.offline_after_s})

    async def overview(_: Request) -> Response:
        return JSONResponse(await run_in_threadpool(console.overview))

    async def line(request: Request) -> Response:
        ids = _ids(request, "line")
        if ids is None:
            return _not_found()
        query = request.query_params
        count = max(1, min(int(query.get("count", settings.chart_points)), 5000))
        camera = query.get("camera") or None
        review = query.get("review") or None
        if review not in (None, "unreviewed", "acknowledged", "false_alarm"):
            return JSONResponse({"error": f"unknown review filter {review!r}"}, 400)
        min_score = float(query["min_score"]) if query.get("min_score") else None
        return JSONResponse(await run_in_threadpool(
            console.line, ids[0], count, settings.max_alerts, camera, review, min_score))

    async def frame(request: Request) -> Response:
        ids = _ids(request, "camera", "frame_id")
        found = ids and await run_in_threadpool(console.frame, *ids)
        return JSONResponse(found) if found else _not_found("expired or unknown frame")

    async def frame_image(request: Request) -> Response:
        ids = _ids(request, "camera", "frame_id")
        kind = request.path_params["kind"]
        if ids is None or kind not in ("image.jpg", "heatmap.png"):
            return _not_found()
        read = console.reader.frame if kind == "image.jpg" else console.reader.heatmap
        body = await run_in_threadpool(read, *ids)
        if body is None:
            return _not_found("expired or unknown frame")
        return Response(body, media_type="image/jpeg" if kind == "image.jpg" else "image/png")

    async def review(request: Request) -> Response:
        ids = _ids(request, "line", "camera", "frame_id")
        if ids is None:
            return _not_found()
        try:
            body: Any = await request.json()
        except ValueError:
            body = None
        verdict = body.get("verdict") if isinstance(body, dict) else None
        try:
            done = await run_in_threadpool(console.review, *ids, str(verdict),
                                           request.state.user)
        except LookupError as error:
            return _not_found(str(error))
        return JSONResponse(done)

    def guard(handler: Any, page: bool = False) -> Any:
        return login_required(auth, handler, page)

    routes = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", guard(logout), methods=["POST"]),
        Route("/", guard(page, page=True), methods=["GET", "HEAD"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/me", guard(me)),
        Route("/api/overview", guard(overview)),
        Route("/api/lines/{line}", guard(line)),
        Route("/api/frames/{camera}/{frame_id}", guard(frame)),
        Route("/api/frames/{camera}/{frame_id}/{kind}", guard(frame_image)),
        Route("/api/lines/{line}/alerts/{camera}/{frame_id}/review", guard(review),
              methods=["POST"]),
    ]

    async def redis_down(_: Request, error: Exception) -> Response:
        logger.warning("redis error: %s", error)
        return JSONResponse({"error": "redis unavailable"}, status_code=503)

    async def bad_request(_: Request, error: Exception) -> Response:
        logger.warning("bad request or record: %s", error)
        return JSONResponse({"error": f"bad request: {error}"}, status_code=400)

    return Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(HostCheck, allowed_hosts=settings.allowed_hosts),
            Middleware(SessionMiddleware, secret_key=session_secret(auth),
                       session_cookie="linewatch_session", max_age=auth.session_max_age_s,
                       same_site="strict", https_only=auth.https_only),
        ],
        exception_handlers={redis.RedisError: redis_down, SchemaError: bad_request,
                            ValueError: bad_request})


class DashboardServer:
    """uvicorn serving the console on a thread (``start``/``stop``, or ``with``).

    Args:
        settings: The console's settings (``http.host``/``http.port``; port 0 picks one).
        console: Its queries over Redis.
    """

    def __init__(self, settings: DashboardSettings, console: Console) -> None:
        self.app = create_app(settings, console)
        config = uvicorn.Config(self.app, host=settings.http.host, port=settings.http.port,
                                log_level="warning", access_log=False, lifespan="off",
                                server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="dashboard-http",
                                        daemon=True)

    def start(self, timeout_s: float = 30.0) -> DashboardServer:
        """Serve; return once the socket listens.

        Raises:
            RuntimeError: It did not start (e.g. the port is taken).
        """
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the console's HTTP server did not start "
                                   "(port taken? see the log)")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        """Base URL of the bound server."""
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
