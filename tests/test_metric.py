"""The diversity metric model (paper Sec. 6.1): distances, Eq. 12 loss, pair sampling, training on planted data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.data.prepared import ViewData
from trainer.model.config import TrainConfig
from trainer.model.metric import (
    category_transitions,
    contrastive_loss,
    diversity_vectors,
    fit_metric,
    metric_distance,
    pair_distances,
    sample_pairs,
)
from trainer.model.result import TrainedModel


def item_view(n_items: int, sequences: list[list[int]]) -> ViewData:
    tokens = (
        np.concatenate([np.asarray(s, np.int32) for s in sequences]) if sequences else np.empty(0, np.int32)
    )
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    return ViewData(
        name="item",
        node_ids=np.array([f"i{k}" for k in range(n_items)], dtype=object),
        node_counts=np.ones(n_items, np.int64),
        seq_tokens=tokens,
        seq_offsets=offsets,
        edge_src=np.empty(0, np.int32),
        edge_dst=np.empty(0, np.int32),
        edge_weight=np.empty(0, np.int64),
        item_to_node=None,
    )


def planted(
    seed: int = 0, config: TrainConfig | None = None, attr_view: str = "category"
) -> tuple[TrainedModel, ViewData]:
    """4 categories x 24 items; item j of category k has theme j % 6. Embeddings = 3 * one-hot(category) +
    theme vector + noise. Sessions move to the *next* category keeping the theme, so positive pairs share a
    theme and differ in category: far apart under the identity metric (category dims dominate), while
    same-category negatives are near. The metric has to learn to ignore the category dims."""
    rng = np.random.default_rng(seed)
    n_cat, per_cat, n_themes, dim, rel_dim = 4, 24, 6, 8, 6
    n_items = n_cat * per_cat
    cat = np.repeat(np.arange(n_cat), per_cat).astype(np.int32)
    theme = np.tile(np.arange(per_cat) % n_themes, n_cat)
    theme_vec = rng.normal(size=(n_themes, dim - n_cat))
    e = np.zeros((n_items, dim))
    e[np.arange(n_items), cat] = 3.0
    e[:, n_cat:] = theme_vec[theme]
    e += 0.1 * rng.normal(size=e.shape)
    sequences = []
    for _ in range(300):
        item = int(rng.integers(n_items))
        seq = [item]
        for _ in range(5):
            nxt_cat = (cat[item] + 1) % n_cat
            options = np.flatnonzero((cat == nxt_cat) & (theme == theme[item]))
            item = int(rng.choice(options))
            seq.append(item)
        sequences.append(seq)
    config = config or TrainConfig(
        dim=dim, relation_dim=rel_dim, metric_pairs=4000, metric_epochs=20, batch_size=256, lr=0.05
    )
    model = TrainedModel(
        config=config,
        views=["item", attr_view],
        node_ids={
            "item": np.array([f"i{k}" for k in range(n_items)], dtype=object),
            attr_view: np.array([f"c{k}" for k in range(n_cat)], dtype=object),
        },
        embeddings={
            "item": e.astype(np.float32),
            attr_view: rng.normal(size=(n_cat, dim)).astype(np.float32),
        },
        context_embeddings={},
        item_to_attr={attr_view: cat},
        W={attr_view: (0.5 * rng.normal(size=(rel_dim, dim))).astype(np.float32)},
        sigma2={"item": 1.0, attr_view: 1.0, f"item-{attr_view}": 1.0},
    )
    return model, item_view(n_items, sequences)


def test_diversity_vectors_reproduce_the_metric_distance() -> None:
    model, _ = planted()
    rng = np.random.default_rng(1)
    model.L_i = rng.normal(size=(8, 8))
    model.L_ic = rng.normal(size=(6, 6))
    a, b = rng.integers(0, 96, 500), rng.integers(0, 96, 500)
    # Reference computed here, independently of the module: e_ic = sigmoid(W e), M = L^T L.
    e = model.embeddings["item"].astype(np.float64)
    ec = 1.0 / (1.0 + np.exp(-(e @ model.W["category"].astype(np.float64).T)))
    M_i, M_ic = model.L_i.T @ model.L_i, model.L_ic.T @ model.L_ic
    di, dc = e[a] - e[b], ec[a] - ec[b]
    d_ref = np.sum((di @ M_i) * di, 1) + np.sum((dc @ M_ic) * dc, 1)
    z = diversity_vectors(model, dtype=np.float64)
    assert z.shape == (96, 14)
    np.testing.assert_allclose(np.sum((z[a] - z[b]) ** 2, 1), d_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metric_distance(model, a, b), d_ref, rtol=1e-5, atol=1e-5)
    z32 = diversity_vectors(model)
    assert z32.dtype == np.float32
    np.testing.assert_allclose(
        np.sum((z32[a] - z32[b]).astype(np.float64) ** 2, 1), d_ref, rtol=1e-3, atol=1e-3
    )


def test_pair_distances_and_contrastive_loss_by_hand() -> None:
    L_i = torch.eye(2)
    L_ic = 2.0 * torch.eye(1)
    delta_i = torch.tensor([[1.0, 2.0], [0.5, 0.0], [1.0, 1.0]])
    delta_ic = torch.tensor([[0.5], [0.25], [0.5]])
    d = pair_distances(L_i, L_ic, delta_i, delta_ic)
    # d = |delta_i|^2 + (2 delta_ic)^2
    np.testing.assert_allclose(d.numpy(), [5 + 1, 0.25 + 0.25, 2 + 1], rtol=1e-6)
    y = torch.tensor([1.0, 0.0, 0.0])
    # 1/(2N) [6^2 + max(2 - 0.5, 0)^2 + max(2 - 3, 0)^2] = (36 + 2.25 + 0) / 6
    assert float(contrastive_loss(d, y, margin=2.0)) == pytest.approx(38.25 / 6, rel=1e-6)
    assert float(contrastive_loss(d[1:], torch.tensor([1.0, 1.0]), margin=2.0)) == pytest.approx(
        (0.25 + 9) / 4, rel=1e-6
    )


def test_pairs_follow_sessions_and_categories() -> None:
    cat = np.array([0, 0, 1, 1, 2, -1], np.int32)
    # The boundary (1 -> 2) between the two sessions differs in category but is not a transition;
    # 3 -> 5 involves an item without category.
    view = item_view(6, [[0, 1], [2, 3, 0, 4], [3, 5]])
    a, b = category_transitions(view, cat)
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 4), (3, 0)]
    pairs = sample_pairs(view, cat, 1000, np.random.default_rng(0))
    assert len(pairs) == 1000
    pos = pairs.y == 1
    assert pos.sum() == 500
    assert set(zip(pairs.a[pos].tolist(), pairs.b[pos].tolist(), strict=True)) == {(0, 4), (3, 0)}
    neg_a, neg_b = pairs.a[~pos], pairs.b[~pos]
    assert np.all(neg_a != neg_b)
    same = neg_a[:250], neg_b[:250]
    assert np.all(cat[same[0]] == cat[same[1]]) and np.all(cat[same[0]] >= 0)
    assert not np.isin(same[0], [4, 5]).any()  # category 2 has one item, 5 has none: never in such pairs
    assert not sample_pairs(item_view(6, [[0, 1], [2, 3]]), cat, 100, np.random.default_rng(0)).a.size


def test_training_separates_positives_from_negatives_on_planted_data() -> None:
    model, view = planted()
    a, b = category_transitions(view, model.item_to_attr["category"])
    cat = model.item_to_attr["category"]
    sa, sb = np.nonzero((cat[:, None] == cat[None, :]) & ~np.eye(len(cat), dtype=bool))
    model.L_i, model.L_ic = np.eye(8), np.eye(6)
    # The planted difficulty: under the identity metric positives are farther than same-category pairs.
    assert metric_distance(model, a, b).mean() > 1.5 * metric_distance(model, sa, sb).mean()
    model.L_i = model.L_ic = None

    fit_metric(model, view, model.config)
    curve = model.metric_curve
    assert [r["epoch"] for r in curve] == list(range(21))
    assert curve[-1]["loss"] < 0.3 * curve[0]["loss"]
    assert curve[-1]["d_pos"] < 0.3 * curve[-1]["d_neg"]
    d_pos, d_same = metric_distance(model, a, b).mean(), metric_distance(model, sa, sb).mean()
    assert d_pos < 0.5 * d_same
    M_i = model.L_i.T @ model.L_i
    np.testing.assert_allclose(M_i, M_i.T, atol=1e-12)
    assert np.linalg.eigvalsh(M_i).min() > -1e-10
    assert np.linalg.eigvalsh(model.L_ic.T @ model.L_ic).min() > -1e-10


def test_metric_view_fallback_and_error() -> None:
    model, view = planted(attr_view="genre")
    model.config = model.config.model_copy(update={"metric_epochs": 1, "metric_pairs": 200})
    fit_metric(model, view, model.config)
    assert model.config.metric_view == "genre" and model.L_i is not None

    explicit = TrainConfig(dim=8, relation_dim=6, metric_view="category")
    model, view = planted(config=explicit, attr_view="genre")
    with pytest.raises(ValueError, match="metric_view 'category'"):
        fit_metric(model, view, explicit)


def test_without_inter_view_task_the_relational_term_vanishes() -> None:
    model, view = planted()
    model.W = {}
    model.config = model.config.model_copy(update={"metric_epochs": 2, "metric_pairs": 400})
    fit_metric(model, view, model.config)
    z = diversity_vectors(model)
    assert z.shape == (96, 14)
    assert np.ptp(z[:, 8:], axis=0).max() == 0.0  # the e_ic half is the same for all items
    np.testing.assert_allclose(model.L_ic, model.L_ic[0, 0] * np.eye(6))  # never updated
