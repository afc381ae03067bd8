"""The canonical form every loader produces and every later stage reads.

*events*: one row per behaviour, columns

- ``user_id`` (Utf8), ``item_id`` (Utf8), ``timestamp`` (Int64, Unix seconds; day-level logs use
  midnight UTC of that day),
- optional ``dwell_seconds`` (Float64), ``rating`` (Float64), ``action`` (Utf8),
  ``app_session`` (Utf8: an explicit app-session id, which enables the paper's merge rule).

Row order is the publisher's row order; it breaks timestamp ties.

*items*: one row per item, ``item_id`` (Utf8) plus one Utf8 column per side-information view
(``category``, ``shop``, ``brand``, ``decade``, ...); null means the item has no attribute in that view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

EVENT_REQUIRED: dict[str, type[pl.DataType]] = {
    "user_id": pl.Utf8,
    "item_id": pl.Utf8,
    "timestamp": pl.Int64,
}
EVENT_OPTIONAL: dict[str, type[pl.DataType]] = {
    "dwell_seconds": pl.Float64,
    "rating": pl.Float64,
    "action": pl.Utf8,
    "app_session": pl.Utf8,
}
ITEM_VIEW = "item"


class DataFormatError(ValueError):
    """Bad input data. The message names the file, the line (1-based, header = line 1) and the problem."""

    def __init__(self, path: Path | str, problem: str, line: int | None = None) -> None:
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.line = line
        self.problem = problem


@dataclass
class LoadedDataset:
    """A dataset in canonical form, as returned by every loader."""

    name: str
    events: pl.DataFrame
    items: pl.DataFrame
    views: list[str]
    """Side-information views (column names of ``items`` besides ``item_id``), in a stable order."""
    n_bad_rows: int = 0
    source_files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        validate_events(self.events)
        validate_items(self.items, self.views)


def validate_events(events: pl.DataFrame) -> None:
    for col, dtype in EVENT_REQUIRED.items():
        if col not in events.columns:
            raise ValueError(f"events table lacks required column {col!r}")
        if events.schema[col] != dtype:
            raise ValueError(f"events column {col!r} is {events.schema[col]}, expected {dtype}")
    for col, dtype in EVENT_OPTIONAL.items():
        if col in events.columns and events.schema[col] != dtype:
            raise ValueError(f"events column {col!r} is {events.schema[col]}, expected {dtype}")


def validate_items(items: pl.DataFrame, views: list[str]) -> None:
    if "item_id" not in items.columns or items.schema["item_id"] != pl.Utf8:
        raise ValueError("items table needs a Utf8 'item_id' column")
    for view in views:
        if view == ITEM_VIEW:
            raise ValueError(f"{ITEM_VIEW!r} is the instance view and cannot be a side-information column")
        if view not in items.columns:
            raise ValueError(f"items table lacks the column of view {view!r}")
        if items.schema[view] != pl.Utf8:
            raise ValueError(f"items column {view!r} is {items.schema[view]}, expected Utf8")
    if items["item_id"].is_duplicated().any():
        raise ValueError("items table has duplicate item_id values")
