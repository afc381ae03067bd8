"""The M2GRL engine's arithmetic against hand-written references: SGNS and alignment losses and gradients,
the sigmoid/softplus tables, Adam against torch.optim.Adam, gradient clipping, the uncertainty weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit

from trainer.model import kernels as K
from trainer.model.config import TrainConfig
from trainer.model.pairs import alias_table
from trainer.model.weighting import (
    MODE_ADAPTIVE,
    MODE_STATIC,
    MODE_UNIFORM,
    initial_state,
    task_weights,
    update_log_variance,
    weights_of,
)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.logaddexp(0.0, x)


# ------------------------------------------------------------------------------------- numpy references


def sgns_reference(P: np.ndarray, entries: list[tuple[int, list[int]]], scale: float):
    """Loss sum_e [softplus(-v_c.v'_o0) + sum_j softplus(v_c.v'_oj)] and its gradient (times scale) w.r.t. P,
    in float64. entries: (centre row, [positive row, negative rows...]); negatives equal to the positive are
    skipped, as in word2vec."""
    P = P.astype(np.float64)
    grad = np.zeros_like(P)
    losses = []
    for c, outs in entries:
        loss = 0.0
        for j, o in enumerate(outs):
            if j > 0 and o == outs[0]:
                continue
            x = P[c] @ P[o]
            label = 1.0 if j == 0 else 0.0
            loss += _softplus(-x) if j == 0 else _softplus(x)
            g = (_sig(x) - label) * scale
            grad[c] += g * P[o]
            grad[o] += g * P[c]
        losses.append(loss)
    return np.array(losses), grad


def align_loss(W: np.ndarray, P: np.ndarray, b: float, entries: list[tuple[int, list[int]]]) -> float:
    """Eq. 4 with log-sigmoid: sum_e softplus(-x_0) + sum_j softplus(x_j), x = r_i.r_c + b, r = sigmoid(W e)."""
    total = 0.0
    for i, attrs in entries:
        ri = _sig(W @ P[i])
        for j, a in enumerate(attrs):
            if j > 0 and a == attrs[0]:
                continue
            x = ri @ _sig(W @ P[a]) + b
            total += _softplus(-x) if j == 0 else _softplus(x)
    return total


def align_reference(
    W: np.ndarray, P: np.ndarray, b: float, entries: list[tuple[int, list[int]]], scale: float
):
    """Per-entry losses and the gradients (times scale) w.r.t. W, P and b, by the chain rule through
    x = sigmoid(W e_i) . sigmoid(W e_c) + b, in float64."""
    W = W.astype(np.float64)
    P = P.astype(np.float64)
    gW = np.zeros_like(W)
    gP = np.zeros_like(P)
    gb = 0.0
    losses = []
    for i, attrs in entries:
        loss = 0.0
        ri = _sig(W @ P[i])
        for j, a in enumerate(attrs):
            if j > 0 and a == attrs[0]:
                continue
            ra = _sig(W @ P[a])
            x = ri @ ra + b
            loss += _softplus(-x) if j == 0 else _softplus(x)
            g = (_sig(x) - (1.0 if j == 0 else 0.0)) * scale
            gb += g
            zi = g * ra * ri * (1 - ri)  # dL/d(W e_i)
            za = g * ri * ra * (1 - ra)
            gW += np.outer(zi, P[i]) + np.outer(za, P[a])
            gP[i] += W.T @ zi
            gP[a] += W.T @ za
        losses.append(loss)
    return np.array(losses), gW, gP, gb


def test_align_reference_matches_finite_differences():
    """The hand-derived alignment gradient is itself right (central differences, float64)."""
    rng = np.random.default_rng(3)
    W = rng.normal(0, 0.5, (3, 4))
    P = rng.normal(0, 0.5, (6, 4))
    entries = [(0, [3, 4, 5]), (1, [4, 3, 4])]
    b = -0.3
    _, gW, gP, gb = align_reference(W, P, b, entries, 1.0)
    eps = 1e-6
    for idx in [(0, 0), (1, 2), (2, 3)]:
        Wp, Wm = W.copy(), W.copy()
        Wp[idx] += eps
        Wm[idx] -= eps
        num = (align_loss(Wp, P, b, entries) - align_loss(Wm, P, b, entries)) / (2 * eps)
        assert num == pytest.approx(gW[idx], rel=1e-6, abs=1e-9)
    for idx in [(0, 1), (1, 0), (3, 2), (4, 3)]:
        Pp, Pm = P.copy(), P.copy()
        Pp[idx] += eps
        Pm[idx] -= eps
        num = (align_loss(W, Pp, b, entries) - align_loss(W, Pm, b, entries)) / (2 * eps)
        assert num == pytest.approx(gP[idx], rel=1e-6, abs=1e-9)
    num = (align_loss(W, P, b + eps, entries) - align_loss(W, P, b - eps, entries)) / (2 * eps)
    assert num == pytest.approx(gb, rel=1e-6)


# ------------------------------------------------------------------------------------------- the tables


def test_sigmoid_softplus_table_accuracy():
    tab = K.make_tables()
    x = np.concatenate([np.linspace(-30, 30, 100_001), [0.0, 1e-3, -15.999, 15.999, 16.0, -16.0]])
    s, sp = K.table_lookup(x.astype(np.float32), tab)
    x32 = x.astype(np.float32).astype(np.float64)
    assert np.abs(s - _sig(x32)).max() < 3e-6
    assert np.abs(sp - _softplus(x32)).max() < 4e-6  # float32 rounding of values up to 30 included


def test_sigmoid_fast_accuracy():
    x = np.linspace(-40, 40, 200_001).astype(np.float32)
    out = np.empty_like(x)

    @njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = K.sigmoid_fast(x[i])

    run(x, out)
    assert np.abs(out - _sig(x.astype(np.float64))).max() < 3e-7


# ------------------------------------------------------------------------------------ loss kernels


def _slots(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Slot of each row in first-touch order, as run_steps assigns them."""
    order: dict[int, int] = {}
    slots = np.array([order.setdefault(int(r), len(order)) for r in rows.ravel()], np.int32).reshape(
        rows.shape
    )
    return slots, np.array(list(order), np.int64), len(order)


