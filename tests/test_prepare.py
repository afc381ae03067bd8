"""Preparation pipeline: split, sessions, chunking, dedupe, graphs, merge rule, stats, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from trainer.checksums import sha256_file
from trainer.cli import main as cli_main
from trainer.data import prepare as prepare_mod
from trainer.data.prepare import OutputExistsError, PrepareOptions, prepare, preset_options
from trainer.data.prepared import PreparedData
from trainer.data.schema import LoadedDataset

# All events train, sessions only by the idle gap: isolates the session logic from the split.
ALL_TRAIN = {"min_user_events": 1, "test_events": 0, "min_dwell": None}


def dataset(
    rows: list[tuple],
    items: dict[str, dict[str, str | None]] | None = None,
    extra: tuple[str, ...] = (),
) -> LoadedDataset:
    """rows: (user, item, timestamp, *extra columns); items: item -> {view: attribute}."""
    cols = ["user_id", "item_id", "timestamp", *extra]
    data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    schema = {"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64}
    schema.update({c: pl.Utf8 if c in ("app_session", "action") else pl.Float64 for c in extra})
    events = pl.DataFrame(data, schema=schema)
    views = sorted({v for attrs in (items or {}).values() for v in attrs})
    item_ids = sorted({r[1] for r in rows} | set(items or {}))
    table = {"item_id": item_ids}
    for v in views:
        table[v] = [(items or {}).get(i, {}).get(v) for i in item_ids]
    return LoadedDataset(
        name="hand",
        events=events,
        items=pl.DataFrame(table, schema=dict.fromkeys(table, pl.Utf8)),
        views=views,
    )


def run_prepare(tmp_path: Path, ds: LoadedDataset, **opts) -> tuple[dict, PreparedData]:
    out = tmp_path / "prep"
    stats = prepare(ds, PrepareOptions(**opts), out)
    return stats, PreparedData(out)


def sequences_as_ids(view) -> list[list[str]]:
    return [[view.node_ids[t] for t in seq] for seq in view.sequences()]


def session_lengths(data: PreparedData) -> list[int]:
    train = data.train_events()
    return train.group_by("session").len().sort("session")["len"].to_list()


def test_split_last_events_with_row_order_ties(tmp_path: Path) -> None:
    rows = [
        ("A", "a", 5),  # row 0
        ("B", "x1", 1),
        ("A", "b", 1),  # row 2
        ("A", "c", 5),  # row 3: tie with row 0 at t=5, comes after it
        ("B", "x2", 2),
        ("A", "d", 3),
        ("A", "e", 9),
        ("B", "x3", 3),
        ("A", "f", 5),  # row 8: third event at t=5
        ("B", "x4", 4),
        ("C", "y1", 1),
        ("C", "y2", 2),
        ("C", "y3", 3),
        ("C", "y4", 4),
        ("C", "y5", 5),
    ]
    stats, data = run_prepare(tmp_path, dataset(rows), min_dwell=None)
    ev = data.events
    a = ev.filter(pl.col("user_id") == "A").sort("pos")
    # Order by (t, row): b(1) d(3) a(5,r0) c(5,r3) f(5,r8) e(9); the last three are test.
    assert a["item_id"].to_list() == ["b", "d", "a", "c", "f", "e"]
    assert a["pos"].to_list() == list(range(6))
    assert a["split"].to_list() == ["train"] * 3 + ["test"] * 3
    assert a.filter(pl.col("split") == "test")["session"].null_count() == 3
    # B has 4 < 5 events: training only. C has exactly 5: its last 3 are test.
    assert set(ev.filter(pl.col("user_id") == "B")["split"].to_list()) == {"train"}
    c = ev.filter(pl.col("user_id") == "C").sort("pos")
    assert c["split"].to_list() == ["train", "train", "test", "test", "test"]
    assert stats["n_test_events"] == 6 and stats["n_test_users"] == 2 and stats["n_train_events"] == 9
    # Test items never become nodes: e, f, c, y3.. appear only in test events.
    item_nodes = set(data.view("item").node_ids.tolist())
    assert item_nodes == {"a", "b", "d", "x1", "x2", "x3", "x4", "y1", "y2"}


def test_session_gap_equal_does_not_split_greater_does(tmp_path: Path) -> None:
    rows = [
        ("u", "a", 0),
        ("u", "b", 100),
        ("u", "c", 201),
        ("u", "d", 201),
        ("u", "e", 400),
        ("v", "f", 401),
    ]
    _, data = run_prepare(tmp_path, dataset(rows), session_gap=100, **ALL_TRAIN)
    ev = data.events.sort("user_id", "pos")
    # gaps 100 (= gap: same), 101 (> gap: new), 0, 199 (new); user v always starts a new session.
    assert ev["session"].to_list() == [0, 0, 1, 1, 2, 3]


def test_day_level_gap_zero_splits_each_day(tmp_path: Path) -> None:
    day = 86400
    rows = [("u", "a", 0), ("u", "b", 0), ("u", "c", day), ("u", "d", day), ("u", "e", 3 * day)]
    _, data = run_prepare(tmp_path, dataset(rows), **{**ALL_TRAIN, "session_gap": 0})
    assert data.events.sort("pos")["session"].to_list() == [0, 0, 1, 1, 2]


def test_chunking_long_sessions(tmp_path: Path) -> None:
    rows = [("u", f"i{k}", k) for k in range(120)]
    _, data = run_prepare(tmp_path / "a", dataset(rows), **ALL_TRAIN)
    assert session_lengths(data) == [50, 50, 20]
    # A gap after 70 events: the 70-event session is chunked 50 + 20, the next 50 stays whole.
    rows = [("u", f"i{k}", k if k < 70 else 10_000 + k) for k in range(120)]
    _, data = run_prepare(tmp_path / "b", dataset(rows), **ALL_TRAIN)
    assert session_lengths(data) == [50, 20, 50]
    assert data.stats["n_sessions"] == 3


def test_dedupe_per_view_and_null_attributes(tmp_path: Path) -> None:
    items = {
        "a1": {"category": "A"},
        "a2": {"category": "A"},
        "b1": {"category": "B"},
        "a3": {"category": "A"},
        "n": {"category": None},
    }
    rows = [
        ("u", "a1", 0), ("u", "a2", 1), ("u", "b1", 2), ("u", "a3", 3),  # A A B A -> A B A
        ("u", "a1", 10_000), ("u", "n", 10_001), ("u", "a2", 10_002),  # A null A -> A: dropped from category
        ("u", "b1", 20_000), ("u", "b1", 20_001),  # item b1 b1 -> b1: dropped from item view too
    ]  # fmt: skip
    stats, data = run_prepare(tmp_path, dataset(rows, items), **ALL_TRAIN)
    cat = data.view("category")
    assert sequences_as_ids(cat) == [["A", "B", "A"]]
    assert sequences_as_ids(data.view("item")) == [["a1", "a2", "b1", "a3"], ["a1", "n", "a2"]]
    assert stats["views"]["category"] == {
        "n_nodes": 2,
        "n_sessions": 1,
        "n_transitions": 2,
        "n_edges": 2,
        "n_items_without_node": 1,
    }
    assert stats["views"]["item"]["n_sessions"] == 2 and stats["views"]["item"]["n_transitions"] == 5
    # item_to_node: per item-view node, its category node (-1 for the item without category).
    item = data.view("item")
    mapped = {item.node_ids[k]: (cat.node_ids[n] if n >= 0 else None) for k, n in enumerate(cat.item_to_node)}
    assert mapped == {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "n": None}


def test_graph_edges_weights_and_node_order(tmp_path: Path) -> None:
    rows = [
        ("u", "x", 0), ("u", "y", 1), ("u", "x", 2), ("u", "y", 3),
        ("v", "x", 0), ("v", "y", 1), ("v", "z", 2), ("v", "w", 3),
    ]  # fmt: skip
    stats, data = run_prepare(tmp_path, dataset(rows), **ALL_TRAIN)
    item = data.view("item")
    # counts: x 3, y 3, z 1, w 1 -> by count desc, then id asc.
    assert item.node_ids.tolist() == ["x", "y", "w", "z"]
    assert item.node_counts.tolist() == [3, 3, 1, 1]
    edges = {
        (item.node_ids[s], item.node_ids[d]): int(w)
        for s, d, w in zip(item.edge_src, item.edge_dst, item.edge_weight, strict=True)
    }
    assert edges == {("x", "y"): 3, ("y", "x"): 1, ("y", "z"): 1, ("z", "w"): 1}
    assert stats["views"]["item"] == {"n_nodes": 4, "n_sessions": 2, "n_transitions": 6, "n_edges": 4}


def test_app_session_merge_rule(tmp_path: Path) -> None:
    rows = [
        ("u", "a", 0, "s1"), ("u", "b", 100, "s1"),
        ("u", "c", 1000, "s2"), ("u", "d", 1100, "s2"),  # 900 s after s1 ends: merged
        ("u", "e", 2900, "s3"),  # exactly 1800 s after s2 ends: not merged
        ("u", "f", 4699, "s4"),  # 1799 s: merged with s3
        ("u", "g", 4700, "s5"), ("u", "h", 9000, "s5"),  # 1 s after s4: merged; the 4300 s idle gap splits
        ("v", "i", 4700, "s5"),  # same app-session id, other user: its own session
    ]  # fmt: skip
    ds = dataset(rows, extra=("app_session",))
    stats, data = run_prepare(tmp_path, ds, **ALL_TRAIN, merge_gap=1800, session_gap=3600)
    ev = data.events.sort("user_id", "pos")
    assert ev["session"].to_list() == [0, 0, 0, 0, 1, 1, 1, 2, 3]
    assert stats["app_sessions"] is True and stats["n_sessions"] == 4
    assert "app_session" not in ev.columns


def test_app_sessions_interleaved_in_time_are_ordered_by_start(tmp_path: Path) -> None:
    rows = [
        ("u", "a", 10_000, "late"),
        ("u", "b", 0, "early"),
        ("u", "c", 10, "early"),
        ("u", "d", 10_010, "late"),
    ]
    _, data = run_prepare(tmp_path, dataset(rows, extra=("app_session",)), **ALL_TRAIN)
    assert sequences_as_ids(data.view("item")) == [["b", "c"], ["a", "d"]]


def test_events_without_app_session_fall_back_to_the_idle_gap(tmp_path: Path) -> None:
    rows = [("u", "a", 0, "s1"), ("u", "b", 10, "s1"), ("u", "c", 20_000, None), ("u", "d", 20_010, None)]
    rows.append(("u", "e", 40_000, None))  # 19990 s after d: a new session
    _, data = run_prepare(tmp_path, dataset(rows, extra=("app_session",)), **ALL_TRAIN)
    assert data.events.sort("pos")["session"].to_list() == [0, 0, 1, 1, 2]


def test_cleaning_rating_and_dwell(tmp_path: Path) -> None:
    rows = [
        ("u", "a", 0, 2.5, 10.0),  # rating below 3
        ("u", "b", 1, 3.0, 1.9),  # dwell below 2
        ("u", "c", 2, 3.0, 2.0),
        ("u", "d", 3, None, None),  # nulls are kept
        ("u", "e", 4, 5.0, 100.0),
    ]
    ds = dataset(rows, extra=("rating", "dwell_seconds"))
    stats, data = run_prepare(tmp_path, ds, min_rating=3.0, min_dwell=2.0, min_user_events=1, test_events=0)
    assert data.events.sort("pos")["item_id"].to_list() == ["c", "d", "e"]
    assert stats["n_events_raw"] == 5 and stats["n_events_clean"] == 3
    assert stats["n_dropped_rating"] == 1 and stats["n_dropped_dwell"] == 1
    assert {"rating", "dwell_seconds"} <= set(data.events.columns)


def test_stats_fields(tmp_path: Path) -> None:
    rows = [
        ("u1", it, t) for it, t in zip("aabcadef", [0, 10, 20, 5000, 5010, 5020, 5030, 5040], strict=True)
    ]
    rows += [("u2", "a", 0), ("u2", "b", 1)]
    items = {k: {"category": c} for k, c in zip("abcdef", ["x", "x", "y", None, "y", "z"], strict=True)}
    stats, data = run_prepare(tmp_path, dataset(rows, items), min_dwell=None)
    # u1: 8 events, last 3 (d e f) test; sessions [a a b], [c a] (gap 4980 > 3600); u2: [a b].
    expected = {
        "dataset": "hand",
        "n_events_raw": 10,
        "n_events_clean": 10,
        "n_users": 2,
        "n_items": 6,
        "n_train_events": 7,
        "n_test_events": 3,
        "n_test_users": 1,
        "n_bad_rows": 0,
        "n_sessions": 3,
    }
    assert {k: stats[k] for k in expected} == expected
    # item: [a b], [c a], [a b] -> 3 sessions, 3 transitions, edges a->b, c->a. category: x x x -> x (dropped),
    # y x (kept), x x -> x (dropped).
    assert stats["views"]["item"] == {"n_nodes": 3, "n_sessions": 3, "n_transitions": 3, "n_edges": 2}
    assert stats["views"]["category"]["n_nodes"] == 2 and stats["views"]["category"]["n_sessions"] == 1
    assert data.view("category").node_counts.tolist() == [6, 1]  # x: a*4 + b*2, y: c
    assert json.loads((tmp_path / "prep" / "stats.json").read_text()) == stats


def test_round_trip_manifest_and_schema(tmp_path: Path) -> None:
    rows = [(f"u{k % 7}", f"i{(k * 5) % 13}", k * 60) for k in range(200)]
    items = {f"i{k}": {"category": f"c{k % 3}", "shop": None if k == 4 else f"s{k % 5}"} for k in range(13)}
    stats, data = run_prepare(tmp_path, dataset(rows, items))
    out = tmp_path / "prep"
    assert data.view_names == ["item", "category", "shop"]
    files = data.manifest.files
    on_disk = {
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    }
    assert set(files) == on_disk
    assert all(sha256_file(out / rel) == digest for rel, digest in files.items())
    assert data.events.schema["pos"] == pl.Int32 and data.events.schema["session"] == pl.Int64
    assert data.items.columns == ["item_id", "category", "shop"]
    for name in data.view_names:
        view = data.view(name)
        assert view.n_nodes == stats["views"][name]["n_nodes"]
        assert view.seq_tokens.dtype == np.int32 and view.seq_offsets[-1] == len(view.seq_tokens)
        assert int(view.node_counts.sum()) <= stats["n_train_events"]
    shop = data.view("shop")
    assert shop.item_to_node.shape == (data.view("item").n_nodes,)
    assert int(data.view("item").node_counts.sum()) == stats["n_train_events"]
    # Same input, same bytes: the fingerprint is reproducible.
    prepare(dataset(rows, items), PrepareOptions(), tmp_path / "again")
    assert PreparedData(tmp_path / "again").fingerprint() == data.fingerprint()


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_save = prepare_mod.save_view

    def failing_save(view_dir, view):
        calls.append(view.name)
        if len(calls) == 2:
            raise RuntimeError("disk full (injected)")
        real_save(view_dir, view)

    monkeypatch.setattr(prepare_mod, "save_view", failing_save)
    rows = [("u", f"i{k}", k) for k in range(10)]
    items = {f"i{k}": {"category": "c"} for k in range(10)}
    with pytest.raises(RuntimeError, match="injected"):
        prepare(dataset(rows, items), PrepareOptions(), tmp_path / "prep")
    assert calls == ["item", "category"]
    assert list(tmp_path.iterdir()) == []


def test_existing_output_refused_or_replaced(tmp_path: Path) -> None:
    out = tmp_path / "prep"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    ds = dataset([("u", "a", 0), ("u", "b", 1)])
    with pytest.raises(OutputExistsError, match="already exists; pass --force"):
        prepare(ds, PrepareOptions(**ALL_TRAIN), out)
    assert (out / "keep.txt").read_text() == "old"
    prepare(ds, PrepareOptions(**ALL_TRAIN), out, force=True)
    assert not (out / "keep.txt").exists() and PreparedData(out).stats["n_events_clean"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]  # no temp or old directories left


def test_presets_and_overrides() -> None:
    ml = preset_options("movielens")
    assert ml.min_rating == 3.0 and ml.session_gap == 31_536_000 and ml.max_session_len == 50
    assert preset_options("tmall").session_gap == 0 and preset_options("taobao").session_gap == 3600
    assert preset_options("generic").min_dwell == 2.0 and preset_options("generic").merge_gap == 1800
    assert preset_options("movielens", min_rating=None, test_events=1).min_rating is None
    with pytest.raises(ValueError, match="no preparation preset"):
        preset_options("netflix")
    with pytest.raises(ValueError, match="must be below min_user_events"):
        PrepareOptions(min_user_events=3, test_events=3)


def test_cli_prepare_synth_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw, out = tmp_path / "raw", tmp_path / "prep"
    assert cli_main(["synth", "--items", "300", "--users", "40", "--events", "2000", "--out", str(raw)]) == 0
    argv = ["prepare", "--dataset", "synth", "--path", str(raw), "--out", str(out), "--test-events", "2"]
    assert cli_main(argv) == 0
    data = PreparedData(out)
    assert data.manifest.options["test_events"] == 2 and data.manifest.options["session_gap"] == 3600
    assert data.view_names == ["item", "category", "shop"] and data.stats["n_events_raw"] == 2000
    capsys.readouterr()
    assert cli_main(argv) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert cli_main([*argv, "--force", "--min-dwell", "none"]) == 0
    assert PreparedData(out).manifest.options["min_dwell"] is None


def _load_real(name: str, path: Path) -> LoadedDataset:
    loaders = pytest.importorskip("trainer.data.loaders", reason="the loaders are not built yet")
    return loaders.load_dataset(name, path)


def test_real_movielens_small(ml_small_dir: Path, tmp_path: Path) -> None:
    stats = prepare(_load_real("movielens", ml_small_dir), preset_options("movielens"), tmp_path / "ml")
    ratings = pl.read_csv(ml_small_dir / "ratings.csv")
    liked = ratings.filter(pl.col("rating") >= 3.0)
    per_user = liked.group_by("userId").len()["len"]
    assert stats["n_events_raw"] == ratings.height
    assert stats["n_events_clean"] == liked.height
    assert stats["n_users"] == liked["userId"].n_unique()
    assert stats["n_test_users"] == int((per_user >= 5).sum())
    assert stats["n_test_events"] == 3 * stats["n_test_users"]
    assert stats["n_train_events"] == liked.height - stats["n_test_events"]
    data = PreparedData(tmp_path / "ml")
    assert data.view_names[0] == "item" and len(data.view_names) >= 2
    assert stats["session_length_max"] <= 50 and data.train_events()["session"].null_count() == 0


def test_real_tmall_sample(tmall_dir: Path, tmp_path: Path) -> None:
    stats = prepare(_load_real("tmall", tmall_dir), preset_options("tmall"), tmp_path / "tm")
    # Independently: rows in file order; per user the last 3 by (day, row) are test; every remaining
    # user-day is a session, chunked by 50.
    raw = pl.read_csv(tmall_dir / "user_log_format1_little.csv", schema_overrides={"time_stamp": pl.Utf8})
    raw = raw.with_row_index("row").sort("user_id", "time_stamp", "row")
    raw = raw.with_columns(pos=pl.int_range(pl.len()).over("user_id"), n=pl.len().over("user_id")).filter(
        ~((pl.col("n") >= 5) & (pl.col("pos") >= pl.col("n") - 3))
    )
    day_sizes = raw.group_by("user_id", "time_stamp").len()["len"].to_numpy()
    assert stats["n_events_raw"] == 100_000 and stats["n_events_clean"] == 100_000
    assert stats["n_train_events"] == raw.height
    assert stats["n_sessions"] == int(np.ceil(day_sizes / 50).sum())
    data = PreparedData(tmp_path / "tm")
    assert set(data.view_names) >= {"item", "category", "shop"}
    assert stats["views"]["item"]["n_nodes"] == raw["item_id"].n_unique()
