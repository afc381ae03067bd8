"""Item lookups for debugging: ``GET /v1/items/{item_id}`` and ``GET /v1/items/{item_id}/explain``."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query

from service.models import ExplainResponse, ItemResponse
from service.routers import ERROR_RESPONSES, serving, unknown_item
from service.state import ServiceContext, ServingIndex


def _vec(arr: np.ndarray) -> list[float]:
    return np.asarray(arr, dtype=np.float64).tolist()


def item_vectors(idx: ServingIndex, row: int) -> tuple[dict[str, list[float]], dict[str, list[float]], Any]:
    """(per-view embeddings, relational item-side vectors, diversity vector z or None) of one item row."""
    embeddings = {"item": _vec(idx.item_vectors()[row])}
    for view, attr_rows in idx.attr_rows.items():
        node = int(attr_rows[row])
        key = f"nodes/{view}"
        if node >= 0 and key in idx.arrays:
            embeddings[view] = _vec(idx.arrays[key][node])
    relational = {
        key.split("/", 1)[1]: _vec(arr[row])
        for key, arr in idx.arrays.items()
        if key.startswith("relational_item/")
    }
    z = idx.arrays.get("z")
    return embeddings, relational, (_vec(z[row]) if z is not None else None)


def explain_pair(idx: ServingIndex, a: int, b: int) -> dict[str, Any]:
    """Inner product and the metric distances of Eq. 11 for rows ``a`` and ``b`` (float64 arithmetic)."""
    e = idx.item_vectors().astype(np.float64, copy=False)
    out: dict[str, Any] = {"inner_product": float(e[a] @ e[b]), "d_i": None, "d_ic": None, "d": None}
    m_i = idx.arrays.get("M_i")
    if m_i is not None:
        de = e[a] - e[b]
        out["d_i"] = float(de @ m_i.astype(np.float64) @ de)
        d_ic = 0.0  # without an inter-view task the relational term is zero (trainer/model/metric.py)
        rel = idx.arrays.get(f"relational_item/{idx.metric_view}") if idx.metric_view else None
        m_ic = idx.arrays.get("M_ic")
        if rel is not None and m_ic is not None:
            dr = rel[a].astype(np.float64) - rel[b].astype(np.float64)
            d_ic = float(dr @ m_ic.astype(np.float64) @ dr)
        out["d_ic"] = d_ic
        out["d"] = out["d_i"] + d_ic
    return out


def build_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["items"])

    @router.get("/v1/items/{item_id}", response_model=ItemResponse, responses=ERROR_RESPONSES)
    async def get_item(
        item_id: str,
        embeddings: Annotated[
            bool, Query(description="include the item's vectors per view (debugging)")
        ] = False,
    ) -> Any:
        """The item's attributes per view, and with ``embeddings=true`` its embedding in every view (the
        attribute node's embedding for attribute views), its relational vectors sigma(W e_i) and z."""
        idx = serving(ctx)
        row = idx.row_of(item_id)
        if row is None:
            unknown_item(ctx, idx, item_id)
        out: dict[str, Any] = {
            "item_id": item_id,
            "row": row,
            "index_version": idx.version,
            "category": idx.category_values[row],
            "shop": idx.shop_values[row],
            "attributes": {view: values[row] for view, values in idx.attr_values.items()},
        }
        if embeddings:
            out["embeddings"], out["relational"], out["diversity_vector"] = item_vectors(idx, row)
        return out

    @router.get("/v1/items/{item_id}/explain", response_model=ExplainResponse, responses=ERROR_RESPONSES)
    async def explain(
        item_id: str, other: Annotated[str, Query(description="the second item of the pair")]
    ) -> Any:
        """Why two items are (not) neighbours: e_a . e_b (general), and d_i, d_ic, d = d_i + d_ic of the
        diversity metric (paper Eq. 11), with both items' categories."""
        idx = serving(ctx)
        a, b = idx.row_of(item_id), idx.row_of(other)
        if a is None:
            unknown_item(ctx, idx, item_id)
        if b is None:
            unknown_item(ctx, idx, other)
        return {
            "item_id": item_id,
            "other": other,
            "index_version": idx.version,
            "metric_view": idx.metric_view,
            "category": idx.category_values[a],
            "other_category": idx.category_values[b],
            **explain_pair(idx, a, b),
        }

    return router
