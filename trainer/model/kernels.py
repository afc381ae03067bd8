"""Compiled (numba) kernels of the M2GRL training step, for every task at once.

All parameters live in a few stacked arrays (``Params``) so that one compiled function serves any set of
views:

- ``P`` (N, d) float32: every view's input table and output table stacked (rows = "global rows"),
  ``M``/``V`` its Adam moments, ``rstep`` (N,) int32 the number of Adam updates each row received;
- ``W`` (n_inter, r, d) float32: the alignment matrices of the inter-view tasks, with ``WM``/``WV``/``wstep``,
  and ``b`` (n_inter,) their score biases (see trainer.model.train) with ``bm``/``bv``;
- ``s`` (T,) float64: log sigma_t^2 of every task, with its own Adam moments (see weighting.py).

One step (``run_steps``) processes one batch of every task (intra tasks: ``Epoch.imeta``; inter tasks:
``Epoch.xmeta``):

1. gather the batch's pairs, draw the negatives (a counter-based hash of seed, task, pair and j, so the
   draws do not depend on threads or batch layout) and give every touched parameter row a *slot* in a
   compact gradient buffer ``G`` (slots, d);
2. intra tasks, one fused pass per pair: skip-gram score x = v_i . v'_o (paper Eq. 3), loss softplus(-x)
   for the positive and softplus(x) for each negative, scalar gradient (sigmoid(x) - label) times the task
   weight / task batch size, accumulated into G for both rows (on the parameters before the step);
3. inter tasks: relational vectors sigmoid(W e) once per distinct row of the batch (item and attribute
   side), scores sigmoid(W e_i) . sigmoid(W e_c) + b (paper Eq. 4, plus a learned bias), the same loss, and
   the gradient back through the sigmoid into W, b and G for both tables;
4. global gradient-norm clipping over every touched row and every W and b of the step (not s_t);
5. lazy Adam: only touched rows are updated, each with its *own* step count for bias correction, so a row
   touched k times follows exactly the trajectory dense Adam gives it on its k non-zero gradients (dense
   Adam would also move untouched rows by their stale momentum; lazy Adam does not, as TF's LazyAdam).
   W: dense Adam, a step count per matrix. Or plain SGD with word2vec's per-pair step size;
6. the uncertainty parameters s_t take one step on the analytic gradient 1 - exp(-s_t) L_t (weighting.py).

Threads: the kernels are serial. With several threads the training loop runs ``run_steps`` in each thread
on interleaved steps (thread j takes steps j, j + T, ...) with its own ``Work`` buffers, sharing the
parameters without locks, as word2vec's and gensim's workers do (Hogwild): rows touched by two threads at
the same moment may lose an update, so runs with more than one thread are not bit-reproducible. With one
thread a run is bit-identical for the same seed. Random access to rows that are not in cache dominates
the cost, so the passes prefetch the rows of entries a few positions ahead.
"""

from __future__ import annotations

from collections import namedtuple

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from trainer.model.weighting import task_weights, update_log_variance

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_S11 = np.uint64(11)
_LOW32 = np.uint64(0xFFFFFFFF)

# hp: the float hyper-parameters of run_steps, by index
HP_LR, HP_BETA1, HP_BETA2, HP_EPS, HP_CLIP, HP_BATCH_REF, HP_SGD, HP_S_MIN, HP_TOTAL_STEPS, HP_PER_PAIR = (
    range(10)
)
N_HP = 10
# imeta/xmeta columns: offset into the epoch's pair arrays, pair count, largest batch of a step,
# first global row of the negatives' table, offset and length of the task's alias table
META_OFF, META_CNT, META_BS, META_NEG_ROW, META_ALIAS_OFF, META_ALIAS_N = range(6)
_PREFETCH_AHEAD = 4  # entries / rows ahead (measured best of 2-16)

Params = namedtuple("Params", "P M V rstep W WM WV wstep b bm bv s sm sv sstep")
Epoch = namedtuple("Epoch", "ic io imeta xi xa xmeta athr aidx tseed n_steps")
Work = namedtuple(
    "Work",
    "slot_of_row rows_of_slot G e_task e_c e_o e_cs e_os e_loss "
    "x_i x_a x_ir x_ar x_loss rmap rel_rows X R dR Wt gW gb gbf weights bcount losses active",
)


