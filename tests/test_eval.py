"""Offline evaluation: protocol rules, metrics by hand, baselines on planted data, the evaluate command."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from trainer.data.prepared import PreparedData, PreparedManifest, ViewData, save_view
from trainer.eval.diversity import discovery_metrics, discovery_set, distinct_categories, item_categories
from trainer.eval.methods import METHOD_NAMES, MethodContext, create, parse_methods
from trainer.eval.methods.base import EmbeddingRetriever, complete, popularity_order
from trainer.eval.methods.deepwalk import neighbour_csr, uniform_walks
from trainer.eval.methods.itemcf import cooccurrence_similarity
from trainer.eval.metrics import ranking_metrics
from trainer.eval.protocol import build_eval_set
from trainer.eval.runner import EvalOptions, check_recommendations, run_evaluation

# --------------------------------------------------------------------------- tiny prepared directories


def _view(
    name: str, node_ids: list[str], counts: list[int], seqs: list[list[int]], i2n: np.ndarray | None
) -> ViewData:
    seqs = [s for s in seqs if len(s) >= 2]
    tokens = np.array([t for s in seqs for t in s], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    pairs = [(a, b) for s in seqs for a, b in zip(s[:-1], s[1:], strict=True)]
    uniq = sorted(set(pairs))
    return ViewData(
        name=name,
        node_ids=np.array(node_ids, dtype=object),
        node_counts=np.array(counts, dtype=np.int64),
        seq_tokens=tokens,
        seq_offsets=offsets,
        edge_src=np.array([a for a, _ in uniq], dtype=np.int32),
        edge_dst=np.array([b for _, b in uniq], dtype=np.int32),
        edge_weight=np.array([pairs.count(p) for p in uniq], dtype=np.int64),
        item_to_node=i2n,
    )


def _dedup(seq: list[int]) -> list[int]:
    return [t for i, t in enumerate(seq) if i == 0 or t != seq[i - 1]]


def write_prepared(
    path: Path,
    train: dict[str, list[list[str]]],
    test: dict[str, list[str]],
    category: dict[str, str] | None = None,
    shuffle_rows: bool = False,
) -> PreparedData:
    """A prepared directory in the contract's layout: ``train`` = sessions per user, ``test`` = held-out items."""
    rows, session_id = [], 0
    for user, sessions in train.items():
        pos = 0
        for s in sessions:
            for item in s:
                rows.append((user, item, 1000 + pos, pos, "train", session_id))
                pos += 1
            session_id += 1
        for item in test.get(user, []):
            rows.append((user, item, 1000 + pos, pos, "test", None))
            pos += 1
    for user, items in test.items():
        if user not in train:
            rows += [(user, it, 1000 + p, p, "test", None) for p, it in enumerate(items)]
    if shuffle_rows:
        rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    events = pl.DataFrame(
        rows,
        schema={
            "user_id": pl.Utf8,
            "item_id": pl.Utf8,
            "timestamp": pl.Int64,
            "pos": pl.Int32,
            "split": pl.Utf8,
            "session": pl.Int64,
        },
        orient="row",
    )
    path.mkdir(parents=True)
    events.write_parquet(path / "events.parquet")
    all_items = sorted(set(events["item_id"].to_list()))
    category = category or {}
    pl.DataFrame(
        {"item_id": all_items, "category": [category.get(i) for i in all_items]},
        schema={"item_id": pl.Utf8, "category": pl.Utf8},
    ).write_parquet(path / "items.parquet")

    train_items = sorted({i for ss in train.values() for s in ss for i in s})
    index = {it: r for r, it in enumerate(train_items)}
    counts = events.filter(pl.col("split") == "train")["item_id"].value_counts()
    count_of = dict(zip(counts["item_id"].to_list(), counts["count"].to_list(), strict=True))
    sessions = [s for ss in train.values() for s in ss]
    item_seqs = [_dedup([index[i] for i in s]) for s in sessions]
    save_view(
        path / "views" / "item",
        _view("item", train_items, [count_of[i] for i in train_items], item_seqs, None),
    )
    views = ["item"]
    if category:
        cats = sorted({category[i] for i in train_items if category.get(i) is not None})
        cidx = {c: r for r, c in enumerate(cats)}
        i2n = np.array([cidx.get(category.get(i), -1) for i in train_items], dtype=np.int32)
        ccount = [sum(count_of[i] for i in train_items if category.get(i) == c) for c in cats]
        cseqs = [_dedup([cidx[category[i]] for i in s if category.get(i) is not None]) for s in sessions]
        save_view(path / "views" / "category", _view("category", cats, ccount, cseqs, i2n))
        views.append("category")
    (path / "stats.json").write_text(json.dumps({"dataset": "tiny"}))
    files = {p.relative_to(path).as_posix(): "0" * 64 for p in path.rglob("*") if p.is_file()}
    manifest = PreparedManifest(
        dataset="tiny",
        source="tests",
        created_at=datetime.now(UTC).isoformat(),
        options={},
        views=views,
        files=files,
    )
    (path / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return PreparedData(path)


def planted_chain(path: Path, n_items: int = 60, n_users: int = 300, seed: int = 0) -> PreparedData:
    """Sessions that follow a planted Markov chain: item i is followed by i+1 (70%), i+2 (20%), random (10%).

    Each user walks 10 steps; the first 8 items are one training session, the last 2 the test items, so the
    ground truth is predictable from the trigger while item popularity is flat.
    """
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for u in range(n_users):
        walk = [int(rng.integers(n_items))]
        while len(walk) < 10:
            r = rng.random()
            step = 1 if r < 0.7 else 2 if r < 0.9 else int(rng.integers(3, n_items))
            walk.append((walk[-1] + step) % n_items)
        ids = [f"i{t}" for t in walk]
        train[f"u{u}"] = [ids[:8]]
        test[f"u{u}"] = ids[8:]
    category = {f"i{i}": f"c{i // 6}" for i in range(n_items)}
    return write_prepared(path, train, test, category)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    return planted_chain(tmp_path_factory.mktemp("chain") / "prepared")


# ----------------------------------------------------------------------------------------------- metrics


def test_metrics_by_hand() -> None:
    recs = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [3, 1, -1, -1]])
    # G_0 = {2, 9}, G_1 = {0}, G_2 = {1, 3, 4}
    indptr = np.array([0, 2, 3, 6])
    items = np.array([2, 9, 0, 1, 3, 4])
    m = ranking_metrics(recs, indptr, items, n_items=10, ks=[2, 4])
    assert m["hr@2"] == pytest.approx(2 / 3)
    assert m["precision@2"] == pytest.approx((1 / 2 + 0 + 2 / 2) / 3)
    assert m["recall@2"] == pytest.approx((1 / 2 + 0 + 2 / 3) / 3)
    assert m["f1@2"] == pytest.approx(7 / 16)  # 2 * 0.5 * (7/18) / (0.5 + 7/18)
    assert m["hr@4"] == pytest.approx(2 / 3)
    assert m["precision@4"] == pytest.approx((1 / 4 + 0 + 2 / 4) / 3)  # padding -1 still divides by K
    assert m["recall@4"] == pytest.approx(7 / 18)
    assert m["f1@4"] == pytest.approx(7 / 23)
    zero = ranking_metrics(np.array([[5, 6]]), np.array([0, 1]), np.array([0]), 10, [2])
    assert zero == {"hr@2": 0.0, "precision@2": 0.0, "recall@2": 0.0, "f1@2": 0.0}
    with pytest.raises(ValueError, match="recommendations per user"):
        ranking_metrics(recs, indptr, items, 10, [5])