def test_sgns_loss_and_gradient_match_reference():
    rng = np.random.default_rng(0)
    d = 8
    P = rng.normal(0, 0.4, (10, d)).astype(np.float32)  # rows 0-4 input table, 5-9 output table
    entries = [(0, [5, 6, 7, 8]), (1, [6, 6, 9, 5]), (0, [7, 5, 5, 9])]  # (1, ...) has a negative == positive
    c_rows = np.array([e[0] for e in entries], np.int32)
    o_rows = np.array([e[1] for e in entries], np.int32)
    both = np.concatenate([c_rows[:, None], o_rows], axis=1)
    slots, rows_of_slot, ns = _slots(both)
    G = np.zeros((ns, d), np.float32)
    task = np.zeros(3, np.int32)
    weight = np.array([0.7])
    bcount = np.array([3], np.int64)
    loss = np.zeros(3)
    K.sgns_accumulate(P, G, c_rows, o_rows, slots[:, 0].copy(), slots[:, 1:].copy(), task, 3, weight, bcount,
                      K.make_tables(), loss)  # fmt: skip
    ref_loss, ref_grad = sgns_reference(P, entries, 0.7 / 3)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(G, ref_grad[rows_of_slot], rtol=1e-4, atol=2e-6)
    # hand-computed value of one term: v_0 . v'_5 goes into softplus(-x)
    x = float(P[0].astype(np.float64) @ P[5])
    assert math.log1p(math.exp(-x)) == pytest.approx(_softplus(-x))