def make_work(
    n_rows: int, d: int, r: int, k: int, n_tasks: int, n_inter: int, ei: int, ex: int, ucap: int
) -> Work:
    """Buffers of one thread: ei / ex the largest intra / inter entries of a step, ucap the largest number
    of distinct rows of one inter task in a step."""
    ei, ex, ucap = max(ei, 1), max(ex, 1), max(ucap, 1)
    cap = (ei + ex) * (k + 2)
    return Work(
        slot_of_row=np.full(n_rows, -1, np.int32),
        rows_of_slot=np.zeros(cap, np.int64),
        G=np.zeros((cap, d), np.float32),
        e_task=np.zeros(ei, np.int32),
        e_c=np.zeros(ei, np.int32),
        e_o=np.zeros((ei, k + 1), np.int32),
        e_cs=np.zeros(ei, np.int32),
        e_os=np.zeros((ei, k + 1), np.int32),
        e_loss=np.zeros(ei, np.float64),
        x_i=np.zeros(ex, np.int32),
        x_a=np.zeros((ex, k + 1), np.int32),
        x_ir=np.zeros(ex, np.int32),
        x_ar=np.zeros((ex, k + 1), np.int32),
        x_loss=np.zeros(ex, np.float64),
        rmap=np.full(n_rows, -1, np.int32),
        rel_rows=np.zeros(ucap, np.int64),
        X=np.zeros((ucap, d), np.float32),
        R=np.zeros((ucap, r), np.float32),
        dR=np.zeros((ucap, r), np.float32),
        Wt=np.zeros((d, r), np.float32),
        gW=np.zeros((max(n_inter, 1), r, d), np.float32),
        gb=np.zeros(max(n_inter, 1), np.float64),
        gbf=np.zeros(1, np.float32),
        weights=np.ones(n_tasks, np.float64),
        bcount=np.zeros(n_tasks, np.int64),
        losses=np.zeros(n_tasks, np.float64),
        active=np.zeros(n_tasks, np.bool_),
    )


# --------------------------------------------------------------------------------------- random numbers


@njit(inline="always")
def splitmix64(x: np.uint64) -> np.uint64:
    """SplitMix64 finaliser: a strong 64-bit mix, used as a counter-based random number generator."""
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(inline="always")
def hash_uniform(h: np.uint64) -> float:
    return float(h >> _S11) * (1.0 / 9007199254740992.0)


@njit(inline="always")
def alias_draw(h: np.uint64, thr: np.ndarray, alias: np.ndarray, off: int, n: int) -> int:
    """One draw from the alias table thr/alias[off:off+n]: upper 32 bits pick a bucket, lower 32 the coin."""
    b = np.int64(((h >> _S32) * np.uint64(n)) >> _S32)
    if np.int64(h & _LOW32) < thr[off + b]:
        return b
    return np.int64(alias[off + b])


def derive_seed(seed: int, *tags: int) -> np.uint64:
    """A 64-bit seed for one purpose (epoch, task, ...) derived from the run's seed."""
    h = splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    for tag in tags:
        h = splitmix64(np.uint64(h) + np.uint64(tag & 0xFFFFFFFFFFFFFFFF))
    return np.uint64(h)


# ------------------------------------------------------------------------------------------- prefetch