# ---------------------------------------------------------------------------------------------- protocol


def test_protocol_rules(tmp_path: Path) -> None:
    prepared = write_prepared(
        tmp_path / "p",
        train={"u1": [["A", "B"], ["C"]], "u2": [["D", "A"]], "u3": [["B", "E"]]},
        test={
            "u1": ["B", "D", "Z", "D"],  # B: own history (b); Z: unknown to training (a); D twice -> once
            "u2": ["A"],  # only own history: empty G_u, not a test user
            "u3": ["C", "A"],
            "u4": ["A"],  # no training events, no trigger: not a test user
        },
        shuffle_rows=True,
    )
    ev = build_eval_set(prepared)
    ids = prepared.view("item").node_ids
    row = {i: r for r, i in enumerate(ids.tolist())}
    assert ev.users.tolist() == ["u1", "u3"]
    assert [ids[t] for t in ev.triggers] == ["C", "E"]  # last training event by pos, rows shuffled on disk
    truth = [set(ids[a].tolist()) for a in np.split(ev.truth_items, ev.truth_indptr[1:-1])]
    assert truth == [{"D"}, {"C", "A"}]
    assert ev.exclude() == [{row["A"], row["B"], row["C"]}, {row["B"], row["E"]}]
    assert ev.summary["n_users_with_test_events"] == 4

    for name in ("popularity", "itemcf"):
        method = create(name)
        method.fit(prepared)
        recs = method.recommend(ev.triggers, 3, ev.exclude())
        check_recommendations(recs, ev, 3, name)
        # 5 items, u1's history holds 3: only D and E are left, the third slot is padding
        assert sorted(ids[recs[0, :2]].tolist()) == ["D", "E"] and recs[0, 2] == -1
        assert set(ids[recs[1]].tolist()) == {"A", "C", "D"}


