"""``eges``: Enhanced Graph Embedding with Side information (Wang et al., KDD 2018), the paper's EGES_asy.

The embedding of item v aggregates its own id embedding W_0[v] and one embedding per side-information
view j (every attribute view of the prepared data: W_j[side_j(v)]) with per-item learned weights a_v:

    H_v = sum_j softmax(a_v)_j W_j[side_j(v)]        (views where v has no attribute are left out)

and is trained with skip-gram negative sampling against a per-item context ("output") table C:
for each pair (v, u) of items at most ``window`` apart in a training session (both directions),

    loss = -log sigma(H_v . C_u) - sum_{n ~ P(n)} log sigma(-H_v . C_n),   P ∝ count^0.75

with ``negatives`` draws per pair. Settings as M2GRL's (paper appendix): batch 2048, Adam (lazy,
sparse rows), 10 epochs, dim 64, window 9, 5 negatives; retrieval: inner product of H.

Learning rate 0.001, not the paper's 0.01: on ml-latest-small, lr was tuned over {0.01, 0.003, 0.001,
0.0003} like every Adam-trained method here. With lazy Adam a rarely seen row moves ~lr per coordinate at
each touch whatever its gradient, so at 0.01 rare items grow long vectors and inner-product retrieval
fills the top K with them (HR@50 3.6% at 0.01, 23% at 0.001). ``optimizer='sgd'`` gives word2vec's
schedule instead (summed loss, lr decaying linearly from ``lr``; use lr 0.025).
"""

from __future__ import annotations

import logging
import time
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
    window_pairs,
)

log = logging.getLogger(__name__)


