"""MovieLens rating data (GroupLens), in each of the layouts GroupLens has published.

The layout is recognised from the files in the directory:

- ``ratings.csv`` + ``movies.csv`` (ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m): comma-separated
  with a header, ``userId,movieId,rating,timestamp`` and ``movieId,title,genres`` (titles with commas are
  quoted), UTF-8.
- ``ratings.dat`` + ``movies.dat`` (ml-1m, ml-10m): ``::``-separated, no header,
  ``UserID::MovieID::Rating::Timestamp`` and ``MovieID::Title::Genres``; ml-1m titles are latin-1.
- ``u.data`` + ``u.item`` (ml-100k): ``u.data`` is tab-separated ``user item rating timestamp``; ``u.item``
  is ``|``-separated ``id|title|release date|video release date|IMDb URL`` followed by 19 genre flags
  (latin-1).

Every rating becomes an event with its ``rating``. The items table holds every movie of the movie file.
Views:

- ``category``: the movie's genre combination as published (``Adventure|Children|Fantasy``), treated as
  one attribute value, so two movies share a category node only when they have the same genre set. For
  ml-100k the flagged genre names are joined with ``|`` in ``u.genre`` order. ``(no genres listed)`` and a
  movie without any flag have no category.
- ``decade``: decade of release (``1990s``), from the title's trailing ``(YYYY)``, or from the release date
  for ml-100k; movies without a year have no decade.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import polars as pl

from trainer.data.loaders.common import (
    LINE,
    add_unlisted_items,
    check_header,
    collect_strict,
    decode_text,
    field_count_problem,
    lines_from_text,
    not_finite_float,
    not_int64,
    not_integer,
    polars_reason,
    problem_column,
    raise_first_problem,
    read_header,
    scan_lines,
    split_fields,
    with_line_text,
)
from trainer.data.schema import DataFormatError, LoadedDataset

log = logging.getLogger(__name__)

VIEWS = ["category", "decade"]
NO_GENRES = "(no genres listed)"
ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
# Field names as each layout's documentation calls them, so that errors speak the publisher's language.
RATING_FIELDS = {
    "csv": ["userId", "movieId", "rating", "timestamp"],
    "dat": ["UserID", "MovieID", "Rating", "Timestamp"],
    "100k": ["user id", "item id", "rating", "timestamp"],
}
MOVIE_ID = {"csv": "movieId", "dat": "MovieID", "100k": "movie id"}

# Layout name -> (ratings file, movies file).
LAYOUTS: dict[str, tuple[str, str]] = {
    "csv": ("ratings.csv", "movies.csv"),
    "dat": ("ratings.dat", "movies.dat"),
    "100k": ("u.data", "u.item"),
}


def detect_layout(path: Path) -> tuple[str, Path]:
    """(layout, directory) of a MovieLens directory; a directory holding a single extracted MovieLens
    folder (as a download cache does) is looked into."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory (expected an extracted MovieLens folder)")
    for layout, (ratings, movies) in LAYOUTS.items():
        if (path / ratings).is_file() and (path / movies).is_file():
            return layout, path
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    if len(subdirs) == 1:
        return detect_layout(subdirs[0])
    present = ", ".join(sorted(p.name for p in path.iterdir())[:20]) or "nothing"
    raise DataFormatError(
        path,
        "not a MovieLens folder: expected ratings.csv + movies.csv, ratings.dat + movies.dat or "
        f"u.data + u.item; found {present}",
    )


