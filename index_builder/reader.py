"""Read a published index version: verified files, loaded HNSW indexes with their ef, batched search.

This is the service's only view of an index. An :class:`IndexVersion` is immutable after ``open``; searches
from many threads at once are safe (hnswlib's knn_query only reads the graph and releases the GIL, and ef is
set once, at load time, because hnswlib does not save it in the index file).

Scores are "higher is closer" for every strategy: ``general`` returns the inner product e_q . e_i,
``diversity`` returns -d(q, i), the negative squared metric distance of the paper's Eq. 11.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
from pydantic import ValidationError

from index_builder.manifest import MANIFEST_NAME, IndexManifest, StrategyEntry, sha256_file
from index_builder.publish import PublishError, list_versions, read_current
from index_builder.recall import drop_self_mask
from index_builder.strategies import Encoding, Strategy, get_strategy

__all__ = ["IndexVersion", "IndexVersionError", "list_versions", "read_current", "open_current"]

# Batches at least this large use the reader's thread count; smaller ones run in the calling thread, which
# is what a server with one worker thread per request wants.
_PARALLEL_BATCH = 16


class IndexVersionError(Exception):
    """A version directory that cannot be served. The message names the offending file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass(frozen=True)
class StrategyHandle:
    """One loaded strategy: the hnswlib index and the raw vectors queries are expressed in."""

    name: str
    strategy: Strategy
    encoding: Encoding
    entry: StrategyEntry
    index: hnswlib.Index
    raw: np.ndarray
    params: dict[str, float]


