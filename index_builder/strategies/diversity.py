"""``diversity``: L2 search over the metric model's vectors z (paper Sec. 6.1).

The multi-view metric model measures d(a, b) = (e_i^a - e_i^b)^T M_i (e_i^a - e_i^b)
+ (e_ic^a - e_ic^b)^T M_ic (e_ic^a - e_ic^b) with M = L^T L, so with z = [L_i e_i, L_ic e_ic] the distance is
|z_a - z_b|^2: hnswlib's 'l2' space (squared distance) computes d exactly. Score = -d, so higher is closer
like every strategy. Excluding the categories a user recently saw is done by the service at query time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from index_builder.strategies import NegSquaredL2, Strategy, StrategyUnavailable, metric_array, register


class DiversityStrategy(Strategy):
    name = "diversity"
    metric = "neg_sq_l2"
    description = "metric-model vectors z = [L_i e_i, L_ic e_ic]; score = -d(a, b) of Eq. 11"
    encodings = (NegSquaredL2(),)

    def vectors(self, artifact: Any) -> np.ndarray:
        z = metric_array(artifact, "z")
        if z is None:
            raise StrategyUnavailable(
                "the artifact has no diversity vectors z (no metric model was trained); "
                "drop 'diversity' from --strategies or retrain with metric epochs > 0"
            )
        return np.ascontiguousarray(z, dtype=np.float32)

    def exact_scores(self, queries: np.ndarray, raw: np.ndarray) -> np.ndarray:
        # -|q - x|^2 = 2 q.x - |x|^2 - |q|^2: one matmul per block instead of a (b, n, dim) difference.
        q2 = np.einsum("ij,ij->i", queries, queries)[:, None]
        x2 = np.einsum("ij,ij->i", raw, raw)[None, :]
        return 2.0 * (queries @ raw.T) - x2 - q2

    def pair_scores(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        diff = candidates - queries[:, None, :]
        return -np.einsum("bkd,bkd->bk", diff, diff)


STRATEGY = register(DiversityStrategy())
