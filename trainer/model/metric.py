"""The multi-view diversity metric model of M2GRL (paper Sec. 6.1, Eq. 11-12).

Two representations of an item ``i`` are used: its instance-view embedding ``e_i`` and its instance-category
relational embedding ``e_ic = sigmoid(W_ic e_i)``, where ``W_ic`` is the matrix of the inter-view task
``item-<metric_view>``. The distance of an item pair (a, b) is (Eq. 11)::

    d(a, b) = (e_a - e_b)^T M_i (e_a - e_b) + (e_ic_a - e_ic_b)^T M_ic (e_ic_a - e_ic_b)

We parametrise ``M = L^T L`` (``L_i``: dim x dim, ``L_ic``: relation_dim x relation_dim), so both matrices are
positive semi-definite by construction and the *diversity vector* ``z = [L_i e_i ; L_ic e_ic]`` satisfies
``||z_a - z_b||^2 = d(a, b)``: nearest neighbours under ``d`` are plain L2 neighbours of ``z``, which an HNSW
index serves.

Loss. The paper trains the metric with the contrastive loss of Hadsell et al. (its Eq. 12)::

    L_metric = 1/(2N) * sum_n [ y_n * d_n^2 + (1 - y_n) * max(margin - d_n, 0)^2 ]

and we implement exactly that, with ``d`` *as defined in Eq. 11*. Note that ``d`` there is already a squared
(Mahalanobis) distance, so the positive term is the fourth power of a Euclidean distance in z-space and the
margin is a bound on the *squared* distance of negatives (``||z_a - z_b||^2 >= margin``). Hadsell et al.
square a plain Euclidean distance instead; we follow the paper's text, not the original reference.

Training pairs (the paper does not say how its pairs are built; this is our choice). From the training
sessions of the item view:

- positives (y = 1): consecutive items of a session whose categories differ and are both known -- a user
  moved from one category to another, i.e. the "close in interest, different in category" pairs a
  diversity recommender should retrieve. Drawn with replacement, so frequent transitions weigh more.
- negatives (y = 0), half each: uniformly random item pairs (unrelated items should be far), and pairs of
  distinct items of the *same* category (the diversity space must not reward staying in a category).

``metric_pairs`` pairs are drawn once (half positives), then ``metric_epochs`` passes of Adam run over them in
mini-batches of ``batch_size``. The item vectors and ``W_ic`` are frozen; only ``L_i`` and ``L_ic`` are learned.
Both start as scaled identities, scaled so that each of the two terms contributes ``margin / 2`` to the mean
distance of the training pairs: the loss then starts in its active region whatever the embeddings' scale.
``metric_curve`` holds, per epoch (row 0 = before training), the loss and the mean ``d`` of positives and
negatives on a fixed sample of at most 50 000 training pairs.

Without an inter-view task for the metric view (``--no-inter-view``), ``e_ic`` is taken as the zero vector:
the relational term vanishes and the model reduces to a metric on ``e_i`` alone (shapes stay the same).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from trainer.data.prepared import ViewData
from trainer.data.schema import ITEM_VIEW
from trainer.model.config import TrainConfig
from trainer.model.result import TrainedModel

log = logging.getLogger(__name__)

_EVAL_CHUNK = 65_536
_EVAL_PAIRS = 50_000  # the curve is measured on a fixed sample of the training pairs of at most this size


@dataclass
class MetricPairs:
    """Item-row pairs for the contrastive loss: ``y`` = 1 for positives, 0 for negatives."""

    a: np.ndarray  # int64
    b: np.ndarray  # int64
    y: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.a)


def resolve_metric_view(model: TrainedModel) -> str | None:
    """The attribute view whose categories and ``W`` the metric model uses; None when there is none.

    ``config.metric_view`` is used when the model has that view. When the user left it at its default and the
    data has no such view (MovieLens has 'genre', not 'category'), the first attribute view is used instead; an
    explicitly requested view that does not exist is an error.
    """
    attribute_views = [v for v in model.views if v != ITEM_VIEW]
    wanted = model.config.metric_view
    if wanted in attribute_views:
        return wanted
    if "metric_view" in model.config.model_fields_set:
        raise ValueError(
            f"metric_view {wanted!r} is not a view of this model; its attribute views: {attribute_views}"
        )
    if not attribute_views:
        return None
    log.warning(
        "no %r view in this data; the diversity metric model uses view %r", wanted, attribute_views[0]
    )
    return attribute_views[0]


def relational_item_vectors(model: TrainedModel, view: str) -> np.ndarray:
    """e_ic = sigmoid(W_ic e_i) per item row, or zeros when the model has no inter-view task for ``view``."""
    if view in model.W:
        return model.relational(view)[0]
    return np.zeros((model.embeddings[ITEM_VIEW].shape[0], model.config.relation_dim), dtype=np.float32)


def category_transitions(item_sequences: ViewData, item_cat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive item pairs (a, b) within sessions whose known categories differ (the positive pairs)."""
    tokens = item_sequences.seq_tokens.astype(np.int64)
    if len(tokens) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    starts = np.zeros(len(tokens), dtype=bool)
    starts[item_sequences.seq_offsets[:-1][item_sequences.seq_offsets[:-1] < len(tokens)]] = True
    a, b = tokens[:-1], tokens[1:]
    ca, cb = item_cat[a], item_cat[b]
    keep = ~starts[1:] & (ca >= 0) & (cb >= 0) & (ca != cb)
    return a[keep], b[keep]