def skipgram_pairs(tokens: np.ndarray, offsets: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(center, context) pairs at distance 1..window inside each sequence, both directions."""
    left, right, _ = window_pairs(tokens, offsets, window)
    return np.concatenate([left, right]), np.concatenate([right, left])


def negative_table(counts: np.ndarray, exponent: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """word2vec's unigram table: drawing uniformly from it samples ∝ count^exponent."""
    p = np.power(np.maximum(counts, 0).astype(np.float64), exponent)
    if p.sum() <= 0:
        p = np.ones_like(p)
    p /= p.sum()
    return rng.choice(len(p), size=size, p=p).astype(np.int64)


class EGES(Method):
    name = "eges"

    def __init__(self, ctx: MethodContext | None = None, **overrides: Any) -> None:
        super().__init__(ctx)
        self.hp: dict[str, Any] = {
            "dim": 64,
            "window": 9,
            "negatives": 5,
            "ns_exponent": 0.75,
            "epochs": 10,
            "batch_size": 2048,
            "lr": 0.001,
            "optimizer": "adam",
            # Batches of small gathers gain little from threads; on a shared machine extra threads
            # oversubscribe the cores and run ~5x slower (measured). 0 = torch's default.
            "threads": 1,
            "side_views": None,
        }
        if self.ctx.epochs is not None:
            self.hp["epochs"] = self.ctx.epochs
        self.hp = apply_overrides(self.hp, overrides, self.name)

    def fit(self, prepared: PreparedData) -> None:
        import torch

        threads = torch.get_num_threads()
        if int(self.hp["threads"]) > 0:
            # On a shared, busy machine one thread is often faster than oversubscribed ones.
            torch.set_num_threads(int(self.hp["threads"]))
        try:
            self._fit(prepared)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, prepared: PreparedData) -> None:
        import torch

        hp = self.hp
        torch.manual_seed(self.ctx.seed)
        rng = np.random.default_rng(self.ctx.seed)
        view = prepared.view(ITEM_VIEW)
        n_items, dim = view.n_nodes, int(hp["dim"])
        side_views = prepared.attribute_views if hp["side_views"] is None else list(hp["side_views"])
        # Column 0 is the item itself; a missing attribute points at a padding row and is masked out.
        side = np.empty((n_items, 1 + len(side_views)), dtype=np.int64)
        side[:, 0] = np.arange(n_items)
        sizes = [n_items]
        for j, name in enumerate(side_views, start=1):
            a = prepared.view(name)
            if a.item_to_node is None or len(a.item_to_node) != n_items:
                raise ValueError(f"{prepared.path}/views/{name}/item_to_node.npy: expected {n_items} entries")
            side[:, j] = np.where(a.item_to_node >= 0, a.item_to_node, a.n_nodes)
            sizes.append(a.n_nodes)
        missing = side[:, 1:] == np.array(sizes[1:])[None, :]

        centers, contexts = skipgram_pairs(view.seq_tokens, view.seq_offsets, int(hp["window"]))
        if len(centers) == 0:
            raise ValueError(f"{prepared.path}: the item view has no training sessions of length >= 2")
        table = torch.from_numpy(
            negative_table(view.node_counts, float(hp["ns_exponent"]), max(1_000_000, 10 * n_items), rng)
        )

        tables = torch.nn.ModuleList(
            [torch.nn.Embedding(s + (j > 0), dim, sparse=True) for j, s in enumerate(sizes)]
        )
        with torch.no_grad():
            for t in tables:
                t.weight.uniform_(-0.5 / dim, 0.5 / dim)
        weights = torch.nn.Embedding(n_items, len(sizes), sparse=True)
        context = torch.nn.Embedding(n_items, dim, sparse=True)
        with torch.no_grad():
            weights.weight.zero_()
            context.weight.zero_()
        side_t = torch.from_numpy(side)
        mask_t = torch.from_numpy(np.concatenate([np.zeros((n_items, 1), bool), missing], axis=1))
        params = [*tables.parameters(), weights.weight, context.weight]
        lr0 = float(hp["lr"])
        sgd = hp["optimizer"] == "sgd"
        if hp["optimizer"] not in ("adam", "sgd"):
            raise ValueError(f"eges: optimizer {hp['optimizer']!r}, expected 'adam' or 'sgd'")
        opt = torch.optim.SGD(params, lr=lr0) if sgd else torch.optim.SparseAdam(params, lr=lr0)
        total_steps = int(hp["epochs"]) * -(-len(centers) // int(hp["batch_size"]))

        def embed(idx: torch.Tensor) -> torch.Tensor:
            cols = side_t[idx]
            stacked = torch.stack([tables[j](cols[:, j]) for j in range(len(sizes))], dim=1)
            logits = weights(idx).masked_fill(mask_t[idx], float("-inf"))
            return (torch.softmax(logits, dim=1).unsqueeze(-1) * stacked).sum(dim=1)

        c_all, o_all = torch.from_numpy(centers), torch.from_numpy(contexts)
        bs, neg = int(hp["batch_size"]), int(hp["negatives"])
        t0 = time.perf_counter()
        self.curve: list[float] = []
        for epoch in range(int(hp["epochs"])):
            perm = torch.from_numpy(rng.permutation(len(c_all)))
            total, steps = 0.0, 0
            for start in range(0, len(perm), bs):
                b = perm[start : start + bs]
                c, o = c_all[b], o_all[b]
                negs = table[torch.randint(len(table), (len(b), neg))]
                h = embed(c)
                pos = (h * context(o)).sum(-1)
                ng = torch.bmm(context(negs), h.unsqueeze(-1)).squeeze(-1)
                per_pair = -(
                    torch.nn.functional.logsigmoid(pos) + torch.nn.functional.logsigmoid(-ng).sum(-1)
                )
                loss = per_pair.mean()
                opt.zero_grad(set_to_none=True)
                if sgd:
                    # word2vec's schedule: one SGD step per pair (summed loss), lr decaying linearly.
                    done = (epoch * -(-len(perm) // bs) + steps) / total_steps
                    for group in opt.param_groups:
                        group["lr"] = lr0 * max(1.0 - done, 1e-4)
                    per_pair.sum().backward()
                else:
                    loss.backward()
                opt.step()
                total += loss.item()
                steps += 1
            self.curve.append(total / max(steps, 1))
            log.info(
                "eges epoch %d/%d loss %.4f (%.1fs)",
                epoch + 1,
                hp["epochs"],
                self.curve[-1],
                time.perf_counter() - t0,
            )

        with torch.no_grad():
            h_all = torch.cat([embed(idx) for idx in torch.arange(n_items).split(65536)]).numpy()
        # An item outside every session still gets H_v from its side information (EGES's cold start).
        has = ~missing.all(axis=1) if missing.shape[1] else np.zeros(n_items, dtype=bool)
        has[centers] = True
        self.retriever = EmbeddingRetriever(h_all, popularity_order(prepared), has, metric="dot")
        self.params = {
            **hp,
            "side_views": side_views,
            "seed": self.ctx.seed,
            "retrieval": "dot",
            "n_pairs": int(len(centers)),
            "final_loss": self.curve[-1] if self.curve else None,
        }

    def recommend(self, triggers: np.ndarray, k: int, exclude: list[set[int]]) -> np.ndarray:
        return self.retriever.recommend(triggers, k, exclude)
