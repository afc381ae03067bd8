"""The m2grl clients: typed results against a real server, errors, retries against a tiny scripted server,
the async twin, and the ``m2grl-client`` command line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clients import (
    AsyncM2GRLClient,
    AuthError,
    BadRequestError,
    M2GRLClient,
    NotFoundError,
    RetryPolicy,
    ServerError,
    TransportError,
    UnavailableError,
    UnknownItemError,
)
from clients import cli as client_cli
from clients import models as cm
from service import models as sm
from service.app import create_app
from service.settings import Settings
from tests.helpers_server import REPO, PlantedArtifact, build_index_root, free_port, running_server

TOKEN = "client-test-token"
FAST = RetryPolicy(retries=3, backoff=0.01, max_backoff=0.05)


@pytest.fixture(scope="module")
def art() -> PlantedArtifact:
    return PlantedArtifact()


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory, art: PlantedArtifact) -> Path:
    root = tmp_path_factory.mktemp("client") / "indexes"
    build_index_root(root, art)
    return root


@pytest.fixture(scope="module")
def server(index_root: Path) -> Iterator[str]:
    with running_server(create_app(Settings(index_root=index_root, admin_token=TOKEN))) as url:
        yield url


# ------------------------------------------------------------------------------------- scripted server


class Scripted:
    """A tiny HTTP server answering from a script of (status, JSON body, headers) per request, in order."""

    def __init__(self, script: list[tuple[int, object, dict[str, str]]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, str, float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append((self.command, self.path, time.monotonic()))
                status, body, headers = (
                    outer.script.pop(0) if outer.script else (500, {"error": "script over"}, {})
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


INDEX_BODY = {
    "version": "v9",
    "previous_version": None,
    "artifact_version": "a",
    "n_items": 2,
    "metric_view": None,
    "category_view": None,
    "loaded_at": "2025-01-01T00:00:00+00:00",
    "strategies": {
        "general": {
            "n": 2,
            "dim": 4,
            "space": "l2",
            "metric": "ip",
            "ef_search": 50,
            "recall_k": 1,
            "recall_at_k": 1.0,
        }
    },
}


def test_retries_5xx_and_429_with_backoff_then_succeeds() -> None:
    script = [
        (503, {"error": "not_ready"}, {}),
        (429, {"error": "slow down"}, {"Retry-After": "0"}),
        (200, INDEX_BODY, {}),
    ]
    with Scripted(script) as srv, M2GRLClient(srv.url, retry=FAST) as c:
        info = c.index()
        assert info.version == "v9" and info.strategies["general"].dim == 4
        assert [r[1] for r in srv.requests] == ["/v1/index"] * 3


def test_no_retry_on_4xx_and_gives_up_after_the_retries() -> None:
    with Scripted([(404, {"error": "unknown_item", "detail": "item 'x'", "item_id": "x"}, {})]) as srv:
        with M2GRLClient(srv.url, retry=FAST) as c, pytest.raises(UnknownItemError) as err:
            c.candidates("x")
        assert len(srv.requests) == 1
        assert err.value.status == 404 and err.value.detail["item_id"] == "x"
    with Scripted([(502, {"error": "bad gateway", "detail": "upstream"}, {})] * 4) as srv:
        with M2GRLClient(srv.url, retry=FAST) as c, pytest.raises(ServerError) as err:
            c.index()
        assert len(srv.requests) == 4 and err.value.status == 502
        gaps = [b[2] - a[2] for a, b in zip(srv.requests, srv.requests[1:], strict=False)]
        assert all(g >= 0.004 for g in gaps)  # backoff waited between attempts (jitter >= half of 0.01 s)
    # Rollback is not idempotent: a 503 is not retried.
    with Scripted([(503, {"error": "x", "detail": "busy"}, {})] * 2) as srv:
        with M2GRLClient(srv.url, token="t", retry=FAST) as c, pytest.raises(UnavailableError):
            c.rollback()
        assert len(srv.requests) == 1


def test_connection_refused_is_retried_then_raised() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    t0 = time.monotonic()
    with M2GRLClient(url, retry=FAST) as c, pytest.raises(TransportError) as err:
        c.index()
    assert err.value.status is None and "after 4 attempts" in err.value.message
    assert time.monotonic() - t0 < 5
    assert not M2GRLClient(url).healthy()


def test_async_client_retries_too() -> None:
    async def go(url: str) -> str:
        async with AsyncM2GRLClient(url, retry=FAST) as c:
            return (await c.index()).version

    with Scripted([(500, {"detail": "boom"}, {}), (200, INDEX_BODY, {})]) as srv:
        assert asyncio.run(go(srv.url)) == "v9"
        assert len(srv.requests) == 2


# ------------------------------------------------------------------------------------- real server


def test_sync_client_against_the_service(server: str, art: PlantedArtifact) -> None:
    with M2GRLClient(server, token=TOKEN, retry=FAST) as c:
        assert c.healthy() and c.ready()
        res = c.candidates("100", k=5, exclude=["133"])
        assert isinstance(res, cm.CandidatesResult) and len(res.ids) == 5 and "133" not in res.ids
        assert res.ids == [art.item_id(r) for r in art.exact_general(0) if r != 33][:5]
        batch = c.batch(["100", "missing"], strategy="diversity", k=3)
        assert batch.results[0].ok and not batch.results[1].ok
        assert isinstance(c.item("100"), cm.ItemInfo)
        assert isinstance(c.explain("100", "101"), cm.Explanation)
        info = c.index()
        assert c.reload().version == info.version and c.rollback().action == "rollback"
        with pytest.raises(BadRequestError) as err:
            c.batch(["100"], k=100_000)
        assert err.value.status == 422 and "k" in err.value.message
        with pytest.raises(NotFoundError):
            c.item("missing")
        with pytest.raises(BadRequestError) as err:
            c.reload("not-a-version")
        assert err.value.error == "invalid_version" and err.value.request_id
    with M2GRLClient(server, token="wrong") as c, pytest.raises(AuthError):
        c.rollback()


def test_async_client_against_the_service(server: str, art: PlantedArtifact) -> None:
    async def go() -> list[cm.CandidatesResult]:
        async with AsyncM2GRLClient(server, retry=FAST) as c:
            results = await asyncio.gather(*(c.candidates(art.item_id(r), k=4) for r in range(20)))
            batch = await c.batch([art.item_id(0)], k=4)
            assert [x.item_id for x in batch.results[0].candidates] == results[0].ids
            with pytest.raises(UnknownItemError):
                await c.candidates("absent")
            return results

    results = asyncio.run(go())
    for r, res in enumerate(results):
        assert res.ids == [art.item_id(x) for x in art.exact_general(r)[:4]]


def test_client_models_mirror_the_service_models() -> None:
    pairs = [
        (cm.Candidate, sm.Candidate),
        (cm.CandidatesResult, sm.CandidatesResponse),
        (cm.BatchEntry, sm.BatchResult),
        (cm.BatchResult, sm.BatchResponse),
        (cm.ErrorInfo, sm.ErrorInfo),
        (cm.ItemInfo, sm.ItemResponse),
        (cm.Explanation, sm.ExplainResponse),
        (cm.StrategyInfo, sm.StrategyInfo),
        (cm.IndexInfo, sm.IndexInfo),
        (cm.ReloadResult, sm.ReloadResponse),
    ]
    for client_model, service_model in pairs:
        assert set(client_model.model_fields) == set(service_model.model_fields), client_model.__name__


def test_client_package_imports_no_service_numpy_or_hnswlib() -> None:
    code = (
        "import sys, clients, clients.cli; "
        "bad = [m for m in ('numpy', 'hnswlib', 'service', 'fastapi') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_table_and_json(server: str, art: PlantedArtifact, capsys: pytest.CaptureFixture[str]) -> None:
    assert client_cli.main(["--url", server, "candidates", "100", "--k", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("3 general candidates of item 100")
    assert lines[1].split() == ["rank", "item_id", "score", "category", "shop"]
    expected = [art.item_id(r) for r in art.exact_general(0)[:3]]
    assert [line.split()[1] for line in lines[3:6]] == expected

    assert (
        client_cli.main(
            ["--url", server, "--json", "candidates", "100", "--k", "3", "--strategy", "diversity"]
        )
        == 0
    )
    parsed = cm.CandidatesResult.model_validate_json(capsys.readouterr().out)
    assert parsed.strategy == "diversity" and len(parsed.candidates) == 3

    assert client_cli.main(["--url", server, "batch", "100", "nope", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "item 100:" in out and "item nope: error 404" in out

    assert client_cli.main(["--url", server, "explain", "104", "109"]) == 0
    out = capsys.readouterr().out
    assert "d = d_i + d_ic" in out and "cat0 vs cat1" in out

    assert client_cli.main(["--url", server, "--json", "index"]) == 0
    assert json.loads(capsys.readouterr().out)["n_items"] == 60
    assert client_cli.main(["--url", server, "item", "100", "--embeddings"]) == 0
    assert "embedding[item]" in capsys.readouterr().out


def test_cli_errors_and_admin(
    server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client_cli.main(["--url", server, "candidates", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("m2grl-client candidates: error:") and "nope" in err
    monkeypatch.delenv("M2GRL_ADMIN_TOKEN", raising=False)
    assert client_cli.main(["--url", server, "rollback"]) == 2
    assert "401" in capsys.readouterr().err
    monkeypatch.setenv("M2GRL_ADMIN_TOKEN", TOKEN)
    assert client_cli.main(["--url", server, "reload"]) == 0
    assert capsys.readouterr().out.startswith("reload: now serving")
    dead = f"http://127.0.0.1:{free_port()}"
    assert client_cli.main(["--url", dead, "--retries", "0", "--json", "index"]) == 1
    assert json.loads(capsys.readouterr().err)["status"] is None
    monkeypatch.setenv("M2GRL_URL", server)
    assert client_cli.main(["index"]) == 0
