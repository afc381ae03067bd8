"""Per-view node vocabularies, node sequences and graphs (paper Sec. 3.1, "Graph construction").

A view maps every training event to a node: its item (view ``item``) or the item's attribute (category,
shop, ...). Within each session, the mapped sequence loses its consecutive duplicates, so the item, category
and shop graphs of the same sessions have different structures (the paper's Figure 1). Each graph has an
edge a->b for every consecutive pair of a deduplicated session, weighted by how often the pair occurs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from trainer.data.prepared import ViewData


def encode_sorted(values: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Raw codes of ``values``: ``(codes int64, ids)`` with ``ids`` the distinct non-null values sorted
    ascending and ``codes[i]`` the index of ``values[i]`` in ``ids`` (-1 for null)."""
    ids = values.drop_nulls().unique().sort()
    if len(ids) == 0:
        return np.full(len(values), -1, dtype=np.int64), ids
    codes = values.cast(pl.Enum(ids)).to_physical().cast(pl.Int64).fill_null(-1).to_numpy()
    return codes, ids


@dataclass
class Nodes:
    """The nodes of one view, derived from *raw codes*: integer codes of the view's values assigned in
    ascending id order (so that comparing codes compares ids)."""

    raw: np.ndarray  # int64 raw code of node k; nodes ordered by count descending, then id ascending
    counts: np.ndarray  # int64 training events mapped to node k
    raw_to_node: np.ndarray  # int64 per raw code: its node index, -1 when no training event maps to it

    def index_of(self, raw_codes: np.ndarray) -> np.ndarray:
        """Node index per raw code (-1 stays -1)."""
        return np.where(raw_codes >= 0, self.raw_to_node[np.maximum(raw_codes, 0)], -1)


def nodes_from_codes(raw_codes: np.ndarray, n_raw: int) -> Nodes:
    """Nodes of a view from the raw code of every training event (-1 = the event has no node in the view)."""
    counts = np.bincount(raw_codes[raw_codes >= 0], minlength=n_raw).astype(np.int64)
    present = np.flatnonzero(counts)
    order = present[np.lexsort((present, -counts[present]))]
    raw_to_node = np.full(n_raw, -1, dtype=np.int64)
    raw_to_node[order] = np.arange(len(order))
    return Nodes(raw=order, counts=counts[order], raw_to_node=raw_to_node)


def dedupe_sequences(tokens: np.ndarray, session: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Node sequences of a view: one per session, consecutive duplicates removed, only those with >= 2 nodes.

    Parameters
    ----------
    tokens : node index per training event (in session order), -1 for events without a node in this view.
        Those are dropped *before* the duplicate removal, so ``A, null, A`` becomes ``A``: an item without a
        category neither breaks nor extends the category walk.
    session : the event's session id, non-decreasing along the array.

    Returns ``(tokens int32, offsets int64)``: sequence ``k`` is ``tokens[offsets[k]:offsets[k+1]]``.
    """
    keep = tokens >= 0
    tok, ses = tokens[keep], session[keep]
    if len(tok) > 1:
        repeat = np.zeros(len(tok), dtype=bool)
        repeat[1:] = (ses[1:] == ses[:-1]) & (tok[1:] == tok[:-1])
        tok, ses = tok[~repeat], ses[~repeat]
    if len(tok) == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, ses[1:] != ses[:-1]])
    lengths = np.diff(np.r_[starts, len(ses)])
    long_enough = lengths >= 2
    tok = tok[np.repeat(long_enough, lengths)]
    lengths = lengths[long_enough]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return tok.astype(np.int32), offsets


def edges_from_sequences(
    tokens: np.ndarray, offsets: np.ndarray, n_nodes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The directed graph of consecutive pairs: ``(src, dst, weight)`` sorted by (src, dst)."""
    if len(tokens) < 2:
        empty = np.zeros(0, dtype=np.int32)
        return empty, empty, np.zeros(0, dtype=np.int64)
    within = np.ones(len(tokens) - 1, dtype=bool)
    # The pair (offsets[k]-1, offsets[k]) joins the end of sequence k-1 to the start of sequence k.
    within[offsets[1:-1] - 1] = False
    key = tokens[:-1][within].astype(np.int64) * n_nodes + tokens[1:][within]
    pairs, weight = np.unique(key, return_counts=True)
    return (pairs // n_nodes).astype(np.int32), (pairs % n_nodes).astype(np.int32), weight.astype(np.int64)


def build_view(
    name: str,
    raw_codes: np.ndarray,
    session: np.ndarray,
    raw_ids: pl.Series,
    node_attribute: np.ndarray | None = None,
) -> tuple[ViewData, Nodes, dict[str, int]]:
    """One view's nodes, sequences and graph, its nodes, and its figures for stats.json.

    Parameters
    ----------
    name : the view name (``item`` for the instance view).
    raw_codes : per training event in session order, the raw code of the view's value (the item, or the
        item's attribute), -1 where the item has no value in this view.
    session : session id per training event, non-decreasing.
    raw_ids : the view's values (Utf8), sorted ascending: raw code ``k`` is ``raw_ids[k]``.
    node_attribute : for attribute views, the raw code of this view's attribute of each item-view node (in
        item-view node order, -1 where the item has none), to build ``item_to_node``. None for the item view.
    """
    nodes = nodes_from_codes(raw_codes, len(raw_ids))
    tokens, offsets = dedupe_sequences(nodes.index_of(raw_codes), session)
    src, dst, weight = edges_from_sequences(tokens, offsets, len(nodes.raw))
    view = ViewData(
        name=name,
        node_ids=np.array(raw_ids.gather(nodes.raw).to_list(), dtype=object),
        node_counts=nodes.counts,
        seq_tokens=tokens,
        seq_offsets=offsets,
        edge_src=src,
        edge_dst=dst,
        edge_weight=weight,
        item_to_node=None if node_attribute is None else nodes.index_of(node_attribute).astype(np.int32),
    )
    n_seq = len(offsets) - 1
    figures = {
        "n_nodes": int(len(nodes.raw)),
        "n_sessions": int(n_seq),
        "n_transitions": int(len(tokens) - n_seq),
        "n_edges": int(len(src)),
    }
    return view, nodes, figures