_PREFETCH_FN = "llvm.prefetch.p0" if llvm_binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def prefetch_row(typingctx, arr, row):
    """Hint the CPU to fetch the first 512 bytes of arr[row] (a C-contiguous 2-d array) into cache."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and isinstance(row, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        row_idx = context.cast(builder, args[1], signature.args[1], types.intp)
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, arrty, ary, [row_idx, zero], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), _PREFETCH_FN
        )
        base = builder.bitcast(ptr, i8p)
        row_bytes = builder.extract_value(ary.strides, 0)
        for off in range(0, 512, 64):
            offv = context.get_constant(types.intp, off)
            with builder.if_then(builder.icmp_signed("<", offv, row_bytes), likely=True):
                # read access, high temporal locality, data cache
                builder.call(fn, [builder.gep(base, [offv]), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, row), codegen


# --------------------------------------------------------------------------------------- sigmoid tables

# The loss needs softplus and its gradient the sigmoid of every score: libm's exp/log1p cost more than the
# dot product itself, so both come from a table with linear interpolation, as word2vec's EXP_TABLE but
# interpolated and over [-16, 16] (absolute error < 2e-6; beyond the range the limits are used, error < 1.2e-7).
TABLE_MAX = 16.0
TABLE_STEPS = 128  # per unit of x


def make_tables() -> np.ndarray:
    """(2, n) float32: sigmoid and softplus on the grid -TABLE_MAX..TABLE_MAX (an argument of the kernels)."""
    x = np.linspace(-TABLE_MAX, TABLE_MAX, int(2 * TABLE_MAX * TABLE_STEPS) + 1)
    return np.stack([1.0 / (1.0 + np.exp(-x)), np.logaddexp(0.0, x)]).astype(np.float32)


@njit(inline="always")
def sig_softplus(x, tab):
    """(sigmoid(x), softplus(x)) from the table, float32."""
    t = (x + np.float32(TABLE_MAX)) * np.float32(TABLE_STEPS)
    if t <= np.float32(0.0):
        return np.float32(0.0), np.float32(0.0)
    if t >= np.float32(tab.shape[1] - 1):
        return np.float32(1.0), x
    i = np.int64(t)
    f = t - np.float32(i)
    s = tab[0, i] + f * (tab[0, i + 1] - tab[0, i])
    sp = tab[1, i] + f * (tab[1, i + 1] - tab[1, i])
    return s, sp


@njit(inline="always")
def sigmoid_fast(x):
    """sigmoid(x) = (1 + tanh(x / 2)) / 2 with Eigen's rational tanh (13/6 polynomial, argument clamped to
    +-7.905): plain arithmetic, so loops over it vectorise; absolute error < 2e-7."""
    h = np.float32(0.5) * x
    h = min(max(h, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    h2 = h * h
    p = np.float32(-2.76076847742355e-16)
    p = p * h2 + np.float32(2.00018790482477e-13)
    p = p * h2 + np.float32(-8.60467152213735e-11)
    p = p * h2 + np.float32(5.12229709037114e-08)
    p = p * h2 + np.float32(1.48572235717979e-05)
    p = p * h2 + np.float32(6.37261928875436e-04)
    p = p * h2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * h2 + np.float32(1.18534705686654e-04)
    q = q * h2 + np.float32(2.26843463243900e-03)
    q = q * h2 + np.float32(4.89352518554385e-03)
    return np.float32(0.5) + np.float32(0.5) * (p * h / q)


@njit(cache=True)
def table_lookup(x: np.ndarray, tab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vector version of the kernels' sigmoid/softplus (for tests)."""
    s = np.empty(x.shape[0], np.float32)
    sp = np.empty(x.shape[0], np.float32)
    for i in range(x.shape[0]):
        s[i], sp[i] = sig_softplus(np.float32(x[i]), tab)
    return s, sp


