"""Training speed of the M2GRL engine against gensim's C word2vec, on the same sessions.

Measures, per dataset:

- the item-view intra task alone (skip-gram, one epoch) -- ours vs gensim ``Word2Vec(sg=1, hs=0,
  negative=5, window, vector_size, min_count=1, sample=0, workers=threads)``. Both use word2vec's reduced
  window, so both train on the same expected number of pairs; "pairs" is our pair generator's count for the
  epoch, used for both (gensim's own count differs only by its random window draws);
- the full multi-task epoch: every view's intra task plus the item-<view> inter tasks, adaptive weighting;
- peak resident memory of the process after each stage (``resource.getrusage``).

Ours and gensim alternate ``--repeats`` times and the best wall time is reported (with the median and
the process CPU time): the machine this runs on is often shared, and alternating exposes both to the same
background load.

Datasets: ml-latest-small prepared on the fly when M2GRL_DATA_DIR holds it (or ``--prepared DIR``), and a
synthetic session log generated inline with a planted Markov structure (``--items``, ``--tokens``).

    .venv/bin/python benchmarks/bench_train.py --out runs/bench_train.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.data.prepared import PreparedData, ViewData  # noqa: E402
from trainer.model.config import TrainConfig  # noqa: E402
from trainer.model.pairs import plan_skipgram  # noqa: E402
from trainer.model.train import train_views  # noqa: E402

log = logging.getLogger("bench_train")


# ------------------------------------------------------------------------------------------- datasets


def _dedupe(tokens: np.ndarray, seq_of: np.ndarray, n_seq: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop consecutive duplicates inside each sequence; keep sequences of >= 2 nodes (as preparation does)."""
    keep = np.ones(tokens.size, bool)
    keep[1:] = ~((tokens[1:] == tokens[:-1]) & (seq_of[1:] == seq_of[:-1]))
    tokens, seq_of = tokens[keep], seq_of[keep]
    lengths = np.bincount(seq_of, minlength=n_seq)
    long_enough = lengths >= 2
    sel = long_enough[seq_of]
    tokens = tokens[sel]
    offsets = np.concatenate([[0], np.cumsum(lengths[long_enough])]).astype(np.int64)
    return tokens.astype(np.int32), offsets