def test_check_recommendations_rejects_history(tmp_path: Path) -> None:
    prepared = write_prepared(
        tmp_path / "p", train={"u": [["A", "B", "C"]], "v": [["D", "E"]]}, test={"u": ["D"]}
    )
    ev = build_eval_set(prepared)
    row = {i: r for r, i in enumerate(prepared.view("item").node_ids.tolist())}
    with pytest.raises(RuntimeError, match="training history"):
        check_recommendations(np.array([[row["D"], row["C"]]]), ev, 2, "bad")
    with pytest.raises(RuntimeError, match="twice"):
        check_recommendations(np.array([[row["D"], row["D"]]]), ev, 2, "bad")
    check_recommendations(np.array([[row["D"], row["E"]]]), ev, 2, "good")


def test_popularity_ranking_and_tie_break(tmp_path: Path) -> None:
    # "5" has 3 training events; "10", "2", "9" have 2 each: ties go by id string, so "10" < "2" < "9".
    prepared = write_prepared(
        tmp_path / "p",
        train={"a": [["5", "9", "2"]], "b": [["10", "5", "9"]], "c": [["2", "5", "10", "7"]]},
        test={"a": ["7"], "d": ["5"]},
    )
    ids = prepared.view("item").node_ids
    assert ids[popularity_order(prepared)].tolist() == ["5", "10", "2", "9", "7"]
    method = create("popularity")
    method.fit(prepared)
    row = {i: r for r, i in enumerate(ids.tolist())}
    recs = method.recommend(np.array([row["2"], row["7"]]), 3, [{row["5"], row["2"]}, set()])
    assert ids[recs[0]].tolist() == ["10", "9", "7"]
    assert ids[recs[1]].tolist() == ["5", "10", "2"]


def test_complete_fills_short_rows() -> None:
    recs = np.array([[4, -1, -1], [1, 2, 3]])
    out = complete(recs, [{0}, {9}], order=np.arange(10), n_items=10)
    assert out.tolist() == [[4, 1, 2], [1, 2, 3]]


# --------------------------------------------------------------------------------------------- methods


