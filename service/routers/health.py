"""Probes and metrics: ``/healthz`` (process alive), ``/readyz`` (an index is loaded), ``/metrics``.

``/bench/floor/{item_id}`` (only with M2GRL_BENCH_FLOOR=1) returns 50 fixed ids through the same app,
middleware and a declared response model, without touching the index: the framework's floor for
benchmarks/bench_service.py.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service.models import ErrorResponse, Health
from service.state import ServiceContext


class FloorResponse(BaseModel):
    item_id: str
    ids: list[str]


def build_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health)
    async def healthz() -> Any:
        return {"status": "alive"}

    @router.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse}})
    async def readyz() -> Any:
        idx = ctx.holder.current
        if idx is None:
            return JSONResponse(
                {"error": "not_ready", "detail": ctx.holder.not_ready_reason or "no index loaded"},
                status_code=503,
            )
        return {"status": "ready", "index_version": idx.version}

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = ctx.metrics.render()
        return Response(body, media_type=content_type)

    if ctx.settings.bench_floor:
        floor = [str(1000 + i) for i in range(50)]

        @router.get("/bench/floor/{item_id}", response_model=FloorResponse, include_in_schema=False)
        async def bench_floor(item_id: str) -> Any:
            return {"item_id": item_id, "ids": floor}

    return router