# ----------------------------------------------------------------------------------------- intra tasks


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def sgns_accumulate(P, G, c_rows, o_rows, c_slots, o_slots, task, n, weight, bcount, tab, loss_out):
    """Skip-gram with negative sampling (paper Eq. 3) for entries 0..n-1, gradients into G.

    c_rows: centre (input table) rows; o_rows[e, 0] the context's output row, o_rows[e, 1:] the negatives';
    c_slots/o_slots their slots in G. A negative equal to the positive is skipped (as word2vec does).
    loss_out[e] = -log sigmoid(x_0) - sum_j log sigmoid(-x_j) = softplus(-x_0) + sum_j softplus(x_j);
    G[slot of c] += g_j v'_o_j and G[slot of o_j] += g_j v_c with g_j = (sigmoid(x_j) - label_j) times
    weight[task] / bcount[task] (the task's weight and batch size: gradient of the weighted mean loss).
    """
    kk = o_rows.shape[1]
    d = P.shape[1]
    for e in range(n):
        ea = e + _PREFETCH_AHEAD
        if ea < n:
            prefetch_row(P, c_rows[ea])
            prefetch_row(G, c_slots[ea])
            for j in range(kk):
                prefetch_row(P, o_rows[ea, j])
                prefetch_row(G, o_slots[ea, j])
        t = task[e]
        scale = np.float32(weight[t] / bcount[t])
        c = c_rows[e]
        pc = P[c]
        gc = G[c_slots[e]]
        pos = o_rows[e, 0]
        loss = np.float32(0.0)
        for j in range(kk):
            o = o_rows[e, j]
            if j > 0 and o == pos:
                continue
            po = P[o]
            acc = np.float32(0.0)
            for q in range(d):
                acc += pc[q] * po[q]
            if j == 0:  # label 1: loss softplus(-x), gradient sigmoid(x) - 1 = -sigmoid(-x)
                sg, sp = sig_softplus(-acc, tab)
                g = -sg * scale
            else:
                sg, sp = sig_softplus(acc, tab)
                g = sg * scale
            loss += sp
            go = G[o_slots[e, j]]
            for q in range(d):
                gc[q] += g * po[q]
            for q in range(d):
                go[q] += g * pc[q]
        loss_out[e] = loss


# ----------------------------------------------------------------------------------------- inter tasks


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def matmul_rows(A, B, C, n):
    """C[:n] = A[:n] @ B (B: (k, m)). Four rows of A at a time share each row of B: the inner loops are
    contiguous axpys that LLVM vectorises, about 3x the speed of one row at a time."""
    kdim = B.shape[0]
    m = B.shape[1]
    u = 0
    while u + 4 <= n:
        c0, c1, c2, c3 = C[u], C[u + 1], C[u + 2], C[u + 3]
        a0, a1, a2, a3 = A[u], A[u + 1], A[u + 2], A[u + 3]
        for o in range(m):
            c0[o] = 0.0
            c1[o] = 0.0
            c2[o] = 0.0
            c3[o] = 0.0
        for q in range(kdim):
            b = B[q]
            x0, x1, x2, x3 = a0[q], a1[q], a2[q], a3[q]
            for o in range(m):
                bo = b[o]
                c0[o] += x0 * bo
                c1[o] += x1 * bo
                c2[o] += x2 * bo
                c3[o] += x3 * bo
        u += 4
    while u < n:
        cu = C[u]
        au = A[u]
        for o in range(m):
            cu[o] = 0.0
        for q in range(kdim):
            b = B[q]
            x = au[q]
            for o in range(m):
                cu[o] += x * b[o]
        u += 1


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def matmul_tn(A, B, C, n):
    """C = A[:n].T @ B[:n] (A: (n, r), B: (n, d), C: (r, d)), four rows at a time."""
    r = A.shape[1]
    d = B.shape[1]
    for o in range(r):
        for q in range(d):
            C[o, q] = 0.0
    u = 0
    while u + 4 <= n:
        b0, b1, b2, b3 = B[u], B[u + 1], B[u + 2], B[u + 3]
        for o in range(r):
            d0, d1, d2, d3 = A[u, o], A[u + 1, o], A[u + 2, o], A[u + 3, o]
            co = C[o]
            for q in range(d):
                co[q] += d0 * b0[q] + d1 * b1[q] + d2 * b2[q] + d3 * b3[q]
        u += 4
    while u < n:
        bu = B[u]
        for o in range(r):
            du = A[u, o]
            co = C[o]
            for q in range(d):
                co[q] += du * bu[q]
        u += 1


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def relational_forward(P, Wt, rel_rows, nu, X, R):
    """X[u] = e of row rel_rows[u]; R[u] = sigmoid(W e) (Wt = W transposed, (d, r))."""
    d = P.shape[1]
    r = Wt.shape[1]
    for u in range(nu):
        if u + _PREFETCH_AHEAD < nu:
            prefetch_row(P, rel_rows[u + _PREFETCH_AHEAD])
        pr = P[rel_rows[u]]
        x = X[u]
        for q in range(d):
            x[q] = pr[q]
    matmul_rows(X, Wt, R, nu)
    for u in range(nu):
        ru = R[u]
        for o in range(r):
            ru[o] = sigmoid_fast(ru[o])


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def align_accumulate(R, dR, i_rel, a_rel, a_rows, lo, hi, nu, bias, scale, tab, loss_out):
    """Alignment scores sigmoid(W e_i) . sigmoid(W e_c) + bias (paper Eq. 4) for entries lo..hi-1, and
    dR[u] = dL/d(W e) of the task's distinct rows (through the dot product and the sigmoid).

    i_rel[e], a_rel[e, j]: indices into R of the item and of the attributes (j = 0 positive, then negatives);
    a negative equal to the positive attribute is skipped. scale = task weight / task batch size.
    Returns dL/d(bias); loss_out[e] receives the entry's loss.
    """
    kk = a_rel.shape[1]
    r = R.shape[1]
    sc = np.float32(scale)
    b = np.float32(bias)
    gb = 0.0
    for u in range(nu):
        for o in range(r):
            dR[u, o] = 0.0
    for e in range(lo, hi):
        iu = i_rel[e]
        pos = a_rows[e, 0]
        loss = np.float32(0.0)
        ri = R[iu]
        di = dR[iu]
        for j in range(kk):
            if j > 0 and a_rows[e, j] == pos:
                continue
            au = a_rel[e, j]
            ra = R[au]
            acc = b
            for o in range(r):
                acc += ri[o] * ra[o]
            if j == 0:
                sg, sp = sig_softplus(-acc, tab)
                g = -sg * sc
            else:
                sg, sp = sig_softplus(acc, tab)
                g = sg * sc
            loss += sp
            gb += g
            da = dR[au]
            for o in range(r):
                di[o] += g * ra[o]
            for o in range(r):
                da[o] += g * ri[o]
        loss_out[e] = loss
    for u in range(nu):
        du = dR[u]
        ru = R[u]
        for o in range(r):
            du[o] = du[o] * ru[o] * (np.float32(1.0) - ru[o])
    return gb


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def relational_backward(W, X, dR, rel_rows, nu, slot_of_row, G, gW):
    """gW = dR^T X, then G[slot of rel_rows[u]] += (dR W)[u] (dR already through the sigmoid).
    X is overwritten with dR W."""
    d = W.shape[1]
    matmul_tn(dR, X, gW, nu)
    matmul_rows(dR, W, X, nu)
    for u in range(nu):
        x = X[u]
        gu = G[slot_of_row[rel_rows[u]]]
        for q in range(d):
            gu[q] += x[q]


