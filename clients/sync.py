"""``M2GRLClient``: a blocking client of the candidate service on httpx.

One ``httpx.Client`` per instance keeps connections alive across calls (reuse it; it is thread-safe). Calls
that fail without an answer (connection refused/reset, timeouts) or with 5xx/429 are retried with exponential
backoff and jitter, honouring ``Retry-After``; 4xx answers are raised at once. ``rollback`` is not idempotent
(two rollbacks swap back), so it is retried only when the connection was never made.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from clients.models import (
    BatchResult,
    CandidatesResult,
    Explanation,
    IndexInfo,
    ItemInfo,
    M2GRLError,
    ReloadResult,
    Strategy,
    TransportError,
    error_for_status,
)

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RELOAD_TIMEOUT = 600.0
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra attempts; the n-th waits ``min(max_backoff, backoff * 2**n)`` times a jitter in [0.5, 1]."""

    retries: int = 3
    backoff: float = 0.1
    max_backoff: float = 2.0
    max_retry_after: float = 10.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("retry-after")
            if retry_after is not None:
                try:
                    return min(self.max_retry_after, max(0.0, float(retry_after)))
                except ValueError:
                    pass  # an HTTP date: fall back to our own backoff
        return min(self.max_backoff, self.backoff * (2**attempt)) * random.uniform(0.5, 1.0)


@dataclass
class Call:
    """One API call, independent of sync/async: built by ``_Api`` helpers, sent by either client."""

    method: str
    path: str
    model: type[BaseModel] | None
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    admin: bool = False
    idempotent: bool = True
    timeout: float | None = None  # overrides the client's timeout (a reload verifies a whole index)


def _item_path(item_id: str) -> str:
    # An id may hold '/', '?' or '#'; quote everything so it stays one path segment.
    return quote(str(item_id), safe="")


def _csv(values: list[str] | None) -> str | None:
    return ",".join(values) if values else None