def test_alignment_loss_and_gradient_match_reference():
    rng = np.random.default_rng(1)
    d, r = 6, 5
    P = rng.normal(0, 0.6, (9, d)).astype(np.float32)  # rows 0-3 items, 4-8 attributes
    W = rng.normal(0, 0.6, (r, d)).astype(np.float32)
    entries = [(0, [4, 5, 6]), (1, [5, 5, 8]), (0, [7, 4, 6]), (2, [8, 6, 4])]
    x_i = np.array([e[0] for e in entries], np.int32)
    x_a = np.array([e[1] for e in entries], np.int32)
    # relational slots (distinct rows of the batch) and gradient slots, as run_steps builds them
    rel, rel_rows, nu = _slots(np.concatenate([x_i[:, None], x_a], axis=1))
    slot_of_row = np.full(9, -1, np.int32)
    slot_of_row[rel_rows] = np.arange(nu)
    X = np.zeros((nu, d), np.float32)
    R = np.zeros((nu, r), np.float32)
    dR = np.zeros((nu, r), np.float32)
    G = np.zeros((nu, d), np.float32)
    gW = np.zeros((r, d), np.float32)
    loss = np.zeros(4)
    scale = 0.5 / 4
    K.relational_forward(P, np.ascontiguousarray(W.T), rel_rows, nu, X, R)
    np.testing.assert_allclose(R, _sig(P[rel_rows].astype(np.float64) @ W.T.astype(np.float64)), atol=1e-6)
    gb = K.align_accumulate(R, dR, rel[:, 0].copy(), rel[:, 1:].copy(), x_a, 0, 4, nu, -0.4, scale, K.make_tables(),
                            loss)  # fmt: skip
    K.relational_backward(W, X, dR, rel_rows, nu, slot_of_row, G, gW)
    ref_loss, ref_gW, ref_gP, ref_gb = align_reference(W, P, -0.4, entries, scale)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=2e-5)
    assert gb == pytest.approx(ref_gb, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(gW, ref_gW, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(G, ref_gP[rel_rows], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ optimiser


def test_lazy_adam_equals_torch_adam_when_every_row_is_touched():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    n, d = 5, 7
    P0 = rng.normal(0, 1, (n, d)).astype(np.float32)
    grads = rng.normal(0, 1, (6, n, d)).astype(np.float32)
    P, M, V = P0.copy(), np.zeros_like(P0), np.zeros_like(P0)
    rstep = np.zeros(n, np.int32)
    slot_of_row = np.full(n, -1, np.int32)
    rows = np.arange(n, dtype=np.int64)[::-1].copy()  # slots in another order than rows
    t = torch.nn.Parameter(torch.tensor(P0))
    opt = torch.optim.Adam([t], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    for g in grads:
        G = g[rows].copy()
        K.lazy_adam_rows(P, M, V, rstep, G, rows, n, slot_of_row, 1.0, 0.01, 0.9, 0.999, 1e-8, False)
        assert not G.any(), "the gradient buffer is cleared after the update"
        opt.zero_grad()
        t.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(P, t.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert (rstep == len(grads)).all()


def test_lazy_adam_row_follows_dense_adam_on_its_own_gradients():
    """A row updated at steps 1 and 3 only moves exactly as dense Adam run on its two gradients."""
    d = 4
    g1 = np.array([[0.3, -1.0, 0.5, 2.0]], np.float32)
    g3 = np.array([[-0.2, 0.1, 0.5, -1.0]], np.float32)
    P = np.zeros((3, d), np.float32)
    M, V = np.zeros_like(P), np.zeros_like(P)
    rstep = np.zeros(3, np.int32)
    sor = np.full(3, -1, np.int32)
    row2 = np.array([2], np.int64)
    row0 = np.array([0], np.int64)
    K.lazy_adam_rows(P, M, V, rstep, g1.copy(), row2, 1, sor, 1.0, 0.1, 0.9, 0.999, 1e-8, False)
    K.lazy_adam_rows(P, M, V, rstep, g1.copy(), row0, 1, sor, 1.0, 0.1, 0.9, 0.999, 1e-8, False)  # step 2
    K.lazy_adam_rows(P, M, V, rstep, g3.copy(), row2, 1, sor, 1.0, 0.1, 0.9, 0.999, 1e-8, False)
    # hand-written Adam on the sequence (g1, g3)
    p = np.zeros(d)
    m = np.zeros(d)
    v = np.zeros(d)
    for k, g in enumerate([g1[0], g3[0]], start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p -= 0.1 / (1 - 0.9**k) * m / (np.sqrt(v) / math.sqrt(1 - 0.999**k) + 1e-8)
    np.testing.assert_allclose(P[2], p, rtol=1e-5)
    assert rstep.tolist() == [1, 0, 2]


def test_dense_adam_step_by_hand():
    p = np.array([1.0, -2.0], np.float32)
    m = np.zeros(2, np.float32)
    v = np.zeros(2, np.float32)
    g = np.array([0.5, -0.25], np.float32)
    K.dense_adam(p, m, v, g, 1, 2.0, 0.01, 0.9, 0.999, 1e-8, False)  # gradient 2g, first step
    # first Adam step: m_hat = 2g, v_hat = 4g^2 -> p -= lr * sign(g) (up to eps)
    np.testing.assert_allclose(p, [1.0 - 0.01, -2.0 + 0.01], rtol=1e-6)
    np.testing.assert_allclose(m, 0.1 * 2 * g, rtol=1e-6)


# ------------------------------------------------------------------------------ one step of run_steps


def _one_step(P0: np.ndarray, pairs: np.ndarray, *, clip: float, sgd: bool, k: int = 2):
    """One run_steps step of a single intra task on a 4-node view whose only negative is node 3."""
    n = 4
    d = P0.shape[1]
    P = P0.copy()
    thr, al = alias_table(np.array([0, 0, 0, 1.0]))
    pr = K.Params(P=P, M=np.zeros_like(P), V=np.zeros_like(P), rstep=np.zeros(2 * n, np.int32),
                  W=np.zeros((0, 2, d), np.float32), WM=np.zeros((0, 2, d), np.float32),
                  WV=np.zeros((0, 2, d), np.float32), wstep=np.zeros(0, np.int64), b=np.zeros(0, np.float32),
                  bm=np.zeros(0, np.float32), bv=np.zeros(0, np.float32),
                  s=np.zeros(1), sm=np.zeros(1), sv=np.zeros(1), sstep=np.zeros(1, np.int64))  # fmt: skip
    imeta = np.array([[0, len(pairs), len(pairs), n, 0, n]], np.int64)
    ep = K.Epoch(pairs[:, 0].astype(np.int32), (pairs[:, 1] + n).astype(np.int32), imeta,
                 np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 6), np.int64), thr, al,
                 np.array([K.derive_seed(0, 1)], np.uint64), 1)  # fmt: skip
    wk = K.make_work(2 * n, d, 2, k, 1, 0, len(pairs), 0, 0)
    hp = np.zeros(K.N_HP)
    hp[[K.HP_LR, K.HP_BETA1, K.HP_BETA2, K.HP_EPS, K.HP_CLIP, K.HP_BATCH_REF, K.HP_SGD, K.HP_S_MIN,
        K.HP_TOTAL_STEPS]] = [0.5, 0.9, 0.999, 1e-8, clip, 1.0, float(sgd), math.log(0.05), 1e9]  # fmt: skip
    out = (np.zeros((1, 1)), np.zeros(1), np.zeros((1, 1)))
    K.run_steps(pr, ep, wk, MODE_UNIFORM, np.ones(1), hp, k, 0, 1, 1, 0, 0, K.make_tables(), *out)
    return P, out


def test_step_gradient_and_global_norm_clipping():
    rng = np.random.default_rng(5)
    P0 = rng.normal(0, 0.5, (8, 6)).astype(np.float32)
    pairs = np.array([[0, 1], [2, 1], [1, 0]])
    entries = [(int(c), [int(o) + 4, 7, 7]) for c, o in pairs]
    ref_loss, ref_grad = sgns_reference(P0, entries, 1.0 / 3)
    norm = np.linalg.norm(ref_grad)
    assert norm > 0.05
    # SGD with lr 0.5 and batch_ref 1: the update is lr times minus the (clipped) gradient of the mean loss
    P, (loss, gnorm, _) = _one_step(P0, pairs, clip=1e6, sgd=True)
    np.testing.assert_allclose(P0 - P, 0.5 * ref_grad, atol=2e-6)
    assert loss[0, 0] == pytest.approx(ref_loss.mean(), rel=1e-5)
    assert gnorm[0] == pytest.approx(norm, rel=1e-5)
    P, (_, gnorm, _) = _one_step(P0, pairs, clip=0.01, sgd=True)
    delta = (P0 - P).astype(np.float64)
    assert np.linalg.norm(delta) == pytest.approx(0.5 * 0.01, rel=1e-4)  # clipped to the bound ...
    np.testing.assert_allclose(
        delta, 0.5 * ref_grad * 0.01 / norm, atol=1e-7
    )  # ... in the gradient's direction
    assert gnorm[0] == pytest.approx(norm, rel=1e-5)  # the reported norm is before clipping
    # Adam's first step moves every touched coordinate by lr against the sign of its gradient, clipped or not
    P, _ = _one_step(P0, pairs, clip=0.01, sgd=False)
    moved = ref_grad != 0
    np.testing.assert_allclose((P0 - P)[moved], 0.5 * np.sign(ref_grad[moved]), rtol=1e-3)  # eps vs small |g|
    assert np.array_equal(P[~moved], P0[~moved])


# ------------------------------------------------------------------------------------------ weighting


def test_uniform_and_static_weights():
    tasks = ["item", "category", "item-category"]
    mode, s0, fixed = initial_state(tasks, TrainConfig(weighting="uniform"))
    assert mode == MODE_UNIFORM
    assert weights_of(mode, s0, fixed, 0.05).tolist() == [1.0, 1.0, 1.0]
    mode, s0, fixed = initial_state(tasks, TrainConfig(weighting="static", static_item_weight=0.05))
    assert mode == MODE_STATIC
    assert weights_of(mode, s0, fixed, 0.05).tolist() == [0.05, 1.0, 1.0]
    mode, s0, fixed = initial_state(tasks, TrainConfig())
    assert mode == MODE_ADAPTIVE
    assert weights_of(mode, s0, fixed, 0.05).tolist() == [1.0, 1.0, 1.0]  # s = 0: sigma^2 = 1
    # non-adaptive modes never move s
    s = np.zeros(1)
    update_log_variance(MODE_STATIC, s, np.zeros(1), np.zeros(1), np.zeros(1, np.int64), np.array([9.0]),
                        np.ones(1, np.bool_), 0.1, 0.9, 0.999, 1e-8, math.log(0.05), False)  # fmt: skip
    assert s[0] == 0.0


def _drive(s, m, v, steps, loss: float, n: int, s_min: float, lr: float = 0.01) -> list[float]:
    out = []
    for _ in range(n):
        update_log_variance(MODE_ADAPTIVE, s, m, v, steps, np.array([loss]), np.ones(1, np.bool_), lr, 0.9,
                            0.999, 1e-8, s_min, False)  # fmt: skip
        out.append(float(s[0]))
    return out


def test_adaptive_weight_first_step_by_hand():
    s, m, v, st = np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1, np.int64)
    _drive(s, m, v, st, 3.0, 1, math.log(0.05))
    # gradient 1 - exp(0) * 3 = -2; the first Adam step moves by lr against its sign
    assert s[0] == pytest.approx(0.01, rel=1e-6)
    assert m[0] == pytest.approx(-0.2)


def test_sigma_clamp_holds_then_releases():
    """A task whose loss drops to ~0 sits at sigma2_min (weight exactly 1/sigma2_min, never above) and leaves
    the bound as soon as its loss rises again, converging to sigma^2 = L."""
    s_min = math.log(0.05)
    s, m, v, st = np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1, np.int64)
    traj = _drive(s, m, v, st, 1e-4, 1500, s_min, lr=0.05)
    assert min(traj) >= s_min
    assert traj[-1] == s_min
    w = np.zeros(1)
    task_weights(MODE_ADAPTIVE, s, np.ones(1), s_min, w)
    assert w[0] == pytest.approx(1 / 0.05)
    back = _drive(s, m, v, st, 0.5, 400, s_min, lr=0.05)
    assert back[0] > s_min, "leaves the bound on the first step with a loss above sigma2_min"
    assert back[2] > back[1] > back[0]
    assert math.exp(back[-1]) == pytest.approx(0.5, rel=0.1)  # sigma^2 tracks the loss level