# ---------------------------------------------------------------------------------- clipping, optimiser


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def sq_norm_rows(G, n_slots):
    """Sum of squares of G[0..n_slots-1] (float64 accumulation per row)."""
    d = G.shape[1]
    total = 0.0
    for s_ in range(n_slots):
        g = G[s_]
        acc = np.float32(0.0)
        for q in range(d):
            acc += g[q] * g[q]
        total += float(acc)
    return total


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def lazy_adam_rows(P, M, V, rstep, G, rows_of_slot, n_slots, slot_of_row, scale, lr, beta1, beta2, eps, sgd):
    """Update the touched rows with their (clipped) gradient G[slot] * scale, then clear G and the slot map.

    Adam: per-row step count k, p -= lr / (1 - beta1^k) * m / (sqrt(v) / sqrt(1 - beta2^k) + eps), which is
    torch.optim.Adam's formula. sgd: p -= lr * scale * G (the caller folds the batch size into scale).
    """
    d = P.shape[1]
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    one = np.float32(1.0)
    sc = np.float32(scale)
    e32 = np.float32(eps)
    lb1 = np.log(beta1)
    lb2 = np.log(beta2)
    for s_ in range(n_slots):
        if s_ + _PREFETCH_AHEAD < n_slots:
            ra = rows_of_slot[s_ + _PREFETCH_AHEAD]
            prefetch_row(P, ra)
            if not sgd:
                prefetch_row(M, ra)
                prefetch_row(V, ra)
        row = rows_of_slot[s_]
        p = P[row]
        g = G[s_]
        if sgd:
            step = np.float32(lr * scale)
            for q in range(d):
                p[q] -= step * g[q]
        else:
            k = rstep[row] + 1
            rstep[row] = k
            step_size = np.float32(lr / (1.0 - np.exp(k * lb1)))
            bc2_sqrt = np.float32(np.sqrt(1.0 - np.exp(k * lb2)))
            m = M[row]
            v = V[row]
            # one simple loop per written array: LLVM vectorises each (a fused loop it does not)
            for q in range(d):
                m[q] = b1 * m[q] + (one - b1) * (g[q] * sc)
            for q in range(d):
                v[q] = b2 * v[q] + (one - b2) * (g[q] * sc) * (g[q] * sc)
            for q in range(d):
                p[q] -= step_size * m[q] / (np.sqrt(v[q]) / bc2_sqrt + e32)
        for q in range(d):
            g[q] = 0.0
        slot_of_row[row] = -1


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def dense_adam(p, m, v, g, k, scale, lr, beta1, beta2, eps, sgd):
    """Adam (or SGD) on a dense parameter block (flat arrays) at step count k (>= 1); gradient g * scale."""
    if sgd:
        for i in range(p.shape[0]):
            p[i] -= np.float32(lr * scale) * g[i]
        return
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    one = np.float32(1.0)
    step_size = np.float32(lr / (1.0 - beta1**k))
    bc2_sqrt = np.float32(np.sqrt(1.0 - beta2**k))
    sc = np.float32(scale)
    for i in range(p.shape[0]):
        m[i] = b1 * m[i] + (one - b1) * (g[i] * sc)
    for i in range(p.shape[0]):
        v[i] = b2 * v[i] + (one - b2) * (g[i] * sc) * (g[i] * sc)
    for i in range(p.shape[0]):
        p[i] -= step_size * m[i] / (np.sqrt(v[i]) / bc2_sqrt + np.float32(eps))