def load_movielens(
    path: Path | str | None = None,
    *,
    variant: str = "ml-latest-small",
    cache_dir: Path | str | None = None,
) -> LoadedDataset:
    """Load a MovieLens dataset.

    Parameters
    ----------
    path
        An extracted MovieLens folder (any GroupLens layout). When None, ``variant`` is downloaded from
        GroupLens into the cache (see :mod:`trainer.data.download`) and loaded from there.
    variant
        GroupLens name of the dataset to download when ``path`` is None (``ml-latest-small``, ``ml-100k``,
        ``ml-1m``, ``ml-10m``, ``ml-20m``, ``ml-25m``, ``ml-32m``, ``ml-latest``).
    cache_dir
        Download cache; default ``$M2GRL_CACHE_DIR`` or ``~/.cache/m2grl``.
    """
    started = time.perf_counter()
    if path is None:
        from trainer.data.download import download_movielens

        path = download_movielens(variant, cache_dir=cache_dir)
    layout, folder = detect_layout(Path(path))
    ratings_file, movies_file = (folder / name for name in LAYOUTS[layout])
    if layout == "csv":
        events = _ratings(ratings_file, ",", RATING_FIELDS[layout], header=True)
        items = _movies_csv(movies_file)
    elif layout == "dat":
        events = _ratings(ratings_file, "::", RATING_FIELDS[layout], header=False)
        items = _movies_dat(movies_file)
    else:
        events = _ratings(ratings_file, "\t", RATING_FIELDS[layout], header=False)
        items = _movies_100k(movies_file)
    items = add_unlisted_items(items, events, movies_file)
    log.info(
        "movielens (%s layout, %s): %d ratings, %d users, %d movies in %.1f s",
        layout,
        folder,
        events.height,
        events["user_id"].n_unique(),
        items.height,
        time.perf_counter() - started,
    )
    return LoadedDataset(
        name="movielens",
        events=events,
        items=items,
        views=list(VIEWS),
        n_bad_rows=0,
        source_files=[ratings_file, movies_file],
    )


def _separator_name(separator: str) -> str:
    return {",": "comma", "::": "'::'", "\t": "tab", "|": "'|'"}[separator]


def _ratings(path: Path, separator: str, fields: list[str], *, header: bool) -> pl.DataFrame:
    """``fields``: names of user, movie, rating and timestamp, as the layout's documentation has them."""
    if header:
        check_header(path, read_header(path), separator, fields)
    user, movie, rating, timestamp = fields
    checks = [
        field_count_problem(len(fields), _separator_name(separator)),
        not_integer(user),
        not_integer(movie),
        not_finite_float(rating),
        not_int64(timestamp),
    ]
    checked = (
        scan_lines(path, skip_header=header)
        .with_columns(split_fields(separator, fields))
        .with_columns(problem_column(checks))
    )
    output = [
        pl.col(user).alias("user_id"),
        pl.col(movie).alias("item_id"),
        pl.col(timestamp).cast(pl.Int64, strict=False).alias("timestamp"),
        pl.col(rating).cast(pl.Float64, strict=False).alias("rating"),
    ]
    events = collect_strict(path, checked, output, "MovieLens ratings")
    if events.height == 0:
        raise DataFormatError(path, "holds no ratings")
    return events


