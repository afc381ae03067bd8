"""Retrieval strategies: which vectors an index holds, what the score means, and how hnswlib encodes them.

A strategy is a small module defining a :class:`Strategy` subclass and registering one instance with
:func:`register`; adding one is that module plus its name in ``_BUILTIN``. A strategy says

- which *raw vectors* queries are expressed in (``vectors(artifact)``, one row per item; stored in the index
  version as a ``.npy`` so the service can look up an item's query vector);
- what the *score* of a pair is (``exact_scores``/``pair_scores``, always "higher is closer"), which is what
  the recall check compares against;
- one or more :class:`Encoding` s: how the vectors are held by hnswlib (its ``space``), how a raw query is
  mapped into that space (``query_transform``) and how hnswlib's distance converts back to the score
  (``scores``). When a strategy offers several, the builder measures each and keeps the one reaching the
  recall target with the smallest search beam; the manifest names it and the reader uses it.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import numpy as np


class StrategyUnavailable(ValueError):
    """The artifact lacks what a strategy needs (e.g. no metric model was trained, so there is no z)."""


class Encoding:
    """How raw vectors are laid out for hnswlib. Parameters are JSON numbers kept in the manifest."""

    name: ClassVar[str]
    space: ClassVar[str]  # hnswlib space: 'l2' (squared distance), 'ip' (1 - dot) or 'cosine'

    def prepare(self, raw: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Index vectors for hnswlib and the parameters ``query_transform``/``scores`` need."""
        return np.ascontiguousarray(raw, dtype=np.float32), {}

    def query_transform(self, queries: np.ndarray, params: dict[str, float]) -> np.ndarray:
        """Map raw (b, dim) query vectors into the index space."""
        return np.ascontiguousarray(queries, dtype=np.float32)

    def scores(self, distances: np.ndarray, queries: np.ndarray, params: dict[str, float]) -> np.ndarray:
        """Convert hnswlib distances (b, k) of raw queries (b, dim) into the strategy's scores."""
        raise NotImplementedError


class NegSquaredL2(Encoding):
    """Vectors as they are in hnswlib's 'l2' space (squared Euclidean distance); score = -distance."""

    name = "l2"
    space = "l2"

    def scores(self, distances: np.ndarray, queries: np.ndarray, params: dict[str, float]) -> np.ndarray:
        return np.float32(0.0) - np.asarray(distances, dtype=np.float32)  # 0 - d: no "-0.0" for self-hits


class InnerProduct(Encoding):
    """Vectors as they are in hnswlib's 'ip' space (distance = 1 - dot); score = dot.

    Not a metric on unnormalised vectors, so the graph's recall must be measured, but on embeddings whose
    norms vary a lot (as skip-gram embeddings' do, with item frequency) it beats the L2 reduction.
    """

    name = "ip"
    space = "ip"

    def scores(self, distances: np.ndarray, queries: np.ndarray, params: dict[str, float]) -> np.ndarray:
        return (1.0 - np.asarray(distances, dtype=np.float64)).astype(np.float32)


class Strategy:
    """Base class. Subclasses set ``name``, ``metric``, ``encodings`` and implement the three methods."""

    name: ClassVar[str]
    metric: ClassVar[str]  # what the score means, for humans and the manifest
    description: ClassVar[str] = ""
    encodings: ClassVar[tuple[Encoding, ...]]  # tried in this order by the builder

    def vectors(self, artifact: Any) -> np.ndarray:
        """Raw (n_items, dim) float32 vectors of this strategy, read from a trainer artifact."""
        raise NotImplementedError

    def exact_scores(self, queries: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Exact (b, n) scores of raw queries against all raw vectors (float32 is fine: used for ranking)."""
        raise NotImplementedError

    def pair_scores(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Exact scores of queries (b, dim) against their own candidates (b, k, dim)."""
        raise NotImplementedError

    def encoding(self, name: str) -> Encoding:
        for enc in self.encodings:
            if enc.name == name:
                return enc
        known = ", ".join(e.name for e in self.encodings)
        raise ValueError(f"strategy {self.name!r} has no encoding {name!r}; it has {known}")


def metric_array(artifact: Any, name: str) -> np.ndarray | None:
    """An array of the diversity metric model (``z``, ``M_i``, ``M_ic``, ...) or None when none was trained.

    A trainer artifact says so with ``manifest.metric_view = None`` (its accessors then raise); a plain
    object may simply have the attribute set to None.
    """
    manifest = getattr(artifact, "manifest", None)
    if manifest is not None and hasattr(manifest, "metric_view") and manifest.metric_view is None:
        return None
    return getattr(artifact, name, None)


_REGISTRY: dict[str, Strategy] = {}
_BUILTIN = ["general", "diversity"]


def register(strategy: Strategy) -> Strategy:
    if strategy.name in _REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is registered twice")
    if not strategy.encodings:
        raise ValueError(f"strategy {strategy.name!r} has no encoding")
    _REGISTRY[strategy.name] = strategy
    return strategy


def _load_builtin() -> None:
    for mod in _BUILTIN:
        importlib.import_module(f"{__name__}.{mod}")


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``; ValueError naming the known ones otherwise."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def available_strategies() -> list[str]:
    """Names of all registered strategies, built-ins first in their documented order."""
    _load_builtin()
    return list(_REGISTRY)