# ------------------------------------------------------------------------------------------------ driver


@njit(inline="always")
def _slot(row, slot_of_row, rows_of_slot, ns):
    """The slot of a row, given a new one (ns) when it has none yet; the caller sets ns = max(ns, q + 1).
    Branch-free: whether a row is new is unpredictable, and a mispredicted branch costs more than the two
    stores (rows_of_slot[ns] is simply overwritten by the next new row when this one was not new)."""
    q = slot_of_row[row]
    q = ns if q < 0 else q
    slot_of_row[row] = q
    rows_of_slot[ns] = row
    return q


@njit(cache=True, nogil=True, error_model="numpy")
def run_steps(pr, ep, wk, wmode, wfixed, hp, negatives, step_lo, step_hi, stride, out_base, global_step0, tab,
              out_loss, out_norm, out_sigma2):  # fmt: skip
    """Steps step_lo, step_lo + stride, ... < step_hi of an epoch of ep.n_steps steps.

    pr: Params; ep: Epoch (this epoch's pairs; a task with n pairs gives step s its pairs
    [s * n // n_steps, (s + 1) * n // n_steps), so every task is spread evenly over the epoch); wk: Work of
    this thread. Row (step - out_base) of out_loss / out_norm / out_sigma2 receives the step's mean task losses
    (NaN for a task without examples in that step), gradient norm before clipping, and sigma_t^2 after it.

    With SGD (hp[HP_SGD] = 1) the learning rate decays linearly to 1e-4 of its value over hp[HP_TOTAL_STEPS]
    steps and a row moves by lr * batch_ref * (clipped gradient of the mean losses): word2vec's per-pair step
    size at the reference batch size.
    """
    n_intra = ep.imeta.shape[0]
    n_inter = ep.xmeta.shape[0]
    n_tasks = n_intra + n_inter
    n_steps = ep.n_steps
    k = negatives
    lr0 = hp[HP_LR]
    sgd = hp[HP_SGD] > 0.5
    clip = hp[HP_CLIP]
    P = pr.P
    weights = wk.weights
    bcount = wk.bcount
    losses = wk.losses
    slot_of_row = wk.slot_of_row
    rows_of_slot = wk.rows_of_slot
    # Gradient denominators per task: with per-pair normalisation every pair of every task weighs
    # 1 / batch_ref, as when each task trains on its own full batches; otherwise a task's pairs of the
    # step share its weight (mean loss), which inflates the per-pair gradient of tasks with few pairs.
    per_pair = hp[HP_PER_PAIR] > 0.5
    den = np.empty(n_tasks, np.int64)
    for step in range(step_lo, step_hi, stride):
        row_out = step - out_base
        lr = lr0
        if sgd:
            frac = (global_step0 + row_out) / max(hp[HP_TOTAL_STEPS], 1.0)
            lr = lr0 * max(1.0 - frac, 1e-4)
        task_weights(wmode, pr.s, wfixed, hp[HP_S_MIN], weights)

        # 1. gather the pairs of every task, draw the negatives, give the rows slots
        ns = 0
        ni = 0
        for t in range(n_intra):
            cnt = ep.imeta[t, META_CNT]
            lo = step * cnt // n_steps
            hi = (step + 1) * cnt // n_steps
            bcount[t] = hi - lo
            off = ep.imeta[t, META_OFF]
            base = ep.imeta[t, META_NEG_ROW]
            aoff = ep.imeta[t, META_ALIAS_OFF]
            an = ep.imeta[t, META_ALIAS_N]
            for p in range(lo, hi):
                wk.e_task[ni] = t
                c = ep.ic[off + p]
                wk.e_c[ni] = c
                wk.e_cs[ni] = q = _slot(c, slot_of_row, rows_of_slot, ns)
                ns = max(ns, q + 1)
                o = ep.io[off + p]
                wk.e_o[ni, 0] = o
                wk.e_os[ni, 0] = q = _slot(o, slot_of_row, rows_of_slot, ns)
                ns = max(ns, q + 1)
                h0 = ep.tseed[t] + np.uint64(p) * np.uint64(k)
                for j in range(1, k + 1):
                    o = base + alias_draw(splitmix64(h0 + np.uint64(j - 1)), ep.athr, ep.aidx, aoff, an)
                    wk.e_o[ni, j] = o
                    wk.e_os[ni, j] = q = _slot(o, slot_of_row, rows_of_slot, ns)
                    ns = max(ns, q + 1)
                ni += 1
        nx = 0
        for u in range(n_inter):
            cnt = ep.xmeta[u, META_CNT]
            lo = step * cnt // n_steps
            hi = (step + 1) * cnt // n_steps
            bcount[n_intra + u] = hi - lo
            off = ep.xmeta[u, META_OFF]
            base = ep.xmeta[u, META_NEG_ROW]
            aoff = ep.xmeta[u, META_ALIAS_OFF]
            an = ep.xmeta[u, META_ALIAS_N]
            for p in range(lo, hi):
                c = ep.xi[off + p]
                wk.x_i[nx] = c
                q = _slot(c, slot_of_row, rows_of_slot, ns)  # G slots; rows reach G via slot_of_row
                ns = max(ns, q + 1)
                o = ep.xa[off + p]
                wk.x_a[nx, 0] = o
                q = _slot(o, slot_of_row, rows_of_slot, ns)
                ns = max(ns, q + 1)
                h0 = ep.tseed[n_intra + u] + np.uint64(p) * np.uint64(k)
                for j in range(1, k + 1):
                    o = base + alias_draw(splitmix64(h0 + np.uint64(j - 1)), ep.athr, ep.aidx, aoff, an)
                    wk.x_a[nx, j] = o
                    q = _slot(o, slot_of_row, rows_of_slot, ns)
                    ns = max(ns, q + 1)
                nx += 1
        for t in range(n_tasks):
            losses[t] = 0.0
            wk.active[t] = bcount[t] > 0
        if ns == 0:
            for t in range(n_tasks):
                out_loss[row_out, t] = np.nan
                out_sigma2[row_out, t] = 1.0 / weights[t]
            out_norm[row_out] = 0.0
            continue

        for t in range(n_tasks):
            den[t] = max(np.int64(hp[HP_BATCH_REF]), bcount[t]) if per_pair else max(bcount[t], 1)

        # 2. intra tasks
        if ni > 0:
            sgns_accumulate(P, wk.G, wk.e_c, wk.e_o, wk.e_cs, wk.e_os, wk.e_task, ni, weights, den, tab,
                            wk.e_loss)  # fmt: skip
            for e in range(ni):
                losses[wk.e_task[e]] += wk.e_loss[e]

        # 3. inter tasks, one at a time (each has its own W and its own relational rows)
        sq = 0.0
        lo = 0
        for u in range(n_inter):
            tw = n_intra + u
            hi = lo + bcount[tw]
            if hi == lo:
                continue
            nu = 0
            for e in range(lo, hi):
                q = _slot(wk.x_i[e], wk.rmap, wk.rel_rows, nu)
                nu = max(nu, q + 1)
                wk.x_ir[e] = q
                for j in range(k + 1):
                    q = _slot(wk.x_a[e, j], wk.rmap, wk.rel_rows, nu)
                    nu = max(nu, q + 1)
                    wk.x_ar[e, j] = q
            Wu = pr.W[u]
            for q in range(Wu.shape[1]):
                for o in range(Wu.shape[0]):
                    wk.Wt[q, o] = Wu[o, q]
            relational_forward(P, wk.Wt, wk.rel_rows, nu, wk.X, wk.R)
            wk.gb[u] = align_accumulate(wk.R, wk.dR, wk.x_ir, wk.x_ar, wk.x_a, lo, hi, nu, pr.b[u],
                                        weights[tw] / den[tw], tab, wk.x_loss)  # fmt: skip
            relational_backward(Wu, wk.X, wk.dR, wk.rel_rows, nu, slot_of_row, wk.G, wk.gW[u])
            for e in range(lo, hi):
                losses[tw] += wk.x_loss[e]
            for u2 in range(nu):
                wk.rmap[wk.rel_rows[u2]] = -1
            sq += sq_norm_rows(wk.gW[u], wk.gW.shape[1]) + wk.gb[u] * wk.gb[u]
            lo = hi

        # 4. global gradient-norm clipping
        sq += sq_norm_rows(wk.G, ns)
        norm = np.sqrt(sq)
        scale = 1.0
        if norm > clip:
            scale = clip / norm
        out_norm[row_out] = norm

        # 5. optimiser
        upd = hp[HP_BATCH_REF] * scale if sgd else scale  # the kernels multiply by lr
        lazy_adam_rows(P, pr.M, pr.V, pr.rstep, wk.G, rows_of_slot, ns, slot_of_row, upd, lr, hp[HP_BETA1],
                       hp[HP_BETA2], hp[HP_EPS], sgd)  # fmt: skip
        for u in range(n_inter):
            if bcount[n_intra + u] == 0:
                continue
            pr.wstep[u] += 1
            dense_adam(pr.W[u].reshape(-1), pr.WM[u].reshape(-1), pr.WV[u].reshape(-1), wk.gW[u].reshape(-1),
                       pr.wstep[u], upd, lr, hp[HP_BETA1], hp[HP_BETA2], hp[HP_EPS], sgd)  # fmt: skip
            wk.gbf[0] = wk.gb[u]
            dense_adam(pr.b[u : u + 1], pr.bm[u : u + 1], pr.bv[u : u + 1], wk.gbf, pr.wstep[u], upd, lr,
                       hp[HP_BETA1], hp[HP_BETA2], hp[HP_EPS], sgd)  # fmt: skip

        # 6. task uncertainties, from this step's mean task losses
        for t in range(n_tasks):
            if wk.active[t]:
                losses[t] /= bcount[t]
                out_loss[row_out, t] = losses[t]
            else:
                out_loss[row_out, t] = np.nan
        update_log_variance(wmode, pr.s, pr.sm, pr.sv, pr.sstep, losses, wk.active, lr, hp[HP_BETA1],
                            hp[HP_BETA2], hp[HP_EPS], hp[HP_S_MIN], sgd)  # fmt: skip
        task_weights(wmode, pr.s, wfixed, hp[HP_S_MIN], weights)
        for t in range(n_tasks):
            out_sigma2[row_out, t] = 1.0 / weights[t]
