"""Dataset loaders: real ml-latest-small and Tmall sample, crafted files for every other format and for
the error paths, and the MovieLens download against a local HTTP server."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from trainer.data import download
from trainer.data.download import Archive, DownloadError, download_movielens
from trainer.data.loaders import LOADERS, load_dataset
from trainer.data.loaders.generic import load_generic
from trainer.data.loaders.movielens import load_movielens
from trainer.data.loaders.taobao import load_taobao
from trainer.data.loaders.tmall import load_tmall
from trainer.data.schema import DataFormatError


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _item_row(items: pl.DataFrame, item_id: str) -> dict:
    rows = items.filter(pl.col("item_id") == item_id).to_dicts()
    assert len(rows) == 1, item_id
    return rows[0]


def _midnight(month: int, day: int, year: int = 2014) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp())


# --------------------------------------------------------------------------- MovieLens, real data


def test_movielens_latest_small(ml_small_dir: Path) -> None:
    ds = load_movielens(ml_small_dir)
    ev, items = ds.events, ds.items
    assert ds.views == ["category", "decade"]
    assert ds.n_bad_rows == 0
    assert ev.height == 100_836
    assert ev["user_id"].n_unique() == 610
    assert ev["item_id"].n_unique() == 9724
    assert items.height == 9742
    assert ev.schema == pl.Schema(
        {"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64, "rating": pl.Float64}
    )
    assert _item_row(items, "1") == {
        "item_id": "1",
        "category": "Adventure|Animation|Children|Comedy|Fantasy",
        "decade": "1990s",
    }
    # A title that ends in a space after the year; one without a year; "(no genres listed)".
    assert _item_row(items, "27008")["decade"] == "1990s"
    assert _item_row(items, "40697") == {"item_id": "40697", "category": "Sci-Fi", "decade": None}
    assert _item_row(items, "143410")["category"] is None

    # Independent reading with the csv module: publisher row order and values are kept.
    with open(ml_small_dir / "ratings.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert ev["item_id"].to_list() == [r["movieId"] for r in rows]
    assert ev["timestamp"].to_list() == [int(r["timestamp"]) for r in rows]
    assert ev["rating"].to_list() == [float(r["rating"]) for r in rows]
    with open(ml_small_dir / "movies.csv", newline="", encoding="utf-8") as fh:
        movies = list(csv.DictReader(fh))
    assert items["item_id"].to_list() == [m["movieId"] for m in movies]
    expected_cat = [None if m["genres"] == "(no genres listed)" else m["genres"] for m in movies]
    assert items["category"].to_list() == expected_cat
    quoted = [m for m in movies if "," in m["title"]]
    assert quoted, "the file has quoted titles with commas"
    assert _item_row(items, quoted[0]["movieId"])["category"] == quoted[0]["genres"]


def test_registry_dispatch(ml_small_dir: Path) -> None:
    assert set(LOADERS) == {"movielens", "tmall", "taobao", "generic"}
    assert load_dataset("movielens", ml_small_dir).events.height == 100_836
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope", ml_small_dir)
    with pytest.raises(ValueError, match="options it takes: year"):
        load_dataset("tmall", ml_small_dir, yera=2015)
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("taobao", None)


# --------------------------------------------------------------------------- Tmall, real data


def _expected_modes(rows: list[dict[str, str]], column: str) -> dict[str, str | None]:
    """Most frequent non-empty value per item, ties to the first seen, computed row by row."""
    counts: dict[str, Counter[str]] = {}
    first_seen: dict[str, dict[str, int]] = {}
    for i, row in enumerate(rows):
        c = counts.setdefault(row["item_id"], Counter())
        f = first_seen.setdefault(row["item_id"], {})
        value = row[column]
        if value:
            c[value] += 1
            f.setdefault(value, i)
    return {
        item: (min(c, key=lambda v: (-c[v], first_seen[item][v])) if c else None)
        for item, c in counts.items()
    }


def test_tmall_sample(tmall_dir: Path) -> None:
    ds = load_tmall(tmall_dir)
    ev, items = ds.events, ds.items
    assert ds.views == ["category", "shop", "brand"]
    assert ev.height == 100_000
    assert ev["user_id"].n_unique() == 710
    assert items.height == 45_444
    assert ds.source_files[0].name == "user_log_format1_little.csv"
    assert ev.columns == ["user_id", "item_id", "timestamp", "action"]
    assert ev.row(0) == ("328862", "323294", _midnight(8, 29), "click")
    counts = dict(ev["action"].value_counts().iter_rows())
    assert counts == {"click": 88_033, "cart": 70, "buy": 6_928, "fav": 4_969}
    assert ev["timestamp"].min() == _midnight(5, 11)
    assert ev["timestamp"].max() == _midnight(11, 11)

    with open(tmall_dir / "user_log_format1_little.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert ev["item_id"].to_list() == [r["item_id"] for r in rows]
    got = {row["item_id"]: row for row in items.iter_rows(named=True)}
    for view, column in [("category", "cat_id"), ("shop", "seller_id"), ("brand", "brand_id")]:
        expected = _expected_modes(rows, column)
        assert {k: v[view] for k, v in got.items()} == expected, view

    # The rule matters on this file: an item whose category varies and whose most frequent category is
    # not the first one seen, and an item with tied categories.
    per_item: dict[str, list[str]] = {}
    for r in rows:
        per_item.setdefault(r["item_id"], []).append(r["cat_id"])
    cat_mode = _expected_modes(rows, "cat_id")
    overturned = [i for i, cats in per_item.items() if cat_mode[i] != cats[0]]
    assert overturned
    item = overturned[0]
    assert got[item]["category"] == Counter(per_item[item]).most_common(1)[0][0] != per_item[item][0]
    tied = [i for i, cats in per_item.items() if len(set(Counter(cats).values())) == 1 and len(set(cats)) > 1]
    assert tied and all(got[i]["category"] == per_item[i][0] for i in tied)
    # Items whose brand is always empty have no brand.
    never_branded = {r["item_id"] for r in rows} - {r["item_id"] for r in rows if r["brand_id"]}
    assert never_branded and all(got[i]["brand"] is None for i in never_branded)


# --------------------------------------------------------------------------- Tmall, crafted

TMALL_HEADER = "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"


def test_tmall_crafted_rules_and_year(tmp_path: Path) -> None:
    log = _write(
        tmp_path / "logs" / "user_log_format1_part.csv",
        TMALL_HEADER
        + "1,10,5,7,,0101,0\n"  # brand empty: does not count
        + "1,10,6,7,,1231,3\n"
        + "2,10,6,7,70,0229,2\n"  # 2016 is a leap year
        + "2,10,5,7,80,0301,1\n"
        + "2,11,9,8,,301,0\n",  # leading zero dropped (e.g. by a spreadsheet)
    )
    ds = load_tmall(log.parent, year=2016)  # the only user_log_format1*.csv in the folder
    assert ds.events["timestamp"].to_list() == [
        _midnight(1, 1, 2016),
        _midnight(12, 31, 2016),
        _midnight(2, 29, 2016),
        _midnight(3, 1, 2016),
        _midnight(3, 1, 2016),
    ]
    assert ds.events["action"].to_list() == ["click", "fav", "buy", "cart", "click"]
    assert ds.items.to_dicts() == [
        # category 5 and 6 tie (2 each): 5 was seen first; brand 70 and 80 tie once nulls are ignored.
        {"item_id": "10", "category": "5", "shop": "7", "brand": "70"},
        {"item_id": "11", "category": "9", "shop": "8", "brand": None},
    ]


@pytest.mark.parametrize(
    ("row", "line", "message"),
    [
        ("3,12,5,7,1,1332,0", 4, "time_stamp '1332' is not a valid mmdd day"),
        ("3,12,5,7,1,0230,0", 4, "time_stamp '0230'"),
        ("3,12,5,7,1,0230", 4, "expected 7 comma-separated fields, found 6"),
        ("3,x12,5,7,1,0101,0", 4, "item_id 'x12' is not an integer"),
        ("3,12,5,7,1,0101,4", 4, "action_type '4'"),
        ("", 4, "blank line"),
    ],
)
def test_tmall_bad_row_names_line(tmp_path: Path, row: str, line: int, message: str) -> None:
    path = _write(
        tmp_path / "user_log_format1.csv",
        TMALL_HEADER + "1,10,5,7,,0101,0\n2,11,5,7,3,0102,0\n" + row + "\n4,13,5,7,3,0103,0\n",
    )
    with pytest.raises(DataFormatError, match=message) as err:
        load_tmall(path)
    assert err.value.line == line
    assert err.value.path == path
    assert f"user_log_format1.csv, line {line}:" in str(err.value)


def test_tmall_bad_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "user_log_format1.csv", "user,item\n1,2\n")
    with pytest.raises(DataFormatError, match="header is 'user,item'") as err:
        load_tmall(path)
    assert err.value.line == 1


# --------------------------------------------------------------------------- MovieLens, crafted formats


def test_movielens_1m_dat_latin1(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    _write(folder / "ratings.dat", "1::2::5::978300760\n1::1::3::978302109\n2::2::4::978301968\n")
    _write(
        folder / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Misérables, Les (1995)::Drama|Musical\n"
        "3::Untitled::(no genres listed)\n",
        encoding="latin-1",
    )
    ds = load_movielens(tmp_path)  # a folder holding a single extracted dataset is looked into
    assert ds.events.rows() == [
        ("1", "2", 978300760, 5.0),
        ("1", "1", 978302109, 3.0),
        ("2", "2", 978301968, 4.0),
    ]
    assert ds.items.rows() == [
        ("1", "Animation|Children's|Comedy", "1990s"),
        ("2", "Drama|Musical", "1990s"),
        ("3", None, None),
    ]
    (folder / "ratings.dat").write_text("1::2::5::978300760\n1::1::3::9783x2109\n")
    with pytest.raises(DataFormatError, match="Timestamp '9783x2109' is not an integer") as err:
        load_movielens(folder)
    assert err.value.line == 2 and err.value.path.name == "ratings.dat"
    (folder / "ratings.dat").write_text("1::2::5::978300760::7\n")
    with pytest.raises(DataFormatError, match="expected 4 '::'-separated fields, found 5") as err:
        load_movielens(folder)
    assert err.value.line == 1


def _u_item(item: int, title: str, release: str, genres: list[str]) -> str:
    from trainer.data.loaders.movielens import ML100K_GENRES

    flags = ["1" if g in genres else "0" for g in ML100K_GENRES]
    return "|".join([str(item), title, release, "", "http://us.imdb.com/x", *flags]) + "\n"


def test_movielens_100k(tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    _write(folder / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    _write(
        folder / "u.item",
        _u_item(242, "Kolya (1996)", "24-Jan-1997", ["Comedy"])
        # Release date, not the title, gives the decade; genres in u.genre order, not flag-listing order.
        + _u_item(
            302, "L.A. Confidential (1989)", "01-Jan-1990", ["Thriller", "Crime", "Film-Noir", "Action"]
        )
        + _u_item(377, "Café au lait (1993)", "", [])
        + _u_item(267, "unknown", "", ["unknown"]),
        encoding="latin-1",
    )
    ds = load_movielens(folder)
    assert ds.events.rows() == [
        ("196", "242", 881250949, 3.0),
        ("186", "302", 891717742, 3.0),
        ("22", "377", 878887116, 1.0),
    ]
    assert ds.items.rows() == [
        ("242", "Comedy", "1990s"),
        ("302", "Action|Crime|Film-Noir|Thriller", "1990s"),
        ("377", None, None),
        ("267", "unknown", None),
    ]
    _write(folder / "u.item", _u_item(242, "Kolya (1996)", "24-Jan-1997", []) + "243|Short|01-Jan-1990\n")
    with pytest.raises(DataFormatError, match="expected 24 '\\|'-separated fields, found 3") as err:
        load_movielens(folder)
    assert err.value.line == 2 and err.value.path.name == "u.item"


def test_movielens_csv_errors(tmp_path: Path) -> None:
    folder = tmp_path / "ml-25m"
    _write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,x,964982703\n")
    _write(
        folder / "movies.csv", 'movieId,title,genres\n1,"Dark Knight, The (2008)",Action\n2,B (1970),Drama\n'
    )
    with pytest.raises(DataFormatError, match="rating 'x' is not a number") as err:
        load_movielens(folder)
    assert err.value.line == 3
    _write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    assert load_movielens(folder).items.rows() == [("1", "Action", "2000s"), ("2", "Drama", "1970s")]
    _write(folder / "movies.csv", "movieId,title,genres\n1,A (2008),Action\n\n1,A again (2008),Drama\n")
    with pytest.raises(DataFormatError, match="blank line|genres is missing") as err:
        load_movielens(folder)
    assert err.value.line == 3
    _write(folder / "movies.csv", "movieId,title,genres\n1,A (2008),Action\n2,B,C\n1,A again (2008),Drama\n")
    with pytest.raises(DataFormatError, match="movie id 1 appears a second time") as err:
        load_movielens(folder)
    assert err.value.line == 4
    _write(folder / "movies.csv", 'movieId,title,genres\n1,A (2008),Action\n2,"B, (2001),Drama\n3,C,D\n')
    with pytest.raises(DataFormatError, match="unbalanced quote") as err:
        load_movielens(folder)
    assert err.value.line == 3
    (tmp_path / "ml-other").mkdir()
    with pytest.raises(DataFormatError, match="not a MovieLens folder"):
        load_movielens(tmp_path)  # two folders: which one is meant is not guessed


# --------------------------------------------------------------------------- Taobao, crafted


def _taobao_rows(n: int) -> list[str]:
    behaviours = ["pv", "buy", "cart", "fav"]
    return [
        f"{u % 7 + 1},{u % 13 + 100},{(u % 13) % 4 + 50},{behaviours[u % 4]},{1511544070 + u}"
        for u in range(n)
    ]


def test_taobao_truncated_last_line_is_counted(tmp_path: Path) -> None:
    rows = _taobao_rows(300)
    # Item 999: category 1 twice, 2 three times -> 2. Item 998: 3 and 4 once each -> 3 (seen first).
    rows += ["1,999,1,pv,1", "1,999,2,pv,2", "2,999,1,buy,3", "2,999,2,pv,4", "3,999,2,fav,5"]
    rows += ["1,998,3,pv,6", "1,998,4,pv,7"]
    path = _write(tmp_path / "UserBehavior.csv", "\n".join(rows) + "\n1,2268318,25203")  # truncated, no EOL
    ds = load_taobao(tmp_path)
    assert ds.n_bad_rows == 1
    assert ds.source_files == [path]
    assert ds.events.height == len(rows)
    assert ds.events.row(0) == ("1", "100", 1511544070, "pv")
    assert ds.events["action"].to_list()[:4] == ["pv", "buy", "cart", "fav"]
    assert ds.views == ["category"]
    cats = dict(ds.items.iter_rows())
    assert cats["999"] == "2" and cats["998"] == "3"
    assert cats["100"] == "50" and cats["103"] == "53"
    assert ds.items["item_id"].to_list()[:2] == ["100", "101"]  # first-seen order


def test_taobao_too_many_bad_rows_is_fatal(tmp_path: Path) -> None:
    rows = _taobao_rows(98)
    rows.insert(40, "5,101,51,click,1511544070")  # unknown behaviour: line 41
    rows.insert(70, "5,101,51,pv")  # 2 bad of 100 rows = 2% > 1%
    path = _write(tmp_path / "UserBehavior.csv", "\n".join(rows) + "\n")
    with pytest.raises(DataFormatError, match="2 of 100 rows") as err:
        load_taobao(path)
    assert err.value.line == 41
    assert "behavior_type 'click'" in str(err.value)
    # The same file is accepted when the tolerance is raised.
    assert load_taobao(path, max_bad_fraction=0.05).n_bad_rows == 2


# --------------------------------------------------------------------------- generic


def test_generic_csv_mapping(tmp_path: Path) -> None:
    events = _write(
        tmp_path / "events.csv",
        "uid,sku,when,stars,secs,kind,visit\n"
        "u1,007,2024-03-01 10:00:00,4.5,12.5,click,s1\n"
        "u1,008,2024-03-01 10:05:30,,3,buy,s1\n"
        "u2,009,2024-03-02 00:00:00,2,,click,\n",
    )
    items = _write(tmp_path / "items.csv", "sku,cat,shop\n007,c1,s9\n008,c2,\n")
    ds = load_generic(
        events,
        items,
        user_col="uid",
        item_col="sku",
        time_col="when",
        time_format="%Y-%m-%d %H:%M:%S",
        rating_col="stars",
        dwell_col="secs",
        action_col="kind",
        session_col="visit",
        item_id_col="sku",
    )
    expected_ts = [
        int(datetime(2024, 3, 1, 10, 0, tzinfo=UTC).timestamp()),
        int(datetime(2024, 3, 1, 10, 5, 30, tzinfo=UTC).timestamp()),
        int(datetime(2024, 3, 2, tzinfo=UTC).timestamp()),
    ]
    assert ds.events.to_dict(as_series=False) == {
        "user_id": ["u1", "u1", "u2"],
        "item_id": ["007", "008", "009"],  # CSV ids keep their spelling
        "timestamp": expected_ts,
        "rating": [4.5, None, 2.0],
        "dwell_seconds": [12.5, 3.0, None],
        "action": ["click", "buy", "click"],
        "app_session": ["s1", "s1", None],
    }
    assert ds.views == ["cat", "shop"]
    # 009 is not in the items file: it is added without attributes.
    assert ds.items.rows() == [("007", "c1", "s9"), ("008", "c2", None), ("009", None, None)]

    with pytest.raises(
        DataFormatError, match="column 'user' \\(user_col\\) not found; columns present: uid, sku"
    ):
        load_generic(events, user_col="user", item_col="sku", time_col="when")
    with pytest.raises(DataFormatError, match="column 'brand' \\(view_cols\\[0\\]\\) not found") as err:
        load_generic(
            events,
            items,
            user_col="uid",
            item_col="sku",
            time_col="when",
            time_format="%Y-%m-%d %H:%M:%S",
            item_id_col="sku",
            view_cols=["brand"],
        )
    assert err.value.path == items
    with pytest.raises(DataFormatError, match="does not match time format '%Y-%m-%d'") as err:
        load_generic(events, user_col="uid", item_col="sku", time_col="when", time_format="%Y-%m-%d")
    assert err.value.line == 2
    with pytest.raises(DataFormatError, match="is not integer Unix seconds") as err:
        load_generic(events, user_col="uid", item_col="sku", time_col="when")
    assert err.value.line == 2


def test_generic_parquet(tmp_path: Path) -> None:
    events = tmp_path / "log.parquet"
    pl.DataFrame(
        {
            "user": [1, 1, 2],
            "item_id": [10, 11, 10],
            "ts": [datetime(2020, 1, 1, 12), datetime(2020, 1, 1, 13), datetime(2020, 1, 2)],
            "r": [1, 5, 3],
        }
    ).write_parquet(events)
    items = tmp_path / "items.parquet"
    pl.DataFrame(
        {"item_id": [10, 11], "category": [3, 4], "brand": ["b", "c"], "price": [1.5, 2.0]}
    ).write_parquet(items)
    ds = load_dataset(
        "generic",
        events,
        items_path=items,
        user_col="user",
        time_col="ts",
        rating_col="r",
        view_cols=["category", "brand"],
    )
    assert ds.events.rows() == [
        ("1", "10", int(datetime(2020, 1, 1, 12, tzinfo=UTC).timestamp()), 1.0),
        ("1", "11", int(datetime(2020, 1, 1, 13, tzinfo=UTC).timestamp()), 5.0),
        ("2", "10", int(datetime(2020, 1, 2, tzinfo=UTC).timestamp()), 3.0),
    ]
    assert ds.views == ["category", "brand"]
    assert ds.items.rows() == [("10", "3", "b"), ("11", "4", "c")]
    pl.DataFrame({"item_id": [10, 10], "category": [3, 4]}).write_parquet(items)
    with pytest.raises(DataFormatError, match="row 2: item_id appears a second time"):
        load_generic(events, items, user_col="user", time_col="ts")
    with pytest.raises(DataFormatError, match="unsupported file type '.json'"):
        load_generic(_write(tmp_path / "x.json", "{}"))


def test_generic_keyword_call_and_unix_ms(tmp_path: Path) -> None:
    """The form the prepare command uses: every option by keyword; item column of the same name in both."""
    events = _write(tmp_path / "e.csv", "user,sku,ms\na,1,1700000000999\nb,2,1700000001000\n")
    items = _write(tmp_path / "i.csv", "sku,cat,brand\n1,x,p\n2,y,q\n")
    ds = load_dataset(
        "generic",
        None,
        events_path=events,
        items_path=items,
        user_col="user",
        item_col="sku",
        time_col="ms",
        time_format="unix_ms",
        views=["brand"],
    )
    assert ds.events["timestamp"].to_list() == [1_700_000_000, 1_700_000_001]
    assert ds.views == ["brand"]
    assert ds.items.rows() == [("1", "p"), ("2", "q")]


# --------------------------------------------------------------------------- download


class _Server:
    """A local HTTP server on 127.0.0.1 serving a folder, counting the requests it answers."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    # A proxy configured in the environment must not see requests to the local server.
    monkeypatch.setenv("no_proxy", "*")
    (tmp_path / "www").mkdir()
    srv = _Server(tmp_path / "www")
    yield srv
    srv.close()


