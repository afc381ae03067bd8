"""Synthetic generator: determinism, planted structure, chunked writing, and preparation of its output."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from trainer.cli import main as cli_main
from trainer.data.prepare import PrepareOptions, prepare
from trainer.data.prepared import PreparedData
from trainer.data.synth import SynthOptions, _chunks, generate, load_synth, load_truth

STAY = 0.8


def ids(series: pl.Series) -> np.ndarray:
    return series.str.slice(1).cast(pl.Int64).to_numpy()


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """20k items / 200k events in chunks of 50k events (so at least 4 chunks); returns (dir, seconds)."""
    out = tmp_path_factory.mktemp("synth_medium")
    opts = SynthOptions(
        n_items=20_000, n_users=4_000, n_events=200_000, seed=7, stay_prob=STAY, chunk_events=50_000
    )
    t0 = time.perf_counter()
    generate(opts, out)
    return out, time.perf_counter() - t0


def consecutive_pairs(events: pl.DataFrame) -> pl.DataFrame:
    """Consecutive events of the same user with the gap between them."""
    return events.with_columns(
        prev_item=pl.col("item_id").shift(1),
        gap=pl.col("timestamp") - pl.col("timestamp").shift(1),
        same_user=pl.col("user_id") == pl.col("user_id").shift(1),
    ).filter(pl.col("same_user"))


def test_scale_chunks_and_counts(medium: tuple[Path, float]) -> None:
    out, seconds = medium
    assert seconds < 20, f"200k events took {seconds:.1f} s"
    assert pq.ParquetFile(out / "events.parquet").num_row_groups >= 4  # written chunk by chunk
    ds = load_synth(out)
    assert ds.events.height == 200_000 and ds.items.height == 20_000
    assert ds.events["user_id"].n_unique() == 4_000  # every user has at least one event
    assert ds.views == ["category", "shop"]
    assert ds.events.schema["timestamp"] == pl.Int64 and ds.items.schema["category"] == pl.Utf8


def test_planted_structure_is_visible(medium: tuple[Path, float]) -> None:
    out, _ = medium
    truth = load_truth(out)
    ds = load_synth(out)
    pairs = consecutive_pairs(ds.events)
    # Time: inside sessions gaps stay below 30 min, between sessions above 1 h, so the idle split is exact.
    gaps = pairs["gap"].to_numpy()
    assert ((gaps < 1800) | (gaps > 3600)).all() and (gaps >= 0).all()
    inside = pairs.filter(pl.col("gap") <= 3600)
    a = truth.item_category[ids(inside["prev_item"])]
    b = truth.item_category[ids(inside["item_id"])]
    same = a == b
    assert abs(same.mean() - STAY) < 0.01, same.mean()
    # Every category change follows the planted transition graph.
    planted = set(zip(np.repeat(np.arange(len(truth.category_next)), truth.category_next.shape[1]).tolist(),
                      truth.category_next.ravel().tolist(), strict=True))  # fmt: skip
    assert set(zip(a[~same].tolist(), b[~same].tolist(), strict=True)) <= planted
    # Sessions start in one of the user's interests.
    first = ds.events.filter(
        (pl.col("user_id") != pl.col("user_id").shift(1)).fill_null(True)
        | ((pl.col("timestamp") - pl.col("timestamp").shift(1)) > 3600)
    )
    users, cats = ids(first["user_id"]), truth.item_category[ids(first["item_id"])]
    assert (truth.user_interests[users] == cats[:, None]).any(axis=1).all()
    # Shops sell mostly their main category.
    assert (truth.shop_category[truth.item_shop] == truth.item_category).mean() > 0.88
    # Popularity: the most popular item of each category draws far more events than the tail.
    counts = np.bincount(ids(ds.events["item_id"]), minlength=len(truth.item_category))
    top = truth.item_popularity == 1.0
    tail = truth.item_popularity < 1 / 10
    assert counts[top].mean() > 5 * counts[tail].mean()
    # The dense matrix is a proper stochastic matrix with stay_prob on the diagonal.
    p = truth.transition_matrix()
    assert np.allclose(p.sum(axis=1), 1.0) and np.allclose(np.diag(p), STAY)


def test_determinism_by_seed(tmp_path: Path) -> None:
    def make(name: str, seed: int) -> Path:
        out = tmp_path / name
        out.mkdir()
        generate(SynthOptions(n_items=500, n_users=50, n_events=3_000, seed=seed, chunk_events=1_000), out)
        return out

    a, b, c = make("a", 1), make("b", 1), make("c", 2)
    for name in ("events.parquet", "items.parquet", "truth.npz", "truth.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not load_synth(a).events.equals(load_synth(c).events)


def test_chunks_bound_events() -> None:
    # Events before each user: 0 3 8 10 17 18 19 28 -> // 10: 0 0 0 1 1 1 1 2. A chunk holds the users
    # starting within its window of 10 events, so it never exceeds chunk_events + the largest user.
    n = np.array([3, 5, 2, 7, 1, 1, 9, 4])
    chunks = _chunks(n, 10)
    assert chunks == [(0, 3), (3, 7), (7, 8)]
    assert all(n[a:b].sum() < 10 + n.max() for a, b in chunks)


def test_options_validation_and_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least n_users"):
        SynthOptions(n_items=10, n_users=100, n_events=50)
    with pytest.raises(ValueError, match="exceeds n_items"):
        SynthOptions(n_items=10, n_users=1, n_events=50, n_categories=20)
    with pytest.raises(FileNotFoundError, match="events.parquet: missing"):
        load_synth(tmp_path)


def test_prepared_category_graph_is_the_planted_graph(medium: tuple[Path, float], tmp_path: Path) -> None:
    out, _ = medium
    truth = load_truth(out)
    stats = prepare(load_synth(out), PrepareOptions(), tmp_path / "prep")
    data = PreparedData(tmp_path / "prep")
    cat = data.view("category")
    src = ids(pl.Series(cat.node_ids[cat.edge_src].tolist()))
    dst = ids(pl.Series(cat.node_ids[cat.edge_dst].tolist()))
    planted = truth.category_next[src] == dst[:, None]
    assert planted.any(axis=1).all()  # dedupe leaves only real category changes, all planted
    assert stats["views"]["category"]["n_edges"] > 0.8 * truth.category_next.size
    assert stats["n_sessions"] >= data.stats["views"]["item"]["n_sessions"]


def test_cli_synth_refuses_existing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["synth", "--items", "100", "--users", "10", "--events", "500", "--out", str(tmp_path / "s")]
    assert cli_main(argv) == 0
    assert cli_main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main([*argv, "--force", "--seed", "3"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
