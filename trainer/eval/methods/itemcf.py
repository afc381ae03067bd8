"""``itemcf``: item-based collaborative filtering on co-occurrence inside training sessions.

With the item view's training sessions s (after consecutive-duplicate removal, length >= 2):

    sim(i, j) = sum_s w_s * c_s(i, j) / sqrt(n_i * n_j),      w_s = 1 / log(1 + |s|)

- ``c_s(i, j)``: how often i and j occur at most ``window`` positions apart in s (either order, i != j);
  ``window=None`` counts every pair of the session (whole-session co-occurrence).
- ``n_i``: the number of sessions that contain i (cosine normalisation).
- ``w_s``: Taobao's "user voting" down-weighting: a long session says less about each of its pairs.

Candidates of a trigger are its items of non-zero similarity, best first; a trigger with fewer than
``k`` admissible neighbours is completed with the popularity order (documented in params).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from trainer.data.prepared import PreparedData
from trainer.data.schema import ITEM_VIEW
from trainer.eval.methods.base import BLOCK, Method, MethodContext, popularity_order, rank_block, window_pairs


def cooccurrence_similarity(
    tokens: np.ndarray, offsets: np.ndarray, n_items: int, window: int | None
) -> sp.csr_matrix:
    """The symmetric ``(n_items, n_items)`` similarity above, as float32 CSR."""
    lengths = np.diff(offsets)
    span = int(lengths.max(initial=1)) - 1 if window is None else window
    left, right, sid = window_pairs(tokens, offsets, span)
    keep = left != right
    left, right, sid = left[keep], right[keep], sid[keep]
    w = (1.0 / np.log1p(lengths.astype(np.float64)))[sid]
    pairs = sp.coo_matrix((w, (left, right)), shape=(n_items, n_items)).tocsr()
    co = (pairs + pairs.T).tocsr()  # duplicate (i, j) entries are summed here
    # Sessions containing each item: distinct (session, item) pairs.
    seq = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    distinct = np.unique(seq * n_items + np.asarray(tokens, dtype=np.int64)) % n_items
    n = np.bincount(distinct, minlength=n_items).astype(np.float64)
    inv = 1.0 / np.sqrt(np.maximum(n, 1.0))
    sim = sp.diags(inv) @ co @ sp.diags(inv)
    return sim.astype(np.float32).tocsr()


class ItemCF(Method):
    name = "itemcf"
    deterministic = True

    def __init__(self, ctx: MethodContext | None = None, window: int | None = 9) -> None:
        super().__init__(ctx)
        self.window = window

    def fit(self, prepared: PreparedData) -> None:
        view = prepared.view(ITEM_VIEW)
        self.n_items = view.n_nodes
        self.sim = cooccurrence_similarity(view.seq_tokens, view.seq_offsets, self.n_items, self.window)
        self.fallback = popularity_order(prepared)
        self.params = {
            "window": "session" if self.window is None else self.window,
            "session_weight": "1/log(1+len(session))",
            "normalisation": "cosine: sqrt(n_i n_j), n_i = sessions containing i",
            "fill": "popularity",
            "nnz": int(self.sim.nnz),
        }

    def recommend(self, triggers: np.ndarray, k: int, exclude: list[set[int]]) -> np.ndarray:
        triggers = np.asarray(triggers, dtype=np.int64)
        out = np.empty((len(triggers), k), dtype=np.int64)
        for start in range(0, len(triggers), BLOCK):
            trig = triggers[start : start + BLOCK]
            scores = self.sim[trig].toarray()
            scores[scores <= 0] = -np.inf  # no co-occurrence: not a CF candidate
            out[start : start + len(trig)] = rank_block(
                scores, k, exclude[start : start + len(trig)], self.fallback
            )
        return out
