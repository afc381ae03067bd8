"""Ordering, train/test split and sessionisation of clean events (paper Sec. 3.1 and appendix 8.1).

All functions take and return polars DataFrames and work on whole columns (sort, shift, cum_sum, joins):
there is no per-event Python code, so they scale to tens of millions of events.

Every frame carries a ``_row`` column, the event's row number in the publisher's file. It is the tie-breaker
whenever two events of a user have the same timestamp (day-level logs have many such ties).
"""

from __future__ import annotations

import logging

import polars as pl

log = logging.getLogger(__name__)

ROW = "_row"
USER = "_user"


def _segment_starts(key_changed: pl.Expr) -> pl.Expr:
    """True where a run starts; the first row (compared with nothing) always starts one."""
    return key_changed.fill_null(True)


def order_events(events: pl.DataFrame) -> pl.DataFrame:
    """Sort events by (user, timestamp, original row); add ``_user`` (a dense integer code of the user, in
    user-id order) and ``pos`` (the 0-based position of each event among its user's events).
    ``events`` must already have the ``_row`` column."""
    # Sorting and comparing integer user codes is several times faster than doing it on the id strings; an
    # Enum over the sorted ids gives codes in id order.
    user_ids = events["user_id"].unique().sort()
    ordered = events.with_columns(_user=pl.col("user_id").cast(pl.Enum(user_ids)).to_physical()).sort(
        USER, "timestamp", ROW
    )
    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    first = _segment_starts(pl.col(USER) != pl.col(USER).shift(1))
    return ordered.with_columns(
        pos=(idx - pl.when(first).then(idx).otherwise(None).forward_fill()).cast(pl.Int32)
    )


def split_train_test(ordered: pl.DataFrame, *, min_user_events: int, test_events: int) -> pl.DataFrame:
    """Mark each event ``split = "train" | "test"``.

    Parameters
    ----------
    ordered : events sorted by :func:`order_events` (with ``_user`` and ``pos``).
    min_user_events : a user needs at least this many clean events to contribute test events.
    test_events : the last ``test_events`` events (in time order) of such a user are held out as test events;
        they never reach sessions, graphs or training. Users with fewer events are training-only.
    """
    n_user = pl.len().over(USER)
    is_test = (n_user >= min_user_events) & (pl.col("pos") >= n_user - test_events)
    return ordered.with_columns(split=pl.when(is_test).then(pl.lit("test")).otherwise(pl.lit("train")))


def _merged_app_blocks(train: pl.DataFrame, merge_gap: int, session_gap: int) -> pl.DataFrame:
    """Attach ``_block``: a global, (user, time)-ordered id of merged app sessions.

    The paper (Sec. 3.1) merges two consecutive app sessions of a user when the time between them (start of
    the next minus end of the previous) is less than ``merge_gap`` seconds. App sessions that overlap in time
    have a negative gap and are therefore merged too.
    """
    # Events that carry no app-session id get a pseudo id from the idle-gap rule, so a partly annotated log
    # still sessionises sensibly instead of lumping all unannotated events of a user into one session.
    gap_seg = (
        _segment_starts(
            (pl.col(USER) != pl.col(USER).shift(1))
            | ((pl.col("timestamp") - pl.col("timestamp").shift(1)) > session_gap)
        )
        .cum_sum()
        .cast(pl.Utf8)
    )
    train = train.with_columns(
        _app=pl.when(pl.col("app_session").is_null())
        .then(pl.lit("\x00gap:") + gap_seg)
        .otherwise(pl.lit("\x01") + pl.col("app_session"))
    )
    spans = (
        train.group_by(USER, "_app")
        .agg(_start=pl.col("timestamp").min(), _end=pl.col("timestamp").max(), _first=pl.col(ROW).min())
        .sort(USER, "_start", "_first")
    )
    prev_end = pl.col("_end").cum_max().shift(1).over(USER)
    new_block = prev_end.is_null() | ((pl.col("_start") - prev_end) >= merge_gap)
    spans = spans.with_columns(_block=new_block.cum_sum())
    return train.join(spans.select(USER, "_app", "_block"), on=[USER, "_app"], how="left").drop("_app")


def assign_sessions(
    train: pl.DataFrame,
    *,
    session_gap: int,
    max_session_len: int,
    merge_gap: int,
    use_app_sessions: bool,
) -> pl.DataFrame:
    """Cut training events into sessions and add an Int64 ``session`` column.

    Parameters
    ----------
    train : training events sorted by :func:`order_events` (with ``_user``, ``timestamp``, ``_row``).
    session_gap : idle split: a new session starts where the gap to the user's previous event is strictly
        greater than this many seconds (Taobao: one hour; MovieLens: one year; 0 for day-level logs, so every
        new day starts a new session).
    max_session_len : sessions longer than this are cut into consecutive chunks of at most this many events
        (appendix 8.1: MovieLens sessions longer than 50 are split).
    merge_gap : with ``use_app_sessions``, consecutive app sessions of a user less than this many seconds
        apart are merged (Sec. 3.1: 30 minutes).
    use_app_sessions : sessions start from the explicit ``app_session`` column (App open/close) instead of
        the user alone; the idle split then still cuts hours-long app sessions (the paper's "App running in
        the background" case).

    Returns the rows sorted by (session, timestamp, _row). Session ids are 0-based, global and assigned in
    (user, session start time) order.
    """
    if use_app_sessions:
        train = _merged_app_blocks(train, merge_gap, session_gap).sort("_block", "timestamp", ROW)
        block = pl.col("_block")
    else:
        train = train.with_columns(_block=pl.lit(0))
        block = pl.col(USER)

    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    new_segment = _segment_starts(
        (block != block.shift(1)) | ((pl.col("timestamp") - pl.col("timestamp").shift(1)) > session_gap)
    )
    train = train.with_columns(_seg_start=pl.when(new_segment).then(idx).otherwise(None).forward_fill())
    # Chunking: a position that is a multiple of max_session_len within its segment starts a new session.
    new_session = ((idx - pl.col("_seg_start")) % max_session_len) == 0
    return train.with_columns(session=new_session.cum_sum().cast(pl.Int64) - 1).drop("_block", "_seg_start")
