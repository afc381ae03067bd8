"""Routers of the candidate service. Each module has ``build_router(ctx) -> APIRouter``: routes are built per
app so that limits from the settings (M2GRL_MAX_K, ...) appear in the validation and the OpenAPI schema."""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from service.models import ErrorResponse
from service.state import ServiceContext, ServiceError, ServingIndex

STRATEGY_SCOPE_KEY = "m2grl.strategy"  # read by the metrics middleware for the strategy label

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "unknown item"},
    503: {"model": ErrorResponse, "description": "no index version loaded"},
}


def serving(ctx: ServiceContext) -> ServingIndex:
    """The version this request works on (read once: a reload mid-request does not affect it), or 503."""
    idx = ctx.holder.current
    if idx is None:
        raise ServiceError(503, "not_ready", f"no index loaded: {ctx.holder.not_ready_reason}")
    return idx


def unknown_item(ctx: ServiceContext, idx: ServingIndex, item_id: str) -> NoReturn:
    ctx.metrics.unknown_items.inc()
    raise ServiceError(
        404, "unknown_item", f"item {item_id!r} is not in index version {idx.version}", item_id=item_id
    )


def invalid(
    loc: tuple[str | int, ...], msg: str, value: Any, kind: str = "value_error", **ctx: Any
) -> NoReturn:
    """Raise a 422 shaped exactly like FastAPI's own request validation errors."""
    error: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": value}
    if ctx:
        error["ctx"] = ctx
    raise RequestValidationError([error])


def mark_strategy(request: Request, strategy: str) -> None:
    request.scope[STRATEGY_SCOPE_KEY] = strategy


def split_csv(value: str | None) -> list[str]:
    if not value:
        return []
    return [v for v in (part.strip() for part in value.split(",")) if v]
