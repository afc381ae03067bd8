"""Training examples of the M2GRL tasks: skip-gram pairs, inter-view pairs, negative tables and random walks.

Everything here is vectorised numpy or compiled numba and draws its randomness from counter-based hashes
(``trainer.model.kernels.splitmix64``) of a seed and a position, so the same seed gives the same examples
whatever the number of threads.

*Intra-view pairs* (paper Eq. 1): for every node ``i_t`` of a node sequence and every ``0 < |j| <= c`` the
pair (centre ``i_t``, context ``i_{t+j}``). With ``reduced=True`` (word2vec's and gensim's default) each
centre draws an effective window ``b`` uniformly from ``1..c`` and only ``|j| <= b`` is used, which weights
near contexts more and halves the number of pairs; ``reduced=False`` uses the fixed window ``c``.

*Inter-view pairs* (paper Eq. 4): one (item, attribute) pair per occurrence of an item in the item sequences.

*Negatives* are drawn from the unigram distribution raised to ``ns_exponent`` (0.75) with Walker's alias
method: one hash per draw, O(1) and exact up to 2^-32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from trainer.model.kernels import alias_draw, derive_seed, hash_uniform, splitmix64

# ----------------------------------------------------------------------------------------------- negatives


@njit(cache=True)
def _vose(prob: np.ndarray, thr: np.ndarray, alias: np.ndarray) -> None:
    n = prob.shape[0]
    scaled = prob * n
    small = np.empty(n, np.int64)
    large = np.empty(n, np.int64)
    ns = 0
    nl = 0
    for i in range(n):
        if scaled[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        nl -= 1
        g = large[nl]
        thr[s] = np.int64(scaled[s] * 4294967296.0)
        alias[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        if scaled[g] < 1.0:
            small[ns] = g
            ns += 1
        else:
            large[nl] = g
            nl += 1
    # Left-overs have probability 1 up to rounding: always accept themselves.
    for q in range(nl):
        thr[large[q]] = np.int64(4294967296)
        alias[large[q]] = large[q]
    for q in range(ns):
        thr[small[q]] = np.int64(4294967296)
        alias[small[q]] = small[q]


def alias_table(counts: np.ndarray, exponent: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Walker alias table of the noise distribution P_n(i) ~ count_i ** exponent (paper Eq. 3).

    counts: occurrences of each node in the task's training examples; nodes with count 0 are never drawn.
    Returns (thresholds int64 in [0, 2^32], alias int32), consumed by ``kernels.alias_draw``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError("alias_table: counts must be a non-empty 1-d array")
    if (counts < 0).any() or not np.isfinite(counts).all():
        raise ValueError("alias_table: counts must be finite and >= 0")
    weights = np.where(counts > 0, counts**exponent, 0.0)
    total = weights.sum()
    if total <= 0:
        raise ValueError("alias_table: every count is zero, nothing to sample negatives from")
    thr = np.zeros(counts.size, np.int64)
    alias = np.arange(counts.size, dtype=np.int32)
    _vose(weights / total, thr, alias)
    return thr, alias


@njit(cache=True, parallel=True)
def _draw_many(thr: np.ndarray, alias: np.ndarray, seed: np.uint64, count: int) -> np.ndarray:
    out = np.empty(count, np.int32)
    n = thr.shape[0]
    for i in prange(count):
        out[i] = alias_draw(splitmix64(seed + np.uint64(i)), thr, alias, 0, n)
    return out


def draw_negatives(thr: np.ndarray, alias: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` node indices drawn from an alias table with the same code path as training."""
    return _draw_many(thr, alias, derive_seed(seed), int(count))


# ---------------------------------------------------------------------------------------- subsampling


