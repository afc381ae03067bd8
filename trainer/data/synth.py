"""Synthetic behaviour logs with planted multi-view structure, at any scale in bounded memory.

The generator plants what M2GRL is meant to recover, so that training can be checked against a known truth:

- *Items in categories*: category sizes are Zipf-like; within a category, item popularity is Zipf-like
  (weight ``(rank + 1) ** -zipf``).
- *Shops*: each shop has a main category; an item is sold by a shop of its own category with probability
  ``shop_purity``, else by a uniformly random shop, so a shop sells mostly one category.
- *Category transitions*: a sparse planted graph, each category linking to ``category_out_degree`` others.
- *Users* have 1 to 3 category interests (weighted); every session starts in one of them.
- *Sessions* are Markov walks over categories: each step stays in the category with probability
  ``stay_prob``, else jumps along the planted transition graph; the item of each step is drawn by popularity
  within the step's category.
- *Time*: gaps inside a session are small (seconds to minutes, below half an hour), gaps between sessions
  exceed one hour, so the one-hour idle split of the preparation recovers the planted sessions (apart from
  chunking of sessions longer than the preparation's ``max_session_len``).

Output directory ``DIR``::

    DIR/events.parquet   user_id, item_id (Utf8), timestamp (Int64), sorted by user then time
    DIR/items.parquet    item_id, category, shop (Utf8)
    DIR/truth.json       the generator's parameters and summary figures
    DIR/truth.npz        the planted structure as arrays indexed by the integer in the ids
                         (item ``i17`` is index 17, category ``c3`` is 3, shop ``s5`` is 5, user ``u9`` is 9)

Users are generated in chunks of about ``chunk_events`` events; each chunk is vectorised with numpy (the walk
is vectorised per step over all sessions of the chunk) and appended to the Parquet file, so memory is bounded
by the chunk size plus O(items + users) arrays, whatever the number of events.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from trainer.data.schema import LoadedDataset

log = logging.getLogger(__name__)

SYNTH_VIEWS = ["category", "shop"]
EVENTS_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])
BASE_TIME = 1_577_836_800  # 2020-01-01 UTC: timestamps are real dates
MAX_INTERESTS = 3


class SynthOptions(BaseModel):
    """Parameters of the generator (flags of ``m2grl-train synth``)."""

    model_config = ConfigDict(extra="forbid")

    n_items: int = Field(ge=2)
    n_users: int = Field(ge=1)
    n_events: int = Field(ge=1, description="total events; every user gets at least one")
    n_categories: int | None = Field(None, ge=2, description="default: n_items // 50, clipped to [2, 5000]")
    n_shops: int | None = Field(None, ge=1, description="default: n_items // 20, at least 1")
    seed: int = 0
    stay_prob: float = Field(0.8, ge=0.0, le=1.0, description="probability a walk step stays in its category")
    category_out_degree: int = Field(3, ge=1, description="planted out-neighbours of each category")
    shop_purity: float = Field(
        0.9, ge=0.0, le=1.0, description="share of items sold by a shop of their category"
    )
    zipf: float = Field(1.0, ge=0.0, description="popularity exponent within a category")
    mean_session_len: float = Field(8.0, ge=1.0, description="mean planted session length (geometric)")
    max_session_len: int = Field(40, ge=1, description="planted sessions are capped at this length")
    span_days: int = Field(
        30, ge=1, description="users' first sessions start uniformly within this many days"
    )
    chunk_events: int = Field(1_000_000, ge=1000, description="events generated and written per chunk")

    @model_validator(mode="after")
    def _consistent(self) -> SynthOptions:
        if self.n_events < self.n_users:
            raise ValueError(f"n_events ({self.n_events}) must be at least n_users ({self.n_users})")
        if self.categories > self.n_items:
            raise ValueError(f"n_categories ({self.categories}) exceeds n_items ({self.n_items})")
        return self

    @property
    def categories(self) -> int:
        return (
            self.n_categories if self.n_categories is not None else int(np.clip(self.n_items // 50, 2, 5000))
        )

    @property
    def shops(self) -> int:
        return self.n_shops if self.n_shops is not None else max(1, self.n_items // 20)


@dataclass
class SynthTruth:
    """The planted structure (arrays indexed by the integers in the ids)."""

    item_category: np.ndarray  # int32 [n_items]
    item_shop: np.ndarray  # int32 [n_items]
    item_popularity: np.ndarray  # float64 [n_items], relative within the item's category
    shop_category: np.ndarray  # int32 [n_shops]: the shop's main category
    category_next: np.ndarray  # int32 [n_categories, out_degree]: planted jump targets (may repeat)
    category_next_prob: np.ndarray  # float64 [n_categories, out_degree]
    user_interests: np.ndarray  # int32 [n_users, 3], -1 = no further interest
    user_interest_weights: np.ndarray  # float64 [n_users, 3], rows sum to 1
    stay_prob: float

    def transition_matrix(self) -> np.ndarray:
        """The dense category transition matrix P[a, b] of the walk (stay on the diagonal); small C only."""
        n_cat = len(self.category_next)
        p = np.zeros((n_cat, n_cat))
        rows = np.repeat(np.arange(n_cat), self.category_next.shape[1])
        np.add.at(
            p, (rows, self.category_next.ravel()), (1 - self.stay_prob) * self.category_next_prob.ravel()
        )
        p[np.arange(n_cat), np.arange(n_cat)] += self.stay_prob
        return p


class _ItemSampler:
    """Draws items by popularity within given categories: one searchsorted for a whole vector of draws."""

    def __init__(self, item_category: np.ndarray, popularity: np.ndarray) -> None:
        order = np.lexsort((-popularity, item_category))
        self.items = order.astype(np.int64)
        cats = item_category[order].astype(np.int64)
        weights = popularity[order]
        cum = np.cumsum(weights)
        starts = np.searchsorted(cats, np.arange(cats.max() + 1), side="left")
        ends = np.searchsorted(cats, np.arange(cats.max() + 1), side="right")
        before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
        totals = cum[ends - 1] - before
        # key = category + cumulative share within the category, in (c, c + 1]; a draw c + U[0, 1) then lands
        # on the first item whose key exceeds it.
        self.key = cats + (cum - before[cats]) / totals[cats]
        self.key[ends - 1] = np.arange(len(ends)) + 1.0
        self.ends = ends

    def draw(self, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pos = np.searchsorted(self.key, categories + rng.random(len(categories)), side="right")
        return self.items[np.minimum(pos, self.ends[categories] - 1)]


def plant_structure(opts: SynthOptions, rng: np.random.Generator) -> SynthTruth:
    """Draw categories, popularity, shops, the category graph and user interests."""
    n_items, n_cat, n_shops = opts.n_items, opts.categories, opts.shops
    cat_share = (np.arange(n_cat) + 1.0) ** -0.8
    cat_share /= cat_share.sum()
    item_category = np.concatenate([np.arange(n_cat), rng.choice(n_cat, n_items - n_cat, p=cat_share)])
    rng.shuffle(item_category)

    # Random rank within category -> Zipf weight.
    order = np.lexsort((rng.random(n_items), item_category))
    sorted_cats = item_category[order]
    first = np.searchsorted(sorted_cats, sorted_cats, side="left")
    rank = np.empty(n_items, dtype=np.int64)
    rank[order] = np.arange(n_items) - first
    popularity = (rank + 1.0) ** -opts.zipf

    cat_size = np.bincount(item_category, minlength=n_cat)
    size_share = cat_size / cat_size.sum()
    if n_shops >= n_cat:
        shop_category = np.concatenate([np.arange(n_cat), rng.choice(n_cat, n_shops - n_cat, p=size_share)])
    else:
        shop_category = rng.choice(n_cat, n_shops, p=size_share)
    shop_order = np.argsort(shop_category, kind="stable")
    shop_start = np.searchsorted(shop_category[shop_order], np.arange(n_cat), side="left")
    shop_count = np.bincount(shop_category, minlength=n_cat)
    own = shop_order[
        np.minimum(
            shop_start[item_category] + (rng.random(n_items) * shop_count[item_category]).astype(np.int64),
            n_shops - 1,
        )
    ]
    pure = (rng.random(n_items) < opts.shop_purity) & (shop_count[item_category] > 0)
    item_shop = np.where(pure, own, rng.integers(0, n_shops, n_items))

    degree = min(opts.category_out_degree, n_cat - 1)
    # Offsets 1..C-1 never map a category onto itself, so every jump really leaves the category.
    category_next = (np.arange(n_cat)[:, None] + rng.integers(1, n_cat, (n_cat, degree))) % n_cat
    category_next_prob = rng.gamma(1.0, size=(n_cat, degree))
    category_next_prob /= category_next_prob.sum(axis=1, keepdims=True)

    n_users = opts.n_users
    user_interests = rng.choice(n_cat, (n_users, MAX_INTERESTS), p=size_share).astype(np.int32)
    n_interests = rng.integers(1, MAX_INTERESTS + 1, n_users)
    absent = np.arange(MAX_INTERESTS)[None, :] >= n_interests[:, None]
    user_interests[absent] = -1
    weights = np.where(absent, 0.0, rng.gamma(1.0, size=(n_users, MAX_INTERESTS)))
    weights /= weights.sum(axis=1, keepdims=True)
    return SynthTruth(
        item_category=item_category.astype(np.int32),
        item_shop=item_shop.astype(np.int32),
        item_popularity=popularity,
        shop_category=shop_category.astype(np.int32),
        category_next=category_next.astype(np.int32),
        category_next_prob=category_next_prob,
        user_interests=user_interests,
        user_interest_weights=weights,
        stay_prob=opts.stay_prob,
    )


def _choose_rows(cum_weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row of cumulative weights (last column 1), the column index of one draw."""
    u = rng.random(len(cum_weights))
    return np.minimum((u[:, None] >= cum_weights).sum(axis=1), cum_weights.shape[1] - 1)


