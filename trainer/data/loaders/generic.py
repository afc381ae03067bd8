"""Any behaviour log given as an events file plus an optional items file, CSV or Parquet (by extension),
with a mapping from its column names to the canonical ones.

CSV files are read as text, so ids keep their exact spelling (``007`` stays ``007``); Parquet columns keep
their stored types and ids are turned into strings. Line numbers in errors count the CSV header as line 1;
for Parquet they are row numbers (1-based, no header).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import polars as pl

from trainer.data.loaders.common import add_unlisted_items, polars_reason
from trainer.data.schema import ITEM_VIEW, DataFormatError, LoadedDataset

log = logging.getLogger(__name__)

CSV_SUFFIXES = {".csv"}
PARQUET_SUFFIXES = {".parquet", ".pq"}


def _read_table(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if suffix in CSV_SUFFIXES:
            return pl.read_csv(path, infer_schema=False, raise_if_empty=True)
        if suffix in PARQUET_SUFFIXES:
            return pl.read_parquet(path)
    except pl.exceptions.PolarsError as exc:
        raise DataFormatError(path, f"cannot be read: {polars_reason(exc)}") from exc
    raise DataFormatError(path, f"unsupported file type {suffix!r}; expected .csv, .parquet or .pq")


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() in CSV_SUFFIXES


def _require_columns(path: Path, frame: pl.DataFrame, mapping: dict[str, str]) -> None:
    """``mapping``: role (e.g. ``user_col``) -> column name expected in the file."""
    for role, column in mapping.items():
        if column not in frame.columns:
            raise DataFormatError(
                path, f"column {column!r} ({role}) not found; columns present: {', '.join(frame.columns)}"
            )


def _raise_at(path: Path, frame: pl.DataFrame, bad: pl.Series, problem: str, column: str) -> None:
    """Raise for the first row where ``bad`` holds, naming its line (CSV) or row (Parquet) and value."""
    if not bad.any():
        return
    index = int(bad.arg_true()[0])
    value = frame[column][index]
    if _is_csv(path):
        raise DataFormatError(path, f"{problem}: {value!r}", index + 2)
    raise DataFormatError(path, f"row {index + 1}: {problem}: {value!r}")


def _as_id(path: Path, frame: pl.DataFrame, column: str) -> pl.Series:
    """A non-empty string id column."""
    series = frame[column]
    if series.dtype.is_float():
        # Floats usually come from ids with missing values in a pandas-written file; 12.0 is not "12".
        raise DataFormatError(path, f"id column {column!r} is {series.dtype}; store ids as integers or text")
    series = series.cast(pl.Utf8)
    _raise_at(path, frame, (series.is_null() | (series == "")).fill_null(True), f"{column} is empty", column)
    return series


UNIX_SECONDS = "unix"
UNIX_MILLISECONDS = "unix_ms"


def _as_timestamp(path: Path, frame: pl.DataFrame, column: str, time_format: str | None) -> pl.Series:
    series = frame[column]
    if time_format == UNIX_MILLISECONDS:
        return _as_integer_seconds(path, frame, column, "integer Unix milliseconds") // 1000
    if time_format is not None and time_format != UNIX_SECONDS:
        if series.dtype != pl.Utf8:
            raise DataFormatError(
                path, f"time column {column!r} is {series.dtype}; time_format applies to text times"
            )
        parsed = series.str.strptime(pl.Datetime("us"), time_format, strict=False)
        _raise_at(
            path, frame, parsed.is_null(), f"{column} does not match time format {time_format!r}", column
        )
        if parsed.dtype.time_zone is not None:  # type: ignore[union-attr]
            parsed = parsed.dt.convert_time_zone("UTC")
        # Naive times are taken as UTC.
        return parsed.dt.epoch("s").cast(pl.Int64)
    if isinstance(series.dtype, pl.Datetime):
        return series.dt.epoch("s").cast(pl.Int64)
    if series.dtype == pl.Date:
        return series.cast(pl.Int64) * 86_400
    return _as_integer_seconds(path, frame, column, "integer Unix seconds")


def _as_integer_seconds(path: Path, frame: pl.DataFrame, column: str, what: str) -> pl.Series:
    series = frame[column]
    if series.dtype.is_integer():
        values = series.cast(pl.Int64)
    elif series.dtype == pl.Utf8:
        values = series.cast(pl.Int64, strict=False)
    else:
        raise DataFormatError(
            path, f"time column {column!r} is {series.dtype}; expected {what} or a time_format"
        )
    _raise_at(path, frame, values.is_null(), f"{column} is not {what}", column)
    return values


def _as_float(path: Path, frame: pl.DataFrame, column: str) -> pl.Series:
    """Float64; empty values are allowed (null), anything else must be a number."""
    series = frame[column]
    numbers = series.cast(pl.Float64, strict=False)
    given = series.is_not_null() & (series.cast(pl.Utf8) != "")
    _raise_at(path, frame, (given & numbers.is_null()).fill_null(False), f"{column} is not a number", column)
    return numbers


def _as_text(frame: pl.DataFrame, column: str) -> pl.Series:
    """Utf8, an empty string meaning no value."""
    text = pl.col(column).cast(pl.Utf8)
    return frame.select(pl.when(text == "").then(None).otherwise(text)).to_series()


def load_generic(
    events_path: Path | str,
    items_path: Path | str | None = None,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    time_format: str | None = None,
    rating_col: str | None = None,
    dwell_col: str | None = None,
    action_col: str | None = None,
    session_col: str | None = None,
    view_cols: list[str] | None = None,
    item_id_col: str = "item_id",
) -> LoadedDataset:
    """Load a behaviour log in a user's own layout.

    Parameters
    ----------
    events_path
        One row per behaviour (CSV with a header, or Parquet), in the order the behaviours happened within
        each user; row order breaks timestamp ties.
    items_path
        Optional item side information: one row per item, an id column and attribute columns, each
        attribute column becoming one side-information view of the paper (category, shop, brand, ...).
        Without it there are no side-information views, only the item view.
    user_col, item_col, time_col
        Columns of the events file holding the user, the item and the time of the behaviour.
    time_format
        None or ``"unix"``: ``time_col`` holds integer Unix seconds (Parquet datetimes and dates are also
        accepted); ``"unix_ms"``: integer Unix milliseconds. Otherwise a ``strptime`` format such as
        ``"%Y-%m-%d %H:%M:%S"``; times without a zone are taken as UTC.
    rating_col, dwell_col, action_col, session_col
        Optional event columns: explicit rating, dwell time in seconds (the paper's signal for cutting
        sessions and weighting), behaviour type (click, buy, ...), and an explicit app-session id (enables
        the paper's session-merge rule).
    view_cols
        Columns of the items file to use as views; default every column but ``item_id_col``.
    item_id_col
        Item id column of the items file. When the items file has no such column but has ``item_col``,
        that one is used (the same name in both files).
    """
    started = time.perf_counter()
    events_path = Path(events_path)
    raw = _read_table(events_path)
    optional = {
        "rating_col": rating_col,
        "dwell_col": dwell_col,
        "action_col": action_col,
        "session_col": session_col,
    }
    mapping = {"user_col": user_col, "item_col": item_col, "time_col": time_col}
    mapping |= {role: col for role, col in optional.items() if col is not None}
    _require_columns(events_path, raw, mapping)
    if raw.height == 0:
        raise DataFormatError(events_path, "holds no events")

    columns: dict[str, pl.Series] = {
        "user_id": _as_id(events_path, raw, user_col),
        "item_id": _as_id(events_path, raw, item_col),
        "timestamp": _as_timestamp(events_path, raw, time_col, time_format),
    }
    if rating_col is not None:
        columns["rating"] = _as_float(events_path, raw, rating_col)
    if dwell_col is not None:
        columns["dwell_seconds"] = _as_float(events_path, raw, dwell_col)
    if action_col is not None:
        columns["action"] = _as_text(raw, action_col)
    if session_col is not None:
        columns["app_session"] = _as_text(raw, session_col)
    events = pl.DataFrame([s.alias(name) for name, s in columns.items()])

    sources = [events_path]
    if items_path is None:
        if view_cols:
            raise ValueError("view_cols name columns of the items file, but no items_path was given")
        items, views = events.select("item_id").unique(maintain_order=True), []
    else:
        items_path = Path(items_path)
        sources.append(items_path)
        items, views = _items(items_path, item_id_col, item_col, view_cols)
        items = add_unlisted_items(items, events, items_path)

    log.info(
        "generic: %d events, %d users, %d items, views %s from %s in %.1f s",
        events.height,
        events["user_id"].n_unique(),
        items.height,
        views,
        events_path,
        time.perf_counter() - started,
    )
    return LoadedDataset(name="generic", events=events, items=items, views=views, source_files=sources)


def _items(
    path: Path, item_id_col: str, item_col: str, view_cols: list[str] | None
) -> tuple[pl.DataFrame, list[str]]:
    raw = _read_table(path)
    if item_id_col not in raw.columns and item_col in raw.columns:
        item_id_col = item_col
    _require_columns(path, raw, {"item_id_col": item_id_col})
    views = [c for c in raw.columns if c != item_id_col] if view_cols is None else list(view_cols)
    _require_columns(path, raw, {f"view_cols[{i}]": c for i, c in enumerate(views)})
    for view in views:
        if view in (ITEM_VIEW, "item_id") or view == item_id_col:
            raise DataFormatError(
                path, f"column {view!r} cannot be a view: the name is taken by the item view"
            )
    item_ids = _as_id(path, raw, item_id_col)
    _raise_at(
        path,
        raw,
        item_ids.is_duplicated() & ~item_ids.is_first_distinct(),
        f"{item_id_col} appears a second time",
        item_id_col,
    )
    items = pl.DataFrame([item_ids.alias("item_id"), *[_as_text(raw, v).alias(v) for v in views]])
    return items, views
