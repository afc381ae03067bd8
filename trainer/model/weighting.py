"""Loss weights of the tasks (paper Sec. 3.5, Eq. 5-10).

``adaptive``: homoscedastic uncertainty. Each task t has a learned s_t = log sigma_t^2 and contributes
exp(-s_t) * L_t + s_t to the total loss (Eq. 10 with log sigma^2 predicted for numerical stability), so its
weight is exp(-s_t) = 1 / sigma_t^2 and the optimum for a fixed loss is sigma_t^2 = L_t. The gradient is
analytic: d/ds_t = 1 - exp(-s_t) L_t.

The clamp sigma_t^2 >= sigma2_min (so no weight exceeds 1 / sigma2_min) is a *projection*: after every update
s_t <- max(s_t, log sigma2_min). The forward weight therefore never exceeds the bound, and the gradient is
never altered: while L_t < sigma2_min it pushes s_t into the bound and s_t stays there; as soon as
L_t > sigma2_min the gradient is negative and s_t leaves the bound on the next step. Adam momentum that
points into the bound is dropped at the projection, so leaving does not wait for stale momentum to decay.

``uniform``: every weight 1, no s_t. ``static``: the item task weighs ``static_item_weight``, every other
task 1 (paper Table 3, "static weights"). Both report sigma_t^2 = 1 / weight.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from trainer.data.schema import ITEM_VIEW
from trainer.model.config import TrainConfig

MODE_ADAPTIVE = 0
MODE_UNIFORM = 1
MODE_STATIC = 2
_MODES = {"adaptive": MODE_ADAPTIVE, "uniform": MODE_UNIFORM, "static": MODE_STATIC}


def mode_code(name: str) -> int:
    if name not in _MODES:
        raise ValueError(f"weighting must be one of {sorted(_MODES)}, got {name!r}")
    return _MODES[name]


def initial_state(tasks: list[str], config: TrainConfig) -> tuple[int, np.ndarray, np.ndarray]:
    """(mode, s_0, fixed weights) for the tasks in order. s_0 = 0 (sigma^2 = 1) or the bound if above it."""
    mode = mode_code(config.weighting)
    s_min = math.log(config.sigma2_min)
    s0 = np.full(len(tasks), max(0.0, s_min), np.float64)
    fixed = np.ones(len(tasks), np.float64)
    if mode == MODE_STATIC:
        fixed[[i for i, t in enumerate(tasks) if t == ITEM_VIEW]] = config.static_item_weight
    return mode, s0, fixed


@njit(cache=True)
def task_weights(mode: int, s: np.ndarray, fixed: np.ndarray, s_min: float, out: np.ndarray) -> None:
    """out[t] <- the weight of task t in the total loss (exp(-s_t) for adaptive)."""
    for t in range(out.shape[0]):
        if mode == MODE_ADAPTIVE:
            out[t] = math.exp(-max(s[t], s_min))
        elif mode == MODE_UNIFORM:
            out[t] = 1.0
        else:
            out[t] = fixed[t]


@njit(cache=True)
def update_log_variance(
    mode: int,
    s: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    steps: np.ndarray,
    losses: np.ndarray,
    active: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    s_min: float,
    sgd: bool,
) -> None:
    """One optimiser step on s_t = log sigma_t^2 of every active task, given the step's task losses L_t.

    Gradient 1 - exp(-s_t) L_t; Adam (own moments m, v and step counts) or plain SGD at rate lr;
    then the projection onto s_t >= s_min described in the module docstring. No-op unless adaptive.
    """
    if mode != MODE_ADAPTIVE:
        return
    for t in range(s.shape[0]):
        if not active[t]:
            continue
        g = 1.0 - math.exp(-s[t]) * losses[t]
        if sgd:
            s[t] -= lr * g
        else:
            steps[t] += 1
            k = steps[t]
            m[t] = beta1 * m[t] + (1.0 - beta1) * g
            v[t] = beta2 * v[t] + (1.0 - beta2) * g * g
            s[t] -= lr / (1.0 - beta1**k) * m[t] / (math.sqrt(v[t]) / math.sqrt(1.0 - beta2**k) + eps)
        if s[t] < s_min:
            s[t] = s_min
            if m[t] > 0.0:  # momentum into the bound
                m[t] = 0.0


def weights_of(mode: int, s: np.ndarray, fixed: np.ndarray, sigma2_min: float) -> np.ndarray:
    """The task weights as a new array (convenience for callers outside the kernels)."""
    out = np.empty(s.shape[0], np.float64)
    task_weights(mode, s, fixed, math.log(sigma2_min), out)
    return out