def _generate_chunk(
    users: np.ndarray,
    n_per_user: np.ndarray,
    truth: SynthTruth,
    sampler: _ItemSampler,
    opts: SynthOptions,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Events of one chunk of users: (user index, item index, timestamp) per event, and the session count."""
    total = int(n_per_user.sum())
    user_of = np.repeat(users, n_per_user)
    user_first = np.zeros(total, dtype=bool)
    user_first[np.cumsum(n_per_user)[:-1]] = True
    user_first[0] = True

    # Session starts: a geometric break process, then a cap on the length.
    start = user_first | (rng.random(total) < 1.0 / opts.mean_session_len)
    idx = np.arange(total)
    seg_start = np.maximum.accumulate(np.where(start, idx, 0))
    start |= ((idx - seg_start) % opts.max_session_len) == 0
    seg_start = np.maximum.accumulate(np.where(start, idx, 0))
    pos = idx - seg_start

    # The walk: step t of every session at once.
    cat = np.empty(total, dtype=np.int64)
    starts = np.flatnonzero(start)
    s_users = user_of[starts]
    choice = _choose_rows(np.cumsum(truth.user_interest_weights[s_users], axis=1), rng)
    # Rounding in the cumulative weights must never pick a padding slot (-1).
    choice = np.minimum(choice, (truth.user_interests[s_users] >= 0).sum(axis=1) - 1)
    cat[starts] = truth.user_interests[s_users, choice]
    next_cum = np.cumsum(truth.category_next_prob, axis=1)
    by_pos = np.argsort(pos, kind="stable")
    pos_bounds = np.searchsorted(pos[by_pos], np.arange(pos.max() + 2), side="left")
    for t in range(1, int(pos.max()) + 1):
        at = by_pos[pos_bounds[t] : pos_bounds[t + 1]]
        prev = cat[at - 1]
        jump_to = truth.category_next[prev, _choose_rows(next_cum[prev], rng)]
        cat[at] = np.where(rng.random(len(at)) < opts.stay_prob, prev, jump_to)
    items = sampler.draw(cat, rng)

    # Time: small gaps inside a session, more than an hour between sessions.
    inside = np.minimum(5 + rng.exponential(40.0, total), 1799).astype(np.int64)
    between = (3601 + rng.exponential(2 * 86400.0, total)).astype(np.int64)
    gap = np.where(start, between, inside)
    gap[user_first] = 0
    elapsed = np.cumsum(gap)
    first_idx = np.flatnonzero(user_first)
    elapsed -= np.repeat(elapsed[first_idx], n_per_user)
    t0 = BASE_TIME + rng.integers(0, opts.span_days * 86400, len(users))
    timestamps = np.repeat(t0, n_per_user) + elapsed
    return user_of, items, timestamps, int(start.sum())


def _prefixed(prefix: str, values: np.ndarray) -> pa.Array:
    return (
        pl.Series(values, dtype=pl.Int64)
        .cast(pl.Utf8)
        .to_frame("v")
        .select(pl.lit(prefix) + pl.col("v"))
        .to_series()
        .to_arrow()
        .cast(pa.string())
    )


def _chunks(n_per_user: np.ndarray, chunk_events: int) -> list[tuple[int, int]]:
    """Consecutive user ranges of about ``chunk_events`` events each."""
    before = np.cumsum(n_per_user) - n_per_user
    chunk_of = before // chunk_events
    bounds = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1], True])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def generate(opts: SynthOptions, out: Path) -> dict[str, Any]:
    """Write a synthetic log into the (existing, empty) directory ``out``; returns the summary figures.

    Same options (seed included) give byte-identical files.
    """
    out = Path(out)
    rng = np.random.default_rng(opts.seed)
    truth = plant_structure(opts, rng)
    sampler = _ItemSampler(truth.item_category, truth.item_popularity)

    activity = rng.lognormal(0.0, 1.0, opts.n_users)
    n_per_user = 1 + rng.multinomial(opts.n_events - opts.n_users, activity / activity.sum())
    chunks = _chunks(n_per_user, opts.chunk_events)
    log.info(
        "synth: %d items, %d categories, %d shops, %d users, %d events in %d chunks",
        opts.n_items,
        opts.categories,
        opts.shops,
        opts.n_users,
        opts.n_events,
        len(chunks),
    )
    n_sessions = 0
    with pq.ParquetWriter(out / "events.parquet", EVENTS_SCHEMA) as writer:
        for a, b in tqdm(chunks, desc="synth chunks", unit="chunk"):
            users, items, ts, n_sess = _generate_chunk(
                np.arange(a, b), n_per_user[a:b], truth, sampler, opts, rng
            )
            n_sessions += n_sess
            table = pa.table(
                [_prefixed("u", users), _prefixed("i", items), pa.array(ts, type=pa.int64())],
                schema=EVENTS_SCHEMA,
            )
            writer.write_table(table)

    item_idx = np.arange(opts.n_items)
    pa_items = pa.table(
        [_prefixed("i", item_idx), _prefixed("c", truth.item_category), _prefixed("s", truth.item_shop)],
        names=["item_id", *SYNTH_VIEWS],
    )
    pq.write_table(pa_items, out / "items.parquet")
    np.savez(
        out / "truth.npz",
        item_category=truth.item_category,
        item_shop=truth.item_shop,
        item_popularity=truth.item_popularity,
        shop_category=truth.shop_category,
        category_next=truth.category_next,
        category_next_prob=truth.category_next_prob,
        user_interests=truth.user_interests,
        user_interest_weights=truth.user_interest_weights,
    )
    summary = {
        "options": opts.model_dump(),
        "n_items": opts.n_items,
        "n_categories": opts.categories,
        "n_shops": opts.shops,
        "n_users": opts.n_users,
        "n_events": int(n_per_user.sum()),
        "n_sessions": n_sessions,
        "stay_prob": opts.stay_prob,
        "ids": {"item": "i<index>", "category": "c<index>", "shop": "s<index>", "user": "u<index>"},
    }
    (out / "truth.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_truth(path: Path | str) -> SynthTruth:
    """The planted structure of a synthetic log directory."""
    path = Path(path)
    meta = json.loads(_need(path / "truth.json").read_text())
    with np.load(_need(path / "truth.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    return SynthTruth(stay_prob=float(meta["stay_prob"]), **arrays)


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; not a synthetic log directory (run 'm2grl-train synth')")
    return path


def load_synth(path: Path | str) -> LoadedDataset:
    """A synthetic log directory in canonical form (views: category, shop)."""
    path = Path(path)
    events_path, items_path = _need(path / "events.parquet"), _need(path / "items.parquet")
    _need(path / "truth.json")
    events = pl.read_parquet(events_path)
    items = pl.read_parquet(items_path)
    return LoadedDataset(
        name="synth",
        events=events,
        items=items,
        views=list(SYNTH_VIEWS),
        source_files=[events_path, items_path],
    )
