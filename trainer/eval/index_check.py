"""Exact search against the published HNSW index: what the service's approximation costs in the metrics.

The index is scored as the service queries it (the trigger's own vector, over-fetch, then the protocol's
exclusions) and exactly, by numpy over the same vectors; both go through the same filtering and fallback,
so any difference comes from the approximate search alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.prepared import PreparedData
from trainer.eval.methods.base import popularity_order, rank_block
from trainer.eval.metrics import ranking_metrics
from trainer.eval.protocol import EvalSet


def _score_matrix(n_users: int, n_items: int) -> np.ndarray:
    return np.full((n_users, n_items), -np.inf, dtype=np.float32)


def index_vs_exact(
    prepared: PreparedData,
    ev: EvalSet,
    index_path: Path,
    ks: list[int],
    strategies: tuple[str, ...] = ("general",),
) -> dict[str, Any]:
    """Per strategy: metrics through the index, metrics of exact search, their difference, and the mean
    overlap of the two top-K lists. ``diversity`` is scored here without the service's category exclusion."""
    from index_builder.reader import IndexVersion

    iv = IndexVersion.open(index_path)
    item_ids = prepared.view("item").node_ids.tolist()
    to_index = np.array([iv.row_of(i) if iv.has_item(i) else -1 for i in item_ids], dtype=np.int64)
    in_index = to_index >= 0
    to_prepared = np.full(iv.n_items, -1, dtype=np.int64)
    to_prepared[to_index[in_index]] = np.nonzero(in_index)[0]
    k_max = max(ks)
    exclude = ev.exclude()
    fallback = popularity_order(prepared)
    trig = to_index[ev.triggers]
    users = np.nonzero(trig >= 0)[0]  # triggers unknown to the index fall back to popularity on both sides
    fetch = min(iv.n_items - 1, k_max + int(np.diff(ev.history_indptr).max()) + 1)
    out: dict[str, Any] = {"index_version": iv.version, "n_users_in_index": int(len(users))}
    for strategy in strategies:
        if strategy not in iv.strategies:
            continue
        raw = iv.handle(strategy).raw
        approx = _score_matrix(ev.n_users, ev.n_items)
        rows, scores = iv.search(strategy, trig[users], fetch)
        mapped = to_prepared[rows]
        ok = mapped >= 0
        approx[np.repeat(users, rows.shape[1])[ok.ravel()], mapped[ok]] = scores[ok]
        exact = _score_matrix(ev.n_users, ev.n_items)
        q = raw[trig[users]]
        if strategy == "general":
            s_idx = q @ raw.T
        else:  # the metric space: nearest = smallest squared distance
            s_idx = -((q * q).sum(1)[:, None] - 2.0 * q @ raw.T + (raw * raw).sum(1)[None, :])
        s_idx[np.arange(len(users)), trig[users]] = -np.inf  # never the trigger itself, as the index
        exact[np.ix_(users, np.nonzero(in_index)[0])] = s_idx[:, to_index[in_index]]
        recs_a = rank_block(approx, k_max, exclude, fallback)
        recs_e = rank_block(exact, k_max, exclude, fallback)
        m_a = ranking_metrics(recs_a, ev.truth_indptr, ev.truth_items, ev.n_items, ks)
        m_e = ranking_metrics(recs_e, ev.truth_indptr, ev.truth_items, ev.n_items, ks)
        overlap = {
            f"overlap@{k}": float(
                np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(recs_a, recs_e, strict=True)])
            )
            for k in ks
        }
        out[strategy] = {
            "index": m_a,
            "exact": m_e,
            "difference": {key: m_a[key] - m_e[key] for key in m_a},
            **overlap,
        }
    return out