class _Api:
    """The calls of API v1 and the decoding of answers; the transport lives in the subclasses."""

    def __init__(self, url: str | None, token: str | None, retry: RetryPolicy | None) -> None:
        self.url = (url or os.environ.get("M2GRL_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("M2GRL_ADMIN_TOKEN")
        self.retry = retry or RetryPolicy()

    # -- call builders
    def _http_options(self, timeout: float, transport: Any, max_connections: int) -> dict[str, Any]:
        """httpx client options shared by the sync and async clients (pooled, keep-alive connections)."""
        return {
            "base_url": self.url,
            "timeout": timeout,
            "transport": transport,
            "limits": httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            "headers": {"Accept": "application/json", "User-Agent": "m2grl-client"},
        }

    @staticmethod
    def _candidates_call(
        item_id: str,
        strategy: Strategy,
        k: int,
        exclude: list[str] | None,
        exclude_categories: list[str] | None,
    ) -> Call:
        params: dict[str, Any] = {"strategy": strategy, "k": k}
        if exclude:
            params["exclude"] = _csv(exclude)
        if exclude_categories:
            params["exclude_categories"] = _csv(exclude_categories)
        return Call("GET", f"/v1/items/{_item_path(item_id)}/candidates", CandidatesResult, params)

    @staticmethod
    def _batch_call(
        items: list[str],
        strategy: Strategy,
        k: int,
        exclude: list[str] | None,
        exclude_categories: list[str] | None,
    ) -> Call:
        body = {
            "items": list(items),
            "strategy": strategy,
            "k": k,
            "exclude": list(exclude or []),
            "exclude_categories": list(exclude_categories or []),
        }
        return Call("POST", "/v1/candidates", BatchResult, json=body)

    @staticmethod
    def _item_call(item_id: str, embeddings: bool) -> Call:
        params = {"embeddings": "true"} if embeddings else {}
        return Call("GET", f"/v1/items/{_item_path(item_id)}", ItemInfo, params)

    @staticmethod
    def _explain_call(item_id: str, other: str) -> Call:
        return Call("GET", f"/v1/items/{_item_path(item_id)}/explain", Explanation, {"other": other})

    @staticmethod
    def _reload_call(version: str | None) -> Call:
        return Call(
            "POST",
            "/admin/reload",
            ReloadResult,
            json={"version": version},
            admin=True,
            timeout=RELOAD_TIMEOUT,
        )

    @staticmethod
    def _rollback_call() -> Call:
        return Call("POST", "/admin/rollback", ReloadResult, admin=True, idempotent=False)

    # -- shared plumbing
    @staticmethod
    def _timeout(call: Call) -> Any:
        return httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout

    def _headers(self, call: Call) -> dict[str, str]:
        if call.admin and self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def _should_retry(
        self, call: Call, attempt: int, *, response: httpx.Response | None, exc: Exception | None
    ) -> bool:
        if attempt >= self.retry.retries:
            return False
        if exc is not None:
            # A non-idempotent call may have reached the server unless the connection itself failed.
            return call.idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        return response is not None and response.status_code in RETRY_STATUSES and call.idempotent

    def _transport_error(self, call: Call, exc: Exception, attempts: int) -> M2GRLError:
        return TransportError(
            f"{call.method} {self.url}{call.path}: {type(exc).__name__}: {exc} (after {attempts} attempts)",
            url=self.url + call.path,
        )

    def _decode(self, call: Call, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail: Any = response.json()
            except ValueError:
                detail = response.text
            message = _error_message(detail) or response.reason_phrase
            raise error_for_status(response.status_code, detail)(
                f"{call.method} {call.path}: HTTP {response.status_code}: {message}",
                status=response.status_code,
                detail=detail,
                request_id=response.headers.get("x-request-id"),
                url=str(response.request.url),
            )
        if call.model is None:
            return response.text
        return call.model.model_validate_json(response.content)


def _error_message(detail: Any) -> str | None:
    if isinstance(detail, dict):
        inner = detail.get("detail")
        if isinstance(inner, list):  # FastAPI validation errors: [{"loc": [...], "msg": ...}, ...]
            return "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}"
                for e in inner
                if isinstance(e, dict)
            )
        if inner is not None:
            return str(inner)
    if isinstance(detail, str) and detail:
        return detail[:200]
    return None


class M2GRLClient(_Api):
    """Blocking client. ``url`` defaults to $M2GRL_URL or http://127.0.0.1:8000; ``token`` (admin calls only)
    to $M2GRL_ADMIN_TOKEN. ``timeout`` is httpx's per-phase timeout in seconds.

    >>> with M2GRLClient() as c:  # doctest: +SKIP
    ...     c.candidates("42", k=10).ids
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 32,
    ) -> None:
        super().__init__(url, token, retry)
        self._http = httpx.Client(**self._http_options(timeout, transport, max_connections))

    def __enter__(self) -> M2GRLClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    params=call.params or None,
                    json=call.json,
                    headers=self._headers(call),
                    timeout=self._timeout(call),
                )
            except httpx.TransportError as exc:
                if not self._should_retry(call, attempt, response=None, exc=exc):
                    raise self._transport_error(call, exc, attempt + 1) from exc
                time.sleep(self.retry.delay(attempt, None))
                attempt += 1
                continue
            if self._should_retry(call, attempt, response=response, exc=None):
                time.sleep(self.retry.delay(attempt, response))
                attempt += 1
                continue
            return self._decode(call, response)

    # -- API v1
    def candidates(
        self,
        item_id: str,
        *,
        strategy: Strategy = "general",
        k: int = 50,
        exclude: list[str] | None = None,
        exclude_categories: list[str] | None = None,
    ) -> CandidatesResult:
        """Top-``k`` candidates of one trigger item. ``diversity`` also drops the trigger's own category."""
        return self._send(self._candidates_call(item_id, strategy, k, exclude, exclude_categories))

    def batch(
        self,
        items: list[str],
        *,
        strategy: Strategy = "general",
        k: int = 50,
        exclude: list[str] | None = None,
        exclude_categories: list[str] | None = None,
    ) -> BatchResult:
        """Candidates of many trigger items in one request; unknown items come back as per-item errors."""
        return self._send(self._batch_call(items, strategy, k, exclude, exclude_categories))

    def item(self, item_id: str, *, embeddings: bool = False) -> ItemInfo:
        return self._send(self._item_call(item_id, embeddings))

    def explain(self, item_id: str, other: str) -> Explanation:
        return self._send(self._explain_call(item_id, other))

    def index(self) -> IndexInfo:
        return self._send(Call("GET", "/v1/index", IndexInfo))

    def reload(self, version: str | None = None) -> ReloadResult:
        return self._send(self._reload_call(version))

    def rollback(self) -> ReloadResult:
        return self._send(self._rollback_call())

    def healthy(self) -> bool:
        """True when the process answers /healthz (no retries)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        """True when an index is loaded (/readyz answers 200; no retries)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def metrics_text(self) -> str:
        return self._send(Call("GET", "/metrics", None))
