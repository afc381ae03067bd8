"""HTTP models of the candidate service (API v1), declared as FastAPI request and response models.

The two candidate endpoints write their JSON directly (see ``candidates_json`` in service.routers.candidates:
a third of the cost of FastAPI's validate-then-dump); their output is checked against these models in the
tests. Every other endpoint goes through FastAPI's response-model path.

clients/models.py mirrors these for the client, which must not import the service; tests/test_clients.py
checks that the two stay field-for-field compatible.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["general", "diversity"]
STRATEGIES: tuple[str, ...] = ("general", "diversity")


class Candidate(BaseModel):
    item_id: str
    score: float = Field(
        description="higher = closer: inner product (general) or -d(a, b) of Eq. 11 (diversity)"
    )
    category: str | None = Field(None, description="the item's value in the category view (the metric view)")
    shop: str | None = Field(None, description="the item's value in the 'shop' view, when the data has one")


class CandidatesResponse(BaseModel):
    item_id: str
    strategy: Strategy
    index_version: str
    candidates: list[Candidate] = Field(description="rank order, best first; never the query item")
    exhausted: bool = Field(
        False, description="fewer than k candidates survived the filters: the whole index was searched"
    )


class CandidateQuery(BaseModel):
    """Query parameters of ``GET /v1/items/{item_id}/candidates`` (validated in one pydantic call)."""

    model_config = ConfigDict(extra="ignore")

    strategy: Strategy = Field("general", description="general: inner product; diversity: metric model")
    k: int = Field(50, ge=1, description="number of candidates, 1..M2GRL_MAX_K")
    exclude: str | None = Field(None, description="comma-separated item ids never to return")
    exclude_categories: str | None = Field(None, description="comma-separated categories never to return")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[str] = Field(min_length=1, description="trigger item ids, answered in this order")
    strategy: Strategy = "general"
    k: int = Field(50, ge=1, description="candidates per trigger item, 1..M2GRL_MAX_K")
    exclude: list[str] = Field(default_factory=list, description="item ids never returned")
    exclude_categories: list[str] = Field(default_factory=list, description="categories never returned")


class ErrorInfo(BaseModel):
    status: int
    error: str
    detail: str


class BatchResult(BaseModel):
    item_id: str
    candidates: list[Candidate] | None = Field(None, description="null when ``error`` is set")
    exhausted: bool = False
    error: ErrorInfo | None = None


class BatchResponse(BaseModel):
    strategy: Strategy
    index_version: str
    k: int
    results: list[BatchResult] = Field(description="one per trigger item, in request order")


class ItemResponse(BaseModel):
    item_id: str
    row: int = Field(description="row of the item in the index version")
    index_version: str
    category: str | None = None
    shop: str | None = None
    attributes: dict[str, str | None] = Field(description="attribute view -> the item's value (null = none)")
    embeddings: dict[str, list[float]] | None = Field(
        None,
        description="with ?embeddings=true: view -> vector; 'item' is e_i, an attribute view gives the "
        "embedding of the item's attribute node (absent when the item has none)",
    )
    relational: dict[str, list[float]] | None = Field(
        None, description="with ?embeddings=true: attribute view -> item-side relational vector sigma(W e_i)"
    )
    diversity_vector: list[float] | None = Field(None, description="with ?embeddings=true: z of Sec. 6.1")


class ExplainResponse(BaseModel):
    item_id: str
    other: str
    index_version: str
    inner_product: float = Field(description="e_a . e_b of the instance-view embeddings (general score)")
    d_i: float | None = Field(None, description="(e_a - e_b)^T M_i (e_a - e_b); null without a metric model")
    d_ic: float | None = Field(None, description="(e_ic_a - e_ic_b)^T M_ic (e_ic_a - e_ic_b)")
    d: float | None = Field(None, description="d_i + d_ic (Eq. 11); -d is the diversity score")
    metric_view: str | None = None
    category: str | None = None
    other_category: str | None = None


class StrategyInfo(BaseModel):
    n: int
    dim: int
    space: str
    metric: str
    ef_search: int
    recall_k: int
    recall_at_k: float


class IndexInfo(BaseModel):
    version: str
    previous_version: str | None
    artifact_version: str
    n_items: int
    metric_view: str | None
    category_view: str | None
    loaded_at: str = Field(description="ISO-8601 UTC time this process loaded the version")
    strategies: dict[str, StrategyInfo]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, description="a version directory under INDEX_ROOT; default: CURRENT")


class ReloadResponse(BaseModel):
    action: Literal["reload", "rollback"]
    version: str
    previous_version: str | None
    loaded_at: str
    seconds: float = Field(description="time spent loading and verifying (0 for a rollback)")


class ErrorResponse(BaseModel):
    """Body of every non-2xx answer except FastAPI's 422 on request validation (``detail`` is then a list)."""

    error: str
    detail: str
    item_id: str | None = None


class Health(BaseModel):
    status: str
    index_version: str | None = None
