"""``item2vec_gensim``: gensim's skip-gram Word2Vec on the item sessions, an external reference.

Sentences are the item view's training sessions (node rows as tokens). Settings follow the paper's
skip-gram setup: ``sg=1``, ``vector_size=64``, ``window=9``, ``negative=5``, ``epochs=10``,
``min_count=1``; everything else is gensim's default (``sample=1e-3``, ``alpha=0.025``,
``ns_exponent=0.75``). Retrieval is the inner product of the input vectors. gensim with ``workers > 1``
is not bit-reproducible even with a fixed ``seed``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.data.prepared import PreparedData
from trainer.data.schema import ITEM_VIEW
from trainer.eval.methods.base import (
    EmbeddingRetriever,
    Method,
    MethodContext,
    apply_overrides,
    popularity_order,
)


class Item2VecGensim(Method):
    name = "item2vec_gensim"

    def __init__(self, ctx: MethodContext | None = None, **overrides: Any) -> None:
        super().__init__(ctx)
        self.w2v: dict[str, Any] = {
            "sg": 1,
            "vector_size": 64,
            "window": 9,
            "negative": 5,
            "epochs": 10,
            "min_count": 1,
            "workers": 2,
            "sample": 1e-3,
            "alpha": 0.025,
            "ns_exponent": 0.75,
        }
        if self.ctx.epochs is not None:
            self.w2v["epochs"] = self.ctx.epochs
        self.w2v = apply_overrides(self.w2v, overrides, self.name)
        self.metric = "dot"

    def fit(self, prepared: PreparedData) -> None:
        from gensim.models import Word2Vec  # imported late: only this baseline needs gensim

        view = prepared.view(ITEM_VIEW)
        words = view.seq_tokens.astype(str)
        sentences = [s.tolist() for s in np.split(words, view.seq_offsets[1:-1])] if view.n_sequences else []
        if not sentences:
            raise ValueError(f"{prepared.path}: the item view has no training sessions of length >= 2")
        model = Word2Vec(sentences=sentences, seed=self.ctx.seed, **self.w2v)
        rows = np.array(model.wv.index_to_key, dtype=np.int64)
        vectors = np.zeros((view.n_nodes, model.wv.vector_size), dtype=np.float32)
        vectors[rows] = model.wv.vectors
        has = np.zeros(view.n_nodes, dtype=bool)
        has[rows] = True
        self.retriever = EmbeddingRetriever(vectors, popularity_order(prepared), has, metric=self.metric)
        self.params = {**self.w2v, "seed": self.ctx.seed, "retrieval": self.metric, "fill": "popularity"}

    def recommend(self, triggers: np.ndarray, k: int, exclude: list[set[int]]) -> np.ndarray:
        return self.retriever.recommend(triggers, k, exclude)
