"""App factory: ``create_app(settings)`` -> a FastAPI app with its own index holder, metrics and middleware.

The lifespan starts one background task that loads the version CURRENT names (so ``/healthz`` answers at
once and ``/readyz`` turns 200 when the load is done) and, with M2GRL_RELOAD_POLL_SECONDS, keeps following
CURRENT. Everything per-request that is not routing lives in one pure ASGI middleware (request id, access
log, metrics, body-size limit): BaseHTTPMiddleware would add a task and a stream per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logging import request_id_var
from service.metrics import UNMATCHED, ServiceMetrics
from service.routers import STRATEGY_SCOPE_KEY, admin, candidates, health, index, items
from service.settings import Settings
from service.state import IndexHolder, ServiceContext, ServiceError

log = logging.getLogger("m2grl.service")
access_log = logging.getLogger("m2grl.service.access")

API_VERSION = "1"
# An incoming X-Request-ID is echoed only when it is short and harmless in a log line or header.
_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def _new_request_id() -> str:
    return os.urandom(8).hex()


class ServiceMiddleware:
    """Request id (X-Request-ID in, or generated; echoed back), body-size limit (413), metrics, access log."""

    def __init__(self, app: ASGIApp, ctx: ServiceContext) -> None:
        self.app = app
        self.metrics = ctx.metrics
        self.max_body = ctx.settings.max_body_bytes
        mode = ctx.settings.access_log
        self.log_all = mode == "all"
        self.log_errors = mode != "off"
        self.slow_seconds = ctx.settings.slow_request_ms / 1000.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid_bytes = None
        content_length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _REQUEST_ID_RE.match(value):
                    rid_bytes = value
            elif name == b"content-length":
                content_length = value
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        rid = rid_bytes.decode("ascii") if rid_bytes is not None else _new_request_id()
        rid_header = (b"x-request-id", rid_bytes if rid_bytes is not None else rid.encode("ascii"))
        token = request_id_var.set(rid)
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        try:
            too_large = content_length is not None and (
                not content_length.isdigit() or int(content_length) > self.max_body
            )
            if too_large:
                await self._reject_large(send_wrapper)
            else:
                if chunked and content_length is None and scope["method"] in _METHODS_WITH_BODY:
                    receive = self._limited(receive)
                await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not started:
                await _send_json(
                    send_wrapper,
                    500,
                    {"error": "internal_error", "detail": f"internal error (request id {rid})"},
                )
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", UNMATCHED) if route is not None else UNMATCHED
            strategy = scope.get(STRATEGY_SCOPE_KEY, "")
            seconds = time.perf_counter() - start
            self.metrics.observe_request(endpoint, scope["method"], strategy, status, seconds)
            if self.log_all or (self.log_errors and (status >= 400 or seconds >= self.slow_seconds)):
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "request_id": rid,
                        "endpoint": endpoint,
                        "status": status,
                        "ms": round(seconds * 1000, 3),
                    },
                )
            request_id_var.reset(token)

    async def _reject_large(self, send: Send) -> None:
        await _send_json(
            send,
            413,
            {"error": "payload_too_large", "detail": f"request body over the limit of {self.max_body} bytes"},
        )

    def _limited(self, receive: Receive) -> Receive:
        """A receive that fails with 413 once a chunked body passes the limit (FastAPI re-raises HTTPException)."""
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise StarletteHTTPException(413, f"request body over the limit of {limit} bytes")
            return message

        return wrapped


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    response = JSONResponse(body, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.error, "detail": exc.detail}
        body.update({k: v for k, v in exc.extra.items() if v is not None})
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"error": "validation_error", "detail": jsonable_encoder(exc.errors())}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_ERROR_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": code, "detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )


def create_app(settings: Settings | None = None, holder: IndexHolder | None = None) -> FastAPI:
    """A new app. ``settings`` default to the environment (``Settings.from_env()``)."""
    settings = settings or Settings.from_env()
    metrics = holder.metrics if holder is not None else ServiceMetrics()
    holder = holder or IndexHolder(settings.index_root, metrics)
    ctx = ServiceContext(settings=settings, holder=holder, metrics=metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info(
            "m2grl service starting",
            extra={
                "index_root": str(settings.index_root),
                "poll_seconds": settings.reload_poll_seconds,
                "admin": settings.admin_token is not None,
                "search_mode": settings.search_mode,
            },
        )
        task = asyncio.create_task(
            holder.follow_current(settings.reload_poll_seconds), name="m2grl-follow-current"
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.info("m2grl service stopped")

    app = FastAPI(
        title="m2grl candidate service",
        description="Candidate generation from M2GRL embeddings (KDD 2020) served from recall-checked HNSW indexes.",
        version=API_VERSION,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    for module in (candidates, items, index, admin, health):
        app.include_router(module.build_router(ctx))
    _install_error_handlers(app)
    app.add_middleware(ServiceMiddleware, ctx=ctx)
    return app
