"""HitRate@K, Precision@K, Recall@K and F1@K of the paper's Sec. 5.1.3.

With P_u the first K recommendations for test user u and G_u the user's ground truth:

- HitRate@K   = mean_u 1[|P_u ∩ G_u| > 0]
- Precision@K = mean_u |P_u ∩ G_u| / K        (a padded, short list still divides by K)
- Recall@K    = mean_u |P_u ∩ G_u| / |G_u|
- F1@K        = 2 P R / (P + R) of the two means above (0 when both are 0)

All values are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def hit_matrix(
    recs: np.ndarray, truth_indptr: np.ndarray, truth_items: np.ndarray, n_items: int
) -> np.ndarray:
    """Boolean ``(n_users, K)``: is recommendation j of user u in G_u (``-1`` never is)."""
    n_users = recs.shape[0]
    sizes = np.diff(truth_indptr)
    truth_keys = np.repeat(np.arange(n_users, dtype=np.int64), sizes) * n_items + truth_items
    rec_keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + recs
    return (recs >= 0) & np.isin(rec_keys, truth_keys)


def ranking_metrics(
    recs: np.ndarray,
    truth_indptr: np.ndarray,
    truth_items: np.ndarray,
    n_items: int,
    ks: Sequence[int],
) -> dict[str, float]:
    """``{"hr@K", "precision@K", "recall@K", "f1@K"}`` for every K in ``ks`` (``recs`` has >= max(ks) columns)."""
    if recs.shape[1] < max(ks):
        raise ValueError(f"{recs.shape[1]} recommendations per user, metrics need {max(ks)}")
    sizes = np.diff(truth_indptr)
    if (sizes == 0).any():
        raise ValueError("a test user has an empty ground truth; the protocol drops such users")
    cum = np.cumsum(hit_matrix(recs, truth_indptr, truth_items, n_items), axis=1)
    out: dict[str, float] = {}
    for k in ks:
        hits = cum[:, k - 1].astype(np.float64)
        p = float((hits / k).mean())
        r = float((hits / sizes).mean())
        out[f"hr@{k}"] = float((hits > 0).mean())
        out[f"precision@{k}"] = p
        out[f"recall@{k}"] = r
        out[f"f1@{k}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return out
