"""The M2GRL training engine: pair generation, negative sampling, walks, reproducibility, input checks, and
learning of planted structure (item clusters, the category graph, the effect of the inter-view task)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.data.prepared import PREPARED_SCHEMA_VERSION, PreparedData, ViewData, save_view
from trainer.model.config import TrainConfig
from trainer.model.pairs import (
    alias_table,
    draw_negatives,
    expected_pair_count,
    inter_view_pairs,
    skipgram_pairs,
    subsample_keep_prob,
    weighted_walks,
)
from trainer.model.train import fit, train_views

# ------------------------------------------------------------------------------------ planted views


def _view(name: str, n: int, tokens: np.ndarray, seq_of: np.ndarray, i2n: np.ndarray | None) -> ViewData:
    """A ViewData from tokens with their sequence ids: consecutive duplicates removed, as preparation does."""
    keep = np.ones(tokens.size, bool)
    keep[1:] = ~((tokens[1:] == tokens[:-1]) & (seq_of[1:] == seq_of[:-1]))
    tokens, seq_of = tokens[keep].astype(np.int32), seq_of[keep]
    lengths = np.bincount(seq_of)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    same = seq_of[1:] == seq_of[:-1]
    key, w = np.unique(tokens[:-1][same].astype(np.int64) * n + tokens[1:][same], return_counts=True)
    return ViewData(
        name=name,
        node_ids=np.array([f"{name[0]}{i}" for i in range(n)], dtype=object),
        node_counts=np.bincount(tokens, minlength=n).astype(np.int64),
        seq_tokens=tokens,
        seq_offsets=offsets,
        edge_src=(key // n).astype(np.int32),
        edge_dst=(key % n).astype(np.int32),
        edge_weight=w.astype(np.int64),
        item_to_node=i2n,
    )


def planted_views(
    n_items: int = 300,
    n_cat: int = 10,
    n_seq: int = 1500,
    length: int = 20,
    stay: float = 0.8,
    noise: float = 0.25,
    seed: int = 0,
) -> tuple[dict[str, ViewData], np.ndarray, np.ndarray]:
    """Item sequences that are Markov walks over categories: stay in the category with probability ``stay``,
    else move to the category's planted successor (with probability 1 - noise) or to a random category.

    The planted graph pairs the categories (successor of c is c ^ 1, and of c ^ 1 is c): skip-gram windows
    are symmetric, so a one-way successor could not be told from a predecessor by any score; with the
    pairing both coincide and "the nearest other category is the successor" has chance level 1/9.
    Returns (views, category of each item, successor of each category)."""
    rng = np.random.default_rng(seed)
    cat_of = np.arange(n_items) % n_cat
    succ = np.arange(n_cat) ^ 1
    per = n_items // n_cat
    members = np.argsort(cat_of, kind="stable").reshape(n_cat, per)
    cats = np.empty((n_seq, length), np.int64)
    cats[:, 0] = rng.integers(0, n_cat, n_seq)
    for t in range(1, length):  # one step of every sequence at once
        move = rng.random(n_seq) >= stay
        jump = np.where(rng.random(n_seq) < noise, rng.integers(0, n_cat, n_seq), succ[cats[:, t - 1]])
        cats[:, t] = np.where(move, jump, cats[:, t - 1])
    items = members[cats, rng.integers(0, per, cats.shape)].ravel()
    seq_of = np.repeat(np.arange(n_seq), length)
    views = {
        "item": _view("item", n_items, items, seq_of, None),
        "category": _view("category", n_cat, cat_of[items], seq_of, cat_of.astype(np.int32)),
    }
    return views, cat_of, succ


def cluster_margin(E: np.ndarray, labels: np.ndarray) -> float:
    """Mean cosine of same-label pairs minus mean cosine of different-label pairs."""
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    S = En @ En.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    return float(S[same & off].mean() - S[~same].mean())


# Tiny planted data gives few steps: the larger learning rate (the paper's 0.01) converges within them.
FAST = dict(dim=16, relation_dim=16, batch_size=256, threads=1, lr=0.01)


@pytest.fixture(scope="module")
def planted():
    return planted_views()


@pytest.fixture(scope="module")
def planted_model(planted):
    views, _, _ = planted
    # The paper's task balance (each task a full mean-loss batch per step), under which the alignment
    # task is strong enough to be asserted on the planted truth below.
    cfg = TrainConfig(**FAST, epochs=4, seed=1, loss_normalisation="task")
    return train_views(views, cfg, progress=False)


# ------------------------------------------------------------------------------------- pair generation


SEQS = (np.array([10, 11, 12, 13, 14, 20, 21, 22], np.int32), np.array([0, 5, 8], np.int64))


def test_fixed_window_pairs_by_hand():
    tokens, offsets = SEQS
    c, o = skipgram_pairs(tokens, offsets, 2, reduced=False, shuffle=False)
    got = sorted(zip(c.tolist(), o.tolist(), strict=True))
    expected = sorted(
        [(10, 11), (10, 12), (11, 10), (11, 12), (11, 13), (12, 10), (12, 11), (12, 13), (12, 14)]
        + [(13, 11), (13, 12), (13, 14), (14, 12), (14, 13)]
        + [(20, 21), (20, 22), (21, 20), (21, 22), (22, 20), (22, 21)]
    )
    assert got == expected  # 14 + 6 pairs, never across the two sequences
    c2, o2 = skipgram_pairs(
        tokens, offsets, 2, reduced=False, shuffle=True, seed=4, center_base=100, context_base=7
    )
    assert sorted(zip((c2 - 100).tolist(), (o2 - 7).tolist(), strict=True)) == expected


def test_reduced_window_counts():
    """word2vec's reduced window: b uniform in 1..c. For c = 2, lengths 5 and 3: b=1 gives 8 + 4 pairs,
    b=2 gives 14 + 6, so 16 pairs are expected."""
    tokens, offsets = SEQS
    assert expected_pair_count(np.array([5, 3]), 2, reduced=True) == 16.0
    assert expected_pair_count(np.array([5, 3]), 2, reduced=False) == 20.0
    fixed = set(zip(*skipgram_pairs(tokens, offsets, 2, reduced=False, shuffle=False), strict=True))
    counts = []
    for seed in range(400):
        c, o = skipgram_pairs(tokens, offsets, 2, reduced=True, seed=seed)
        assert set(zip(c.tolist(), o.tolist(), strict=True)) <= {(int(a), int(b)) for a, b in fixed}
        counts.append(c.size)
    assert np.mean(counts) == pytest.approx(16.0, abs=0.3)
    assert min(counts) == 12 and max(counts) == 20


def test_subsampling_keeps_by_word2vec_formula_and_windows_reach_over_drops():
    counts = np.array([1000, 10, 0, 1])
    keep = subsample_keep_prob(counts, 1e-3)
    t = 1e-3 * 1011
    assert keep[0] == pytest.approx((np.sqrt(1000 / t) + 1) * t / 1000, rel=1e-6)
    assert keep[1] == pytest.approx((np.sqrt(10 / t) + 1) * t / 10, rel=1e-6)  # 0.419
    assert keep[3] == 1.0 and keep[2] == 1.0  # rare nodes are always kept
    assert subsample_keep_prob(counts, 0.0) is None
    tokens = np.array([1, 0, 3], np.int32)
    c, o = skipgram_pairs(
        tokens, np.array([0, 3]), 1, reduced=False, keep_prob=np.array([0, 1, 1, 1], np.float32)
    )
    assert sorted(zip(c.tolist(), o.tolist(), strict=True)) == [
        (1, 3),
        (3, 1),
    ]  # 0 dropped, 1 and 3 now adjacent


def test_inter_view_pairs_skip_items_without_attribute():
    i2n = np.array([2, -1, 0, 1], np.int32)
    items, attrs = inter_view_pairs(
        np.array([0, 1, 2, 3, 1, 0], np.int32), i2n, seed=3, item_base=5, attr_base=50
    )
    got = sorted(zip(items.tolist(), attrs.tolist(), strict=True))
    assert got == [(5, 52), (5, 52), (7, 50), (8, 51)]


def test_negative_table_follows_unigram_power():
    counts = np.array([1, 2, 5, 10, 30, 0, 100, 300, 1000, 7, 3, 0, 50, 20, 4, 9, 60, 200, 15, 8], float)
    thr, al = alias_table(counts, 0.75)
    n = 400_000
    draws = draw_negatives(thr, al, n, seed=11)
    observed = np.bincount(draws, minlength=counts.size)
    p = counts**0.75 / (counts**0.75).sum()
    assert observed[counts == 0].sum() == 0
    nz = counts > 0
    chi2 = float((((observed - n * p) ** 2)[nz] / (n * p[nz])).sum())
    assert chi2 < 42.3  # 99.9% quantile of chi-square with 17 degrees of freedom
    # and it is not the plain unigram: the most frequent node is drawn less often than its count share
    assert observed[8] / n < counts[8] / counts.sum() - 0.05


def test_weighted_walks_follow_edge_weights():
    # 0 -> 1 (weight 1), 0 -> 2 (weight 3), 1 -> 0, 2 -> 0; node 3 -> 2 only; nothing leaves node 4
    src = np.array([0, 0, 1, 2, 3])
    dst = np.array([1, 2, 0, 0, 2])
    w = np.array([1, 3, 1, 1, 1])
    tokens, offsets = weighted_walks(5, src, dst, w, walks_per_node=500, walk_length=9, seed=2)
    lengths = np.diff(offsets)
    assert lengths.size == 4 * 500 and (lengths == 9).all()  # nodes 0-3 start walks; node 4 has no out-edge
    seq_of = np.repeat(np.arange(lengths.size), lengths)
    same = seq_of[1:] == seq_of[:-1]
    a, b = tokens[:-1][same], tokens[1:][same]
    edges = set(zip(src.tolist(), dst.tolist(), strict=True))
    assert set(zip(a.tolist(), b.tolist(), strict=True)) <= edges
    frac = np.mean(b[a == 0] == 2)
    assert frac == pytest.approx(0.75, abs=0.02)


# ------------------------------------------------------------------------------------ training checks


def test_same_seed_same_tables_and_seed_matters(planted):
    views, _, _ = planted
    small = {"item": views["item"], "category": views["category"]}
    cfg = TrainConfig(**FAST, epochs=1, seed=7)
    a = train_views(small, cfg, progress=False)
    b = train_views(small, cfg, progress=False)
    c = train_views(small, cfg.model_copy(update={"seed": 8}), progress=False)
    for v in ("item", "category"):
        assert np.array_equal(a.embeddings[v], b.embeddings[v])
        assert np.array_equal(a.context_embeddings[v], b.context_embeddings[v])
        assert not np.array_equal(a.embeddings[v], c.embeddings[v])
    assert np.array_equal(a.W["category"], b.W["category"])
    assert a.sigma2 == b.sigma2


def test_trained_model_contents(planted, planted_model):
    views, _, _ = planted
    m = planted_model
    assert m.views == ["item", "category"]
    assert m.embeddings["item"].shape == (300, 16) and m.embeddings["item"].dtype == np.float32
    assert m.context_embeddings["category"].shape == (10, 16)
    assert m.W["category"].shape == (16, 16)
    assert np.array_equal(m.item_to_attr["category"], views["category"].item_to_node)
    assert set(m.sigma2) == {"item", "category", "item-category"}
    assert all(s >= 0.05 for s in m.sigma2.values())
    assert m.L_i is None and m.L_ic is None
    row = m.curves[-1]
    assert {"step", "epoch", "loss/item", "sigma2/item", "loss/item-category", "sigma2/category"} <= set(row)
    first, last = m.curves[0], m.curves[-1]
    assert last["loss/item"] < first["loss/item"] and last["loss/item-category"] < first["loss/item-category"]
    assert row["sigma2/item"] == pytest.approx(m.sigma2["item"])


def test_learns_planted_item_clusters_and_category_graph(planted, planted_model):
    _, cat_of, succ = planted
    m = planted_model
    assert cluster_margin(m.embeddings["item"], cat_of) > 0.3  # measured ~0.6
    score = m.embeddings["category"] @ m.context_embeddings["category"].T
    np.fill_diagonal(score, -np.inf)
    assert np.mean(score.argmax(axis=1) == succ) >= 0.8
    # the alignment task: an item's relational score is highest with its own category
    item_side, cat_side = m.relational("category")
    assert np.mean((item_side @ cat_side.T).argmax(axis=1) == cat_of) > 0.8


def test_inter_view_task_pulls_rare_items_to_their_category():
    """Many rare items and sessions that hop between categories: the item sequences alone carry a weak
    category signal, the item-category task a strong one."""
    views, cat_of, _ = planted_views(
        n_items=2000, n_cat=10, n_seq=1000, length=10, stay=0.5, noise=1.0, seed=3
    )
    base = TrainConfig(**FAST, epochs=5, seed=0, loss_normalisation="task")
    with_inter = train_views(views, base, progress=False)
    without = train_views(views, base.model_copy(update={"inter_view": False}), progress=False)
    m_with = cluster_margin(with_inter.embeddings["item"], cat_of)
    m_without = cluster_margin(without.embeddings["item"], cat_of)
    assert m_with > m_without + 0.1, (m_with, m_without)  # measured 0.26 against 0.04
    assert without.W == {} and "item-category" not in without.sigma2


def test_weighting_modes_reported(planted):
    views, _, _ = planted
    item_only = {"item": views["item"]}
    uni = train_views(views, TrainConfig(**FAST, epochs=1, weighting="uniform"), progress=False)
    assert uni.sigma2 == {"item": 1.0, "category": 1.0, "item-category": 1.0}
    static = train_views(views, TrainConfig(**FAST, epochs=1, weighting="static"), progress=False)
    assert static.sigma2["item"] == pytest.approx(1 / 0.05) and static.sigma2["category"] == 1.0
    dw = train_views(
        item_only, TrainConfig(**FAST, epochs=1, inter_view=False, weighting="uniform"), progress=False
    )
    assert dw.views == ["item"] and dw.W == {} and list(dw.sigma2) == ["item"]


def test_sgd_walks_and_threads_still_learn(planted):
    views, cat_of, _ = planted
    sgd_cfg = TrainConfig(**{**FAST, "lr": 0.05}, epochs=3, optimizer="sgd")
    sgd = train_views(views, sgd_cfg, progress=False)
    assert cluster_margin(sgd.embeddings["item"], cat_of) > 0.3
    # DeepWalk-style: walks only on the item graph (one sequence of 2 nodes plus walks_per_node)
    walks = TrainConfig(**FAST, epochs=2, walks_per_node=5, inter_view=False, weighting="uniform")
    m = train_views({"item": views["item"]}, walks, progress=False)
    assert cluster_margin(m.embeddings["item"], cat_of) > 0.3
    two = train_views(views, TrainConfig(**{**FAST, "threads": 2}, epochs=2), progress=False)
    assert cluster_margin(two.embeddings["item"], cat_of) > 0.3


# ---------------------------------------------------------------------------------- inputs and fit()


def test_bad_inputs_are_named(planted):
    views, _, _ = planted
    with pytest.raises(ValueError, match="'item' view is required"):
        train_views({"category": views["category"]}, TrainConfig(**FAST), progress=False)
    bad = views["category"]
    broken = ViewData(**{**bad.__dict__, "item_to_node": bad.item_to_node[:-1]})
    with pytest.raises(ValueError, match="view 'category': item_to_node has 299 entries"):
        train_views({"item": views["item"], "category": broken}, TrainConfig(**FAST), progress=False)
    tok = views["item"]
    out_of_range = ViewData(**{**tok.__dict__, "seq_tokens": tok.seq_tokens + 1000})
    with pytest.raises(ValueError, match="view 'item': sequence tokens"):
        train_views({"item": out_of_range}, TrainConfig(**FAST), progress=False)


def test_fit_reads_prepared_views(tmp_path: Path, planted):
    views, _, _ = planted
    files = {}
    for name, v in views.items():
        save_view(tmp_path / "views" / name, v)
        files[f"views/{name}/nodes.parquet"] = "0"
    manifest = {
        "schema_version": PREPARED_SCHEMA_VERSION, "dataset": "planted", "source": "test", "created_at": "now",
        "options": {}, "views": list(views), "files": files,
    }  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    prepared = PreparedData(tmp_path)
    m = fit(prepared, TrainConfig(**FAST, epochs=1, views=["item"]))
    assert m.views == ["item"] and list(m.sigma2) == ["item"]
    with pytest.raises(ValueError, match="not in the prepared views"):
        fit(prepared, TrainConfig(**FAST, views=["item", "brand"]))