def test_itemcf_formula() -> None:
    tokens = np.array([0, 1, 2, 0, 1])
    offsets = np.array([0, 3, 5])
    w3, w2 = 1 / math.log(4), 1 / math.log(3)  # sessions of length 3 and 2
    sim = cooccurrence_similarity(tokens, offsets, 3, window=1).toarray()
    # n_0 = n_1 = 2 sessions, n_2 = 1
    assert sim[0, 1] == pytest.approx((w3 + w2) / 2) and sim[1, 0] == pytest.approx(sim[0, 1])
    assert sim[1, 2] == pytest.approx(w3 / math.sqrt(2))
    assert sim[0, 2] == 0 and np.all(np.diag(sim) == 0)
    whole = cooccurrence_similarity(tokens, offsets, 3, window=None).toarray()
    assert whole[0, 2] == pytest.approx(w3 / math.sqrt(2))


def test_embedding_retrieval_exclusion_and_metrics() -> None:
    v = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [-1, 0]], dtype=np.float32)
    r = EmbeddingRetriever(v, fallback=np.arange(5))
    assert r.recommend(np.array([0]), 3, [{0, 1}]).tolist() == [[2, 3, 4]]
    has = np.array([True, True, False, True, True])
    r2 = EmbeddingRetriever(v, fallback=np.array([2, 4, 3, 1, 0]), has_vector=has)
    # item 2 has no vector: only reachable through the fallback order once vector items run out
    assert r2.recommend(np.array([0]), 4, [{0}]).tolist() == [[1, 3, 4, 2]]
    # L2 with a group ban: nearest to item 0 outside its group {0, 1}
    l2 = EmbeddingRetriever(v, fallback=np.arange(5), metric="l2")
    group = np.array([0, 0, 1, 1, 2])
    assert l2.recommend(np.array([0]), 2, [{0}], group=group).tolist() == [[2, 3]]


def test_random_walks_follow_edges() -> None:
    indptr, indices = neighbour_csr(4, np.array([0, 1, 2, 2]), np.array([1, 2, 0, 2]), directed=False)
    assert indices[indptr[2] : indptr[3]].tolist() == [0, 1]  # self-loop dropped, symmetrised
    tokens, offsets = uniform_walks(indptr, indices, 5, 6, np.random.default_rng(0))
    assert len(offsets) - 1 == 15 and np.all(np.diff(offsets) == 6)  # node 3 has no neighbour
    edges = {(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0)}
    for w in np.split(tokens, offsets[1:-1]):
        assert all((int(a), int(b)) in edges for a, b in zip(w[:-1], w[1:], strict=True))


def _hr(prepared: PreparedData, name: str, k: int = 10, **overrides: object) -> float:
    ev = build_eval_set(prepared)
    method = create(name, MethodContext(seed=0), **overrides)
    method.fit(prepared)
    recs = method.recommend(ev.triggers, k, ev.exclude())
    check_recommendations(recs, ev, k, name)
    return ranking_metrics(recs, ev.truth_indptr, ev.truth_items, ev.n_items, [k])[f"hr@{k}"]


@pytest.fixture(scope="module")
def popularity_hr(chain: PreparedData) -> float:
    return _hr(chain, "popularity")


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("itemcf", {}),
        ("itemcf_session", {}),
        ("item2vec_gensim", {"workers": 1, "sample": 0.0}),  # tiny corpus: every item is "frequent"
        ("eges", {"threads": 1, "lr": 0.01}),  # tiny data: few steps, so the larger lr
    ],
)
def test_baselines_beat_popularity_on_planted_chain(
    chain: PreparedData, popularity_hr: float, name: str, overrides: dict
) -> None:
    hr = _hr(chain, name, **overrides)
    assert popularity_hr < 0.4
    assert hr > popularity_hr + 0.3, (name, hr, popularity_hr)


def test_deepwalk_beats_popularity(chain: PreparedData, popularity_hr: float) -> None:
    pytest.importorskip("trainer.model.train", reason="trainer.model.train (SGNS trainer) not written yet")
    hr = _hr(chain, "deepwalk", batch_size=256, lr=0.01)
    assert hr > popularity_hr + 0.3, hr


