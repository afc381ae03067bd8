"""``AsyncM2GRLClient``: the asyncio twin of :class:`clients.sync.M2GRLClient` (same calls, same retries)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from clients.models import (
    BatchResult,
    CandidatesResult,
    Explanation,
    IndexInfo,
    ItemInfo,
    ReloadResult,
    Strategy,
)
from clients.sync import Call, RetryPolicy, _Api


class AsyncM2GRLClient(_Api):
    """Non-blocking client on ``httpx.AsyncClient``; use ``async with`` or call ``aclose()``."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 64,
    ) -> None:
        super().__init__(url, token, retry)
        self._http = httpx.AsyncClient(**self._http_options(timeout, transport, max_connections))

    async def __aenter__(self) -> AsyncM2GRLClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
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
                await asyncio.sleep(self.retry.delay(attempt, None))
                attempt += 1
                continue
            if self._should_retry(call, attempt, response=response, exc=None):
                await asyncio.sleep(self.retry.delay(attempt, response))
                attempt += 1
                continue
            return self._decode(call, response)

    async def candidates(
        self,
        item_id: str,
        *,
        strategy: Strategy = "general",
        k: int = 50,
        exclude: list[str] | None = None,
        exclude_categories: list[str] | None = None,
    ) -> CandidatesResult:
        return await self._send(self._candidates_call(item_id, strategy, k, exclude, exclude_categories))

    async def batch(
        self,
        items: list[str],
        *,
        strategy: Strategy = "general",
        k: int = 50,
        exclude: list[str] | None = None,
        exclude_categories: list[str] | None = None,
    ) -> BatchResult:
        return await self._send(self._batch_call(items, strategy, k, exclude, exclude_categories))

    async def item(self, item_id: str, *, embeddings: bool = False) -> ItemInfo:
        return await self._send(self._item_call(item_id, embeddings))

    async def explain(self, item_id: str, other: str) -> Explanation:
        return await self._send(self._explain_call(item_id, other))

    async def index(self) -> IndexInfo:
        return await self._send(Call("GET", "/v1/index", IndexInfo))

    async def reload(self, version: str | None = None) -> ReloadResult:
        return await self._send(self._reload_call(version))

    async def rollback(self) -> ReloadResult:
        return await self._send(self._rollback_call())

    async def healthy(self) -> bool:
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def metrics_text(self) -> str:
        return await self._send(Call("GET", "/metrics", None))
