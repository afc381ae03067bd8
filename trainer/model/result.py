"""What training produces, in memory: plain arrays, handed to the metric model and the artifact writer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainer.model.config import TrainConfig


@dataclass
class TrainedModel:
    config: TrainConfig
    views: list[str]  # 'item' first
    node_ids: dict[str, np.ndarray]  # view -> object array of external ids (row order of the tables)
    embeddings: dict[str, np.ndarray]  # view -> (n_nodes, dim) float32 input ("instance") table
    context_embeddings: dict[str, np.ndarray]  # view -> (n_nodes, dim) float32 output table of SGNS
    item_to_attr: dict[str, np.ndarray]  # attribute view -> int32 node index per item row, -1 = none
    W: dict[str, np.ndarray]  # attribute view -> (relation_dim, dim) float32 matrix of task item-<view>
    sigma2: dict[str, float]  # task name ('item', 'category', 'item-category', ...) -> final sigma^2
    curves: list[dict[str, float]] = field(default_factory=list)  # one row per logged step
    # Diversity metric model (Sec. 6.1): M = L^T L.
    L_i: np.ndarray | None = None  # (dim, dim)
    L_ic: np.ndarray | None = None  # (relation_dim, relation_dim)
    metric_curve: list[dict[str, float]] = field(default_factory=list)

    def relational(self, view: str) -> tuple[np.ndarray, np.ndarray]:
        """(item-side, attribute-side) relational embeddings sigmoid(W e) of task item-<view>."""
        W = self.W[view]
        item_side = 1.0 / (1.0 + np.exp(-(self.embeddings["item"] @ W.T)))
        attr_side = 1.0 / (1.0 + np.exp(-(self.embeddings[view] @ W.T)))
        return item_side.astype(np.float32), attr_side.astype(np.float32)
