"""The offline protocol of the paper's Sec. 5.1 on a prepared directory: triggers and ground truth.

For every user u of the prepared data:

- trigger t_u: the item of u's last training event (largest ``pos`` among ``split == "train"``);
- history H_u: the distinct items of u's training events (it contains t_u);
- ground truth G_u: the distinct items of u's test events that (a) occur in the training data of any
  user (i.e. are rows of the item view) and (b) are not in H_u.

Test users are the users with a trigger and a non-empty G_u. A method recommends K items for t_u that
are not in H_u; metrics (trainer.eval.metrics) compare them with G_u.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from trainer.data.prepared import PreparedData, PreparedDataError
from trainer.eval.methods.base import item_rows


@dataclass
class EvalSet:
    """Test users in user-id order, with CSR lists of item rows (each list sorted ascending)."""

    users: np.ndarray  # object array of user ids
    triggers: np.ndarray  # int64 item row per user
    history_indptr: np.ndarray  # int64, len n_users + 1
    history_items: np.ndarray  # int64
    truth_indptr: np.ndarray
    truth_items: np.ndarray
    n_items: int
    summary: dict[str, Any]

    @property
    def n_users(self) -> int:
        return len(self.users)

    def exclude(self) -> list[set[int]]:
        """Per user the banned items: the training history (which holds the trigger)."""
        return [set(a.tolist()) for a in np.split(self.history_items, self.history_indptr[1:-1])]

    def truth_sizes(self) -> np.ndarray:
        return np.diff(self.truth_indptr)


def _csr(user_index: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((items, user_index))
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_index, minlength=n_users), out=indptr[1:])
    return indptr, items[order].astype(np.int64)


def build_eval_set(prepared: PreparedData) -> EvalSet:
    """Apply the protocol above to ``prepared`` (polars joins, no per-event Python)."""
    rows = item_rows(prepared)
    n_items = len(rows)
    train = prepared.train_events().select("user_id", "item_id", "pos").join(rows, on="item_id", how="left")
    missing = train.filter(pl.col("row").is_null())
    if len(missing):
        raise PreparedDataError(
            f"{prepared.path}: {len(missing)} training events have items missing from views/item/nodes.parquet "
            f"(e.g. item {missing['item_id'][0]!r}); the item view must hold every training item"
        )
    triggers = train.group_by("user_id").agg(pl.col("row").sort_by("pos").last().alias("trigger"))
    history = train.select("user_id", "row").unique()
    test = prepared.test_events().select("user_id", "item_id")
    truth = (
        test.join(rows, on="item_id", how="inner")  # (a) known to training
        .select("user_id", "row")
        .unique()
        .join(history, on=["user_id", "row"], how="anti")  # (b) new to this user
    )
    users = (
        truth.select("user_id").unique().join(triggers, on="user_id", how="inner").sort("user_id")
    )  # a user without training events has no trigger
    index = users.select("user_id").with_row_index("u")
    hist_u = history.join(index, on="user_id", how="inner")
    truth_u = truth.join(index, on="user_id", how="inner")
    n_users = len(users)
    h_ptr, h_items = _csr(hist_u["u"].to_numpy().astype(np.int64), hist_u["row"].to_numpy(), n_users)
    t_ptr, t_items = _csr(truth_u["u"].to_numpy().astype(np.int64), truth_u["row"].to_numpy(), n_users)
    n_test_event_users = test.select(pl.col("user_id").n_unique()).item()
    summary = {
        "trigger": "item of the user's last training event (by pos)",
        "ground_truth": "distinct test items of the user that occur in training data and not in the user's history",
        "exclusion": "the trigger and the user's training history are never recommended",
        "n_items": n_items,
        "n_users_with_test_events": int(n_test_event_users),
        "n_test_users": n_users,
        "mean_truth_size": float(np.diff(t_ptr).mean()) if n_users else 0.0,
        "mean_history_size": float(np.diff(h_ptr).mean()) if n_users else 0.0,
        "prepared": str(prepared.path),
        "dataset": prepared.manifest.dataset,
        "fingerprint": prepared.fingerprint(),
    }
    return EvalSet(
        users=np.array(users["user_id"].to_list(), dtype=object),
        triggers=users["trigger"].to_numpy().astype(np.int64),
        history_indptr=h_ptr,
        history_items=h_items,
        truth_indptr=t_ptr,
        truth_items=t_items,
        n_items=n_items,
        summary=summary,
    )
