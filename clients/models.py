"""Typed results and errors of the m2grl clients.

These mirror service/models.py field for field (the client must not import the service, numpy or hnswlib, so
it can ship in a ranking engine's image on its own). Unknown fields a newer server adds are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["general", "diversity"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Candidate(_Model):
    item_id: str
    score: float
    category: str | None = None
    shop: str | None = None


class CandidatesResult(_Model):
    item_id: str
    strategy: Strategy
    index_version: str
    candidates: list[Candidate]
    exhausted: bool = False

    @property
    def ids(self) -> list[str]:
        return [c.item_id for c in self.candidates]


class ErrorInfo(_Model):
    status: int
    error: str
    detail: str


class BatchEntry(_Model):
    item_id: str
    candidates: list[Candidate] | None = None
    exhausted: bool = False
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class BatchResult(_Model):
    strategy: Strategy
    index_version: str
    k: int
    results: list[BatchEntry]


class ItemInfo(_Model):
    item_id: str
    row: int
    index_version: str
    category: str | None = None
    shop: str | None = None
    attributes: dict[str, str | None] = Field(default_factory=dict)
    embeddings: dict[str, list[float]] | None = None
    relational: dict[str, list[float]] | None = None
    diversity_vector: list[float] | None = None


class Explanation(_Model):
    item_id: str
    other: str
    index_version: str
    inner_product: float
    d_i: float | None = None
    d_ic: float | None = None
    d: float | None = None
    metric_view: str | None = None
    category: str | None = None
    other_category: str | None = None


class StrategyInfo(_Model):
    n: int
    dim: int
    space: str
    metric: str
    ef_search: int
    recall_k: int
    recall_at_k: float


class IndexInfo(_Model):
    version: str
    previous_version: str | None = None
    artifact_version: str
    n_items: int
    metric_view: str | None = None
    category_view: str | None = None
    loaded_at: str
    strategies: dict[str, StrategyInfo]


class ReloadResult(_Model):
    action: Literal["reload", "rollback"]
    version: str
    previous_version: str | None = None
    loaded_at: str
    seconds: float


# ---------------------------------------------------------------------------------------------- errors


class M2GRLError(Exception):
    """A failed call. ``status`` is the HTTP status (None when no answer came), ``detail`` the JSON body."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: Any = None,
        request_id: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail
        self.request_id = request_id
        self.url = url

    @property
    def error(self) -> str | None:
        """The service's machine-readable error code (``unknown_item``, ``reload_in_progress``, ...)."""
        return self.detail.get("error") if isinstance(self.detail, dict) else None


class TransportError(M2GRLError):
    """No HTTP answer: connection refused or reset, timeout. Retried before it is raised."""


class BadRequestError(M2GRLError):
    """400, 413 or 422: the request itself is wrong (k out of range, unknown strategy, batch too big, ...)."""


class AuthError(M2GRLError):
    """401 (missing or wrong admin token) or 403 (the server has no admin token configured)."""


class NotFoundError(M2GRLError):
    """404: an unknown item, index version or path."""


class UnknownItemError(NotFoundError):
    """404 naming an item id the serving index does not hold."""


class ConflictError(M2GRLError):
    """409: a reload is already running, or there is nothing to roll back to."""


class RateLimitedError(M2GRLError):
    """429, after the retries ran out."""


class UnavailableError(M2GRLError):
    """503: the service has no index loaded (yet), after the retries ran out."""


class ServerError(M2GRLError):
    """Any other 5xx, after the retries ran out."""


def error_for_status(status: int, detail: Any) -> type[M2GRLError]:
    if status in (401, 403):
        return AuthError
    if status == 404:
        is_item = isinstance(detail, dict) and detail.get("error") == "unknown_item"
        return UnknownItemError if is_item else NotFoundError
    if status == 409:
        return ConflictError
    if status == 429:
        return RateLimitedError
    if status == 503:
        return UnavailableError
    if status >= 500:
        return ServerError
    return BadRequestError