class IndexVersion:
    """A loaded index version. Use :meth:`open`."""

    def __init__(
        self,
        path: Path,
        manifest: IndexManifest,
        ids: list[str],
        attributes: dict[str, list[str | None]],
        handles: dict[str, StrategyHandle],
        threads: int,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self._ids = ids
        self._row_of = {item: row for row, item in enumerate(ids)}
        self._attributes = attributes
        self._handles = handles
        self._threads = threads
        self._arrays: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    # --- loading -------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, verify: bool = True, threads: int = -1) -> IndexVersion:
        """Load the version at ``path``.

        ``verify`` re-computes the sha256 of every file against the manifest (seconds per GB); either way,
        shapes and counts are checked, each index is loaded with its stored ef and a probe query must return
        scores that match an exact recomputation from the stored vectors. ``threads`` is the hnswlib thread
        count for batched searches (-1 = all cores).
        """
        path = Path(path)
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise IndexVersionError(manifest_path, "missing; not an index version directory")
        try:
            manifest = IndexManifest.model_validate_json(manifest_path.read_text())
        except (ValidationError, ValueError) as exc:
            raise IndexVersionError(manifest_path, f"invalid manifest: {exc}") from None
        for rel, digest in manifest.files.items():
            file = path / rel
            if not file.is_file():
                raise IndexVersionError(file, "missing (listed in manifest.json)")
            if verify and sha256_file(file) != digest:
                raise IndexVersionError(file, "sha256 mismatch: the file is corrupt or was modified")
        n = manifest.n_items
        ids, attributes = _read_items(path / manifest.items_file, manifest)
        handles = {}
        for name, entry in manifest.strategies.items():
            if manifest.files.get(entry.file) != entry.sha256:
                raise IndexVersionError(path / entry.file, "not listed in manifest files with its sha256")
            if entry.vectors not in manifest.arrays:
                raise IndexVersionError(
                    manifest_path, f"strategy {name!r} names unknown array {entry.vectors!r}"
                )
            raw = _load_array(path, manifest, entry.vectors)
            if raw.shape != (n, entry.dim):
                raise IndexVersionError(
                    path / manifest.arrays[entry.vectors].path,
                    f"shape {raw.shape}, expected {(n, entry.dim)}",
                )
            try:
                strategy = get_strategy(name)
                encoding = strategy.encoding(entry.encoding)
            except ValueError as exc:
                raise IndexVersionError(manifest_path, str(exc)) from None
            if encoding.space != entry.space:
                raise IndexVersionError(
                    manifest_path,
                    f"strategy {name!r}: encoding {encoding.name} uses space {encoding.space}, not {entry.space}",
                )
            index = _load_index(path / entry.file, entry)
            handles[name] = StrategyHandle(name, strategy, encoding, entry, index, raw, dict(entry.params))
        version = cls(path, manifest, ids, attributes, handles, threads)
        for handle in handles.values():
            version._probe(handle)
        return version

    def _probe(self, h: StrategyHandle) -> None:
        """Query a few stored items and check that index scores agree with exact scores of stored vectors."""
        n = self.n_items
        rows = np.unique(np.array([0, n // 2, n - 1]))
        k = min(10, n)
        got_rows, got_scores = self.search(h.name, h.raw[rows], k)
        exact = h.strategy.pair_scores(h.raw[rows], h.raw[got_rows])
        scale = (
            1.0
            + np.einsum("ij,ij->i", h.raw[rows], h.raw[rows])[:, None]
            + float(np.einsum("ij,ij->i", h.raw, h.raw).max())
        )
        if not np.all(np.abs(got_scores - exact) <= 1e-3 * scale):
            raise IndexVersionError(
                self.path / h.entry.file,
                "probe query scores disagree with the stored vectors (wrong index file?)",
            )

    # --- items ---------------------------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def n_items(self) -> int:
        return self.manifest.n_items

    @property
    def ids(self) -> list[str]:
        """External item ids in row order (do not modify)."""
        return self._ids

    @property
    def strategies(self) -> list[str]:
        return list(self._handles)

    def row_of(self, item_id: str) -> int:
        """Row of an external item id; KeyError naming the id when the index does not hold it."""
        try:
            return self._row_of[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in index version {self.version}") from None

    def has_item(self, item_id: str) -> bool:
        return item_id in self._row_of

    def metadata(self, row: int) -> dict[str, str | None]:
        """``{"item_id": ..., <attribute view>: value or None, ...}`` of one item row."""
        if not 0 <= row < self.n_items:
            raise IndexError(f"row {row} outside [0, {self.n_items})")
        meta: dict[str, str | None] = {"item_id": self._ids[row]}
        for view, values in self._attributes.items():
            meta[view] = values[row]
        return meta

    @property
    def vectors(self) -> np.ndarray:
        """(n_items, dim) instance-view item embeddings e_i (read-only)."""
        return self.array("item_vectors")

    def strategy_vectors(self, strategy: str) -> np.ndarray:
        """Raw vectors that ``strategy`` queries are expressed in (read-only)."""
        return self.handle(strategy).raw

    def handle(self, strategy: str) -> StrategyHandle:
        try:
            return self._handles[strategy]
        except KeyError:
            raise ValueError(
                f"strategy {strategy!r} is not in index version {self.version}; it has {', '.join(self._handles)}"
            ) from None

    def array(self, key: str) -> np.ndarray:
        """A stored array by manifest key (``item_vectors``, ``z``, ``M_i``, ``nodes/<view>``, ...), read-only."""
        if key not in self.manifest.arrays:
            raise KeyError(
                f"array {key!r} is not in index version {self.version}; it has {sorted(self.manifest.arrays)}"
            )
        with self._lock:
            if key not in self._arrays:
                for h in self._handles.values():
                    if h.entry.vectors == key:
                        self._arrays[key] = h.raw
                        break
                else:
                    self._arrays[key] = _load_array(self.path, self.manifest, key)
            return self._arrays[key]

    def node_ids(self, view: str) -> list[str]:
        """External ids of an attribute view's nodes in row order (rows of ``array('nodes/<view>')``)."""
        if view not in self.manifest.node_ids:
            raise KeyError(f"view {view!r} is not in index version {self.version}")
        return json.loads((self.path / self.manifest.node_ids[view]).read_text())

    # --- search --------------------------------------------------------------------------------------------

    def search(
        self,
        strategy: str,
        queries: Any,
        k: int,
        *,
        exclude_self: bool = True,
        num_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items of each query: ``(rows (b, k) int64, scores (b, k) float32)``, best first.

        ``queries`` is either item rows (integers; a scalar or 1-d sequence: the query is the item's own
        vector, and the item itself is left out of its result when ``exclude_self``) or raw vectors of the
        strategy (float, (dim,) or (b, dim)). ``k`` is capped at the number of items that can be returned.
        ``num_threads`` defaults to 1 for batches below 16 queries (one request, one thread) and to the
        reader's thread count above.
        """
        h = self.handle(strategy)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        arr = np.asarray(queries)
        query_rows = None
        if arr.dtype.kind in "iu":
            query_rows = np.atleast_1d(arr).astype(np.int64)
            if query_rows.ndim != 1:
                raise ValueError(f"query rows must be 1-d, got shape {arr.shape}")
            if len(query_rows) and (query_rows.min() < 0 or query_rows.max() >= self.n_items):
                raise ValueError(f"query rows must lie in [0, {self.n_items})")
            vectors = h.raw[query_rows]
        elif arr.dtype.kind == "f":
            vectors = np.atleast_2d(arr).astype(np.float32, copy=False)
            if vectors.ndim != 2 or vectors.shape[1] != h.entry.dim:
                raise ValueError(
                    f"{strategy} query vectors must have {h.entry.dim} columns, got shape {arr.shape}"
                )
            if not np.isfinite(vectors).all():
                raise ValueError("query vectors contain non-finite values")
        else:
            raise ValueError(
                f"queries must be item rows (integers) or vectors (floats), got dtype {arr.dtype}"
            )
        drop = query_rows is not None and exclude_self
        k = min(k, self.n_items - 1 if drop else self.n_items)
        b = vectors.shape[0]
        if b == 0 or k == 0:
            return np.empty((b, k), dtype=np.int64), np.empty((b, k), dtype=np.float32)
        if num_threads is None:
            num_threads = 1 if b < _PARALLEL_BATCH else self._threads
        kk = k + 1 if drop else k
        try:
            labels, distances = h.index.knn_query(
                h.encoding.query_transform(vectors, h.params), k=kk, num_threads=num_threads
            )
        except RuntimeError:
            # hnswlib gives up when it cannot find kk results (kk close to n, the beam misses a few nodes).
            # An exact scan is then correct and, for such a k, about as cheap.
            labels, scores = _exact_topk(h.strategy, h.raw, vectors, kk)
        else:
            labels = labels.astype(np.int64)
            scores = h.encoding.scores(distances, vectors, h.params)
        if drop:
            keep = drop_self_mask(labels, query_rows)
            labels = labels[keep].reshape(b, k)
            scores = scores[keep].reshape(b, k)
        return labels, scores.astype(np.float32, copy=False)


def _exact_topk(
    strategy: Strategy, raw: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    scores = strategy.exact_scores(queries, raw).astype(np.float32, copy=False)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1).astype(np.int64), np.take_along_axis(
        top_scores, order, axis=1
    )


def _read_items(path: Path, manifest: IndexManifest) -> tuple[list[str], dict[str, list[str | None]]]:
    try:
        items = json.loads(path.read_text())
        ids = items["ids"]
        attributes = items["attributes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexVersionError(path, f"unreadable items file: {exc}") from None
    if len(ids) != manifest.n_items:
        raise IndexVersionError(path, f"{len(ids)} item ids, manifest says {manifest.n_items}")
    for view in manifest.attribute_views:
        if len(attributes.get(view, ())) != manifest.n_items:
            raise IndexVersionError(path, f"attribute view {view!r} lacks one value per item")
    return ids, attributes


def _load_array(path: Path, manifest: IndexManifest, key: str) -> np.ndarray:
    entry = manifest.arrays[key]
    file = path / entry.path
    try:
        arr = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexVersionError(file, f"unreadable array: {exc}") from None
    if list(arr.shape) != entry.shape or str(arr.dtype) != entry.dtype:
        raise IndexVersionError(
            file, f"{arr.dtype} {arr.shape}, manifest says {entry.dtype} {tuple(entry.shape)}"
        )
    arr.setflags(write=False)
    return arr


def _load_index(file: Path, entry: StrategyEntry) -> hnswlib.Index:
    index = hnswlib.Index(space=entry.space, dim=entry.index_dim)
    try:
        index.load_index(str(file), max_elements=entry.n)
    except RuntimeError as exc:
        raise IndexVersionError(file, f"unreadable hnswlib index: {exc}") from None
    if index.get_current_count() != entry.n:
        raise IndexVersionError(file, f"holds {index.get_current_count()} items, manifest says {entry.n}")
    index.set_ef(entry.ef_search)
    return index


def open_current(root: Path | str, verify: bool = True, threads: int = -1) -> IndexVersion:
    """Open the version CURRENT names under an index root."""
    root = Path(root)
    try:
        version = read_current(root)
    except PublishError as exc:
        raise IndexVersionError(root / "CURRENT", str(exc)) from None
    if version is None:
        raise IndexVersionError(root / "CURRENT", "missing; nothing has been published under this root")
    return IndexVersion.open(root / version, verify=verify, threads=threads)
