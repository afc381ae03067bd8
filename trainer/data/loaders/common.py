"""Shared machinery of the loaders: strict line-based parsing with exact line numbers, and the
most-frequent-value rule that turns per-event attributes into one attribute per item.

Delimited publisher files are read as one string per physical line (polars keeps blank lines as null
rows, so row ``i`` of the data is file line ``i + first_line``), split with vectorised string
expressions, and every row gets a ``_problem`` string that is null when the row is well formed. A loader
then either raises on the first problem (strict formats) or counts and skips problem rows (Taobao).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from trainer.data.schema import DataFormatError

log = logging.getLogger(__name__)

LINE = "_line"
RAW = "_raw"
NFIELDS = "_nfields"
PROBLEM = "_problem"

# A byte that never occurs in the publishers' text files: using it as the CSV separator (with quoting off)
# makes polars hand back whole lines.
_LINE_SEPARATOR = "\x1f"

INTEGER_PATTERN = r"^\d+$"
"""Publisher ids: plain non-negative decimal integers, as written by every format handled here."""


def scan_lines(path: Path, *, skip_header: bool) -> pl.LazyFrame:
    """Lazily read ``path`` as lines: columns ``_line`` (1-based file line, Int64) and ``_raw`` (Utf8,
    null for a blank line, trailing CR removed). Invalid UTF-8 bytes become U+FFFD so that a corrupt row
    fails validation on its own line instead of aborting the read without a position."""
    return pl.scan_csv(
        path,
        has_header=False,
        separator=_LINE_SEPARATOR,
        quote_char=None,
        schema={RAW: pl.Utf8},
        skip_lines=1 if skip_header else 0,
        encoding="utf8-lossy",
        raise_if_empty=False,
        row_index_name=LINE,
        row_index_offset=2 if skip_header else 1,
    ).with_columns(pl.col(LINE).cast(pl.Int64))


def lines_from_text(text: str, *, skip_header: bool) -> pl.DataFrame:
    """Like :func:`scan_lines`, for text already decoded in Python (files in latin-1, which polars cannot
    decode). Only used for the small movie tables."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another
    first = 1
    if skip_header:
        lines, first = lines[1:], 2
    return (
        pl.DataFrame({RAW: lines}, schema={RAW: pl.Utf8})
        .with_row_index(LINE, offset=first)
        .with_columns(pl.col(LINE).cast(pl.Int64), pl.col(RAW).str.strip_suffix("\r"))
        .with_columns(pl.when(pl.col(RAW) == "").then(None).otherwise(pl.col(RAW)).alias(RAW))
    )


def split_fields(separator: str, names: Sequence[str]) -> list[pl.Expr]:
    """Expressions adding ``_nfields`` and one Utf8 column per name (null where the line is too short)."""
    parts = pl.col(RAW).str.split_exact(separator, len(names) - 1)
    return [
        (pl.col(RAW).str.count_matches(separator, literal=True) + 1).cast(pl.Int64).alias(NFIELDS),
        *[parts.struct.field(f"field_{i}").alias(name) for i, name in enumerate(names)],
    ]


def field_count_problem(n_expected: int, separator_name: str) -> tuple[pl.Expr, pl.Expr]:
    """(bad, message) for a line that is blank or has the wrong number of fields."""
    bad = pl.col(RAW).is_null() | (pl.col(NFIELDS) != n_expected)
    message = (
        pl.when(pl.col(RAW).is_null())
        .then(pl.lit("blank line"))
        .otherwise(
            pl.format(
                f"expected {n_expected} {separator_name}-separated fields, found {{}}",
                pl.col(NFIELDS),
            )
        )
    )
    return bad, message


def not_integer(col: str, *, nullable: bool = False) -> tuple[pl.Expr, pl.Expr]:
    """(bad, message) for a field that must be a non-negative integer id (or empty when ``nullable``)."""
    value = pl.col(col)
    is_int = value.str.contains(INTEGER_PATTERN).fill_null(False)
    bad = (value.fill_null("") != "") & ~is_int if nullable else ~is_int
    return bad, pl.format(f"{col} {{}} is not an integer", _quoted(value))


def not_int64(col: str) -> tuple[pl.Expr, pl.Expr]:
    """(bad, message) for a field that must parse as a signed 64-bit integer (timestamps)."""
    bad = pl.col(col).cast(pl.Int64, strict=False).is_null()
    return bad, pl.format(f"{col} {{}} is not an integer", _quoted(pl.col(col)))


def not_finite_float(col: str) -> tuple[pl.Expr, pl.Expr]:
    """(bad, message) for a field that must be a finite number (ratings)."""
    bad = ~pl.col(col).cast(pl.Float64, strict=False).is_finite().fill_null(False)
    return bad, pl.format(f"{col} {{}} is not a number", _quoted(pl.col(col)))


def _quoted(value: pl.Expr) -> pl.Expr:
    return pl.concat_str(pl.lit("'"), value.fill_null(""), pl.lit("'"))


def problem_column(checks: Sequence[tuple[pl.Expr, pl.Expr]]) -> pl.Expr:
    """``_problem``: the message of the first failing check, in order, or null for a good row. Order the
    checks so that a structural failure (field count) is reported before the field checks it causes."""
    if not checks:
        return pl.lit(None, dtype=pl.Utf8).alias(PROBLEM)
    return pl.coalesce([pl.when(bad).then(message) for bad, message in checks]).alias(PROBLEM)