def _view(
    name: str, n_nodes: int, tokens: np.ndarray, offsets: np.ndarray, i2n: np.ndarray | None
) -> ViewData:
    seq_of = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    same = seq_of[1:] == seq_of[:-1]
    key = tokens[:-1][same].astype(np.int64) * n_nodes + tokens[1:][same]
    uniq, w = np.unique(key, return_counts=True)
    return ViewData(
        name=name,
        node_ids=np.array([f"{name[0]}{i}" for i in range(n_nodes)], dtype=object),
        node_counts=np.bincount(tokens, minlength=n_nodes).astype(np.int64),
        seq_tokens=tokens,
        seq_offsets=offsets,
        edge_src=(uniq // n_nodes).astype(np.int32),
        edge_dst=(uniq % n_nodes).astype(np.int32),
        edge_weight=w.astype(np.int64),
        item_to_node=i2n,
    )


def synthetic_views(
    n_items: int = 30_000,
    n_tokens: int = 1_000_000,
    n_categories: int = 300,
    n_shops: int = 3_000,
    mean_len: float = 20.0,
    stay: float = 0.7,
    seed: int = 0,
) -> dict[str, ViewData]:
    """Sessions as Markov walks over a planted category graph (3 successors each, stay probability
    ``stay``), items by Zipf popularity inside the step's category, each item sold by a shop of its category
    with probability 0.9. Vectorised per walk step over all sessions."""
    rng = np.random.default_rng(seed)
    cat_w = (np.arange(n_categories) + 1.0) ** -0.8
    cat_of = rng.choice(n_categories, size=n_items, p=cat_w / cat_w.sum())
    cat_of[:n_categories] = np.arange(n_categories)  # every category has an item
    shop_cat = rng.integers(0, n_categories, n_shops)
    shop_cat[:n_categories] = np.arange(n_categories)
    shops_sorted = np.argsort(shop_cat, kind="stable")
    shop_start = np.searchsorted(shop_cat[shops_sorted], np.arange(n_categories + 1))
    n_cat_shops = np.maximum(np.diff(shop_start), 1)
    pick = shop_start[cat_of] + (rng.random(n_items) * n_cat_shops[cat_of]).astype(np.int64)
    shop_of = np.where(
        rng.random(n_items) < 0.9,
        shops_sorted[np.minimum(pick, n_shops - 1)],
        rng.integers(0, n_shops, n_items),
    )
    # item sampling inside a category: inverse CDF over the category's items by Zipf popularity
    order = np.argsort(cat_of, kind="stable")
    cat_start = np.searchsorted(cat_of[order], np.arange(n_categories + 1))
    rank = np.arange(n_items) - cat_start[cat_of[order]]
    pop = (rank + 1.0) ** -1.0
    cum = np.cumsum(pop)
    cat_tot = np.add.reduceat(pop, cat_start[:-1])
    base = np.concatenate([[0.0], np.cumsum(cat_tot)])
    succ = rng.integers(0, n_categories, size=(n_categories, 3))

    n_seq = int(n_tokens / mean_len * 1.05)
    lengths = 2 + rng.geometric(1.0 / (mean_len - 1), size=n_seq)
    max_len = int(lengths.max())
    cats = np.empty((n_seq, max_len), np.int64)
    cats[:, 0] = rng.choice(n_categories, size=n_seq, p=cat_w / cat_w.sum())
    for t in range(1, max_len):  # one vectorised step of every session's walk
        move = rng.random(n_seq) >= stay
        nxt = succ[cats[:, t - 1], rng.integers(0, 3, n_seq)]
        cats[:, t] = np.where(move, nxt, cats[:, t - 1])
    valid = np.arange(max_len)[None, :] < lengths[:, None]
    flat_c = cats[valid]
    seq_of = np.repeat(np.arange(n_seq), lengths)
    u = base[flat_c] + rng.random(flat_c.size) * cat_tot[flat_c]
    items = order[np.minimum(np.searchsorted(cum, u), n_items - 1)]
    if items.size > n_tokens:  # whole sessions up to about n_tokens
        last = seq_of[n_tokens]
        keep = seq_of < last
        items, flat_c, seq_of = items[keep], flat_c[keep], seq_of[keep]
        n_seq = int(last)
    it, io = _dedupe(items, seq_of, n_seq)
    ct, co = _dedupe(flat_c, seq_of, n_seq)
    st, so = _dedupe(shop_of[items], seq_of, n_seq)
    return {
        "item": _view("item", n_items, it, io, None),
        "category": _view("category", n_categories, ct, co, cat_of.astype(np.int32)),
        "shop": _view("shop", n_shops, st, so, shop_of.astype(np.int32)),
    }


def movielens_views(data_dir: Path, prepared: Path | None) -> dict[str, ViewData] | None:
    """ml-latest-small's prepared views (prepared into a temporary directory unless given)."""
    if prepared is not None:
        p = PreparedData(prepared)
        return {v: p.view(v) for v in p.view_names}
    src = data_dir / "ml-latest-small"
    if not src.exists():
        return None
    from trainer.data.loaders import load_dataset
    from trainer.data.prepare import prepare, preset_options

    ds = load_dataset("movielens", src)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ml-"))
    prepare(ds, preset_options("movielens"), tmp / "prep")
    p = PreparedData(tmp / "prep")
    return {v: p.view(v) for v in p.view_names}


# ------------------------------------------------------------------------------------------- measures


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Clock:
    """Wall and process CPU time of a block (CPU time is steadier on a machine shared with other jobs)."""

    def __enter__(self) -> _Clock:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def gensim_epoch(sentences: list[list[str]], dim: int, window: int, negatives: int, threads: int) -> _Clock:
    from gensim.models import Word2Vec

    model = Word2Vec(
        vector_size=dim, window=window, negative=negatives, sg=1, hs=0, min_count=1, sample=0,
        workers=threads, seed=0,
    )  # fmt: skip
    model.build_vocab(sentences)
    with _Clock() as clock:
        model.train(sentences, total_examples=len(sentences), epochs=1)
    return clock


def _summary(clocks: list[_Clock]) -> dict[str, float]:
    walls = sorted(c.wall for c in clocks)
    return {"best_s": walls[0], "median_s": walls[len(walls) // 2], "cpu_s": min(c.cpu for c in clocks)}


def bench_dataset(name: str, views: dict[str, ViewData], args: argparse.Namespace) -> dict[str, Any]:
    """Ours and gensim alternate, ``args.repeats`` times, so that both see the same background load."""
    item = views["item"]
    pairs = plan_skipgram(item.seq_tokens, item.seq_offsets, args.window, reduced=True, seed=0).total
    base = dict(dim=args.dim, relation_dim=args.dim, window=args.window, negatives=args.negatives,
                epochs=1, threads=args.threads, seed=0)  # fmt: skip
    item_cfg = TrainConfig(**base, inter_view=False, weighting="uniform")
    full_cfg = TrainConfig(**base)
    sentences = [s.astype(str).tolist() for s in item.sequences()] if not args.no_gensim else []
    ours: list[_Clock] = []
    theirs: list[_Clock] = []
    full: list[_Clock] = []
    rss: dict[str, float] = {}
    model = None
    for _ in range(args.repeats):
        with _Clock() as c:
            train_views({"item": item}, item_cfg, progress=False)
        ours.append(c)
        rss["after_item_mb"] = _rss_mb()
        if not args.no_gensim:
            theirs.append(gensim_epoch(sentences, args.dim, args.window, args.negatives, args.threads))
            rss["after_gensim_mb"] = _rss_mb()
        with _Clock() as c:
            model = train_views(views, full_cfg, progress=False)
        full.append(c)
        rss["after_full_mb"] = _rss_mb()
    assert model is not None
    full_pairs = {
        v: plan_skipgram(views[v].seq_tokens, views[v].seq_offsets, args.window, reduced=True, seed=0).total
        for v in views
    }
    inter_pairs = {
        f"item-{v}": int((views[v].item_to_node[item.seq_tokens] >= 0).sum())
        for v in views
        if v != "item" and views[v].item_to_node is not None
    }
    res: dict[str, Any] = {
        "dataset": name,
        "items": item.n_nodes,
        "tokens": int(item.seq_tokens.size),
        "sequences": item.n_sequences,
        "views": list(views),
        "item_pairs_per_epoch": pairs,
        "full_epoch_pairs": {**full_pairs, **inter_pairs},
        "ours_item": {**_summary(ours), "pairs_per_s": pairs / _summary(ours)["best_s"]},
        "ours_full": {**_summary(full), "tasks": list(model.sigma2)},
        "peak_rss_mb": rss,
    }
    if theirs:
        g = _summary(theirs)
        res["gensim_item"] = {**g, "pairs_per_s": pairs / g["best_s"]}
        res["item_speed_vs_gensim"] = g["best_s"] / res["ours_item"]["best_s"]
        res["item_cpu_vs_gensim"] = g["cpu_s"] / res["ours_item"]["cpu_s"]
        res["full_epoch_over_gensim_item_epoch"] = res["ours_full"]["best_s"] / g["best_s"]
    return res


def _table(rows: list[dict[str, Any]]) -> str:
    nan = {"best_s": float("nan"), "cpu_s": float("nan"), "pairs_per_s": float("nan")}
    head = (
        f"{'dataset':<21}{'tokens':>9}{'item pairs':>11}{'ours s':>8}{'ours Mp/s':>10}{'ours cpu':>9}"
        f"{'gensim s':>9}{'gensim Mp/s':>12}{'g cpu':>7}{'full s':>8}{'full pairs':>11}{'full/gensim':>12}"
        f"{'RSS MB':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        o, g, f = r["ours_item"], r.get("gensim_item", nan), r["ours_full"]
        lines.append(
            f"{r['dataset']:<21}{r['tokens']:>9}{r['item_pairs_per_epoch']:>11}{o['best_s']:>8.2f}"
            f"{o['pairs_per_s'] / 1e6:>10.2f}{o['cpu_s']:>9.2f}{g['best_s']:>9.2f}{g['pairs_per_s'] / 1e6:>12.2f}"
            f"{g['cpu_s']:>7.2f}{f['best_s']:>8.2f}{sum(r['full_epoch_pairs'].values()):>11}"
            f"{r.get('full_epoch_over_gensim_item_epoch', float('nan')):>12.2f}"
            f"{max(r['peak_rss_mb'].values()):>8.0f}"
        )
    lines.append(
        "times: best of --repeats (wall), cpu: process CPU seconds; Mp/s: million item pairs per second"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--source", choices=["auto", "movielens", "synthetic"], default="auto",
                    help="auto: ml-latest-small when available, and the synthetic log")  # fmt: skip
    ap.add_argument(
        "--prepared", type=Path, default=None, help="an already prepared ml-latest-small directory"
    )
    ap.add_argument("--items", type=int, default=30_000, help="synthetic: number of items")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="synthetic: item-sequence tokens")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=9)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="alternating measurements of ours and gensim")
    ap.add_argument("--no-gensim", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    # compile (or load from numba's cache) before anything is timed
    warm = synthetic_views(n_items=200, n_tokens=5_000, n_categories=10, n_shops=20)
    train_views(
        warm, TrainConfig(dim=args.dim, relation_dim=args.dim, epochs=1, threads=args.threads), progress=False
    )

    datasets: list[tuple[str, dict[str, ViewData]]] = []
    if args.source in ("auto", "movielens"):
        data_dir = os.environ.get("M2GRL_DATA_DIR")
        views = None
        try:
            views = (
                movielens_views(Path(data_dir or "."), args.prepared) if (data_dir or args.prepared) else None
            )
        except Exception as exc:  # the preparation pipeline is optional here: report and go on
            log.warning("ml-latest-small not benchmarked: %s", exc)
        if views is not None:
            datasets.append(("ml-latest-small", views))
        elif args.source == "movielens":
            log.error("ml-latest-small unavailable: set M2GRL_DATA_DIR or pass --prepared")
            return 1
    if args.source in ("auto", "synthetic"):
        t0 = time.perf_counter()
        views = synthetic_views(n_items=args.items, n_tokens=args.tokens)
        log.info("synthetic log generated in %.1fs", time.perf_counter() - t0)
        datasets.append((f"synthetic-{args.items // 1000}k-{args.tokens // 1000}k", views))

    rows = []
    for name, views in datasets:
        log.info("benchmarking %s", name)
        rows.append(bench_dataset(name, views, args))
    print(_table(rows))
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
