"""Preparation: canonical events -> clean events, train/test split, sessions, per-view sequences and graphs.

This is the paper's preprocessing (Sec. 3.1 for Taobao, appendix 8.1 for MovieLens), step by step:

1. *Clean*: drop ratings below ``min_rating`` (MovieLens: ratings < 3 mean dislike) and clicks with a dwell
   time below ``min_dwell`` seconds (Taobao: the user bounced back, so was not interested).
2. *Order* each user's events by (timestamp, original row order).
3. *Split*: the last ``test_events`` events of each user with at least ``min_user_events`` events are test
   events; they never reach sessions, graphs or training.
4. *Sessions* from training events: idle split, optional app-session merge, chunking (trainer.data.sessions).
5. *Views*: per view, node sequences without consecutive duplicates, and the weighted directed graph of
   consecutive pairs (trainer.data.graphs).

The result is written atomically in the layout of trainer.data.prepared, plus ``stats.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from trainer.checksums import sha256_file
from trainer.data.graphs import build_view, encode_sorted
from trainer.data.prepared import PreparedManifest, save_view
from trainer.data.schema import EVENT_OPTIONAL, ITEM_VIEW, LoadedDataset
from trainer.data.sessions import ROW, USER, assign_sessions, order_events, split_train_test

log = logging.getLogger(__name__)

YEAR_SECONDS = 365 * 24 * 3600
HOUR_SECONDS = 3600


class PrepareOptions(BaseModel):
    """Options of the preparation; each dataset has a preset (:func:`preset_options`), every field is a flag."""

    model_config = ConfigDict(extra="forbid")

    min_rating: float | None = Field(
        None, description="drop events whose rating is below this (MovieLens: 3.0); null ratings are kept"
    )
    min_dwell: float | None = Field(
        2.0, description="drop events whose dwell time is below this many seconds; null dwell times are kept"
    )
    min_user_events: int = Field(
        5, ge=1, description="users with at least this many clean events get test events"
    )
    test_events: int = Field(3, ge=0, description="held-out last events per such user (0 = no test split)")
    session_gap: int = Field(
        HOUR_SECONDS, ge=0, description="idle gap in seconds; a strictly larger gap starts a new session"
    )
    max_session_len: int = Field(50, ge=2, description="longer sessions are cut into chunks of at most this")
    merge_gap: int = Field(
        1800, ge=0, description="with app sessions: merge consecutive ones less than this many seconds apart"
    )

    @model_validator(mode="after")
    def _test_leaves_history(self) -> PrepareOptions:
        if self.test_events >= self.min_user_events:
            raise ValueError(
                f"test_events ({self.test_events}) must be below min_user_events ({self.min_user_events}), "
                "so that every test user keeps training history"
            )
        return self


PRESETS: dict[str, dict[str, Any]] = {
    # Appendix 8.1: ratings < 3 are dislikes; sessions split at one year idle, chunks of 50.
    "movielens": {"min_rating": 3.0, "session_gap": YEAR_SECONDS},
    # Day-level timestamps: any positive gap is a new day, and each user-day is a session.
    "tmall": {"session_gap": 0},
    # Sec. 3.1: one-hour idle split, 30-minute merge of app sessions.
    "taobao": {"session_gap": HOUR_SECONDS},
    "generic": {"session_gap": HOUR_SECONDS},
    "synth": {"session_gap": HOUR_SECONDS},
}


def preset_options(dataset_name: str, **overrides: Any) -> PrepareOptions:
    """The preset options of a dataset with ``overrides`` applied (an override of None sets None)."""
    if dataset_name not in PRESETS:
        raise ValueError(f"no preparation preset for dataset {dataset_name!r}; known: {sorted(PRESETS)}")
    return PrepareOptions(**{**PRESETS[dataset_name], **overrides})


class OutputExistsError(ValueError):
    """The output directory exists and replacing it was not asked for."""


def _refuse_existing(out: Path, force: bool) -> None:
    if (out.exists() or out.is_symlink()) and not force:
        raise OutputExistsError(f"{out} already exists; pass --force to replace it")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextmanager
def atomic_directory(out: Path, force: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling of ``out`` and rename it to ``out`` once the block succeeds.

    On an exception the temporary directory is removed and ``out`` is untouched. With ``force`` an existing
    ``out`` is renamed aside, the new one renamed in, and only then the old one deleted, so ``out`` is at every
    moment either the complete old or the complete new directory (or briefly absent).
    """
    out = Path(out)
    _refuse_existing(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        _refuse_existing(out, force)  # someone may have created it meanwhile
        if out.exists() or out.is_symlink():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)
                raise
            _remove(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(directory: Path, manifest_fields: dict[str, Any]) -> PreparedManifest:
    """Write ``manifest.json`` with the sha256 of every other file under ``directory``."""
    files = {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    manifest = PreparedManifest(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), files=files, **manifest_fields
    )
    (directory / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def _check_required(events: pl.DataFrame) -> None:
    for col in ("user_id", "item_id", "timestamp"):
        n_null = events[col].null_count()
        if n_null:
            raise ValueError(
                f"events column {col!r} has {n_null} null values; the loader must drop such rows"
            )


def clean_events(events: pl.DataFrame, options: PrepareOptions) -> tuple[pl.DataFrame, dict[str, int]]:
    """Step 1: drop disliked ratings and bounced clicks. Returns the kept events and the drop counts."""
    dropped: dict[str, int] = {}
    if options.min_rating is not None and "rating" in events.columns:
        before = events.height
        events = events.filter(pl.col("rating").is_null() | (pl.col("rating") >= options.min_rating))
        dropped["n_dropped_rating"] = before - events.height
    if options.min_dwell is not None and "dwell_seconds" in events.columns:
        before = events.height
        events = events.filter(
            pl.col("dwell_seconds").is_null() | (pl.col("dwell_seconds") >= options.min_dwell)
        )
        dropped["n_dropped_dwell"] = before - events.height
    for key, n in dropped.items():
        log.info("clean: %s = %d", key, n)
    return events, dropped


def prepare(
    dataset: LoadedDataset, options: PrepareOptions, out: Path, force: bool = False
) -> dict[str, Any]:
    """Prepare ``dataset`` into the directory ``out`` (atomically) and return the figures of stats.json.

    Parameters
    ----------
    dataset : canonical events and items, as returned by a loader.
    options : cleaning, split and session options (see :class:`PrepareOptions` and :func:`preset_options`).
    out : the prepared directory to create (layout: trainer.data.prepared).
    force : replace an existing ``out``; without it an existing ``out`` is refused before any work is done.
    """
    out = Path(out)
    _refuse_existing(out, force)
    with atomic_directory(out, force) as tmp:
        stats = _build(dataset, options, tmp)
    log.info("prepared %s into %s", dataset.name, out)
    return stats


def _build(dataset: LoadedDataset, options: PrepareOptions, dest: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    events = dataset.events
    _check_required(events)
    n_raw = events.height
    log.info(
        "%s: %d raw events, %d items, views %s", dataset.name, n_raw, dataset.items.height, dataset.views
    )

    events = events.with_row_index(ROW)
    clean, dropped = clean_events(events, options)
    if clean.height == 0:
        raise ValueError(
            f"{dataset.name}: no events left after cleaning "
            f"(min_rating={options.min_rating}, min_dwell={options.min_dwell})"
        )

    ordered = split_train_test(
        order_events(clean), min_user_events=options.min_user_events, test_events=options.test_events
    )
    is_train = pl.col("split") == "train"
    n_train = int(ordered.select(is_train.sum()).item())
    log.info("split: %d training, %d test events", n_train, ordered.height - n_train)
    if n_train == 0:
        raise ValueError(f"{dataset.name}: no training events after the split")

    # Items of clean events, sorted by id: the position of an item is its raw code (graphs.encode_sorted).
    views = list(dataset.views)
    event_item, item_ids = encode_sorted(ordered["item_id"])
    items = item_ids.to_frame("item_id").join(
        dataset.items.select(["item_id", *views]), on="item_id", how="left", maintain_order="left"
    )
    n_items_no_attrs = items.join(dataset.items.select("item_id"), on="item_id", how="anti").height
    if n_items_no_attrs:
        log.warning(
            "%d items of clean events are missing from the items table (no attributes)", n_items_no_attrs
        )

    use_app = "app_session" in ordered.columns and ordered["app_session"].null_count() < ordered.height
    train_cols = [USER, "timestamp", ROW, "_item"] + (["app_session"] if use_app else [])
    train = assign_sessions(
        ordered.with_columns(_item=pl.Series(event_item)).filter(is_train).select(train_cols),
        session_gap=options.session_gap,
        max_session_len=options.max_session_len,
        merge_gap=options.merge_gap,
        use_app_sessions=use_app,
    )
    session = train["session"].to_numpy()
    train_item = train["_item"].to_numpy()
    n_sessions = int(session.max()) + 1
    log.info("sessions: %d (app sessions: %s)", n_sessions, use_app)

    view_stats: dict[str, dict[str, int]] = {}
    item_node_raw = np.zeros(0, dtype=np.int64)
    all_views = [ITEM_VIEW, *views]
    for view_name in tqdm(all_views, desc="views", unit="view"):
        if view_name == ITEM_VIEW:
            view, nodes, figures = build_view(ITEM_VIEW, train_item, session, item_ids)
            item_node_raw = nodes.raw
        else:
            attr_of_item, attr_ids = encode_sorted(items[view_name])
            view, _, figures = build_view(
                view_name,
                attr_of_item[train_item],
                session,
                attr_ids,
                node_attribute=attr_of_item[item_node_raw],
            )
            figures["n_items_without_node"] = int((view.item_to_node < 0).sum())
        save_view(dest / "views" / view_name, view)
        view_stats[view_name] = figures
        log.info("view %s: %s", view_name, figures)

    # Session id per clean event (null for test events), scattered back through the original row numbers.
    session_of_row = np.full(n_raw, -1, dtype=np.int64)
    session_of_row[train[ROW].to_numpy()] = session
    event_session = session_of_row[ordered[ROW].to_numpy()]
    event_cols = ["user_id", "item_id", "timestamp"] + [
        c for c in EVENT_OPTIONAL if c in ordered.columns and c != "app_session"
    ]
    out_events = (
        ordered.select([*event_cols, "pos", "split"])
        .with_columns(pl.col("pos").cast(pl.Int32), session=pl.Series(event_session, dtype=pl.Int64))
        .with_columns(session=pl.when(pl.col("session") >= 0).then(pl.col("session")))
    )
    out_events.write_parquet(dest / "events.parquet")
    items.write_parquet(dest / "items.parquet")

    session_lengths = np.bincount(session)
    stats: dict[str, Any] = {
        "dataset": dataset.name,
        "n_events_raw": n_raw,
        "n_events_clean": ordered.height,
        **dropped,
        "n_users": int(ordered[USER].n_unique()),
        "n_items": items.height,
        "n_items_train": view_stats[ITEM_VIEW]["n_nodes"],
        "n_items_without_attributes": n_items_no_attrs,
        "n_train_events": n_train,
        "n_test_events": ordered.height - n_train,
        "n_test_users": int(ordered.filter(~is_train)[USER].n_unique()),
        "n_bad_rows": int(dataset.n_bad_rows),
        "n_sessions": n_sessions,
        "session_length_mean": float(session_lengths.mean()),
        "session_length_max": int(session_lengths.max()),
        "app_sessions": use_app,
        "views": view_stats,
        "options": options.model_dump(),
    }
    (dest / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    write_manifest(
        dest,
        {
            "dataset": dataset.name,
            "source": ", ".join(str(p) for p in dataset.source_files) or "(in memory)",
            "options": options.model_dump(),
            "views": all_views,
        },
    )
    log.info("preparation took %.1f s", time.perf_counter() - t_start)
    return stats


__all__ = [
    "PRESETS",
    "OutputExistsError",
    "PrepareOptions",
    "atomic_directory",
    "clean_events",
    "prepare",
    "preset_options",
    "write_manifest",
]
