"""The artifact's figures: training curves (paper Fig. 5) and 2-D PCA of the embeddings (paper Fig. 6).

matplotlib is driven through ``Figure`` objects with the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

N_TOP_CATEGORIES = 5
MAX_POINTS = 20_000  # items drawn per panel; more only blurs the picture and slows writing


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def curve_columns(rows: Sequence[dict[str, float]]) -> tuple[str | None, list[str], list[str]]:
    """(x column, loss columns, sigma^2 columns) of curve rows, by name: 'step', '*loss*', '*sigma*'."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    x = "step" if "step" in keys else None
    sigma = [k for k in keys if "sigma" in k.lower()]
    loss = [k for k in keys if "loss" in k.lower() and k not in sigma]
    return x, loss, sigma


def write_curves_png(rows: Sequence[dict[str, float]], path: Path, title: str = "M2GRL training") -> None:
    """Loss and sigma^2 of every task against the training step: two panels, one line per task."""
    x_key, loss_keys, sigma_keys = curve_columns(rows)
    fig = _figure(11, 4.2)
    x = np.array([row.get(x_key, i) if x_key else i for i, row in enumerate(rows)], dtype=float)
    for ax, keys, label in (
        (fig.add_subplot(1, 2, 1), loss_keys, "loss"),
        (fig.add_subplot(1, 2, 2), sigma_keys, "sigma^2"),
    ):
        for key in keys:
            y = np.array([row.get(key, np.nan) for row in rows], dtype=float)
            ax.plot(x, y, label=key, linewidth=1.2)
        if keys:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {label} recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png")


def pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components of the rows of x (zero-padded when x has fewer)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros((len(x), 2))
    if len(x) < 2:
        return out
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    proj = xc @ vt[:2].T
    out[:, : proj.shape[1]] = proj
    return out


def write_embeddings_png(
    path: Path,
    item_vectors: np.ndarray,
    item_attr: np.ndarray | None = None,
    attr_vectors: np.ndarray | None = None,
    attr_names: Sequence[str] | None = None,
    attr_view: str = "category",
    seed: int = 0,
) -> None:
    """2-D PCA of the item vectors, coloured by their 5 largest categories, and of the category vectors.

    item_vectors: (n_items, dim) instance-view table.
    item_attr: (n_items,) int row of each item's category, -1 none; None = no attribute view (one panel).
    attr_vectors / attr_names: the category view's table and ids; the 5 largest categories get the same
        colours in both panels, the others are grey.
    """
    rng = np.random.default_rng(seed)
    has_attr = item_attr is not None and attr_vectors is not None and len(attr_vectors) > 0
    fig = _figure(11 if has_attr else 6, 5)
    ax = fig.add_subplot(1, 2 if has_attr else 1, 1)
    rows = np.arange(len(item_vectors))
    if len(rows) > MAX_POINTS:
        rows = np.sort(rng.choice(rows, MAX_POINTS, replace=False))
    xy = pca_2d(item_vectors[rows])
    if not has_attr:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.5, rasterized=True)
    else:
        assert item_attr is not None and attr_vectors is not None
        attr = np.asarray(item_attr)
        counts = np.bincount(attr[attr >= 0], minlength=len(attr_vectors))
        top = [int(c) for c in np.argsort(-counts, kind="stable")[:N_TOP_CATEGORIES] if counts[c] > 0]
        names = list(attr_names) if attr_names is not None else [str(i) for i in range(len(attr_vectors))]
        colours = [f"C{k}" for k in range(len(top))]
        sub_attr = attr[rows]
        rest = ~np.isin(sub_attr, top)
        ax.scatter(xy[rest, 0], xy[rest, 1], s=2, c="lightgrey", alpha=0.4, rasterized=True, label="other")
        for c, colour in zip(top, colours, strict=True):
            sel = sub_attr == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, c=colour, alpha=0.8, rasterized=True, label=names[c])
        ax.legend(fontsize=7, markerscale=3)
        ax2 = fig.add_subplot(1, 2, 2)
        cxy = pca_2d(attr_vectors)
        others = np.setdiff1d(np.arange(len(attr_vectors)), top)
        ax2.scatter(cxy[others, 0], cxy[others, 1], s=6, c="lightgrey", alpha=0.6, rasterized=True)
        for c, colour in zip(top, colours, strict=True):
            ax2.scatter(cxy[c, 0], cxy[c, 1], s=40, c=colour, edgecolors="black", linewidths=0.5)
            ax2.annotate(
                names[c], (cxy[c, 0], cxy[c, 1]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax2.set_title(f"(b) {attr_view}-view embeddings ({len(attr_vectors)} nodes)")
        ax2.set_xlabel("PC 1")
        ax2.set_ylabel("PC 2")
    ax.set_title(f"(a) instance-view embeddings ({len(rows)} of {len(item_vectors)} items)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    fig.savefig(path, format="png")
