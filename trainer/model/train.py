"""The M2GRL fit loop (paper Sec. 3.2-3.5): intra-view skip-gram tasks and inter-view alignment tasks,
weighted by homoscedastic uncertainty, trained together by the compiled step ``kernels.run_steps``.

Tasks, in order: one intra-view task per view that has node sequences (named after the view: 'item',
'category', ...), then one inter-view task per attribute view with an item-to-attribute map ('item-category',
...; only with ``inter_view``).

Epochs and steps: every epoch draws fresh pairs for every task (windows, subsampling, order, negatives).
The task with the most pairs sets the number of steps, ceil(pairs / batch_size); every other task's pairs
are spread evenly over the same steps (a task with n pairs gives step s its pairs s*n//steps ..
(s+1)*n//steps), so each step holds one batch of every task and every task passes over each of its pairs
exactly once per epoch, all ending together: small tasks neither cycle (which would over-train them) nor
finish early (which would leave the end of the epoch to the item task). A task's loss is the mean over its
batch of the step.

Parameters: per view an input table ("instance" embeddings, word2vec init U(-0.5/d, 0.5/d)) and an output
table (zeros); per inter task W (relation_dim x dim, Glorot-uniform init). Intra tasks use the view's input
(centre) and output (context) tables; inter tasks the item input table and the attribute view's input table.

Inter-task score: sigmoid(W e_i) . sigmoid(W e_c) + b_t, with a learned scalar b_t per task, initialised at
-relation_dim / 4. Without b_t (the paper's Eq. 4 as written) a score is the dot product of two positive
vectors and can never go below 0, so the log-sigmoid loss of the k negatives (at least k log 2) pushes every
sigmoid(W e) towards 0, where the sigmoid's gradient vanishes: the task collapses to the constant loss
(1 + k) log 2 with chance-level alignment (measured on planted data). b_t lets negative scores go below 0
and changes no ranking by sigmoid(W e_i) . sigmoid(W e_c); it is a training detail, not exported.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from tqdm import tqdm

from trainer.data.prepared import PreparedData, ViewData
from trainer.data.schema import ITEM_VIEW
from trainer.model import kernels as K
from trainer.model.config import TrainConfig
from trainer.model.pairs import (
    alias_table,
    inter_view_pairs,
    plan_skipgram,
    subsample_keep_prob,
    weighted_walks,
)
from trainer.model.result import TrainedModel
from trainer.model.weighting import initial_state, weights_of

log = logging.getLogger(__name__)

_ADAM_BETA1 = 0.9
_ADAM_BETA2 = 0.999
_ADAM_EPS = 1e-8


@dataclass
class _Intra:
    name: str
    view: str
    tokens: np.ndarray
    offsets: np.ndarray
    keep: np.ndarray | None
    in_off: int
    out_off: int


@dataclass
class _Inter:
    name: str
    view: str
    item_to_node: np.ndarray
    item_off: int
    attr_off: int


def _check_view(v: ViewData, n_items: int) -> None:
    if v.seq_offsets.ndim != 1 or v.seq_offsets.size < 1 or v.seq_offsets[0] != 0:
        raise ValueError(f"view {v.name!r}: seq_offsets must start at 0 and have n_sequences + 1 entries")
    if v.seq_offsets[-1] != v.seq_tokens.size or (np.diff(v.seq_offsets) < 0).any():
        raise ValueError(f"view {v.name!r}: seq_offsets must be non-decreasing and end at len(seq_tokens)")
    if v.seq_tokens.size and (v.seq_tokens.min() < 0 or v.seq_tokens.max() >= v.n_nodes):
        raise ValueError(f"view {v.name!r}: sequence tokens must be node indices in [0, {v.n_nodes})")
    if v.edge_src.size and (
        min(v.edge_src.min(), v.edge_dst.min()) < 0 or max(v.edge_src.max(), v.edge_dst.max()) >= v.n_nodes
    ):
        raise ValueError(f"view {v.name!r}: edge endpoints must be node indices in [0, {v.n_nodes})")
    if v.name != ITEM_VIEW and v.item_to_node is not None:
        i2n = v.item_to_node
        if i2n.shape != (n_items,):
            raise ValueError(
                f"view {v.name!r}: item_to_node has {i2n.shape[0]} entries, the item view has {n_items} nodes"
            )
        if i2n.size and (i2n.min() < -1 or i2n.max() >= v.n_nodes):
            raise ValueError(f"view {v.name!r}: item_to_node values must be -1 or node indices < {v.n_nodes}")


def _corpus(v: ViewData, config: TrainConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The view's node sequences plus, if configured, weighted random walks on its graph."""
    tokens = v.seq_tokens.astype(np.int32, copy=False)
    offsets = v.seq_offsets.astype(np.int64, copy=False)
    if config.walks_per_node > 0 and v.edge_src.size:
        wt, wo = weighted_walks(
            v.n_nodes, v.edge_src, v.edge_dst, v.edge_weight, config.walks_per_node, config.walk_length, seed
        )
        tokens = np.concatenate([tokens, wt])
        offsets = np.concatenate([offsets, wo[1:] + offsets[-1]])
    return tokens, offsets