def _same_category_pairs(
    item_cat: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of distinct items drawn uniformly among items whose category holds >= 2 items."""
    known = np.flatnonzero(item_cat >= 0)
    if len(known) == 0 or n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = known[np.argsort(item_cat[known], kind="stable")]  # items grouped by category
    counts = np.bincount(item_cat[known])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(item_cat), dtype=np.int64)
    rank[order] = np.arange(len(order)) - starts[item_cat[order]]
    eligible = known[counts[item_cat[known]] >= 2]
    if len(eligible) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    a = eligible[rng.integers(0, len(eligible), n)]
    c = item_cat[a]
    # A shift in [1, count) around the category block never lands on a itself.
    b_rank = (rank[a] + rng.integers(1, counts[c])) % counts[c]
    return a, order[starts[c] + b_rank]


def _random_pairs(n_items: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = rng.integers(0, n_items, n)
    return a, (a + rng.integers(1, n_items, n)) % n_items


def sample_pairs(
    item_sequences: ViewData, item_cat: np.ndarray, n_pairs: int, rng: np.random.Generator
) -> MetricPairs:
    """Draw ``n_pairs`` training pairs: half positives, a quarter random and a quarter same-category negatives.

    item_sequences: the item view's training sessions (node indices = item rows).
    item_cat: int per item row, the category node of the item, -1 when unknown.
    Returns fewer pairs (possibly none) when the data has no positive pair.
    """
    n_items = len(item_cat)
    pos_a, pos_b = category_transitions(item_sequences, item_cat)
    if len(pos_a) == 0 or n_items < 2 or n_pairs < 2:
        return MetricPairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    n_pos = n_pairs // 2
    pick = rng.integers(0, len(pos_a), n_pos)
    n_same = (n_pairs - n_pos) // 2
    same_a, same_b = _same_category_pairs(item_cat, n_same, rng)
    rand_a, rand_b = _random_pairs(n_items, n_pairs - n_pos - len(same_a), rng)
    a = np.concatenate([pos_a[pick], same_a, rand_a])
    b = np.concatenate([pos_b[pick], same_b, rand_b])
    y = np.concatenate([np.ones(n_pos, np.float32), np.zeros(len(a) - n_pos, np.float32)])
    return MetricPairs(a.astype(np.int64), b.astype(np.int64), y)


def pair_distances(
    L_i: torch.Tensor, L_ic: torch.Tensor, delta_i: torch.Tensor, delta_ic: torch.Tensor
) -> torch.Tensor:
    """Eq. 11 for a batch: delta^T L^T L delta of both views, from the pair differences (B, dim), (B, rel_dim)."""
    return (delta_i @ L_i.T).square().sum(1) + (delta_ic @ L_ic.T).square().sum(1)


def contrastive_loss(d: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 12: 1/(2N) sum y d^2 + (1 - y) max(margin - d, 0)^2, with d the Eq. 11 distance (see module doc)."""
    return 0.5 * (y * d.square() + (1.0 - y) * torch.clamp(margin - d, min=0.0).square()).mean()


def _initial_scale(delta_sq_mean: float, margin: float) -> float:
    return float(np.sqrt(margin / (2.0 * delta_sq_mean))) if delta_sq_mean > 1e-12 else 1.0


def _evaluate(
    L_i: torch.Tensor,
    L_ic: torch.Tensor,
    E: torch.Tensor,
    EC: torch.Tensor,
    pairs: MetricPairs,
    margin: float,
) -> dict[str, float]:
    """Loss and mean distance of positives / negatives over ``pairs`` (no gradient)."""
    a, b, y = torch.from_numpy(pairs.a), torch.from_numpy(pairs.b), torch.from_numpy(pairs.y)
    ds = []
    with torch.no_grad():
        for lo in range(0, len(pairs), _EVAL_CHUNK):
            sa, sb = a[lo : lo + _EVAL_CHUNK], b[lo : lo + _EVAL_CHUNK]
            ds.append(pair_distances(L_i, L_ic, E[sa] - E[sb], EC[sa] - EC[sb]))
        d = torch.cat(ds)
        pos = y > 0.5
        return {
            "loss": float(contrastive_loss(d, y, margin)),
            "d_pos": float(d[pos].mean()) if bool(pos.any()) else float("nan"),
            "d_neg": float(d[~pos].mean()) if bool((~pos).any()) else float("nan"),
        }


@contextmanager
def _single_torch_thread() -> Iterator[None]:
    # The problem is tiny (batches of 2048 x 64): threads gain nothing, and on a busy machine every
    # multi-threaded op waits for a descheduled worker (measured 20-40x slower with 2 threads under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_metric(model: TrainedModel, item_sequences: ViewData, config: TrainConfig) -> None:
    """Learn L_i and L_ic of the diversity metric model; fills ``model.L_i``, ``model.L_ic``, ``model.metric_curve``.

    model: a trained M2GRL model; its item embeddings and W of task item-<metric_view> stay frozen.
    item_sequences: the item view of the prepared data, whose training sessions give the positive pairs.
    config: metric_pairs (pairs drawn once), metric_epochs (passes over them), metric_margin (Eq. 12 margin),
        batch_size, lr (Adam), grad_clip and seed.

    The resolved metric view is written back into ``model.config.metric_view``. With no attribute view at all
    the model cannot be defined (no categories): a warning is logged and ``model.L_i`` stays None.
    """
    view = resolve_metric_view(model)
    if view is None:
        log.warning("the model has no attribute view, so no categories: no diversity metric model")
        return
    model.config = model.config.model_copy(update={"metric_view": view})
    if view not in model.W:
        log.warning("no inter-view task item-%s: the metric model uses the instance view alone", view)
    e_i = np.ascontiguousarray(model.embeddings[ITEM_VIEW], dtype=np.float32)
    e_ic = relational_item_vectors(model, view)
    item_cat = np.asarray(model.item_to_attr[view], dtype=np.int64)
    if len(item_cat) != len(e_i):
        raise ValueError(f"item_to_attr[{view!r}] has {len(item_cat)} rows, the item table {len(e_i)}")
    if item_sequences.n_nodes != len(e_i):
        raise ValueError(f"item view has {item_sequences.n_nodes} nodes, the item table {len(e_i)} rows")

    pairs = sample_pairs(item_sequences, item_cat, config.metric_pairs, np.random.default_rng(config.seed))
    if len(pairs):
        log.info(
            "metric model on view %s: %d pairs (%d positive), %d epochs",
            view,
            len(pairs),
            int(pairs.y.sum()),
            config.metric_epochs,
        )
    else:
        log.warning(
            "no consecutive items of different %s in the training sessions: metric model untrained", view
        )
    with _single_torch_thread():
        L_i, L_ic, curve = _fit_factors(torch.from_numpy(e_i), torch.from_numpy(e_ic), pairs, config)
    if curve:
        log.info(
            "metric model: loss %.4g -> %.4g, mean d positive %.4g, negative %.4g",
            curve[0]["loss"],
            curve[-1]["loss"],
            curve[-1]["d_pos"],
            curve[-1]["d_neg"],
        )
    model.L_i, model.L_ic, model.metric_curve = L_i, L_ic, curve


def _fit_factors(
    E: torch.Tensor, EC: torch.Tensor, pairs: MetricPairs, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, list[dict[str, float]]]:
    """Scaled-identity start, then Adam; returns float64 L_i, L_ic and the per-epoch curve."""
    s_i = s_ic = 1.0
    if len(pairs):
        a, b = torch.from_numpy(pairs.a), torch.from_numpy(pairs.b)
        s_i = _initial_scale(float((E[a] - E[b]).square().sum(1).mean()), config.metric_margin)
        s_ic = _initial_scale(float((EC[a] - EC[b]).square().sum(1).mean()), config.metric_margin)
    L_i = torch.nn.Parameter(s_i * torch.eye(E.shape[1]))
    L_ic = torch.nn.Parameter(s_ic * torch.eye(EC.shape[1]))
    curve: list[dict[str, float]] = []
    if len(pairs):
        _train(L_i, L_ic, E, EC, pairs, config, curve)
    return L_i.detach().numpy().astype(np.float64), L_ic.detach().numpy().astype(np.float64), curve


def _train(
    L_i: torch.nn.Parameter,
    L_ic: torch.nn.Parameter,
    E: torch.Tensor,
    EC: torch.Tensor,
    pairs: MetricPairs,
    config: TrainConfig,
    curve: list[dict[str, float]],
) -> None:
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam([L_i, L_ic], lr=config.lr)
    a_all, b_all, y_all = torch.from_numpy(pairs.a), torch.from_numpy(pairs.b), torch.from_numpy(pairs.y)
    batch = min(config.batch_size, len(pairs))
    if len(pairs) > _EVAL_PAIRS:
        keep = np.sort(np.random.default_rng(config.seed + 1).choice(len(pairs), _EVAL_PAIRS, replace=False))
        eval_pairs = MetricPairs(pairs.a[keep], pairs.b[keep], pairs.y[keep])
    else:
        eval_pairs = pairs
    curve.append({"epoch": 0, "step": 0, **_evaluate(L_i, L_ic, E, EC, eval_pairs, config.metric_margin)})
    step = 0
    for epoch in tqdm(range(1, config.metric_epochs + 1), desc="metric model", unit="epoch", leave=False):
        perm = torch.randperm(len(pairs), generator=gen)
        for lo in range(0, len(pairs), batch):
            idx = perm[lo : lo + batch]
            a, b = a_all[idx], b_all[idx]
            d = pair_distances(L_i, L_ic, E[a] - E[b], EC[a] - EC[b])
            loss = contrastive_loss(d, y_all[idx], config.metric_margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([L_i, L_ic], config.grad_clip)
            opt.step()
            step += 1
        row = {"epoch": epoch, "step": step, **_evaluate(L_i, L_ic, E, EC, eval_pairs, config.metric_margin)}
        curve.append(row)
        log.debug("metric epoch %d: %s", epoch, row)


def diversity_vectors(model: TrainedModel, dtype: type = np.float32) -> np.ndarray:
    """z = [L_i e_i ; L_ic e_ic] per item row, (n_items, dim + relation_dim): ||z_a - z_b||^2 = d(a, b)."""
    if model.L_i is None or model.L_ic is None:
        raise ValueError("the model has no diversity metric (run fit_metric first)")
    view = resolve_metric_view(model)
    assert view is not None  # L_i is only set when a metric view exists
    e_i = model.embeddings[ITEM_VIEW].astype(np.float64)
    e_ic = relational_item_vectors(model, view).astype(np.float64)
    z = np.concatenate(
        [e_i @ np.asarray(model.L_i, np.float64).T, e_ic @ np.asarray(model.L_ic, np.float64).T], 1
    )
    return z.astype(dtype)


def metric_distance(model: TrainedModel, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Eq. 11 computed directly with M = L^T L (float64) for item rows a[k], b[k]; the reference for z."""
    if model.L_i is None or model.L_ic is None:
        raise ValueError("the model has no diversity metric (run fit_metric first)")
    view = resolve_metric_view(model)
    assert view is not None
    L_i, L_ic = np.asarray(model.L_i, np.float64), np.asarray(model.L_ic, np.float64)
    e_i = model.embeddings[ITEM_VIEW].astype(np.float64)
    e_ic = relational_item_vectors(model, view).astype(np.float64)
    di, dic = e_i[a] - e_i[b], e_ic[a] - e_ic[b]
    return np.einsum("nd,de,ne->n", di, L_i.T @ L_i, di) + np.einsum("nd,de,ne->n", dic, L_ic.T @ L_ic, dic)
