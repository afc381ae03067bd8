"""Taobao user behaviour log ``UserBehavior.csv`` (Alibaba Tianchi dataset 649).

Format (comma-separated, no header)::

    user_id,item_id,category_id,behavior_type,timestamp
    1,2268318,2520377,pv,1511544070

``behavior_type`` is one of ``pv`` (page view), ``buy``, ``cart``, ``fav``; the value is kept as the
event's ``action``. ``timestamp`` is Unix seconds. The only view is ``category``: each item gets the
category it carries most often (ties: the one seen first).

The public file has about 100 million rows and ends with a truncated line, so rows that are incomplete or
unparsable are skipped and counted (``n_bad_rows``); only when more than ``max_bad_fraction`` of the rows
are bad is the file rejected, naming its first bad line. The file is scanned lazily with polars' streaming
engine (three passes: validation figures, events, item categories), so memory stays near the size of the
events table itself.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import polars as pl

from trainer.data.loaders.common import (
    LINE,
    PROBLEM,
    collect,
    field_count_problem,
    item_table,
    most_frequent,
    not_int64,
    not_integer,
    polars_reason,
    problem_column,
    scan_lines,
    split_fields,
    with_line_text,
)
from trainer.data.schema import DataFormatError, LoadedDataset

log = logging.getLogger(__name__)

COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
BEHAVIOURS = ["pv", "buy", "cart", "fav"]
DEFAULT_MAX_BAD_FRACTION = 0.01
FILE_NAME = "UserBehavior.csv"


def find_behaviour_file(path: Path) -> Path:
    """``path`` when it is a file, else ``UserBehavior.csv`` in the directory ``path``."""
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected the Taobao {FILE_NAME})")
    return path


def _parsed(source: Path) -> pl.LazyFrame:
    checks = [
        field_count_problem(len(COLUMNS), "comma"),
        not_integer("user_id"),
        not_integer("item_id"),
        not_integer("category_id"),
        (
            ~pl.col("behavior_type").is_in(BEHAVIOURS).fill_null(False),
            pl.format(
                "behavior_type '{}' is not one of " + ", ".join(BEHAVIOURS),
                pl.col("behavior_type").fill_null(""),
            ),
        ),
        not_int64("timestamp"),
    ]
    return (
        scan_lines(source, skip_header=False)
        .with_columns(split_fields(",", COLUMNS))
        .with_columns(problem_column(checks))
    )


def load_taobao(path: Path | str, *, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> LoadedDataset:
    """Load the Taobao ``UserBehavior.csv`` log.

    Parameters
    ----------
    path
        ``UserBehavior.csv`` or a directory holding it.
    max_bad_fraction
        Largest tolerated share of incomplete or unparsable rows (default 0.01, i.e. 1%); such rows are
        skipped and counted in ``n_bad_rows``. Above it the file is taken to be something else and rejected.
    """
    started = time.perf_counter()
    source = find_behaviour_file(Path(path))
    parsed = _parsed(source)
    bad = pl.col(PROBLEM).is_not_null()
    try:
        # One streaming pass for the figures and the first bad row: nothing per row is kept.
        n_rows, n_bad, line, problem = collect(
            parsed.select(
                pl.len().alias("rows"),
                bad.sum().alias("bad"),
                pl.col(LINE).filter(bad).min().alias("line"),
                pl.col(PROBLEM).filter(bad).sort_by(pl.col(LINE).filter(bad)).first().alias("problem"),
            )
        ).row(0)
        if n_rows == 0:
            raise DataFormatError(source, "file is empty")
        if n_bad:
            if n_bad > max_bad_fraction * n_rows:
                raise DataFormatError(
                    source,
                    f"{n_bad} of {n_rows} rows ({n_bad / n_rows:.2%}) are incomplete or unparsable, more "
                    f"than the {max_bad_fraction:.2%} tolerated; first bad row: "
                    + with_line_text(source, line, problem),
                    line,
                )
            log.warning(
                "taobao: skipping %d incomplete or unparsable rows of %d (first: line %d, %s)",
                n_bad,
                n_rows,
                line,
                problem,
            )
        good = parsed.filter(~bad)
        events = collect(
            good.select(
                "user_id",
                "item_id",
                pl.col("timestamp").cast(pl.Int64),
                pl.col("behavior_type").alias("action"),
            )
        )
        views = most_frequent(
            good.select("item_id", "category_id", LINE), "item_id", {"category": "category_id"}, LINE
        )
        items = item_table(events.lazy().select("item_id").unique(maintain_order=True), views)
    except pl.exceptions.PolarsError as exc:
        raise DataFormatError(
            source, f"cannot be read as a Taobao behaviour log: {polars_reason(exc)}"
        ) from exc
    log.info(
        "taobao: %d events (%d bad rows skipped), %d items from %s in %.1f s",
        events.height,
        n_bad,
        items.height,
        source,
        time.perf_counter() - started,
    )
    return LoadedDataset(
        name="taobao",
        events=events,
        items=items,
        views=["category"],
        n_bad_rows=n_bad,
        source_files=[source],
    )