def train_views(views: dict[str, ViewData], config: TrainConfig, progress: bool = True) -> TrainedModel:
    """Train M2GRL on the given views and return the tables (see the module docstring for the model).

    views: view name -> ViewData; 'item' must be present; attribute views carry ``item_to_node``
        (needed for their inter-view task). DeepWalk is ``train_views({'item': walks},
        TrainConfig(inter_view=False, weighting='uniform'))``.
    config: hyper-parameters (TrainConfig); ``threads`` worker threads (0 = all cores), ``seed`` makes runs
        reproducible: with threads=1 the same seed gives bit-identical tables; with more threads the
        workers share the tables without locks (Hogwild, as gensim), so runs differ slightly.
    progress: show a tqdm bar per epoch.
    """
    if ITEM_VIEW not in views:
        raise ValueError(f"train_views: the {ITEM_VIEW!r} view is required, got views {sorted(views)}")
    names = [ITEM_VIEW] + [v for v in views if v != ITEM_VIEW]
    n_items = views[ITEM_VIEW].n_nodes
    if n_items == 0:
        raise ValueError("train_views: the item view has no nodes")
    for v in names:
        if views[v].name != v:
            raise ValueError(f"train_views: views[{v!r}] holds a ViewData named {views[v].name!r}")
        _check_view(views[v], n_items)

    threads = config.threads or len(os.sched_getaffinity(0))
    prev_threads = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # the pair generators' threads
    try:
        return _train(views, names, config, threads, progress)
    finally:
        numba.set_num_threads(prev_threads)


def fit(prepared: PreparedData, config: TrainConfig) -> TrainedModel:
    """Train on a prepared directory, on ``config.views`` (default: all its views; 'item' always)."""
    wanted = config.views if config.views is not None else prepared.view_names
    unknown = [v for v in wanted if v not in prepared.view_names]
    if unknown:
        raise ValueError(f"config.views: {unknown} not in the prepared views {prepared.view_names}")
    chosen = [ITEM_VIEW] + [v for v in wanted if v != ITEM_VIEW]
    return train_views({v: prepared.view(v) for v in chosen}, config)