def _crafted_zip(path: Path, folder: str, members: dict[str, str]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(f"{folder}/{name}", text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


ML_MEMBERS = {
    "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n2,1,3.5,964982704\n",
    "movies.csv": 'movieId,title,genres\n1,"Toy Story, The (1995)",Animation|Children\n',
    "README.txt": "crafted\n",
}


def test_download_verify_extract_and_load(
    tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = _crafted_zip(tmp_path / "www" / "ml-test.zip", "ml-test", ML_MEMBERS)
    monkeypatch.setitem(
        download.MOVIELENS, "ml-test", Archive("ml-test", ("ratings.csv", "movies.csv"), sha256=sha)
    )
    monkeypatch.setenv("M2GRL_MOVIELENS_URL", server.url)
    monkeypatch.setenv("M2GRL_CACHE_DIR", str(tmp_path / "cache"))

    ds = load_dataset("movielens", None, variant="ml-test")  # download, verify, extract, load
    assert ds.events.rows() == [("1", "1", 964982703, 4.0), ("2", "1", 964982704, 3.5)]
    assert ds.items.rows() == [("1", "Animation|Children", "1990s")]
    target = tmp_path / "cache" / "ml-test"
    assert (target / "ml-test" / "README.txt").read_text() == "crafted\n"
    assert f'"sha256": "{sha}"' in (target / "m2grl-download.json").read_text()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["ml-test"]  # no zip or temp left
    assert server.requests == ["/ml-test.zip"]
    # Cached: no second request.
    assert download_movielens("ml-test") == target / "ml-test"
    assert server.requests == ["/ml-test.zip"]


def test_download_checksum_mismatch_deletes(tmp_path: Path, server: _Server) -> None:
    _crafted_zip(tmp_path / "www" / "ml-test.zip", "ml-test", ML_MEMBERS)
    table = {"ml-test": Archive("ml-test", ("ratings.csv",), sha256="0" * 64)}
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="sha256 is [0-9a-f]{64}, expected 0{64}"):
        download_movielens("ml-test", cache_dir=cache, base_url=server.url, archives=table)
    assert list(cache.iterdir()) == []
    md5_table = {"ml-test": Archive("ml-test", ("ratings.csv",), md5="f" * 32)}
    with pytest.raises(DownloadError, match="md5 is"):
        download_movielens("ml-test", cache_dir=cache, base_url=server.url, archives=md5_table)
    assert list(cache.iterdir()) == []
    with pytest.raises(DownloadError, match="cannot download .*/ml-gone.zip"):
        download_movielens(
            "ml-gone", cache_dir=cache, base_url=server.url, archives={"ml-gone": Archive("ml-gone", ())}
        )
    assert list(cache.iterdir()) == []


def test_download_without_checksum_checks_members(
    tmp_path: Path, server: _Server, capsys: pytest.CaptureFixture[str]
) -> None:
    sha = _crafted_zip(tmp_path / "www" / "ml-new.zip", "ml-new", ML_MEMBERS)
    table = {"ml-new": Archive("ml-new", ("ratings.csv", "movies.csv"))}
    folder = download_movielens("ml-new", cache_dir=tmp_path / "cache", base_url=server.url, archives=table)
    assert (folder / "ratings.csv").is_file()
    assert f"sha256 {sha}" in capsys.readouterr().err
    # An archive without the expected files is refused and nothing is left behind.
    _crafted_zip(tmp_path / "www" / "ml-odd.zip", "ml-odd", {"other.csv": "x\n"})
    table["ml-odd"] = Archive("ml-odd", ("ratings.csv", "movies.csv"))
    with pytest.raises(DownloadError, match="archive lacks ml-odd/ratings.csv, ml-odd/movies.csv"):
        download_movielens("ml-odd", cache_dir=tmp_path / "cache", base_url=server.url, archives=table)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["ml-new"]


def test_known_checksums_are_well_formed() -> None:
    for variant, archive in download.MOVIELENS.items():
        assert variant.startswith("ml-")
        assert archive.sha256 is None or len(archive.sha256) == 64
        assert archive.md5 is None or len(archive.md5) == 32
    assert download.MOVIELENS["ml-10m"].folder == "ml-10M100K"
    with pytest.raises(DownloadError, match="unknown MovieLens variant 'ml-999'; known: ml-100k"):
        download_movielens("ml-999")