def first_problem(checked: pl.LazyFrame) -> tuple[int, str] | None:
    """(line, problem) of the earliest row of ``checked`` whose ``_problem`` is set, or None. A streaming
    pass that keeps only the answer, so that validating a large file costs no memory."""
    bad = collect(
        checked.filter(pl.col(PROBLEM).is_not_null())
        .select(LINE, PROBLEM)
        .select(pl.all().sort_by(LINE).first())  # by line, not by arrival order of parallel chunks
    )
    return None if bad.height == 0 or bad[LINE][0] is None else bad.row(0)


def raise_first_problem(path: Path, checked: pl.LazyFrame | pl.DataFrame) -> None:
    """Raise DataFormatError for the earliest row of ``checked`` whose ``_problem`` is set."""
    found = first_problem(checked.lazy())
    if found is not None:
        line, problem = found
        raise DataFormatError(path, with_line_text(path, line, problem), line)


def collect_strict(
    path: Path, checked: pl.LazyFrame, output: Sequence[pl.Expr | str], what: str
) -> pl.DataFrame:
    """Collect ``output`` from ``checked``, raising DataFormatError on its first problem row. The pass that
    collects keeps one bit per row saying whether it is bad; only when one is does a second pass find the
    first bad line and its message. ``what`` names the expected content for a file polars cannot read."""
    bad = "_bad"
    try:
        frame = collect(checked.select(*output, pl.col(PROBLEM).is_not_null().alias(bad)))
        if frame[bad].any():
            raise_first_problem(path, checked)
    except pl.exceptions.PolarsError as exc:
        raise DataFormatError(path, f"cannot be read as {what}: {polars_reason(exc)}") from exc
    return frame.drop(bad)


def polars_reason(exc: BaseException) -> str:
    """The first line of a polars error; the rest is a query plan and hints meant for polars users."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def with_line_text(path: Path, line: int, problem: str) -> str:
    """``problem`` followed by the offending line as it is in the file, to show what was read."""
    text = read_line(path, line)
    return problem if text is None else f"{problem}: {text!r}"


def read_line(path: Path, line: int, limit: int = 200) -> str | None:
    """Line ``line`` (1-based) of ``path`` decoded leniently, cut to ``limit`` characters. Only called on
    the error path, so a linear scan is fine."""
    try:
        with open(path, "rb") as fh:
            raw = next(itertools.islice(fh, line - 1, None), None)
    except OSError:
        return None
    if raw is None:
        return None
    text = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


def read_header(path: Path) -> str:
    """The first line of ``path`` without BOM and line ending; DataFormatError when the file is empty."""
    with open(path, "rb") as fh:
        first = fh.readline()
    if not first:
        raise DataFormatError(path, "file is empty; expected a header line", 1)
    return first.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def check_header(path: Path, header: str, separator: str, expected: Sequence[str]) -> None:
    """The publisher's header, exactly (names and order)."""
    found = header.split(separator)
    if found != list(expected):
        raise DataFormatError(
            path, f"header is {separator.join(found)!r}, expected {separator.join(expected)!r}", 1
        )


def decode_text(path: Path) -> tuple[str, str]:
    """(text, encoding): UTF-8 when the bytes are valid UTF-8, else latin-1 (ml-1m and ml-100k movie
    titles are latin-1; every byte string decodes as latin-1, so this never fails)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").lstrip("\ufeff"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def collect(frame: pl.LazyFrame) -> pl.DataFrame:
    """Collect with the streaming engine, which keeps row order and bounds memory to the output."""
    return frame.collect(engine="streaming")


def most_frequent(
    frame: pl.LazyFrame, key: str, columns: dict[str, str], order: str
) -> dict[str, pl.LazyFrame]:
    """For each view (``columns``: view name -> column of ``frame``), a frame ``key, <view>`` holding the
    value that occurs most often among the rows of each key; ties go to the value seen first (smallest
    ``order``). Null values do not count; a key whose values are all null is absent.

    One streaming group-by over the distinct (key, values...) combinations, which are about as many as
    the keys, makes every view's counts; grouping once per view would pass over the rows once per view."""
    combos = collect(
        frame.group_by(key, *columns.values()).agg(pl.len().alias("_n"), pl.col(order).min().alias("_first"))
    ).lazy()
    return {
        view: combos.filter(pl.col(column).is_not_null())
        .group_by(key, column)
        .agg(pl.col("_n").sum(), pl.col("_first").min())
        .group_by(key)
        .agg(pl.col(column).sort_by(["_n", "_first"], descending=[True, False]).first().alias(view))
        for view, column in columns.items()
    }


def item_table(
    item_order: pl.LazyFrame, views: dict[str, pl.LazyFrame], *, key: str = "item_id"
) -> pl.DataFrame:
    """Items in first-seen order (``item_order``: one row per item, ordered), each view joined on."""
    table = item_order
    for view_frame in views.values():
        table = table.join(view_frame, on=key, how="left", maintain_order="left")
    return collect(table.select(key, *views))


def add_unlisted_items(items: pl.DataFrame, events: pl.DataFrame, items_file: Path) -> pl.DataFrame:
    """Append a row without attributes for every event item missing from the item file, so that every
    event's item is in the items table; warn, since publishers' files have none."""
    unlisted = events.select("item_id").unique(maintain_order=True).join(items, on="item_id", how="anti")
    if unlisted.height == 0:
        return items
    log.warning(
        "%d items of the events are not in %s (first: %s); they have no side information",
        unlisted.height,
        items_file,
        unlisted["item_id"][0],
    )
    return pl.concat([items, unlisted], how="diagonal")