def _train(
    views: dict[str, ViewData], names: list[str], config: TrainConfig, threads: int, progress: bool
) -> TrainedModel:
    d, r, k = config.dim, config.relation_dim, config.negatives
    rng = np.random.default_rng(config.seed)

    # --- parameter layout: each view's input table, then its output table
    in_off: dict[str, int] = {}
    out_off: dict[str, int] = {}
    n_rows = 0
    for v in names:
        in_off[v] = n_rows
        out_off[v] = n_rows + views[v].n_nodes
        n_rows += 2 * views[v].n_nodes
    if n_rows >= 2**31:
        raise ValueError(f"train_views: {n_rows} table rows exceed the int32 row index")

    # --- tasks
    intra: list[_Intra] = []
    alias_thr: list[np.ndarray] = []
    alias_idx: list[np.ndarray] = []
    imeta_static: list[tuple[int, int, int]] = []  # (negatives' first row, alias offset, alias length)
    n_alias = 0
    for vi, v in enumerate(names):
        tokens, offsets = _corpus(views[v], config, int(K.derive_seed(config.seed, 1000 + vi)))
        lengths = np.diff(offsets)
        if not (lengths >= 2).any():
            log.warning("view %r: no node sequence of 2 or more nodes; its intra-view task is skipped", v)
            continue
        counts = np.bincount(tokens, minlength=views[v].n_nodes)
        thr, al = alias_table(counts, config.ns_exponent)
        alias_thr.append(thr)
        alias_idx.append(al)
        imeta_static.append((out_off[v], n_alias, thr.size))
        n_alias += thr.size
        keep = subsample_keep_prob(counts, config.subsample)
        intra.append(_Intra(v, v, tokens, offsets, keep, in_off[v], out_off[v]))
    inter: list[_Inter] = []
    xmeta_static: list[tuple[int, int, int]] = []
    item_tokens = views[ITEM_VIEW].seq_tokens
    if config.inter_view:
        for v in names[1:]:
            i2n = views[v].item_to_node
            if i2n is None:
                log.warning("view %r has no item_to_node: no inter-view task item-%s", v, v)
                continue
            mapped = i2n[item_tokens]
            mapped = mapped[mapped >= 0]
            if mapped.size == 0:
                log.warning("view %r: no item occurrence has an attribute; task item-%s skipped", v, v)
                continue
            thr, al = alias_table(np.bincount(mapped, minlength=views[v].n_nodes), config.ns_exponent)
            alias_thr.append(thr)
            alias_idx.append(al)
            xmeta_static.append((in_off[v], n_alias, thr.size))
            n_alias += thr.size
            inter.append(_Inter(f"{ITEM_VIEW}-{v}", v, i2n.astype(np.int32), in_off[ITEM_VIEW], in_off[v]))
    tasks = [t.name for t in intra] + [t.name for t in inter]
    if not tasks:
        raise ValueError(
            "train_views: no task has training examples (every view lacks sequences of >= 2 nodes)"
        )
    athr = np.concatenate(alias_thr)
    aidx = np.concatenate(alias_idx)
    n_inter, n_tasks = len(inter), len(tasks)

    # --- parameters and optimiser state
    P = np.zeros((n_rows, d), np.float32)
    for v in names:
        n = views[v].n_nodes
        P[in_off[v] : in_off[v] + n] = rng.uniform(-0.5 / d, 0.5 / d, size=(n, d))
    glorot = math.sqrt(6.0 / (r + d))
    W = rng.uniform(-glorot, glorot, size=(n_inter, r, d)).astype(np.float32)
    wmode, s, wfixed = initial_state(tasks, config)
    pr = K.Params(
        P=P, M=np.zeros_like(P), V=np.zeros_like(P), rstep=np.zeros(n_rows, np.int32),
        W=W, WM=np.zeros_like(W), WV=np.zeros_like(W), wstep=np.zeros(n_inter, np.int64),
        # score bias of each inter task: -r/4 makes the initial scores (two vectors of 0.5s) zero
        b=np.full(n_inter, -r / 4.0, np.float32), bm=np.zeros(n_inter, np.float32), bv=np.zeros(n_inter, np.float32),
        s=s, sm=np.zeros(n_tasks), sv=np.zeros(n_tasks), sstep=np.zeros(n_tasks, np.int64),
    )  # fmt: skip
    hp = np.zeros(K.N_HP)
    hp[K.HP_LR] = config.lr
    hp[K.HP_BETA1] = _ADAM_BETA1
    hp[K.HP_BETA2] = _ADAM_BETA2
    hp[K.HP_EPS] = _ADAM_EPS
    hp[K.HP_CLIP] = config.grad_clip
    hp[K.HP_BATCH_REF] = config.batch_size
    hp[K.HP_SGD] = 1.0 if config.optimizer == "sgd" else 0.0
    hp[K.HP_S_MIN] = math.log(config.sigma2_min)
    hp[K.HP_PER_PAIR] = 1.0 if config.loss_normalisation == "pair" else 0.0
    tab = K.make_tables()
    works: list[K.Work] = []
    work_cap: tuple[int, int, int] = (-1, -1, -1)

    log.info(
        "training %d tasks (%s) on %d table rows, dim %d, %d epochs, %d threads",
        n_tasks, ", ".join(tasks), n_rows, d, config.epochs, threads,
    )  # fmt: skip
    curves: list[dict[str, float]] = []
    global_step = 0
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    try:
        for epoch in range(config.epochs):
            t0 = time.perf_counter()
            ep, counts = _epoch_examples(intra, inter, item_tokens, imeta_static, xmeta_static, athr, aidx,
                                         config, epoch)  # fmt: skip
            n_steps = ep.n_steps
            if epoch == 0:
                hp[K.HP_TOTAL_STEPS] = n_steps * config.epochs
            need = (int(ep.imeta[:, K.META_BS].sum()), int(ep.xmeta[:, K.META_BS].sum()),
                    int(ep.xmeta[:, K.META_BS].max(initial=0)) * (k + 2))  # fmt: skip
            if any(a > b for a, b in zip(need, work_cap, strict=True)):
                work_cap = tuple(max(a, b) for a, b in zip(need, work_cap, strict=True))  # type: ignore[assignment]
                works = [K.make_work(n_rows, d, r, k, n_tasks, n_inter, *work_cap) for _ in range(threads)]
            t_pairs = time.perf_counter() - t0

            # --- the steps, in chunks of log_every (one curve row each)
            ep_loss = np.zeros(n_tasks)
            ep_n = np.zeros(n_tasks)
            bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                       disable=not progress)  # fmt: skip
            step = 0
            while step < n_steps:
                hi = min(n_steps, step + config.log_every)
                out_loss = np.zeros((hi - step, n_tasks))
                out_norm = np.zeros(hi - step)
                out_sigma2 = np.zeros((hi - step, n_tasks))

                # thread j takes steps step + j, step + j + threads, ... (Hogwild, see kernels)
                jobs = [
                    (pr, ep, works[j], wmode, wfixed, hp, k, step + j, hi, threads, step, global_step, tab)
                    + (out_loss, out_norm, out_sigma2)
                    for j in range(threads)
                ]
                if pool is None:
                    K.run_steps(*jobs[0])
                else:
                    for f in [pool.submit(K.run_steps, *job) for job in jobs]:
                        f.result()
                if not np.isfinite(out_norm).all():
                    raise FloatingPointError(
                        f"epoch {epoch + 1}: non-finite gradient; lower lr or check the data"
                    )
                valid = ~np.isnan(out_loss)
                ep_loss += np.where(valid, out_loss, 0.0).sum(axis=0)
                ep_n += valid.sum(axis=0)
                global_step += hi - step
                row: dict[str, float] = {"step": float(global_step), "epoch": float(epoch + 1)}
                for ti, name in enumerate(tasks):
                    col = out_loss[:, ti][valid[:, ti]]
                    row[f"loss/{name}"] = float(col.mean()) if col.size else float("nan")
                    row[f"sigma2/{name}"] = float(out_sigma2[-1, ti])
                row["grad_norm"] = float(out_norm.mean())
                curves.append(row)
                bar.update(hi - step)
                step = hi
            bar.close()
            dt = time.perf_counter() - t0
            w_now = weights_of(wmode, pr.s, wfixed, config.sigma2_min)
            parts = [
                f"{name} {ep_loss[ti] / max(ep_n[ti], 1):.4f} (w {w_now[ti]:.3g})"
                for ti, name in enumerate(tasks)
            ]
            log.info(
                "epoch %d/%d: %s | %d steps, %.0f pairs/s, %.1fs (pairs %.1fs)",
                epoch + 1, config.epochs, "; ".join(parts), n_steps, sum(counts) / dt, dt, t_pairs,
            )  # fmt: skip
    finally:
        if pool is not None:
            pool.shutdown()

    w_final = weights_of(wmode, pr.s, wfixed, config.sigma2_min)
    return TrainedModel(
        config=config,
        views=names,
        node_ids={v: views[v].node_ids for v in names},
        embeddings={v: P[in_off[v] : in_off[v] + views[v].n_nodes].copy() for v in names},
        context_embeddings={v: P[out_off[v] : out_off[v] + views[v].n_nodes].copy() for v in names},
        item_to_attr={
            v: views[v].item_to_node.astype(np.int32) for v in names[1:] if views[v].item_to_node is not None
        },
        W={t.view: W[ui].copy() for ui, t in enumerate(inter)},
        sigma2={name: float(1.0 / w_final[ti]) for ti, name in enumerate(tasks)},
        curves=curves,
    )


