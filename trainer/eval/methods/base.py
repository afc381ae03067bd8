"""What every evaluated method shares: the interface, candidate filtering and embedding retrieval.

A method is fitted on a prepared directory and then answers, for a batch of trigger items, ``k``
candidates per trigger that are neither the trigger nor an item of that user's training history
(the offline protocol of the paper's Sec. 5.1; see trainer.eval.protocol). Items are the rows of the
prepared item view (``PreparedData.view('item').node_ids``); ``-1`` pads a row only when the whole
catalogue holds fewer than ``k`` admissible items.

Ranking helpers work on blocks of triggers so memory stays at ``block x n_items`` scores.
"""

from __future__ import annotations

import abc
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl

from trainer.data.prepared import PreparedData
from trainer.data.schema import ITEM_VIEW

BLOCK = 1024
"""Triggers scored at once; a block costs BLOCK * n_items * 4 bytes of scores."""


class MethodUnavailable(RuntimeError):
    """The method's engine (e.g. the SGNS trainer) is not installed in this tree."""


@dataclass(frozen=True)
class MethodContext:
    """What the command line hands every method: the seed of this run, an epochs override, an artifact."""

    seed: int = 0
    epochs: int | None = None
    artifact: Path | None = None


class Method(abc.ABC):
    """An evaluated recommender: ``fit(prepared)`` then batched ``recommend``.

    Subclasses set ``name``, fill ``params`` with every hyper-parameter in force (it is recorded in
    metrics.json) and set ``deterministic`` when a rerun with another seed cannot change the result.
    """

    name: ClassVar[str]
    deterministic: ClassVar[bool] = False

    def __init__(self, ctx: MethodContext | None = None) -> None:
        self.ctx = ctx or MethodContext()
        self.params: dict[str, Any] = {}

    @abc.abstractmethod
    def fit(self, prepared: PreparedData) -> None: ...

    @abc.abstractmethod
    def recommend(self, triggers: np.ndarray, k: int, exclude: list[set[int]]) -> np.ndarray:
        """``(len(triggers), k)`` int64 item rows, best first; ``exclude[i]`` are banned for trigger i.

        The protocol passes the user's training history (which holds the trigger) as ``exclude``.
        """


