"""Tmall IJCAI-15 "Repeat Buyers Prediction" behaviour log (``user_log_format1.csv``, Alibaba Tianchi).

Format (comma-separated, header line)::

    user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type
    328862,323294,833,2882,2661,0829,0

``time_stamp`` is ``mmdd`` without a year: the log covers the six months up to "Double 11" (11 November)
of 2014, so each event is placed at midnight UTC of that day in ``year`` (default 2014). Only day order
matters to the model; the year just makes the timestamps real dates. ``action_type`` 0, 1, 2, 3 become
the actions ``click``, ``cart``, ``buy``, ``fav``. ``brand_id`` is empty in some rows (no brand).

Views: ``category`` (cat_id), ``shop`` (seller_id), ``brand`` (brand_id). The log repeats an item's
attributes on every row and a few items carry different values on different rows; each item gets its
most frequent value, ties going to the value seen first in file order, empty values not counting.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import polars as pl

from trainer.data.loaders.common import (
    LINE,
    check_header,
    collect_strict,
    field_count_problem,
    item_table,
    most_frequent,
    not_integer,
    problem_column,
    read_header,
    scan_lines,
    split_fields,
)
from trainer.data.schema import DataFormatError, LoadedDataset

log = logging.getLogger(__name__)

HEADER = ["user_id", "item_id", "cat_id", "seller_id", "brand_id", "time_stamp", "action_type"]
ACTIONS = {"0": "click", "1": "cart", "2": "buy", "3": "fav"}
VIEW_COLUMNS = {"category": "cat_id", "shop": "seller_id", "brand": "brand_id"}
DEFAULT_YEAR = 2014
FILE_NAMES = ("user_log_format1.csv", "user_log_format1_little.csv")


def find_log_file(path: Path) -> Path:
    """``path`` itself when it is a file; in a directory, ``user_log_format1.csv``, else
    ``user_log_format1_little.csv``, else the only ``user_log_format1*.csv``."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory (expected a Tmall user_log_format1 CSV)")
    for name in FILE_NAMES:
        if (path / name).is_file():
            return path / name
    candidates = sorted(path.glob("user_log_format1*.csv"))
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "none"
    raise DataFormatError(
        path,
        f"expected one of {', '.join(FILE_NAMES)} or a single user_log_format1*.csv; found {found}",
    )


def load_tmall(path: Path | str, *, year: int = DEFAULT_YEAR) -> LoadedDataset:
    """Load the Tmall IJCAI-15 user log.

    Parameters
    ----------
    path
        The ``user_log_format1*.csv`` file or a directory holding it.
    year
        Calendar year given to the year-less ``mmdd`` time stamps (default 2014, the year of the
        competition's log). Events fall at midnight UTC of their day, so a user-day is the natural session.
    """
    started = time.perf_counter()
    source = find_log_file(Path(path))
    check_header(source, read_header(source), ",", HEADER)

    mmdd = pl.col("time_stamp").str.zfill(4)
    day = pl.concat_str(pl.lit(f"{year:04d}"), mmdd).str.strptime(pl.Date, "%Y%m%d", strict=False)
    bad_day = ~pl.col("time_stamp").str.contains(r"^\d{3,4}$").fill_null(False) | day.is_null()
    checks = [
        field_count_problem(len(HEADER), "comma"),
        not_integer("user_id"),
        not_integer("item_id"),
        not_integer("cat_id", nullable=True),
        not_integer("seller_id", nullable=True),
        not_integer("brand_id", nullable=True),
        (bad_day, pl.format("time_stamp '{}' is not a valid mmdd day", pl.col("time_stamp").fill_null(""))),
        (
            ~pl.col("action_type").is_in(list(ACTIONS)).fill_null(False),
            pl.format(
                "action_type '{}' is not 0 (click), 1 (cart), 2 (buy) or 3 (fav)",
                pl.col("action_type").fill_null(""),
            ),
        ),
    ]
    fields = scan_lines(source, skip_header=True).with_columns(split_fields(",", HEADER))
    fields = fields.with_columns(
        pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in VIEW_COLUMNS.values()
    )
    events = collect_strict(
        source,
        fields.with_columns(problem_column(checks)),
        [
            "user_id",
            "item_id",
            (day.cast(pl.Int64) * 86_400).alias("timestamp"),
            pl.col("action_type").replace_strict(ACTIONS, default=None, return_dtype=pl.Utf8).alias("action"),
        ],
        "a Tmall user log",
    )
    if events.height == 0:
        raise DataFormatError(source, "has a header but no events", 2)
    views = most_frequent(
        fields.select("item_id", *VIEW_COLUMNS.values(), LINE), "item_id", VIEW_COLUMNS, LINE
    )
    items = item_table(events.lazy().select("item_id").unique(maintain_order=True), views)
    log.info(
        "tmall: %d events, %d users, %d items from %s in %.1f s",
        events.height,
        events["user_id"].n_unique(),
        items.height,
        source,
        time.perf_counter() - started,
    )
    return LoadedDataset(
        name="tmall",
        events=events,
        items=items,
        views=list(VIEW_COLUMNS),
        n_bad_rows=0,
        source_files=[source],
    )