def test_m2grl_trained_and_from_artifact(chain: PreparedData, popularity_hr: float, tmp_path: Path) -> None:
    train = pytest.importorskip("trainer.model.train", reason="trainer.model.train not written yet")
    pytest.importorskip("trainer.artifact.writer", reason="trainer.artifact.writer not written yet")
    from trainer.artifact.writer import write_artifact
    from trainer.model.config import TrainConfig
    from trainer.model.metric import fit_metric

    # tiny data, few steps: the paper's larger learning rate converges within them
    small = {"batch_size": 256, "metric_pairs": 4000, "metric_epochs": 2, "lr": 0.01}
    out = run_evaluation(
        chain, EvalOptions(methods=["m2grl"], ks=[10, 50], epochs=5, method_overrides={"m2grl": small})
    )
    assert out["methods"]["m2grl"]["hr@10"] > popularity_hr + 0.3
    div = out["diversity"]
    assert div["category_view"] == "category" and div["n_discovery_users"] > 0
    for strategy in ("general", "diversity"):
        assert 0 <= div[strategy]["discovery_hr@50"] <= 1 and div[strategy]["distinct_categories@50"] >= 1

    # The artifact path must give what retrieval on the same in-memory vectors gives.
    config = TrainConfig(epochs=3, seed=0, **small)
    model = train.fit(chain, config)
    fit_metric(model, chain.view("item"), config)
    path = write_artifact(
        model, tmp_path / "art", dataset="tiny", prepared_fingerprint=chain.fingerprint(), draw_plots=False
    )
    from_art = run_evaluation(chain, EvalOptions(methods=["m2grl"], ks=[10], artifact=path))
    ev = build_eval_set(chain)
    rows = {i: r for r, i in enumerate(model.node_ids["item"].tolist())}
    order = np.array([rows[i] for i in chain.view("item").node_ids.tolist()])
    direct = EmbeddingRetriever(model.embeddings["item"][order], popularity_order(chain))
    recs = direct.recommend(ev.triggers, 10, ev.exclude())
    expected = ranking_metrics(recs, ev.truth_indptr, ev.truth_items, ev.n_items, [10])
    assert from_art["methods"]["m2grl"]["hr@10"] == pytest.approx(expected["hr@10"])
    assert from_art["methods"]["m2grl"]["params"]["artifact"] == str(path)
    assert "diversity" in from_art["diversity"]


# ------------------------------------------------------------------------------------------- diversity


def test_discovery_set_and_distinct_categories(tmp_path: Path) -> None:
    cat = {"A": "x", "B": "x", "C": "y", "D": "z", "E": "y"}
    prepared = write_prepared(
        tmp_path / "p",
        train={"u1": [["A", "C"]], "u2": [["D", "B", "E"]]},
        test={"u1": ["B", "D"], "u2": ["A", "C"]},
        category=cat,
    )
    ev = build_eval_set(prepared)
    cats = item_categories(prepared, "category")
    ds = discovery_set(ev, cats)
    ids = prepared.view("item").node_ids
    row = {i: r for r, i in enumerate(ids.tolist())}
    # u1 knows x and y: only D (z) is new; u2 knows x, y, z: nothing new
    assert ds.users.tolist() == [0] and ids[ds.truth_items].tolist() == ["D"]
    recs = np.array([[row["B"], row["D"]], [row["A"], row["C"]]])
    m = discovery_metrics(recs, ds, cats, 2)
    assert m == {"discovery_hr@2": 1.0, "distinct_categories@2": 2.0}
    assert distinct_categories(np.array([[row["A"], row["B"], -1]]), cats).tolist() == [1]
    with pytest.raises(ValueError, match="no attribute view 'shop'"):
        item_categories(prepared, "shop")


# --------------------------------------------------------------------------------------------- command


def test_parse_methods_errors() -> None:
    assert parse_methods("all") == METHOD_NAMES
    assert parse_methods("itemcf, popularity,itemcf") == ["itemcf", "popularity"]
    with pytest.raises(ValueError, match="unknown method.*nope.*valid methods: popularity"):
        parse_methods("popularity,nope")