def apply_overrides(defaults: dict[str, Any], overrides: dict[str, Any], method: str) -> dict[str, Any]:
    """``defaults`` updated with ``overrides``; an unknown key is an error naming the valid ones."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"{method}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(defaults))}"
        )
    return {**defaults, **overrides}


# ----------------------------------------------------------------------------------------- item statistics


def item_rows(prepared: PreparedData) -> pl.DataFrame:
    """``item_id`` -> ``row`` (Int64) of the item view, for joining event tables to item rows."""
    ids = prepared.view(ITEM_VIEW).node_ids
    return pl.DataFrame(
        {"item_id": pl.Series(ids.tolist(), dtype=pl.Utf8), "row": np.arange(len(ids), dtype=np.int64)}
    )


def training_counts(prepared: PreparedData) -> np.ndarray:
    """Number of training events of every item row (counted on events.parquet, not on sessions)."""
    n_items = prepared.view(ITEM_VIEW).n_nodes
    rows = (
        prepared.train_events()
        .select("item_id")
        .join(item_rows(prepared), on="item_id", how="inner")["row"]
        .to_numpy()
    )
    return np.bincount(rows, minlength=n_items).astype(np.int64)


def popularity_order(prepared: PreparedData) -> np.ndarray:
    """Item rows by training-event count, descending; ties by item id as a string, ascending."""
    counts = training_counts(prepared)
    ids = prepared.view(ITEM_VIEW).node_ids
    # Rank of each id among the sorted id strings: lexsort then orders by (-count, id string).
    id_rank = np.empty(len(ids), dtype=np.int64)
    id_rank[np.argsort(ids.astype(str), kind="stable")] = np.arange(len(ids))
    return np.lexsort((id_rank, -counts)).astype(np.int64)


# -------------------------------------------------------------------------------- sequences and pairs


def window_pairs(
    tokens: np.ndarray, offsets: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ordered pairs (``tokens[t]``, ``tokens[t + d]``) for 1 <= d <= window inside one sequence.

    Returns (left, right, sequence index), one direction only; skip-gram uses both directions.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    lengths = np.diff(offsets)
    seq = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    left, right, sid = [], [], []
    for d in range(1, min(window, max(int(lengths.max(initial=0)) - 1, 0)) + 1):
        same = seq[:-d] == seq[d:]
        left.append(tokens[:-d][same])
        right.append(tokens[d:][same])
        sid.append(seq[:-d][same])
    if not left:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(left), np.concatenate(right), np.concatenate(sid)


# ------------------------------------------------------------------------------------------ ranking


def _banned_keys(exclude: list[set[int]], n_items: int) -> np.ndarray:
    """``row * n_items + item`` for every banned (trigger row, item) of a block."""
    lens = np.fromiter((len(s) for s in exclude), dtype=np.int64, count=len(exclude))
    cols = np.fromiter(itertools.chain.from_iterable(exclude), dtype=np.int64, count=int(lens.sum()))
    return np.repeat(np.arange(len(exclude), dtype=np.int64), lens) * n_items + cols


def take_valid(
    cands: np.ndarray,
    k: int,
    banned: np.ndarray,
    n_items: int,
    group: np.ndarray | None = None,
    trigger_group: np.ndarray | None = None,
) -> np.ndarray:
    """The first ``k`` admissible entries of each row of ``cands`` (``-1`` = none), order kept.

    ``banned`` are ``row * n_items + item`` keys; with ``group``, items sharing the trigger's group
    (``group[item] == trigger_group[row] >= 0``) are inadmissible too.
    """
    b, m = cands.shape
    keys = np.arange(b, dtype=np.int64)[:, None] * n_items + cands
    ok = (cands >= 0) & ~np.isin(keys, banned)
    if group is not None and trigger_group is not None:
        ok &= ~((group[np.maximum(cands, 0)] == trigger_group[:, None]) & (trigger_group[:, None] >= 0))
    first = np.argsort(~ok, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(cands, first, axis=1)
    out[~np.take_along_axis(ok, first, axis=1)] = -1
    if out.shape[1] < k:
        out = np.concatenate([out, np.full((b, k - out.shape[1]), -1, dtype=out.dtype)], axis=1)
    return out


def complete(
    recs: np.ndarray,
    exclude: list[set[int]],
    order: np.ndarray,
    n_items: int,
    group: np.ndarray | None = None,
    trigger_group: np.ndarray | None = None,
) -> np.ndarray:
    """Fill the ``-1`` slots of ``recs`` (valid entries first) from ``order`` (e.g. popularity).

    Over-fetches ``k + max banned`` entries of ``order`` so that filtering can never leave a row short
    unless the catalogue itself runs out.
    """
    short = (recs < 0).any(axis=1)
    if not short.any():
        return recs
    k = recs.shape[1]
    rows = np.flatnonzero(short)
    sub = recs[rows]
    sub_ex = [exclude[i] for i in rows]
    banned = np.concatenate([_banned_keys(sub_ex, n_items), _chosen_keys(sub, n_items)])
    # A group ban can remove a whole category, so then the complete order is scanned.
    fetch = len(order) if group is not None else min(len(order), k + max(len(s) for s in sub_ex) + k)
    fill = take_valid(
        np.broadcast_to(order[:fetch], (len(rows), fetch)),
        k,
        banned,
        n_items,
        group,
        None if trigger_group is None else trigger_group[rows],
    )
    merged = np.concatenate([sub, fill], axis=1)
    first = np.argsort(merged < 0, axis=1, kind="stable")[:, :k]
    out = recs.copy()
    out[rows] = np.take_along_axis(merged, first, axis=1)
    return out


def _chosen_keys(recs: np.ndarray, n_items: int) -> np.ndarray:
    r, c = np.nonzero(recs >= 0)
    return r.astype(np.int64) * n_items + recs[r, c]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest finite scores per row, best first; ``-1`` where fewer are finite."""
    n = scores.shape[1]
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), (scores.shape[0], n)).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    # Ties are broken by item row so that results do not depend on argpartition internals.
    idx = np.lexsort((part, -part_scores), axis=1)
    out = np.take_along_axis(part, idx, axis=1).astype(np.int64)
    out[~np.isfinite(np.take_along_axis(part_scores, idx, axis=1))] = -1
    if out.shape[1] < k:
        out = np.concatenate([out, np.full((out.shape[0], k - out.shape[1]), -1, dtype=np.int64)], axis=1)
    return out