def _epoch_examples(
    intra: list[_Intra],
    inter: list[_Inter],
    item_tokens: np.ndarray,
    imeta_static: list[tuple[int, int, int]],
    xmeta_static: list[tuple[int, int, int]],
    athr: np.ndarray,
    aidx: np.ndarray,
    config: TrainConfig,
    epoch: int,
) -> tuple[K.Epoch, list[int]]:
    """Fresh pairs of every task for one epoch, all intra pairs in one buffer (no per-task copies)."""
    n_intra, n_inter = len(intra), len(inter)
    plans = [
        plan_skipgram(
            t.tokens,
            t.offsets,
            config.window,
            reduced=config.reduced_window,
            keep_prob=t.keep,
            seed=int(K.derive_seed(config.seed, epoch, ti)),
        )  # fmt: skip
        for ti, t in enumerate(intra)
    ]
    icounts = [p.total for p in plans]
    ic = np.empty(sum(icounts), np.int32)
    io = np.empty(sum(icounts), np.int32)
    pos = 0
    for p, t in zip(plans, intra, strict=True):
        p.fill(ic[pos : pos + p.total], io[pos : pos + p.total], t.in_off, t.out_off)
        pos += p.total
    del plans
    xparts = [
        inter_view_pairs(
            item_tokens,
            t.item_to_node,
            seed=int(K.derive_seed(config.seed, epoch, n_intra + ui)),
            item_base=t.item_off,
            attr_base=t.attr_off,
        )  # fmt: skip
        for ui, t in enumerate(inter)
    ]
    xcounts = [p[0].size for p in xparts]
    xi = np.concatenate([p[0] for p in xparts]) if xparts else np.zeros(0, np.int32)
    xa = np.concatenate([p[1] for p in xparts]) if xparts else np.zeros(0, np.int32)
    del xparts
    counts = icounts + xcounts
    n_steps = max(1, math.ceil(max(counts) / config.batch_size))
    bs = [math.ceil(c / n_steps) for c in counts]  # the largest batch of a step
    imeta = np.zeros((n_intra, 6), np.int64)
    xmeta = np.zeros((n_inter, 6), np.int64)
    off = 0
    for ti in range(n_intra):
        imeta[ti] = (off, counts[ti], bs[ti], *imeta_static[ti])
        off += counts[ti]
    off = 0
    for ui in range(n_inter):
        xmeta[ui] = (off, counts[n_intra + ui], bs[n_intra + ui], *xmeta_static[ui])
        off += counts[n_intra + ui]
    n_tasks = n_intra + n_inter
    tseed = np.array([K.derive_seed(config.seed, epoch, 10_000 + t) for t in range(n_tasks)], np.uint64)
    return K.Epoch(ic, io, imeta, xi, xa, xmeta, athr, aidx, tseed, n_steps), counts
