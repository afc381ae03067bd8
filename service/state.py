"""The served index: one immutable ``ServingIndex`` per loaded version, and the holder that swaps them.

Reload protocol. A new version is opened and verified completely (sha256 of every file, shapes and counts,
hnswlib indexes loaded with their ef, a probe query) in a worker thread, off the event loop; only then is the
holder's ``current`` reference replaced -- one attribute assignment. A request reads ``holder.current`` once
and works on that object to the end, so requests in flight finish on the version they started with, and no
request ever sees a half-loaded index. The replaced version stays loaded as ``previous`` for ``rollback``.
A reload or rollback while another reload runs is refused (``ReloadConflict`` -> 409); a failed load leaves
``current`` untouched and is reported (``ReloadFailed`` -> JSON error, log line, metric).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np

from index_builder.publish import VERSION_RE, PublishError, list_versions, read_current
from index_builder.reader import IndexVersion, IndexVersionError
from service.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger("m2grl.service.state")

CATEGORY_VIEW = "category"
SHOP_VIEW = "shop"


class ServiceError(Exception):
    """An error with an HTTP status and a machine-readable code; rendered as ErrorResponse JSON."""

    def __init__(self, status: int, error: str, detail: str, **extra: str | None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.extra = extra


class ReloadConflict(ServiceError):
    def __init__(self, detail: str) -> None:
        super().__init__(409, "reload_in_progress", detail)


class ReloadFailed(ServiceError):
    def __init__(self, detail: str, status: int = 422, error: str = "reload_failed") -> None:
        super().__init__(status, error, detail)


@dataclass
class QueryResult:
    """Candidates of one trigger row: item rows and scores in rank order, and whether the index ran out."""

    rows: np.ndarray
    scores: np.ndarray
    exhausted: bool


class ServingIndex:
    """An opened ``IndexVersion`` plus the lookups the service needs, all computed at load time.

    ``category`` is the view whose values the diversity strategy and ``exclude_categories`` act on: the
    metric view of the diversity model (Sec. 6.1) when there is one, else a view literally called
    'category', else the first attribute view.
    """

    def __init__(self, reader: IndexVersion, load_seconds: float) -> None:
        m = reader.manifest
        self.reader = reader
        self.version: str = m.version
        self.version_json = json.dumps(m.version)
        self.artifact_version: str = m.source_artifact.version
        self.n_items: int = m.n_items
        self.ids: list[str] = reader.ids
        self.loaded_at = datetime.now(UTC)
        self.load_seconds = load_seconds
        self.metric_view: str | None = m.metric_view
        attr_views = list(m.attribute_views)
        if m.metric_view in attr_views:
            self.category_view: str | None = m.metric_view
        elif CATEGORY_VIEW in attr_views:
            self.category_view = CATEGORY_VIEW
        else:
            self.category_view = attr_views[0] if attr_views else None
        # Read every stored array now, in the loader thread: a request never touches the disk, and a version
        # that retention deletes later keeps serving from memory (and for rollback).
        self.arrays: dict[str, np.ndarray] = {key: reader.array(key) for key in m.arrays}
        self.node_ids: dict[str, list[str]] = {view: reader.node_ids(view) for view in m.node_ids}
        self.attr_rows: dict[str, np.ndarray] = {
            view: self.arrays[f"item_attr/{view}"]
            for view in attr_views
            if f"item_attr/{view}" in self.arrays
        }
        self.attr_values: dict[str, list[str | None]] = {
            view: _values(self.node_ids.get(view, []), rows) for view, rows in self.attr_rows.items()
        }
        # Category codes = node rows of the category view (-1 = none), so filters are integer comparisons.
        if self.category_view is not None and self.category_view in self.attr_rows:
            self.category_codes = self.attr_rows[self.category_view].astype(np.int64)
            names = self.node_ids.get(self.category_view, [])
            self.category_code_of = {name: code for code, name in enumerate(names)}
            self.category_values = self.attr_values[self.category_view]
        else:
            self.category_codes = np.full(self.n_items, -1, dtype=np.int64)
            self.category_code_of = {}
            self.category_values = [None] * self.n_items
        self.shop_values: list[str | None] = self.attr_values.get(SHOP_VIEW, [None] * self.n_items)
        self.strategies = {name: reader.handle(name).entry for name in reader.strategies}
        # Each item's candidate JSON object up to its score, escaped once here: a response is then joins of
        # these strings and the scores (service.routers.candidates), ~2.5x faster than dumping dicts.
        # Costs ~150 bytes per item of memory.
        dumps = json.dumps
        self.candidate_prefix: list[str] = [
            f'{{"item_id":{dumps(i)},"category":{dumps(c)},"shop":{dumps(sh)},"score":'
            for i, c, sh in zip(self.ids, self.category_values, self.shop_values, strict=True)
        ]
        # Per strategy: moving average of the share of fetched candidates that pass category filters.
        self._survival: dict[str, float] = {}
        self._init_fast_search()

    @classmethod
    def open(cls, path: Path) -> ServingIndex:
        """Open and fully verify a version directory (blocking: seconds per GB; call it from a thread)."""
        t0 = time.perf_counter()
        reader = IndexVersion.open(path, verify=True, threads=1)
        return cls(reader, time.perf_counter() - t0)

    def row_of(self, item_id: str) -> int | None:
        """Row of an item id, None when this version does not hold it."""
        try:
            return self.reader.row_of(item_id)
        except KeyError:
            return None

    def rows_of(self, item_ids: list[str]) -> np.ndarray:
        """Rows of the known ids among ``item_ids`` (unknown ones are dropped)."""
        rows = [r for r in (self.row_of(i) for i in item_ids) if r is not None]
        return np.asarray(rows, dtype=np.int64)

    def category_codes_of(self, names: list[str]) -> np.ndarray:
        codes = [self.category_code_of[n] for n in names if n in self.category_code_of]
        return np.asarray(codes, dtype=np.int64)

    def candidates(
        self,
        strategy: str,
        rows: np.ndarray,
        k: int,
        exclude_rows: np.ndarray,
        exclude_codes: np.ndarray,
        drop_own_category: bool,
    ) -> list[QueryResult]:
        """Top-``k`` of each trigger row after filtering, with one batched hnswlib call per round.

        The query item never appears. ``exclude_rows``/``exclude_codes`` remove items and categories for
        every trigger; ``drop_own_category`` also removes each trigger's own category (the diversity
        strategy). Filters run on an over-fetched list; for the triggers still short of ``k`` the fetch grows
        by the observed survival rate (at least 2x, at most 16x) until they are satisfied or the whole index
        was returned (``exhausted``).
        """
        n_max = self.strategies[strategy].n - 1  # the query item itself is never returned
        if not drop_own_category and not len(exclude_rows) and not len(exclude_codes):
            # No filters (the common case): one search, drop the query row; skips the bookkeeping below.
            got_rows, got_scores = self._search(strategy, rows, min(n_max, k))
            keep = got_rows != rows[:, None]
            out = []
            for r, s, m in zip(got_rows, got_scores, keep, strict=True):
                r, s = r[m][:k], s[m][:k]
                out.append(QueryResult(r, s, exhausted=len(r) < k))
            return out
        own = self.category_codes[rows] if drop_own_category else None
        if own is not None:
            own = np.where(own >= 0, own, -2)  # an uncategorised trigger drops nothing extra
        filtering = len(exclude_codes) > 0 or own is not None
        fetch = k + len(exclude_rows)
        if filtering:
            # Size the first fetch by the share of candidates that survived category filters recently, with
            # a 25% margin: a second, larger hnswlib call is what over-fetching is there to avoid.
            fetch = int(np.ceil(fetch * 1.25 / max(self._survival.get(strategy, 0.5), 0.05)))
        fetch = min(n_max, fetch)
        first = True
        results: list[QueryResult | None] = [None] * len(rows)
        pending = np.arange(len(rows))
        while len(pending):
            q = rows[pending]
            got_rows, got_scores = self._search(strategy, q, fetch)
            keep = got_rows != q[:, None]
            if len(exclude_rows):
                keep &= ~np.isin(got_rows, exclude_rows)
            if filtering:
                cats = self.category_codes[got_rows]
                if len(exclude_codes):
                    keep &= ~np.isin(cats, exclude_codes)
                if own is not None:
                    keep &= cats != own[pending][:, None]
            counts = keep.sum(axis=1)
            if filtering and first:
                seen = self._survival.get(strategy, 0.5)
                self._survival[strategy] = 0.9 * seen + 0.1 * float(counts.mean()) / got_rows.shape[1]
                first = False
            done = (counts >= k) | (fetch >= n_max)
            for j in np.flatnonzero(done):
                sel = keep[j]
                results[pending[j]] = QueryResult(
                    got_rows[j][sel][:k], got_scores[j][sel][:k], exhausted=bool(counts[j] < k)
                )
            short = counts[~done]
            pending = pending[~done]
            if len(pending):
                worst = int(short.min())
                factor = 16.0 if worst == 0 else min(16.0, max(2.0, 1.25 * k / worst))
                fetch = min(n_max, int(np.ceil(fetch * factor)))
        return results  # type: ignore[return-value]

    def _search(self, strategy: str, rows: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """At least ``fetch`` neighbours of each row besides itself, best first: (rows int64, scores).

        The result may or may not contain the query row (the caller masks it).
        """
        fast = self._fast.get(strategy)
        if fast is not None:
            h, queries = fast
            try:
                labels, distances = h.index.knn_query(queries[rows], k=fetch + 1, num_threads=1)
            except RuntimeError:
                pass  # hnswlib found fewer than fetch + 1: the reader's search falls back to an exact scan
            else:
                return labels.astype(np.int64), h.encoding.scores(distances, h.raw[rows], h.params)
        return self.reader.search(strategy, rows, fetch, num_threads=1)

    def _init_fast_search(self) -> None:
        """Cache each strategy's query vectors in index space, so a query is one knn_query and no copies.

        ``IndexVersion.search`` re-derives them per call (gather, transform, self-drop, reshape: ~40 us of
        small numpy calls on a ~20 us search). The cached path uses the same handle (index, encoding,
        params); it is checked against ``search`` here and not used for a strategy where they disagree.
        """
        self._fast: dict[str, tuple[Any, np.ndarray]] = {}
        for name in self.strategies:
            try:
                h = self.reader.handle(name)
                queries = np.ascontiguousarray(h.encoding.query_transform(h.raw, h.params), dtype=np.float32)
                self._fast[name] = (h, queries)
                probe = np.unique(np.array([0, self.n_items // 2, self.n_items - 1], dtype=np.int64))
                k = min(10, self.n_items - 1)
                want_rows, want_scores = self.reader.search(name, probe, k, num_threads=1)
                got_rows, got_scores = self._search(name, probe, k)
                keep = got_rows != probe[:, None]
                got_rows = np.stack([r[m][:k] for r, m in zip(got_rows, keep, strict=True)])
                got_scores = np.stack([s[m][:k] for s, m in zip(got_scores, keep, strict=True)])
                if not np.allclose(got_scores, want_scores, rtol=1e-4, atol=1e-4):
                    raise ValueError("scores differ from IndexVersion.search")
            except Exception as exc:  # an API drift of the reader must cost speed, never correctness
                self._fast.pop(name, None)
                log.warning(
                    "strategy %s: cached query path disabled (%s); using IndexVersion.search", name, exc
                )

    def item_vectors(self) -> np.ndarray:
        return self.arrays["item_vectors"]


def _values(names: list[str], rows: np.ndarray) -> list[str | None]:
    table = np.asarray([*names, None], dtype=object)
    return table[np.where(rows >= 0, rows, len(names))].tolist()


VersionOpener = Callable[[Path], ServingIndex]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class IndexHolder:
    """Holds the serving version and the previous one; serialises reloads and rollbacks.

    All methods run on the event loop; only the blocking open runs in a worker thread. ``current`` is read
    without a lock by requests (a single attribute read is atomic).
    """

    def __init__(self, root: Path | None, metrics: ServiceMetrics, opener: VersionOpener = ServingIndex.open):
        self.root = root
        self.metrics = metrics
        self.opener = opener
        self.current: ServingIndex | None = None
        self.previous: ServingIndex | None = None
        self.not_ready_reason = (
            "no index root configured (set M2GRL_INDEX_ROOT)" if root is None else "loading"
        )
        self._busy: str | None = None
        # CURRENT as last acted upon: the poller reloads only when CURRENT changes, so a rollback sticks.
        self.seen_current: str | None = None

    @property
    def busy(self) -> str | None:
        return self._busy

    def validate_version(self, version: str) -> Path:
        """The directory of a published version; ServiceError for names that are malformed or absent."""
        if self.root is None:
            raise ReloadFailed(
                "no index root configured (M2GRL_INDEX_ROOT)", status=409, error="no_index_root"
            )
        if not _NAME_RE.match(version) or ".." in version or not VERSION_RE.match(version):
            raise ServiceError(422, "invalid_version", f"{version!r} is not a version name")
        if version not in list_versions(self.root):
            raise ServiceError(404, "unknown_version", f"no version {version!r} under {self.root}")
        return self.root / version

    def _read_current(self) -> str | None:
        assert self.root is not None
        try:
            return read_current(self.root)
        except (PublishError, OSError) as exc:
            raise ReloadFailed(str(exc), status=409, error="bad_current") from None

    def _resolve(self, version: str | None) -> tuple[str | None, str, Path]:
        """(CURRENT's version, the version to load, its directory); blocking file system reads."""
        if self.root is None:
            raise ReloadFailed(
                "no index root configured (M2GRL_INDEX_ROOT)", status=409, error="no_index_root"
            )
        current_name = self._read_current()
        if version is None:
            if current_name is None:
                raise ReloadFailed(
                    f"{self.root}/CURRENT is missing: nothing has been published",
                    status=409,
                    error="no_current",
                )
            version = current_name
        return current_name, version, self.validate_version(version)

    async def reload(self, version: str | None = None, *, reason: str = "admin") -> ServingIndex:
        """Load ``version`` (default: what CURRENT names) and make it current. See the module docstring."""
        if self._busy is not None:
            self.metrics.reloads.labels(result="conflict").inc()
            raise ReloadConflict(f"a {self._busy} is already running; try again when it finishes")
        self._busy = "reload"
        try:
            current_name, version, path = await anyio.to_thread.run_sync(self._resolve, version)
            t0 = time.perf_counter()
            try:
                new = await anyio.to_thread.run_sync(self.opener, path)
            except IndexVersionError as exc:
                self.metrics.reloads.labels(result="failure").inc()
                log.error(
                    "reload of index version %s failed; still serving %s: %s",
                    version,
                    self.current.version if self.current else "nothing",
                    exc,
                    extra={"event": "reload_failed", "version": version, "reason": reason},
                )
                raise ReloadFailed(f"index version {version} rejected: {exc}") from None
            except Exception as exc:  # anything else the open raised (e.g. MemoryError, hnswlib errors)
                self.metrics.reloads.labels(result="failure").inc()
                log.exception("reload of index version %s failed unexpectedly", version)
                raise ReloadFailed(
                    f"index version {version} could not be loaded: {type(exc).__name__}: {exc}"
                ) from None
            old = self.current
            self.previous, self.current = old, new  # the swap: one reference each
            self.seen_current = current_name
            self.metrics.reloads.labels(result="success").inc()
            self._publish_metrics()
            log.info(
                "serving index version %s (was %s), loaded and verified in %.2fs",
                new.version,
                old.version if old else "nothing",
                time.perf_counter() - t0,
                extra={"event": "reload", "version": new.version, "reason": reason},
            )
            return new
        finally:
            self._busy = None

    async def rollback(self) -> ServingIndex:
        """Swap current and previous (a second rollback goes forward again)."""
        if self._busy is not None:
            self.metrics.reloads.labels(result="conflict").inc()
            raise ReloadConflict(f"a {self._busy} is running; try again when it finishes")
        if self.previous is None:
            raise ServiceError(409, "no_previous_version", "there is no previous version to roll back to")
        self.current, self.previous = self.previous, self.current
        self.metrics.reloads.labels(result="rollback").inc()
        self._publish_metrics()
        assert self.current is not None
        log.warning(
            "rolled back to index version %s (from %s)",
            self.current.version,
            self.previous.version if self.previous else None,
            extra={"event": "rollback", "version": self.current.version},
        )
        return self.current

    def _publish_metrics(self) -> None:
        cur = self.current
        if cur is not None:
            self.not_ready_reason = ""
            self.metrics.set_index(
                cur.version, cur.artifact_version, {s: e.n for s, e in cur.strategies.items()}
            )

    async def follow_current(self, poll_seconds: float | None) -> None:
        """Initial load, then (with ``poll_seconds``) reload whenever CURRENT names a new version. Never raises."""
        if self.root is None:
            log.error("no index root configured (set M2GRL_INDEX_ROOT); the service is not ready")
            return
        await self._try_current(initial=True)
        if poll_seconds is None:
            return
        while True:
            await asyncio.sleep(poll_seconds)
            await self._try_current(initial=False)

    async def _try_current(self, initial: bool) -> None:
        assert self.root is not None
        try:
            name = await anyio.to_thread.run_sync(self._read_current)
        except ReloadFailed as exc:
            if initial or self.not_ready_reason != exc.detail:
                log.error("cannot follow CURRENT: %s", exc.detail)
            self.not_ready_reason = exc.detail
            return
        if name is None:
            reason = f"no index published under {self.root} yet (no CURRENT)"
            if initial:
                log.error("%s; not ready until one appears", reason)
            if self.current is None:
                self.not_ready_reason = reason
            return
        if not initial and name == self.seen_current:
            return
        try:
            await self.reload(name, reason="startup" if initial else "poll")
        except ReloadConflict:
            return  # an admin reload is running; look again next tick
        except ServiceError as exc:
            self.seen_current = name  # do not retry a broken version every tick; a new CURRENT is retried
            if self.current is None:
                self.not_ready_reason = f"index version {name} could not be loaded: {exc.detail}"
            log.error("could not load CURRENT version %s: %s", name, exc.detail)


@dataclass
class ServiceContext:
    """What every router needs, bound once per app (closures, not per-request lookups)."""

    settings: Settings
    holder: IndexHolder
    metrics: ServiceMetrics
