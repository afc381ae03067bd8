"""Recall self-check: HNSW top-k against exact numpy top-k, and the smallest ef that reaches a target.

hnswlib does not store ef (the size of the search beam) in the index file; it is a query-time knob that trades
speed for recall. The builder measures recall@k on a seeded sample of item queries for increasing ef and keeps
the first ef that reaches the target; the reader sets it after every load.

Every query is an item of the index, so the item itself is excluded in the same way on both sides: exact
search masks the query row, HNSW search asks for k + 1 neighbours and drops the query row (or the last one
when the item was not returned). Recall is tie-aware: a returned item counts as a hit when its exact score
reaches the k-th best exact score (within float tolerance), so items with identical vectors cannot make a
perfect search look imperfect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import hnswlib
import numpy as np

from index_builder.strategies import Encoding, Strategy

RECALL_K = 50
RECALL_QUERIES = 2000
# ef values tried in order; the first reaching the target wins. Denser at the low end, where most real
# indexes land, and up to a beam of a few thousand, beyond which HNSW stops paying off against exact search.
DEFAULT_EF_SCHEDULE: tuple[int, ...] = (50, 64, 100, 128, 200, 300, 400, 600, 800, 1200, 1600, 2400, 3200)
_SCORE_BLOCK_BYTES = 128 << 20


class RecallNotReached(RuntimeError):
    """No ef of the schedule reached the recall target; nothing is published."""


@dataclass
class RecallPoint:
    ef: int
    recall: float
    queries_per_second: float


@dataclass
class RecallReport:
    """Outcome of :func:`tune_ef`: the chosen ef (None when the target was not reached) and the curve."""

    k: int
    n_queries: int
    target: float
    ef: int | None
    curve: list[RecallPoint] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def reached(self) -> bool:
        return self.ef is not None

    @property
    def recall(self) -> float:
        """Recall at the chosen ef, or the best recall seen when the target was not reached."""
        if self.ef is not None:
            return next(p.recall for p in self.curve if p.ef == self.ef)
        return max((p.recall for p in self.curve), default=0.0)


def sample_query_rows(n: int, n_queries: int = RECALL_QUERIES, seed: int = 0) -> np.ndarray:
    """``min(n_queries, n)`` distinct item rows, sorted, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n_queries, n), replace=False)).astype(np.int64)


def exact_topk(strategy: Strategy, raw: np.ndarray, query_rows: np.ndarray, k: int) -> np.ndarray:
    """Rows (q, k) of the exact top-k of each query item, the item itself excluded, best first.

    Scores are computed by blocked matrix products so that a block of scores stays under ~128 MB.
    """
    n = raw.shape[0]
    k = min(k, n - 1)
    block = max(1, _SCORE_BLOCK_BYTES // (4 * max(n, 1)))
    out = np.empty((len(query_rows), k), dtype=np.int64)
    for start in range(0, len(query_rows), block):
        rows = query_rows[start : start + block]
        scores = strategy.exact_scores(raw[rows], raw)
        scores[np.arange(len(rows)), rows] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start : start + len(rows)] = np.take_along_axis(top, order, axis=1)
    return out


@dataclass
class RecallProbe:
    """The fixed query sample of a recall check and its exact answers (shared by every encoding tried)."""

    strategy: Strategy
    raw: np.ndarray
    rows: np.ndarray
    exact: np.ndarray
    k: int

    @classmethod
    def make(
        cls,
        strategy: Strategy,
        raw: np.ndarray,
        k: int = RECALL_K,
        n_queries: int = RECALL_QUERIES,
        seed: int = 0,
    ) -> RecallProbe:
        """Sample ``min(n_queries, n)`` items with ``seed`` and find their exact top-k (k capped at n - 1)."""
        n = raw.shape[0]
        if n < 2:
            raise ValueError(f"an index needs at least 2 items for a recall check, got {n}")
        k = min(k, n - 1)
        rows = sample_query_rows(n, n_queries, seed)
        return cls(strategy, raw, rows, exact_topk(strategy, raw, rows, k), k)

    def recall(self, approx: np.ndarray) -> float:
        """Tie-aware recall of ``approx`` rows (q, k), the query item excluded, against the exact top-k."""
        queries = self.raw[self.rows]
        exact_scores = self.strategy.pair_scores(queries, self.raw[self.exact])
        approx_scores = self.strategy.pair_scores(queries, self.raw[approx])
        kth = exact_scores.min(axis=1, keepdims=True)
        # Scores of the same pair agree to float32 rounding; scale the tolerance by the size of the quantity.
        tol = 1e-5 * (1.0 + np.abs(kth))
        hits = (approx_scores >= kth - tol).sum(axis=1)
        return float(hits.sum() / self.exact.size)

    def search(
        self, index: hnswlib.Index, encoding: Encoding, params: dict[str, float], threads: int = -1
    ) -> np.ndarray:
        """Rows (q, k) the index returns for the sampled items (itself excluded) at its current ef."""
        queries = encoding.query_transform(self.raw[self.rows], params)
        labels, _ = index.knn_query(queries, k=self.k + 1, num_threads=threads)
        return drop_self(labels.astype(np.int64), self.rows)


def drop_self_mask(labels: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """Mask keeping k of (q, k + 1) neighbours: all but the query row itself, or the last one when absent."""
    is_self = labels == query_rows[:, None]
    drop = is_self.copy()
    drop[~is_self.any(axis=1), -1] = True
    return ~drop


def drop_self(labels: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """(q, k) neighbour rows from (q, k + 1), the query item excluded (see :func:`drop_self_mask`)."""
    return labels[drop_self_mask(labels, query_rows)].reshape(labels.shape[0], labels.shape[1] - 1)


def tune_ef(
    index: hnswlib.Index,
    encoding: Encoding,
    params: dict[str, float],
    probe: RecallProbe,
    *,
    target: float,
    schedule: tuple[int, ...] | list[int] = DEFAULT_EF_SCHEDULE,
    threads: int = -1,
) -> RecallReport:
    """Raise ef along ``schedule`` until recall@k of the probe's queries reaches ``target``.

    Leaves the index's ef at the chosen value (or at the last one tried).
    """
    t_start = time.perf_counter()
    report = RecallReport(k=probe.k, n_queries=len(probe.rows), target=target, ef=None)
    # hnswlib searches with a beam of max(ef, k); k + 1 neighbours are asked for, so lift ef to that.
    for ef in sorted({int(max(ef, probe.k + 1)) for ef in schedule}):
        index.set_ef(ef)
        t0 = time.perf_counter()
        approx = probe.search(index, encoding, params, threads)
        qps = len(probe.rows) / max(time.perf_counter() - t0, 1e-9)
        recall = probe.recall(approx)
        report.curve.append(RecallPoint(ef=ef, recall=recall, queries_per_second=qps))
        if recall >= target:
            report.ef = ef
            break
    report.seconds = time.perf_counter() - t_start
    return report


def measure_recall(
    index: hnswlib.Index,
    encoding: Encoding,
    params: dict[str, float],
    probe: RecallProbe,
    *,
    ef: int,
    threads: int = -1,
) -> float:
    """Recall@k of the probe at one ef (used by ``m2grl-index verify``); the index's ef is left at ``ef``."""
    index.set_ef(int(ef))
    return probe.recall(probe.search(index, encoding, params, threads))