def subsample_keep_prob(counts: np.ndarray, sample: float) -> np.ndarray | None:
    """word2vec's probability of keeping an occurrence of each node (None when ``sample`` is 0).

    With threshold t = sample * total count, a node of count f is kept with probability
    min(1, (sqrt(f / t) + 1) * t / f) (gensim's formula), which discards frequent nodes most.
    """
    if sample <= 0:
        return None
    counts = np.asarray(counts, dtype=np.float64)
    t = sample * counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        p = (np.sqrt(counts / t) + 1.0) * t / counts
    return np.where(counts > 0, np.minimum(p, 1.0), 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------- skip-gram pairs


@njit(cache=True, parallel=True)
def _keep_mask(tokens: np.ndarray, keep: np.ndarray, seed: np.uint64) -> np.ndarray:
    out = np.empty(tokens.shape[0], np.bool_)
    for i in prange(tokens.shape[0]):
        out[i] = hash_uniform(splitmix64(seed + np.uint64(i))) < keep[tokens[i]]
    return out


@njit(cache=True, parallel=True)
def _effective_windows(n: int, window: int, reduced: bool, seed: np.uint64) -> np.ndarray:
    b = np.empty(n, np.int32)
    for i in prange(n):
        if reduced:
            b[i] = 1 + np.int32(splitmix64(seed + np.uint64(i)) % np.uint64(window))
        else:
            b[i] = window
    return b


@njit(cache=True, parallel=True)
def _fill_pairs(
    tokens: np.ndarray,
    offsets: np.ndarray,
    b: np.ndarray,
    order: np.ndarray,
    out_start: np.ndarray,
    center_base: int,
    context_base: int,
    centers: np.ndarray,
    contexts: np.ndarray,
) -> None:
    for q in prange(order.shape[0]):
        s = order[q]
        lo = offsets[s]
        hi = offsets[s + 1]
        w = out_start[q]
        for i in range(lo, hi):
            a = max(lo, i - b[i])
            z = min(hi - 1, i + b[i])
            c = tokens[i] + center_base
            for j in range(a, z + 1):
                if j != i:
                    centers[w] = c
                    contexts[w] = tokens[j] + context_base
                    w += 1


@njit(cache=True, parallel=True)
def block_shuffle(a: np.ndarray, b: np.ndarray, block: int, seed: np.uint64) -> None:
    """Shuffle the pairs (a[i], b[i]) in place within consecutive blocks of ``block`` pairs (Fisher-Yates)."""
    n = a.shape[0]
    nb = (n + block - 1) // block
    for k in prange(nb):
        lo = k * block
        hi = min(n, lo + block)
        base = splitmix64(seed + np.uint64(k)) * np.uint64(1 << 20)
        for i in range(hi - 1, lo, -1):
            h = splitmix64(base + np.uint64(i - lo))
            j = lo + np.int64((h >> np.uint64(32)) * np.uint64(i - lo + 1) >> np.uint64(32))
            ta = a[i]
            a[i] = a[j]
            a[j] = ta
            tb = b[i]
            b[i] = b[j]
            b[j] = tb


@dataclass
class SkipgramPlan:
    """One pass of skip-gram pairs, planned (windows drawn, sequences ordered, pairs counted) but not
    written yet, so that a caller can place several tasks' pairs in one buffer (see ``skipgram_pairs``)."""

    tokens: np.ndarray
    offsets: np.ndarray
    b: np.ndarray  # effective window of each (kept) token
    order: np.ndarray  # sequence visiting order
    out_start: np.ndarray  # first output position of each visited sequence
    total: int
    shuffle_seed: np.uint64 | None

    def fill(self, centers: np.ndarray, contexts: np.ndarray, center_base: int = 0, context_base: int = 0,
             shuffle_block: int = 1 << 18) -> None:  # fmt: skip
        """Write the pairs into centers/contexts (int32, length ``total``), node indices plus the bases."""
        if centers.shape[0] != self.total or contexts.shape[0] != self.total:
            raise ValueError(f"SkipgramPlan.fill: buffers must hold exactly {self.total} pairs")
        if self.total == 0:
            return
        _fill_pairs(self.tokens, self.offsets, self.b, self.order, self.out_start, int(center_base),
                    int(context_base), centers, contexts)  # fmt: skip
        if self.shuffle_seed is not None and self.total > 1:
            block_shuffle(centers, contexts, int(shuffle_block), self.shuffle_seed)


def plan_skipgram(
    tokens: np.ndarray,
    offsets: np.ndarray,
    window: int,
    *,
    reduced: bool = True,
    keep_prob: np.ndarray | None = None,
    seed: int = 0,
    shuffle: bool = True,
) -> SkipgramPlan:
    """Plan one pass of skip-gram pairs; parameters as ``skipgram_pairs``."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    root = derive_seed(seed)
    if keep_prob is not None and tokens.size:
        mask = _keep_mask(tokens, keep_prob.astype(np.float32), derive_seed(seed, 1))
        lengths = np.diff(offsets)
        kept_per_seq = np.zeros(lengths.size, np.int64)
        nonempty = lengths > 0
        # reduceat over the starts of non-empty sequences only: it misreads empty segments
        kept_per_seq[nonempty] = np.add.reduceat(mask.astype(np.int64), offsets[:-1][nonempty])
        tokens = tokens[mask]
        offsets = np.concatenate([[0], np.cumsum(kept_per_seq)]).astype(np.int64)
    n_seq = offsets.size - 1
    b = _effective_windows(tokens.size, int(window), bool(reduced), derive_seed(seed, 2))
    if n_seq <= 0 or tokens.size == 0:
        return SkipgramPlan(tokens, offsets, b, np.zeros(0, np.int64), np.zeros(0, np.int64), 0, None)
    lengths = np.diff(offsets)
    seq_of = np.repeat(np.arange(n_seq), lengths)
    pos = np.arange(tokens.size) - offsets[seq_of]
    last = lengths[seq_of] - 1
    per_token = np.minimum(b, pos) + np.minimum(b, last - pos)
    per_seq = np.bincount(seq_of, weights=per_token, minlength=n_seq).astype(np.int64)
    if shuffle:
        order = np.random.default_rng(int(root >> np.uint64(1))).permutation(n_seq)
    else:
        order = np.arange(n_seq)
    out_start = np.zeros(n_seq, np.int64)
    np.cumsum(per_seq[order][:-1], out=out_start[1:])
    total = int(per_seq.sum())
    return SkipgramPlan(
        tokens, offsets, b, order, out_start, total, derive_seed(seed, 3) if shuffle else None
    )


def skipgram_pairs(
    tokens: np.ndarray,
    offsets: np.ndarray,
    window: int,
    *,
    reduced: bool = True,
    keep_prob: np.ndarray | None = None,
    seed: int = 0,
    shuffle: bool = True,
    shuffle_block: int = 1 << 18,
    center_base: int = 0,
    context_base: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """All skip-gram (centre, context) pairs of one pass over the node sequences (paper Eq. 1).

    tokens, offsets: the sequences, concatenated (``ViewData.seq_tokens``/``seq_offsets``).
    window: c, the largest distance between centre and context (paper: 9).
    reduced: draw each centre's window uniformly from 1..c, as word2vec does (see module docstring).
    keep_prob: per node, word2vec's subsampling keep probability (``subsample_keep_prob``); dropped
        occurrences are removed before windowing, so windows reach over them, as in word2vec.
    seed: one pass's seed: window sizes, subsampling, sequence order and shuffling derive from it.
    shuffle: visit sequences in random order and shuffle the pairs within blocks of ``shuffle_block``
        (a batch then mixes many centres, as a fully shuffled epoch would, at cache-friendly cost).
    center_base, context_base: added to the node indices written (rows of the stacked parameter tables).
    Returns (centres, contexts), int32 arrays of equal length.
    """
    plan = plan_skipgram(
        tokens, offsets, window, reduced=reduced, keep_prob=keep_prob, seed=seed, shuffle=shuffle
    )
    centers = np.empty(plan.total, np.int32)
    contexts = np.empty(plan.total, np.int32)
    plan.fill(centers, contexts, center_base, context_base, shuffle_block)
    return centers, contexts


def expected_pair_count(lengths: np.ndarray, window: int, reduced: bool = True) -> float:
    """Expected number of skip-gram pairs of sequences of the given lengths (no subsampling)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    lengths = lengths[lengths > 0]
    if lengths.size == 0:
        return 0.0
    seq_of = np.repeat(np.arange(lengths.size), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(int(lengths.sum())) - starts[seq_of]
    last = lengths[seq_of] - 1
    bs = np.arange(1, window + 1) if reduced else np.array([window])
    total = 0.0
    for bb in bs:  # at most c iterations, each vectorised over all tokens
        total += float((np.minimum(bb, pos) + np.minimum(bb, last - pos)).sum())
    return total / bs.size


# ------------------------------------------------------------------------------------- inter-view pairs


def inter_view_pairs(
    item_tokens: np.ndarray,
    item_to_node: np.ndarray,
    *,
    seed: int = 0,
    shuffle: bool = True,
    item_base: int = 0,
    attr_base: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One (item, attribute) pair per item occurrence whose item has the attribute (paper Eq. 4).

    item_tokens: item-view node indices of the item sequences; item_to_node: the attribute view's node of each
    item (-1 = none). Returns (item rows, attribute rows) as int32 with the bases added, shuffled.
    """
    item_tokens = np.asarray(item_tokens)
    attrs = item_to_node[item_tokens]
    ok = attrs >= 0
    items = item_tokens[ok].astype(np.int32) + np.int32(item_base)
    attrs = attrs[ok].astype(np.int32) + np.int32(attr_base)
    if shuffle and items.size > 1:
        root = derive_seed(seed, 7)
        perm = np.random.default_rng(int(root >> np.uint64(1))).permutation(items.size)
        items = items[perm]
        attrs = attrs[perm]
    return items, attrs


# ------------------------------------------------------------------------------------------ random walks


@njit(cache=True, parallel=True)
def _walks(
    indptr: np.ndarray,
    dst: np.ndarray,
    cumw: np.ndarray,
    starts: np.ndarray,
    walk_length: int,
    seed: np.uint64,
    out: np.ndarray,
    lengths: np.ndarray,
) -> None:
    for w in prange(starts.shape[0]):
        node = starts[w]
        out[w, 0] = node
        n = 1
        base = splitmix64(seed + np.uint64(w)) * np.uint64(1 << 16)
        while n < walk_length:
            lo = indptr[node]
            hi = indptr[node + 1]
            if hi == lo:
                break
            before = cumw[lo - 1] if lo > 0 else 0.0
            u = before + hash_uniform(splitmix64(base + np.uint64(n))) * (cumw[hi - 1] - before)
            # first edge whose cumulative weight exceeds u (binary search inside the node's out-edges)
            a = lo
            z = hi - 1
            while a < z:
                m = (a + z) // 2
                if cumw[m] > u:
                    z = m
                else:
                    a = m + 1
            node = dst[a]
            out[w, n] = node
            n += 1
        lengths[w] = n


def weighted_walks(
    n_nodes: int,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    walks_per_node: int,
    walk_length: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """DeepWalk-style random walks on a weighted directed graph, as extra node sequences.

    From every node with an out-edge, ``walks_per_node`` walks of up to ``walk_length`` nodes; each step
    follows an out-edge with probability proportional to its weight (the number of times the transition was
    observed). A walk stops early at a node without out-edges. Returns (tokens int32, offsets int64) in the
    layout of ``ViewData.seq_tokens``/``seq_offsets``; walks shorter than 2 nodes are dropped.
    """
    if walks_per_node <= 0 or len(src) == 0:
        return np.empty(0, np.int32), np.zeros(1, np.int64)
    src = np.asarray(src, np.int64)
    order = np.argsort(src, kind="stable")
    dst_s = np.asarray(dst, np.int32)[order]
    w_s = np.asarray(weight, np.float64)[order]
    if (w_s <= 0).any():
        raise ValueError("weighted_walks: edge weights must be > 0")
    indptr = np.zeros(n_nodes + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n_nodes), out=indptr[1:])
    cumw = np.cumsum(w_s)
    has_out = np.flatnonzero(np.diff(indptr) > 0).astype(np.int32)
    starts = np.tile(has_out, walks_per_node)
    out = np.empty((starts.size, walk_length), np.int32)
    lengths = np.empty(starts.size, np.int64)
    _walks(indptr, dst_s, cumw, starts, int(walk_length), derive_seed(seed, 11), out, lengths)
    keep = lengths >= 2
    lengths = lengths[keep]
    mask = np.arange(walk_length)[None, :] < lengths[:, None]
    tokens = out[keep][mask]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return tokens.astype(np.int32), offsets
