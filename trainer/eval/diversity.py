"""Offline analogue of the paper's diversity experiment (Sec. 6): discovery of new categories.

A test user's *new-category truth* is the part of G_u whose category does not occur in the user's
training history (items without a category never count). Users with a non-empty new-category truth
are the discovery users; on them

- ``discovery_hr@K``: share of users with at least one new-category truth item in their top K;
- ``distinct_categories@K``: mean number of distinct categories among their top K.

Two strategies are compared: ``general`` (inner product of instance vectors, the usual retrieval) and
``diversity`` (nearest items in the metric space z under L2, skipping the trigger's own category).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.data.prepared import PreparedData
from trainer.data.schema import ITEM_VIEW
from trainer.eval.metrics import hit_matrix
from trainer.eval.protocol import EvalSet


def item_categories(prepared: PreparedData, view: str) -> np.ndarray:
    """Category node index of every item row (``-1``: none) from the attribute view ``view``."""
    if view not in prepared.attribute_views:
        raise ValueError(
            f"{prepared.path}: no attribute view {view!r} for categories (views: {prepared.attribute_views})"
        )
    mapping = prepared.view(view).item_to_node
    n_items = prepared.view(ITEM_VIEW).n_nodes
    if mapping is None or len(mapping) != n_items:
        raise ValueError(
            f"{prepared.path}/views/{view}/item_to_node.npy is missing or not one entry per item"
        )
    return mapping.astype(np.int64)


@dataclass
class DiscoverySet:
    users: np.ndarray  # indices into the EvalSet's users
    truth_indptr: np.ndarray
    truth_items: np.ndarray
    n_items: int


def discovery_set(ev: EvalSet, categories: np.ndarray) -> DiscoverySet:
    """Restrict each G_u to items of categories absent from the user's training history."""
    n_cat = int(categories.max(initial=-1)) + 2  # +1 shifts -1 to 0
    hist_user = np.repeat(np.arange(ev.n_users, dtype=np.int64), np.diff(ev.history_indptr))
    truth_user = np.repeat(np.arange(ev.n_users, dtype=np.int64), np.diff(ev.truth_indptr))
    hist_keys = hist_user * n_cat + categories[ev.history_items] + 1
    truth_cat = categories[ev.truth_items]
    new = (truth_cat >= 0) & ~np.isin(truth_user * n_cat + truth_cat + 1, hist_keys)
    users = np.unique(truth_user[new])
    local = np.searchsorted(users, truth_user[new])
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(local, minlength=len(users)), out=indptr[1:])
    return DiscoverySet(users, indptr, ev.truth_items[new], ev.n_items)


def distinct_categories(recs: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Number of distinct (known) categories in each row of ``recs``."""
    cats = np.where(recs >= 0, categories[np.maximum(recs, 0)], -1)
    s = np.sort(cats, axis=1)
    first = np.ones_like(s, dtype=bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    return (first & (s >= 0)).sum(axis=1)


def discovery_metrics(recs: np.ndarray, ds: DiscoverySet, categories: np.ndarray, k: int) -> dict[str, float]:
    """``recs`` are the EvalSet's recommendations (all test users); only discovery users are scored."""
    if len(ds.users) == 0:
        return {f"discovery_hr@{k}": 0.0, f"distinct_categories@{k}": 0.0}
    sub = recs[ds.users, :k]
    hits = hit_matrix(sub, ds.truth_indptr, ds.truth_items, ds.n_items).any(axis=1)
    return {
        f"discovery_hr@{k}": float(hits.mean()),
        f"distinct_categories@{k}": float(distinct_categories(sub, categories).mean()),
    }
