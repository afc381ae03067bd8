"""The candidate service over real HTTP: real index versions (index_builder.build on a planted artifact), a
real uvicorn on 127.0.0.1, requests through the m2grl clients (or raw httpx where the wire format matters)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from clients import (
    AuthError,
    BadRequestError,
    ConflictError,
    M2GRLClient,
    NotFoundError,
    UnavailableError,
    UnknownItemError,
)
from clients.sync import RetryPolicy
from service.app import create_app
from service.metrics import ServiceMetrics
from service.settings import Settings, SettingsError
from service.state import IndexHolder, ServingIndex
from tests.helpers_server import (
    REPO,
    PlantedArtifact,
    build_index_root,
    running_process,
    running_server,
    wait_until,
)

TOKEN = "s3cret-token"
NO_RETRY = RetryPolicy(retries=0)


@pytest.fixture(scope="module")
def art() -> PlantedArtifact:
    return PlantedArtifact()


@pytest.fixture(scope="module")
def static_root(tmp_path_factory: pytest.TempPathFactory, art: PlantedArtifact) -> Path:
    root = tmp_path_factory.mktemp("static") / "indexes"
    build_index_root(root, art)
    return root


@pytest.fixture(scope="module")
def server(static_root: Path) -> str:
    """A read-only server shared by the query tests (nothing here reloads it)."""
    settings = Settings(index_root=static_root, admin_token=TOKEN, max_batch=8, max_body_bytes=4096)
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture()
def client(server: str) -> M2GRLClient:
    with M2GRLClient(server, retry=NO_RETRY) as c:
        yield c


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


# ------------------------------------------------------------------------------------------ candidates


def test_general_candidates_are_the_exact_inner_product_order(
    client: M2GRLClient, art: PlantedArtifact
) -> None:
    for row in (0, 17, 59):
        res = client.candidates(art.item_id(row), k=10)
        expected = art.exact_general(row)[:10]
        assert res.ids == [art.item_id(r) for r in expected]
        assert art.item_id(row) not in res.ids
        scores = [c.score for c in res.candidates]
        np.testing.assert_allclose(
            scores, [float(art.e[row] @ art.e[r]) for r in expected], rtol=1e-4, atol=1e-4
        )
        assert [c.category for c in res.candidates] == [art.category(r) for r in expected]
        shops = [None if art.shop_of[r] < 0 else f"shop{art.shop_of[r]}" for r in expected]
        assert [c.shop for c in res.candidates] == shops
        assert res.strategy == "general" and not res.exhausted


def test_diversity_drops_own_category_and_follows_the_metric(
    client: M2GRLClient, art: PlantedArtifact
) -> None:
    row = 5
    res = client.candidates(art.item_id(row), strategy="diversity", k=12)
    expected = [r for r in art.exact_diversity(row) if art.cat_of[r] != art.cat_of[row]][:12]
    assert res.ids == [art.item_id(r) for r in expected]
    assert art.category(row) not in {c.category for c in res.candidates}
    z = art.z.astype(np.float64)
    np.testing.assert_allclose(
        [c.score for c in res.candidates], [-((z[row] - z[r]) ** 2).sum() for r in expected], rtol=1e-4
    )
    # The explanation's d of Eq. 11 is exactly minus the diversity score of the same pair.
    ex = client.explain(art.item_id(row), res.ids[0])
    assert ex.d == pytest.approx(-res.candidates[0].score, rel=1e-4)


def test_exclusions_grow_the_fetch_until_k_survive(client: M2GRLClient, art: PlantedArtifact) -> None:
    row = 3
    exact = art.exact_general(row)
    excluded_ids = [art.item_id(r) for r in exact[:5]]
    res = client.candidates(art.item_id(row), k=20, exclude=excluded_ids, exclude_categories=["cat1", "cat2"])
    expected = [r for r in exact[5:] if art.category(r) not in ("cat1", "cat2")][:20]
    assert res.ids == [art.item_id(r) for r in expected]
    assert len(res.ids) == 20 and not res.exhausted
    # Only 14 items of cat0 exist besides the query (row 3 is cat3): the index runs out and says so.
    res = client.candidates(art.item_id(row), k=50, exclude_categories=["cat1", "cat2", "cat3"])
    assert len(res.candidates) == 15 and res.exhausted
    assert {c.category for c in res.candidates} == {"cat0"}


def test_batch_matches_single_queries_and_reports_unknown_items(
    client: M2GRLClient, art: PlantedArtifact
) -> None:
    items = [art.item_id(1), "nope", art.item_id(2), art.item_id(1)]
    res = client.batch(items, strategy="diversity", k=7)
    assert [e.item_id for e in res.results] == items
    assert res.results[1].error is not None and res.results[1].error.status == 404
    assert "nope" in res.results[1].error.detail and res.results[1].candidates is None
    for entry in (res.results[0], res.results[2], res.results[3]):
        single = client.candidates(entry.item_id, strategy="diversity", k=7)
        assert [c.item_id for c in entry.candidates] == single.ids
    assert res.k == 7 and res.strategy == "diversity"


def test_threadpool_search_mode_gives_the_same_answers(static_root: Path, art: PlantedArtifact) -> None:
    settings = Settings(index_root=static_root, search_mode="threadpool")
    with running_server(create_app(settings)) as url, M2GRLClient(url) as c:
        assert c.candidates(art.item_id(9), k=10).ids == [art.item_id(r) for r in art.exact_general(9)[:10]]
        assert len(c.batch([art.item_id(9), art.item_id(10)], k=5).results) == 2


# ----------------------------------------------------------------------------------------- item, explain


def test_item_metadata_and_vectors(client: M2GRLClient, art: PlantedArtifact) -> None:
    row = 7  # item 107: category cat3, no shop (row % 7 == 0)
    info = client.item(art.item_id(row))
    assert (info.row, info.category, info.shop) == (row, "cat3", None)
    assert info.attributes == {"category": "cat3", "shop": None}
    assert info.embeddings is None
    full = client.item(art.item_id(row), embeddings=True)
    np.testing.assert_allclose(full.embeddings["item"], art.e[row], rtol=1e-6)
    np.testing.assert_allclose(full.embeddings["category"], art.cat_nodes[3], rtol=1e-6)
    assert "shop" not in full.embeddings
    np.testing.assert_allclose(full.relational["category"], art.e_ic[row], rtol=1e-5)
    np.testing.assert_allclose(full.diversity_vector, art.z[row], rtol=1e-5)
    info = client.item(art.item_id(8))
    assert info.shop == "shop2"


def test_explain_computes_eq_11(client: M2GRLClient, art: PlantedArtifact) -> None:
    a, b = 4, 9
    ex = client.explain(art.item_id(a), art.item_id(b))
    e = art.e.astype(np.float64)
    de = e[a] - e[b]
    dr = art.e_ic[a].astype(np.float64) - art.e_ic[b]
    d_i = de @ art.M_i.astype(np.float64) @ de
    d_ic = dr @ art.M_ic.astype(np.float64) @ dr
    assert ex.inner_product == pytest.approx(e[a] @ e[b], rel=1e-5)
    assert ex.d_i == pytest.approx(d_i, rel=1e-4)
    assert ex.d_ic == pytest.approx(d_ic, rel=1e-4)
    assert ex.d == pytest.approx(d_i + d_ic, rel=1e-4)
    assert (ex.category, ex.other_category, ex.metric_view) == ("cat0", "cat1", "category")
    with pytest.raises(UnknownItemError) as err:
        client.explain(art.item_id(a), "missing")
    assert err.value.detail["item_id"] == "missing"


def test_index_info(client: M2GRLClient, static_root: Path) -> None:
    info = client.index()
    assert info.version == (static_root / "CURRENT").read_text().strip()
    assert info.previous_version is None and info.artifact_version == "art-1" and info.n_items == 60
    assert set(info.strategies) == {"general", "diversity"}
    assert info.strategies["general"].dim == 8 and info.strategies["diversity"].dim == 12
    assert info.strategies["general"].n == 60 and info.strategies["general"].recall_at_k >= 0.9
    assert info.category_view == "category"


# ---------------------------------------------------------------------------------------------- errors


def test_client_errors_are_4xx_with_reasons(server: str, client: M2GRLClient) -> None:
    with pytest.raises(UnknownItemError) as err:
        client.candidates("999999")
    assert err.value.status == 404 and err.value.detail["item_id"] == "999999"
    assert "999999" in err.value.detail["detail"]
    with pytest.raises(NotFoundError):
        client.item("999999")
    bad = [
        ("get", "/v1/items/100/candidates?k=0", None, "k"),
        ("get", "/v1/items/100/candidates?k=501", None, "k"),
        ("get", "/v1/items/100/candidates?k=abc", None, "k"),
        ("get", "/v1/items/100/candidates?strategy=popular", None, "strategy"),
        ("get", "/v1/items/100/explain", None, "other"),
        ("post", "/v1/candidates", {"items": ["100"] * 9}, "items"),  # max_batch = 8
        ("post", "/v1/candidates", {"items": ["100"], "k": 501}, "k"),
        ("post", "/v1/candidates", {"items": []}, "items"),
        ("post", "/v1/candidates", {"items": ["100"], "strategy": "x"}, "strategy"),
        ("post", "/v1/candidates", {"items": ["100"], "bogus": 1}, "bogus"),
    ]
    for method, path, body, field in bad:
        r = httpx.request(method, server + path, json=body)
        assert r.status_code == 422, (path, body, r.text)
        detail = r.json()["detail"]
        assert any(field in [str(p) for p in e["loc"]] for e in detail), (path, detail)
    r = httpx.post(
        server + "/v1/candidates", content=b'{"items": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    with pytest.raises(BadRequestError) as err:
        client.candidates("100", k=0)
    assert err.value.status == 422
    # Over the 4096-byte body limit: 413, with Content-Length and with a chunked body.
    big = {"items": ["x" * 5000]}
    assert httpx.post(server + "/v1/candidates", json=big).status_code == 413

    def chunks():
        for _ in range(10):
            yield b" " * 1000

    r = httpx.post(server + "/v1/candidates", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    r = httpx.get(server + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert httpx.delete(server + "/v1/index").status_code == 405
    text = httpx.get(server + "/metrics").text
    assert metric(text, "m2grl_requests_total", status="500") == 0


def test_admin_auth(server: str, static_root: Path) -> None:
    with M2GRLClient(server, token=None, retry=NO_RETRY) as anon:
        anon.token = None
        with pytest.raises(AuthError) as err:
            anon.reload()
        assert err.value.status == 401
    with M2GRLClient(server, token="wrong", retry=NO_RETRY) as wrong, pytest.raises(AuthError) as err:
        wrong.rollback()
    assert err.value.status == 401 and err.value.detail["error"] == "unauthorized"
    r = httpx.post(server + "/admin/reload", headers={"Authorization": "Basic " + TOKEN})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    with M2GRLClient(server, token=TOKEN, retry=NO_RETRY) as admin:
        version = (static_root / "CURRENT").read_text().strip()
        res = admin.reload(version)  # the same version again: a verified no-change reload
        assert (res.action, res.version, res.previous_version) == ("reload", version, version)
    # Without a configured token the admin endpoints are closed, whatever is sent.
    settings = Settings(index_root=static_root)
    with running_server(create_app(settings)) as url:
        for headers in ({}, {"Authorization": "Bearer x"}, {"Authorization": f"Bearer {TOKEN}"}):
            r = httpx.post(url + "/admin/rollback", headers=headers)
            assert r.status_code == 403 and r.json()["error"] == "admin_disabled"


# ---------------------------------------------------------------------------------------- reload, rollback


@pytest.fixture()
def two_versions(tmp_path: Path) -> tuple[Path, str, str]:
    root = tmp_path / "indexes"
    v1 = build_index_root(root, PlantedArtifact(seed=0, version="art-1"))
    v2 = build_index_root(root, PlantedArtifact(seed=1, version="art-2"))
    return root, v1, v2


def _point_current(root: Path, version: str) -> None:
    from index_builder.publish import write_current

    write_current(root, version)


def test_reload_and_rollback(two_versions: tuple[Path, str, str]) -> None:
    root, v1, v2 = two_versions
    _point_current(root, v1)
    art1, art2 = PlantedArtifact(seed=0), PlantedArtifact(seed=1)
    with (
        running_server(create_app(Settings(index_root=root, admin_token=TOKEN))) as url,
        M2GRLClient(url, token=TOKEN, retry=NO_RETRY) as c,
    ):
        assert c.index().version == v1
        with pytest.raises(ConflictError) as err:
            c.rollback()
        assert err.value.error == "no_previous_version"
        _point_current(root, v2)
        res = c.reload()  # default: what CURRENT names
        assert (res.version, res.previous_version) == (v2, v1)
        assert c.candidates("100", k=5).ids == [art2.item_id(r) for r in art2.exact_general(0)[:5]]
        info = c.index()
        assert (info.version, info.previous_version, info.artifact_version) == (v2, v1, "art-2")
        res = c.rollback()
        assert (res.action, res.version, res.previous_version) == ("rollback", v1, v2)
        assert c.candidates("100", k=5).ids == [art1.item_id(r) for r in art1.exact_general(0)[:5]]
        assert c.reload(v2).version == v2
        for bad, status in (("../etc", 422), ("x/y", 422), ("..", 422), ("20990101T000000.000000Z", 404)):
            r = httpx.post(
                url + "/admin/reload", json={"version": bad}, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert r.status_code == status, (bad, r.text)
        assert c.index().version == v2
        text = c.metrics_text()
        assert metric(text, "m2grl_index_reloads_total", result="success") == 3  # startup + 2
        assert metric(text, "m2grl_index_reloads_total", result="rollback") == 1
        assert metric(text, "m2grl_index_version_info", version=v2, artifact_version="art-2") == 1
        assert metric(text, "m2grl_index_version_info", version=v1) == 0
        assert metric(text, "m2grl_index_last_reload_timestamp_seconds") == pytest.approx(time.time(), abs=60)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_versions_are_rejected_while_the_old_one_serves(
    two_versions: tuple[Path, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    root, v1, v2 = two_versions
    _point_current(root, v1)
    v3 = build_index_root(root, PlantedArtifact(seed=2, version="art-3"))
    _point_current(root, v1)
    _flip_byte(root / v2 / "index" / "general.hnsw")
    truncated = root / v3 / "arrays" / "z.npy"
    truncated.write_bytes(truncated.read_bytes()[:100])
    with (
        running_server(create_app(Settings(index_root=root, admin_token=TOKEN))) as url,
        M2GRLClient(url, token=TOKEN, retry=NO_RETRY) as c,
        caplog.at_level(logging.ERROR),
    ):
        before = c.candidates("100", k=5).ids
        for version, bad_file in ((v2, "general.hnsw"), (v3, "z.npy")):
            with pytest.raises(BadRequestError) as err:
                c.reload(version)
            assert err.value.status == 422 and err.value.error == "reload_failed"
            assert bad_file in err.value.detail["detail"] and "sha256" in err.value.detail["detail"]
            assert c.index().version == v1
            assert c.candidates("100", k=5).ids == before
        text = c.metrics_text()
        assert metric(text, "m2grl_index_reloads_total", result="failure") == 2
        assert metric(text, "m2grl_index_version_info", version=v1) == 1
    failures = [r for r in caplog.records if getattr(r, "event", None) == "reload_failed"]
    assert {r.version for r in failures} == {v2, v3}


def test_reload_under_concurrent_load_fails_no_request(two_versions: tuple[Path, str, str]) -> None:
    root, v1, v2 = two_versions
    errors: list[str] = []
    seen: set[str] = set()
    done = threading.Event()
    with running_server(create_app(Settings(index_root=root, admin_token=TOKEN))) as url:

        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with M2GRLClient(url, retry=NO_RETRY) as c:
                for i in range(150):
                    item = str(100 + int(rng.integers(60)))
                    try:
                        if i % 5 == 0:
                            res = c.batch([item, "101"], k=10)
                            seen.add(res.index_version)
                        else:
                            res = c.candidates(item, k=10, strategy="diversity" if i % 2 else "general")
                            seen.add(res.index_version)
                            if len(res.candidates) != 10:
                                errors.append(f"{len(res.candidates)} candidates")
                    except Exception as exc:  # any failure at all is a test failure
                        errors.append(repr(exc))
                    if done.is_set() and i > 100:
                        break

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        with M2GRLClient(url, token=TOKEN, retry=NO_RETRY) as admin:
            for version in (v1, v2, v1):
                time.sleep(0.05)
                assert admin.reload(version).version == version
        done.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert seen == {v1, v2}  # both versions answered while the load ran


def test_second_reload_while_one_runs_gets_409(two_versions: tuple[Path, str, str]) -> None:
    root, v1, v2 = two_versions
    gate, entered = threading.Event(), threading.Event()

    def gated_open(path: Path) -> ServingIndex:
        # The real opener, held at its start so that the test controls how long the reload lasts.
        if path.name == v1:
            entered.set()
            gate.wait(10)
        return ServingIndex.open(path)

    metrics = ServiceMetrics()
    holder = IndexHolder(root, metrics, opener=gated_open)
    with running_server(create_app(Settings(index_root=root, admin_token=TOKEN), holder=holder)) as url:
        result: dict[str, object] = {}

        def slow_reload() -> None:
            with M2GRLClient(url, token=TOKEN, retry=NO_RETRY) as c:
                result["v"] = c.reload(v1).version

        t = threading.Thread(target=slow_reload)
        t.start()
        assert entered.wait(10)
        with M2GRLClient(url, token=TOKEN, retry=NO_RETRY) as c:
            for call in (lambda: c.reload(v2), c.rollback):
                with pytest.raises(ConflictError) as err:
                    call()
                assert err.value.status == 409 and err.value.error == "reload_in_progress"
            assert c.candidates("100", k=3).index_version == v2  # still answering from the serving version
            gate.set()
            t.join(timeout=20)
            assert result["v"] == v1 and c.index().version == v1
            assert metric(c.metrics_text(), "m2grl_index_reloads_total", result="conflict") == 2


def test_not_ready_until_a_version_appears_with_polling(tmp_path: Path) -> None:
    root = tmp_path / "later"
    settings = Settings(index_root=root, admin_token=TOKEN, reload_poll_seconds=0.1)
    with running_server(create_app(settings), ready=False) as url:
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503 and "no index published" in r.json()["detail"]
        with M2GRLClient(url, retry=NO_RETRY) as c:
            with pytest.raises(UnavailableError) as err:
                c.candidates("100")
            assert err.value.status == 503 and err.value.error == "not_ready"
            assert c.healthy() and not c.ready()
            v1 = build_index_root(root, PlantedArtifact(seed=0))
            wait_until(url + "/readyz", timeout=10)
            assert c.index().version == v1
            # The poller follows CURRENT to a newer version ...
            v2 = build_index_root(root, PlantedArtifact(seed=1, version="art-2"))
            deadline = time.monotonic() + 10
            while c.index().version != v2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.index().version == v2
            # ... but a rollback sticks until CURRENT changes again.
            c.token = TOKEN
            assert c.rollback().version == v1
            time.sleep(0.4)
            assert c.index().version == v1
            assert metric(c.metrics_text(), "m2grl_ready") == 1


def test_missing_index_root_is_not_ready(tmp_path: Path) -> None:
    with running_server(create_app(Settings(index_root=tmp_path / "absent")), ready=False) as url:
        assert httpx.get(url + "/healthz").status_code == 200
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503
        assert httpx.get(url + "/v1/index").status_code == 503
        assert httpx.post(url + "/v1/candidates", json={"items": ["1"]}).status_code == 503


# --------------------------------------------------------------------------------- metrics, ids, settings


def test_metrics_move_with_requests(server: str, client: M2GRLClient, art: PlantedArtifact) -> None:
    endpoint = "/v1/items/{item_id}/candidates"
    before = httpx.get(server + "/metrics").text
    for row in range(6):
        client.candidates(art.item_id(row), k=4, strategy="diversity")
    with pytest.raises(UnknownItemError):
        client.candidates("unknown-item", k=4, strategy="diversity")
    client.batch([art.item_id(0), "gone"], k=3)
    after = httpx.get(server + "/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    ok = {"endpoint": endpoint, "method": "GET", "strategy": "diversity", "status": "200"}
    assert delta("m2grl_requests_total", **ok) == 6
    assert delta("m2grl_request_duration_seconds_count", **ok) == 6
    assert delta("m2grl_requests_total", endpoint=endpoint, strategy="diversity", status="404") == 1
    assert delta("m2grl_requests_total", endpoint="/v1/candidates", strategy="general", status="200") == 1
    assert delta("m2grl_candidates_returned_total", strategy="diversity") == 24
    assert delta("m2grl_candidates_returned_total", strategy="general") == 3
    assert delta("m2grl_unknown_items_total") == 2
    assert metric(after, "m2grl_index_items", strategy="general") == 60
    assert not re.search(r'endpoint="/v1/items/1\d\d/', after)  # templates, never raw paths


def test_request_id_is_echoed_or_generated(server: str) -> None:
    r = httpx.get(server + "/v1/items/100/candidates?k=2", headers={"X-Request-ID": "abc-123.x"})
    assert r.headers["x-request-id"] == "abc-123.x"
    r = httpx.get(server + "/v1/items/nope/candidates", headers={"X-Request-ID": "trace-404"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "trace-404"
    generated = {httpx.get(server + "/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(generated) == 3 and all(re.fullmatch(r"[0-9a-f]{16}", g) for g in generated)
    r = httpx.get(server + "/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])


def test_openapi_lists_the_api(server: str) -> None:
    spec = httpx.get(server + "/openapi.json").json()
    for path in ("/v1/items/{item_id}/candidates", "/v1/candidates", "/v1/items/{item_id}", "/v1/index"):
        assert path in spec["paths"]
    k = next(
        p for p in spec["paths"]["/v1/items/{item_id}/candidates"]["get"]["parameters"] if p["name"] == "k"
    )
    assert k["schema"]["maximum"] == 500
    assert httpx.get(server + "/docs").status_code == 200


def test_settings_from_environment() -> None:
    s = Settings.from_env({"M2GRL_MAX_K": "20", "M2GRL_ADMIN_TOKEN": "t", "M2GRL_RELOAD_POLL_SECONDS": ""})
    assert s.max_k == 20 and s.admin_token_bytes() == b"t" and s.reload_poll_seconds is None
    assert Settings.from_env({}).max_batch == 256 and Settings.from_env({}).admin_token_bytes() is None
    with pytest.raises(SettingsError, match="M2GRL_MAX_K"):
        Settings.from_env({"M2GRL_MAX_K": "zero"})
    with pytest.raises(SettingsError, match="M2GRL_SEARCH_MODE"):
        Settings.from_env({"M2GRL_SEARCH_MODE": "fast"})


def test_m2grl_serve_process_logs_json_lines(static_root: Path) -> None:
    env = {"M2GRL_INDEX_ROOT": str(static_root), "M2GRL_ADMIN_TOKEN": TOKEN, "M2GRL_MAX_K": "30"}
    with running_process(env) as (url, proc):
        r = httpx.get(url + "/v1/items/100/candidates?k=31", headers={"X-Request-ID": "req-42"})
        assert r.status_code == 422  # M2GRL_MAX_K reached the app
        r = httpx.get(url + "/v1/items/100/candidates?k=3", headers={"X-Request-ID": "req-ok"})
        assert r.status_code == 200
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    access = [r for r in records if r.get("request_id") == "req-42"]
    assert access and access[0]["status"] == 422 and access[0]["endpoint"] == "/v1/items/{item_id}/candidates"
    assert any("serving index version" in r["msg"] for r in records)
    assert not [r for r in records if r.get("request_id") == "req-ok"]  # default mode logs errors only


def test_access_log_all_mode_tags_every_request(static_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(index_root=static_root, access_log="all")
    with running_server(create_app(settings)) as url, caplog.at_level(logging.INFO, "m2grl.service.access"):
        httpx.get(url + "/v1/items/101/candidates?k=2", headers={"X-Request-ID": "every-1"})
        httpx.get(url + "/v1/items/zzz/candidates", headers={"X-Request-ID": "every-2"})
        # The line is written after the last response byte is handed over: wait for it (bounded).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = {r.request_id: r for r in caplog.records if r.name == "m2grl.service.access"}
            if {"every-1", "every-2"} <= set(lines):
                break
            time.sleep(0.02)
    assert lines["every-1"].status == 200 and lines["every-2"].status == 404
    assert lines["every-1"].endpoint == "/v1/items/{item_id}/candidates" and lines["every-1"].ms > 0


def test_hand_built_json_validates_strictly_against_the_models(server: str) -> None:
    from service import models as sm

    r = httpx.get(server + "/v1/items/100/candidates?k=5&strategy=diversity")
    assert r.headers["content-type"] == "application/json"
    res = sm.CandidatesResponse.model_validate_json(r.content, strict=True)
    assert len(res.candidates) == 5 and res.item_id == "100" and not res.exhausted
    assert json.loads(r.content)["candidates"][0].keys() == set(sm.Candidate.model_fields)
    r = httpx.post(server + "/v1/candidates", json={"items": ["100", 'x"y\\z'], "k": 3})
    batch = sm.BatchResponse.model_validate_json(r.content, strict=True)
    assert batch.results[1].item_id == 'x"y\\z' and batch.results[1].error.status == 404
    assert batch.results[0].error is None and len(batch.results[0].candidates) == 3


def test_ids_that_json_must_escape_round_trip(tmp_path: Path) -> None:
    art = PlantedArtifact(label='q"\\ü\t')
    build_index_root(tmp_path / "idx", art)
    with running_server(create_app(Settings(index_root=tmp_path / "idx"))) as url, M2GRLClient(url) as c:
        res = c.candidates(art.item_id(0), k=4, exclude_categories=[art.category(1)])
        expected = [r for r in art.exact_general(0) if art.cat_of[r] != 1][:4]
        assert res.ids == [art.item_id(r) for r in expected]
        assert [x.category for x in res.candidates] == [art.category(r) for r in expected]
        batch = c.batch([art.item_id(0)], k=4, exclude_categories=[art.category(1)])
        assert [x.item_id for x in batch.results[0].candidates] == res.ids


def test_service_imports_no_torch_or_polars() -> None:
    code = (
        "import sys, service.app, service.cli; service.app.create_app(); "
        "bad = [m for m in ('torch', 'polars', 'pyarrow', 'matplotlib', 'trainer') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
