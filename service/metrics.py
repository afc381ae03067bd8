"""Prometheus metrics of one app, in a dedicated CollectorRegistry (several apps in one test process never clash).

Hand-written rather than an instrumentation library so that the labels fit the service: ``endpoint`` is the
route template (``/v1/items/{item_id}/candidates``), never the raw path, so the series count stays bounded
whatever ids clients send. One process per container: prometheus-client's default mode keeps counters in
process memory, so several uvicorn workers would each expose their own partial counts.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Candidate queries take ~0.1-2 ms in-process; the low buckets resolve them, the high ones catch stalls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

UNMATCHED = "<unmatched>"  # endpoint label of requests that matched no route (404s of unknown paths)


class ServiceMetrics:
    """All metrics of one app. ``observe_request`` is on the hot path: label children are cached."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "m2grl_requests",
            "HTTP requests by route template, method, strategy and status",
            ["endpoint", "method", "strategy", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "m2grl_request_duration_seconds",
            "Time from request start to the last response byte handed to the server",
            ["endpoint", "method", "strategy", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.candidates_returned = Counter(
            "m2grl_candidates_returned", "Candidates returned to clients", ["strategy"], registry=r
        )
        self.unknown_items = Counter(
            "m2grl_unknown_items", "Query items not present in the serving index version", registry=r
        )
        self.index_version = Gauge(
            "m2grl_index_version_info",
            "1 for the serving index version (and its artifact version), absent before the first load",
            ["version", "artifact_version"],
            registry=r,
        )
        self.index_items = Gauge(
            "m2grl_index_items", "Items in the serving index, per strategy", ["strategy"], registry=r
        )
        self.reloads = Counter(
            "m2grl_index_reloads",
            "Index reloads and rollbacks by result (success, failure, conflict, rollback)",
            ["result"],
            registry=r,
        )
        self.last_reload = Gauge(
            "m2grl_index_last_reload_timestamp_seconds",
            "Unix time of the last successful load, reload or rollback",
            registry=r,
        )
        self.ready = Gauge("m2grl_ready", "1 while an index version is loaded and served", registry=r)
        for result in ("success", "failure", "conflict", "rollback"):
            self.reloads.labels(result=result)  # exported at 0 from the start, so rate() sees the first one
        self._children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

    def observe_request(self, endpoint: str, method: str, strategy: str, status: int, seconds: float) -> None:
        key = (endpoint, method, strategy, str(status))
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(*key))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def set_index(self, version: str, artifact_version: str, items_per_strategy: dict[str, int]) -> None:
        """Point the version gauges at the newly served version (old labels removed, not left at 0)."""
        self.index_version.clear()
        self.index_version.labels(version=version, artifact_version=artifact_version).set(1)
        self.index_items.clear()
        for strategy, n in items_per_strategy.items():
            self.index_items.labels(strategy=strategy).set(n)
        self.last_reload.set(time.time())
        self.ready.set(1)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
