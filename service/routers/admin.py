"""Admin: ``POST /admin/reload`` and ``POST /admin/rollback``, behind ``Authorization: Bearer <token>``.

Without M2GRL_ADMIN_TOKEN the endpoints answer 403 (admin disabled) rather than being open. The token is
compared with ``hmac.compare_digest`` so the answer time does not reveal how much of a guess was right.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request

from service.models import ErrorResponse, ReloadRequest, ReloadResponse
from service.state import ServiceContext, ServiceError, ServingIndex

ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
    403: {"model": ErrorResponse, "description": "admin endpoints disabled (no M2GRL_ADMIN_TOKEN)"},
    404: {"model": ErrorResponse, "description": "no such version under the index root"},
    409: {"model": ErrorResponse, "description": "a reload is running, or nothing to roll back to"},
    422: {"model": ErrorResponse, "description": "the version failed verification; the old one still serves"},
}


def build_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["admin"], prefix="/admin")
    token = ctx.settings.admin_token_bytes()

    def require_admin(request: Request) -> None:
        if token is None:
            raise ServiceError(
                403, "admin_disabled", "admin endpoints are disabled: M2GRL_ADMIN_TOKEN is not set"
            )
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ServiceError(401, "unauthorized", "missing 'Authorization: Bearer <token>' header")
        if not hmac.compare_digest(given.strip().encode(), token):
            raise ServiceError(401, "unauthorized", "wrong admin token")

    def answer(action: str, idx: ServingIndex, seconds: float) -> dict[str, Any]:
        prev = ctx.holder.previous
        return {
            "action": action,
            "version": idx.version,
            "previous_version": prev.version if prev else None,
            "loaded_at": idx.loaded_at.isoformat(timespec="seconds"),
            "seconds": round(seconds, 4),
        }

    @router.post(
        "/reload",
        response_model=ReloadResponse,
        responses=ADMIN_RESPONSES,
        dependencies=[Depends(require_admin)],
    )
    async def reload(body: Annotated[ReloadRequest | None, Body()] = None) -> Any:
        """Load and verify a version (default: the one INDEX_ROOT/CURRENT names) in a worker thread, then
        swap it in; requests keep being answered by the old version meanwhile."""
        idx = await ctx.holder.reload(body.version if body else None)
        return answer("reload", idx, idx.load_seconds)

    @router.post(
        "/rollback",
        response_model=ReloadResponse,
        responses=ADMIN_RESPONSES,
        dependencies=[Depends(require_admin)],
    )
    async def rollback() -> Any:
        """Serve the previous version again (it is still in memory); the current one becomes previous."""
        idx = await ctx.holder.rollback()
        return answer("rollback", idx, 0.0)

    return router