def test_run_evaluation_seeds(chain: PreparedData) -> None:
    out = run_evaluation(
        chain, EvalOptions(methods=["popularity", "item2vec_gensim"], ks=[5, 10], seeds=[0, 1])
    )
    pop, w2v = out["methods"]["popularity"], out["methods"]["item2vec_gensim"]
    assert pop["seeds"] == [0] and pop["hr@10_std"] == 0.0 and pop["deterministic"]  # one run suffices
    assert w2v["seeds"] == [0, 1] and set(w2v["per_seed"]) == {"0", "1"}
    assert w2v["hr@10"] == pytest.approx(np.mean([w2v["per_seed"][s]["hr@10"] for s in "01"]))
    assert w2v["hr@10_std"] >= 0 and w2v["params"]["window"] == 9
    events = chain.events
    train = events.filter(pl.col("split") == "train").group_by("user_id").agg(pl.col("item_id"))
    test = events.filter(pl.col("split") == "test").group_by("user_id").agg(pl.col("item_id").alias("t"))
    both = train.join(test, on="user_id")
    expected = sum(bool(set(t) - set(h)) for h, t in zip(both["item_id"], both["t"], strict=True))
    assert 250 < expected < 300  # the chain sometimes returns to an item of the user's history
    assert out["n_test_users"] == out["protocol"]["n_test_users"] == expected


def test_evaluate_command_writes_json_and_markdown(chain: PreparedData, tmp_path: Path, capsys) -> None:
    from trainer.cli import main

    out = tmp_path / "res" / "metrics.json"
    rc = main(
        [
            "evaluate",
            "--data",
            str(chain.path),
            "--methods",
            "popularity,itemcf",
            "--k",
            "5,10",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert set(metrics["methods"]) == {"popularity", "itemcf"}
    for entry in metrics["methods"].values():
        for key in ("hr@5", "recall@10", "precision@10", "f1@10"):
            assert 0.0 <= entry[key] <= 1.0
        assert "params" in entry and entry["seconds"] >= 0
    assert metrics["methods"]["itemcf"]["hr@10"] > metrics["methods"]["popularity"]["hr@10"]
    md = (tmp_path / "res" / "metrics.md").read_text()
    assert "| itemcf |" in md and "HitRate@10" in md
    rc = main(["evaluate", "--data", str(chain.path), "--methods", "bogus", "--out", str(out)])
    assert rc == 2 and "valid methods: popularity" in capsys.readouterr().err
    rc = main(
        [
            "evaluate",
            "--data",
            str(chain.path),
            "--methods",
            "eges",
            "--param",
            "eges.lrr=1",
            "--out",
            str(out),
        ]
    )
    assert rc == 2 and "unknown parameter(s) lrr" in capsys.readouterr().err


def test_param_overrides_reach_the_method(chain: PreparedData, tmp_path: Path) -> None:
    from trainer.cli import main

    out = tmp_path / "m.json"
    args = ["evaluate", "--data", str(chain.path), "--methods", "itemcf,item2vec_gensim", "--k", "10"]
    args += ["--param", "itemcf.window=null", "--param", "item2vec_gensim.workers=1", "--out", str(out)]
    assert main(args) == 0
    methods = json.loads(out.read_text())["methods"]
    assert methods["itemcf"]["params"]["window"] == "session"
    assert methods["item2vec_gensim"]["params"]["workers"] == 1


def test_missing_trainer_is_skipped_with_all_or_reported(chain: PreparedData, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "trainer.model.train", None)  # import now fails
    opts = EvalOptions(methods=["popularity", "deepwalk"], ks=[10], skip_unavailable=True)
    out = run_evaluation(chain, opts)
    assert "trainer.model.train" in out["methods"]["deepwalk"]["skipped"]
    assert "hr@10" in out["methods"]["popularity"]
    with pytest.raises(ValueError, match="deepwalk needs trainer.model.train"):
        run_evaluation(chain, EvalOptions(methods=["deepwalk"], ks=[10]))
