"""``popularity``: the same list for every trigger, the most frequent training items first.

Items are ranked by their number of training events (events.parquet, split ``train``), ties by item id
as a string, ascending (so id "10" precedes id "9"); the user's training history is skipped.
"""

from __future__ import annotations

import numpy as np

from trainer.data.prepared import PreparedData
from trainer.data.schema import ITEM_VIEW
from trainer.eval.methods.base import BLOCK, Method, complete, popularity_order


class Popularity(Method):
    name = "popularity"
    deterministic = True

    def fit(self, prepared: PreparedData) -> None:
        self.order = popularity_order(prepared)
        self.n_items = prepared.view(ITEM_VIEW).n_nodes
        self.params = {"rank_by": "training events", "ties": "item id string ascending"}

    def recommend(self, triggers: np.ndarray, k: int, exclude: list[set[int]]) -> np.ndarray:
        out = np.full((len(triggers), k), -1, dtype=np.int64)
        for start in range(0, len(triggers), BLOCK):
            stop = start + BLOCK
            out[start:stop] = complete(out[start:stop], exclude[start:stop], self.order, self.n_items)
        return out
