"""``deepwalk``: skip-gram with negative sampling on uniform random walks over the item graph (Perozzi et al.).

Walks: from every item with a neighbour, ``walks_per_node`` walks of ``walk_length`` nodes; each step
moves to a neighbour drawn uniformly (edge weights ignored: that is what separates DeepWalk from the
weighted walks of EGES/M2GRL). The graph is the item view's graph of consecutive pairs, symmetrised
unless ``directed`` (a directed walk stops at an item without successors).

Training uses this project's SGNS code on the walks alone: ``train_views({'item': walks}, TrainConfig(
inter_view=False, weighting='uniform', ...))``. Paper settings (appendix): dim 64, walk length 5,
7 negatives; window 4 covers a whole walk of length 5. Retrieval: inner product of the input vectors.
Learning rate 0.001 (Adam), tuned on ml-latest-small over {0.01, 0.003, 0.001, 0.0003}: at 0.01 the
rarely seen rows of lazy Adam grow long and inner-product retrieval returns rare items (HR@50 1.3%).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.data.prepared import PreparedData, ViewData
from trainer.data.schema import ITEM_VIEW
from trainer.eval.methods.base import (
    EmbeddingRetriever,
    Method,
    MethodContext,
    MethodUnavailable,
    apply_overrides,
    popularity_order,
)


def neighbour_csr(
    n_nodes: int, src: np.ndarray, dst: np.ndarray, directed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of distinct neighbours per node, self-loops dropped."""
    s, d = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    if not directed:
        s, d = np.concatenate([s, d]), np.concatenate([d, s])
    keep = s != d
    keys = np.unique(s[keep] * n_nodes + d[keep])
    s, d = keys // n_nodes, keys % n_nodes
    indptr = np.zeros(n_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(s, minlength=n_nodes), out=indptr[1:])
    return indptr, d


def uniform_walks(
    indptr: np.ndarray,
    indices: np.ndarray,
    walks_per_node: int,
    walk_length: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random walks from every node with a neighbour, all walks advanced together.

    Returns (tokens, offsets) in the layout of ViewData sequences; a walk that reaches a node without
    neighbours ends there (only possible on a directed graph). Walks shorter than 2 nodes are dropped.
    """
    degree = np.diff(indptr)
    starts = np.repeat(np.flatnonzero(degree > 0), walks_per_node)
    rng.shuffle(starts)
    walks = np.full((len(starts), walk_length), -1, dtype=np.int64)
    walks[:, 0] = starts
    alive = np.ones(len(starts), dtype=bool)
    cur = starts.copy()
    for step in range(1, walk_length):
        deg = degree[cur]
        alive &= deg > 0
        pick = indptr[cur] + np.floor(rng.random(len(cur)) * np.maximum(deg, 1)).astype(np.int64)
        cur = np.where(alive, indices[np.minimum(pick, len(indices) - 1)], -1)
        walks[:, step] = cur
    lengths = (walks >= 0).sum(axis=1)
    keep = lengths >= 2
    walks, lengths = walks[keep], lengths[keep]
    offsets = np.zeros(len(walks) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return walks[walks >= 0].astype(np.int32), offsets


class DeepWalk(Method):
    name = "deepwalk"

    def __init__(self, ctx: MethodContext | None = None, **overrides: Any) -> None:
        super().__init__(ctx)
        self.hp: dict[str, Any] = {
            "walks_per_node": 10,
            "walk_length": 5,
            "directed": False,
            "dim": 64,
            "window": 4,
            "negatives": 7,
            "epochs": 10,
            "batch_size": 2048,
            "lr": 0.001,
        }
        if self.ctx.epochs is not None:
            self.hp["epochs"] = self.ctx.epochs
        self.hp = apply_overrides(self.hp, overrides, self.name)

    def walks(self, prepared: PreparedData) -> ViewData:
        """The item view with its sessions replaced by uniform random walks."""
        view = prepared.view(ITEM_VIEW)
        indptr, indices = neighbour_csr(view.n_nodes, view.edge_src, view.edge_dst, bool(self.hp["directed"]))
        rng = np.random.default_rng(self.ctx.seed)
        tokens, offsets = uniform_walks(
            indptr, indices, int(self.hp["walks_per_node"]), int(self.hp["walk_length"]), rng
        )
        return ViewData(
            name=ITEM_VIEW,
            node_ids=view.node_ids,
            # Negatives follow node frequency in the walk corpus, as word2vec does on its corpus.
            node_counts=np.bincount(tokens, minlength=view.n_nodes).astype(np.int64),
            seq_tokens=tokens,
            seq_offsets=offsets,
            edge_src=view.edge_src,
            edge_dst=view.edge_dst,
            edge_weight=view.edge_weight,
            item_to_node=None,
        )

    def fit(self, prepared: PreparedData) -> None:
        try:
            from trainer.model.train import train_views
        except ImportError as exc:
            raise MethodUnavailable(
                f"deepwalk needs trainer.model.train.train_views, not available: {exc}"
            ) from exc
        from trainer.model.config import TrainConfig

        hp = self.hp
        walks = self.walks(prepared)
        config = TrainConfig(
            dim=hp["dim"],
            window=hp["window"],
            negatives=hp["negatives"],
            epochs=hp["epochs"],
            batch_size=hp["batch_size"],
            lr=hp["lr"],
            inter_view=False,
            weighting="uniform",
            views=[ITEM_VIEW],
            metric_epochs=0,
            seed=self.ctx.seed,
        )
        model = train_views({ITEM_VIEW: walks}, config)
        vectors = np.asarray(model.embeddings[ITEM_VIEW], dtype=np.float32)
        has = walks.node_counts > 0
        self.retriever = EmbeddingRetriever(vectors, popularity_order(prepared), has, metric="dot")
        self.params = {
            **hp,
            "seed": self.ctx.seed,
            "n_walks": int(walks.n_sequences),
            "retrieval": "dot",
            "trainer": "trainer.model.train.train_views",
        }

    def recommend(self, triggers: np.ndarray, k: int, exclude: list[set[int]]) -> np.ndarray:
        return self.retriever.recommend(triggers, k, exclude)