def _decade_from_year(year: pl.Expr) -> pl.Expr:
    return pl.format("{}s", (year.cast(pl.Int64) // 10) * 10)


def _decade_from_title(title: pl.Expr) -> pl.Expr:
    # Some ml-latest titles end in a space after the year ("... (1999) ").
    return _decade_from_year(title.str.extract(r"\((\d{4})\)\s*$", 1))


def _category_from_genres(genres: pl.Expr) -> pl.Expr:
    return pl.when((genres == NO_GENRES) | (genres == "")).then(None).otherwise(genres)


def _finish_items(
    path: Path, frame: pl.DataFrame, movie_id: str, checks: list[tuple[pl.Expr, pl.Expr]]
) -> pl.DataFrame:
    """Raise on the first bad or duplicate movie line, then keep item_id and the views."""
    frame = frame.with_columns(problem_column(checks)).rename({movie_id: "item_id"})
    raise_first_problem(path, frame)
    duplicate = frame.filter(pl.col("item_id").is_duplicated() & ~pl.col("item_id").is_first_distinct())
    if duplicate.height:
        line, item = duplicate.select(LINE, "item_id").row(0)
        raise DataFormatError(path, f"movie id {item} appears a second time", line)
    return frame.select("item_id", *VIEWS)


def _movies_csv(path: Path) -> pl.DataFrame:
    header = ["movieId", "title", "genres"]
    check_header(path, read_header(path), ",", header)
    extra = "_extra"
    try:
        # The CSV parser (not line splitting) because titles with commas are quoted. An extra column
        # catches rows with too many fields; blank lines come back as all-null rows, so row i is line i + 2.
        frame = pl.read_csv(
            path,
            has_header=False,
            skip_lines=1,
            schema={"movieId": pl.Utf8, "title": pl.Utf8, "genres": pl.Utf8, extra: pl.Utf8},
            truncate_ragged_lines=True,
            missing_columns="insert",
            encoding="utf8-lossy",
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError as exc:
        raise _locate_csv_error(path, len(header), exc) from exc
    frame = frame.with_row_index(LINE, offset=2).with_columns(
        pl.col(LINE).cast(pl.Int64),
        _category_from_genres(pl.col("genres")).alias("category"),
        _decade_from_title(pl.col("title")).alias("decade"),
    )
    fields = (
        pl.when(pl.col(extra).is_not_null())
        .then(pl.lit("more than 3 comma-separated fields"))
        .when(pl.col("genres").is_null())
        .then(pl.lit("expected 3 comma-separated fields movieId,title,genres; genres is missing or empty"))
    )
    multiline = (
        pl.col("title").str.contains("\n").fill_null(False),
        pl.lit("quoted title runs over several lines (unbalanced quote?)"),
    )
    checks = [(fields.is_not_null(), fields), multiline, not_integer("movieId")]
    return _finish_items(path, frame, "movieId", checks)


def _locate_csv_error(path: Path, n_fields: int, exc: Exception) -> DataFormatError:
    """polars gives no line for a CSV it cannot parse (e.g. an unbalanced quote): find it with the csv
    module, which reports the line each record starts on. Error path only."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        start = 1
        for record in reader:
            if len(record) != n_fields or any("\n" in f or "\r" in f for f in record):
                problem = "malformed CSV record (unbalanced quote or wrong number of fields)"
                return DataFormatError(path, with_line_text(path, start, problem), start)
            start = reader.line_num + 1
    return DataFormatError(path, f"cannot be parsed as CSV: {polars_reason(exc)}")


def _movies_dat(path: Path) -> pl.DataFrame:
    text, encoding = decode_text(path)
    log.debug("%s decoded as %s", path, encoding)
    frame = (
        lines_from_text(text, skip_header=False)
        .with_columns(split_fields("::", ["MovieID", "title", "genres"]))
        .with_columns(
            _category_from_genres(pl.col("genres")).alias("category"),
            _decade_from_title(pl.col("title")).alias("decade"),
        )
    )
    checks = [field_count_problem(3, "'::'"), not_integer("MovieID")]
    return _finish_items(path, frame, "MovieID", checks)


def _movies_100k(path: Path) -> pl.DataFrame:
    text, encoding = decode_text(path)
    log.debug("%s decoded as %s", path, encoding)
    flags = [f"_g{i}" for i in range(len(ML100K_GENRES))]
    names = ["movie id", "title", "release_date", "video_release_date", "url", *flags]
    release = pl.col("release_date").str.strptime(pl.Date, "%d-%b-%Y", strict=False)
    genre_names = pl.concat_list(
        [pl.when(pl.col(f) == "1").then(pl.lit(g)) for f, g in zip(flags, ML100K_GENRES, strict=True)]
    ).list.drop_nulls()
    frame = (
        lines_from_text(text, skip_header=False)
        .with_columns(split_fields("|", names))
        .with_columns(
            pl.when(genre_names.list.len() > 0).then(genre_names.list.join("|")).alias("category"),
            _decade_from_year(release.dt.year()).alias("decade"),
        )
    )
    bad_flag = pl.any_horizontal([~pl.col(f).is_in(["0", "1"]).fill_null(False) for f in flags])
    checks = [
        field_count_problem(len(names), "'|'"),
        not_integer("movie id"),
        (
            (pl.col("release_date").fill_null("") != "") & release.is_null(),
            pl.format("release date '{}' is not of the form 01-Jan-1995", pl.col("release_date")),
        ),
        (bad_flag, pl.lit("genre flags must be 0 or 1")),
    ]
    return _finish_items(path, frame, "movie id", checks)