def rank_block(
    scores: np.ndarray,
    k: int,
    exclude: list[set[int]],
    fallback: np.ndarray,
    group: np.ndarray | None = None,
    trigger_group: np.ndarray | None = None,
) -> np.ndarray:
    """Top ``k`` of a ``(b, n_items)`` score block after banning; short rows are completed from ``fallback``.

    ``-inf`` marks "not a candidate" (no co-occurrence, no vector); it is overwritten in place.
    """
    b, n_items = scores.shape
    keys = _banned_keys(exclude, n_items)
    scores.reshape(-1)[keys] = -np.inf
    if group is not None and trigger_group is not None:
        same = (group[None, :] == trigger_group[:, None]) & (trigger_group[:, None] >= 0)
        scores[same] = -np.inf
    return complete(top_k(scores, k), exclude, fallback, n_items, group, trigger_group)


class EmbeddingRetriever:
    """Nearest items of a trigger in an embedding table, with the protocol's exclusions.

    ``metric``: ``dot`` (inner product, the paper's retrieval for M2GRL and baselines), ``cosine``, or
    ``l2`` (smallest Euclidean distance, used by the diversity strategy in the metric space z).
    Items without a vector (``has_vector`` False: e.g. never in a training sequence) are not
    candidates; triggers without one, and rows left short, are completed from ``fallback`` order.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        fallback: np.ndarray,
        has_vector: np.ndarray | None = None,
        metric: str = "dot",
        block: int = BLOCK,
    ) -> None:
        if metric not in ("dot", "cosine", "l2"):
            raise ValueError(f"unknown retrieval metric {metric!r}; expected dot, cosine or l2")
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if metric == "cosine":
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        self.vectors = v
        self.sq_norm = (v * v).sum(axis=1)
        self.has_vector = np.ones(len(v), dtype=bool) if has_vector is None else has_vector.astype(bool)
        self.fallback = fallback
        self.metric = metric
        self.block = block

    def recommend(
        self,
        triggers: np.ndarray,
        k: int,
        exclude: list[set[int]],
        group: np.ndarray | None = None,
    ) -> np.ndarray:
        """``(n, k)`` item rows; with ``group``, items of the trigger's group are excluded as well."""
        triggers = np.asarray(triggers, dtype=np.int64)
        out = np.empty((len(triggers), k), dtype=np.int64)
        for start in range(0, len(triggers), self.block):
            trig = triggers[start : start + self.block]
            scores = self.vectors[trig] @ self.vectors.T
            if self.metric == "l2":
                # argmin |z_i - q|^2 = argmax 2 q.z_i - |z_i|^2 (|q|^2 is constant per row)
                scores = 2.0 * scores - self.sq_norm[None, :]
            scores[:, ~self.has_vector] = -np.inf
            scores[~self.has_vector[trig]] = -np.inf
            out[start : start + len(trig)] = rank_block(
                scores,
                k,
                exclude[start : start + len(trig)],
                self.fallback,
                group,
                None if group is None else group[trig],
            )
        return out
