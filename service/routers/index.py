"""``GET /v1/index``: which version is served, what it came from and how good its indexes are."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.models import IndexInfo
from service.routers import ERROR_RESPONSES, serving
from service.state import ServiceContext


def build_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["index"])

    @router.get("/v1/index", response_model=IndexInfo, responses={503: ERROR_RESPONSES[503]})
    async def index_info() -> Any:
        idx = serving(ctx)
        prev = ctx.holder.previous
        return {
            "version": idx.version,
            "previous_version": prev.version if prev else None,
            "artifact_version": idx.artifact_version,
            "n_items": idx.n_items,
            "metric_view": idx.metric_view,
            "category_view": idx.category_view,
            "loaded_at": idx.loaded_at.isoformat(timespec="seconds"),
            "strategies": {
                name: {
                    "n": e.n,
                    "dim": e.dim,
                    "space": e.space,
                    "metric": e.metric,
                    "ef_search": e.ef_search,
                    "recall_k": e.recall_k,
                    "recall_at_k": e.recall_at_k,
                }
                for name, e in idx.strategies.items()
            },
        }

    return router
