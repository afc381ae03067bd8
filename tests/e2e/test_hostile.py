"""Hostile input against a live server: schemathesis generates requests from the app's own OpenAPI schema
(no 5xx, every response conforms to the schema), plus hand-made abuse: oversized bodies, huge k, path-like
version names for reload, admin calls without the token."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from index_builder.publish import read_current
from service.app import create_app
from service.settings import Settings
from tests.e2e.conftest import TOKEN, build_index, write_drill_report
from tests.helpers_server import running_server
from tests.test_service import metric

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is a dev extra (pip install -e .[dev])"
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES_PER_OPERATION = 250


@pytest.fixture(scope="module")
def index_root(artifact_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-hostile") / "indexes"
    build_index(artifact_root, root)
    return root


@pytest.fixture(scope="module")
def server(index_root: Path) -> str:
    settings = Settings(index_root=index_root, admin_token=TOKEN, max_batch=64, max_body_bytes=16_384)
    with running_server(create_app(settings), timeout=60) as url:
        yield url


def _fuzz(operation, label: str, server: str, counts: dict[str, int], failures: list[str]):
    """A hypothesis test of one operation: at most EXAMPLES_PER_OPERATION generated requests."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run: a failure here is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def exercise(case) -> None:
        counts[label] += 1
        # Every other request carries the admin token, so both the 401 path and the real one run.
        headers = AUTH if counts[label] % 2 else None
        response = case.call(base_url=server, headers=headers, timeout=10)
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except Exception as exc:  # collected, so one run reports every failing operation
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:400]}")

    return exercise


def test_generated_requests_get_no_5xx_and_conform_to_the_schema(server: str) -> None:
    schemathesis = pytest.importorskip("schemathesis", reason="a dev extra: pip install -e '.[dev]'")
    schema = schemathesis.openapi.from_url(server + "/openapi.json")
    counts: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        counts[label] = 0
        _fuzz(operation, label, server, counts, failures)()
    total = sum(counts.values())
    metrics_text = httpx.get(server + "/metrics").text
    # Counted by the server itself, so a 5xx the schema happens to document cannot hide. /readyz is left out:
    # it answers 503 while the index loads at start, and the fixture's readiness wait polls it then.
    server_errors = sum(
        float(line.split()[-1])
        for line in metrics_text.splitlines()
        if line.startswith("m2grl_requests_total{")
        and 'status="5' in line
        and 'endpoint="/readyz"' not in line
    )
    write_drill_report(
        "schemathesis",
        {
            "version": schemathesis.__version__ if hasattr(schemathesis, "__version__") else "?",
            "operations": len(counts),
            "requests": total,
            "per_operation": counts,
            "failures": len(failures),
            "server_5xx": server_errors,
        },
    )
    assert failures == []
    assert server_errors == 0
    assert len(counts) >= 8 and total >= 1000, counts


def test_oversized_bodies_and_huge_k_are_refused(server: str) -> None:
    r = httpx.post(server + "/v1/candidates", json={"items": ["1"] * 10_000})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    r = httpx.post(
        server + "/v1/candidates",
        content=b"{" + b" " * 20_000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    for k in ("501", "1000000000", "99999999999999999999999", "-1", "1e3", "NaN"):
        r = httpx.get(f"{server}/v1/items/1/candidates", params={"k": k})
        assert r.status_code == 422, (k, r.status_code, r.text)
    for k in (501, 10**9, 10**30, -1, 1.5, "NaN"):
        r = httpx.post(server + "/v1/candidates", json={"items": ["1"], "k": k})
        assert r.status_code == 422, (k, r.status_code, r.text)
    r = httpx.post(server + "/v1/candidates", json={"items": ["1"] * 65})  # max_batch 64
    assert r.status_code == 422
    r = httpx.get(server + "/v1/items/" + "x" * 20_000 + "/candidates")
    assert r.status_code in (404, 414, 422, 431)


def test_reload_refuses_path_like_versions_and_reads_nothing_outside(server: str, index_root: Path) -> None:
    current = read_current(index_root)
    # A real, servable version beside the root: a reload that escaped the root would load it and succeed.
    outside = index_root.parent / "outside"
    shutil.copytree(index_root / current, outside / current)
    names = [
        "../x", "a/b", ".", "..", "/", str(outside / current), str(index_root / current),
        f"../outside/{current}", f"{current}/..", f"./{current}", "..%2F" + current, "%2e%2e", "",
        current + "\x00", "\\..\\x", "~", " " + current,
    ]  # fmt: skip
    before = metric(httpx.get(server + "/metrics").text, "m2grl_index_reloads_total", result="success")
    for name in names:
        r = httpx.post(server + "/admin/reload", json={"version": name}, headers=AUTH)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert httpx.get(server + "/v1/index").json()["version"] == current
    after = metric(httpx.get(server + "/metrics").text, "m2grl_index_reloads_total", result="success")
    assert after == before  # none of them loaded anything


def test_admin_endpoints_refuse_without_the_token(server: str) -> None:
    version = httpx.get(server + "/v1/index").json()["version"]
    for path in ("/admin/reload", "/admin/rollback"):
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer wrong"},
                        {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"X-Admin-Token": TOKEN}):  # fmt: skip
            r = httpx.post(server + path, headers=headers, json={"version": version})
            assert r.status_code == 401, (path, headers, r.status_code)
            assert r.json()["error"] == "unauthorized"
    for method in ("GET", "PUT", "DELETE"):
        assert httpx.request(method, server + "/admin/reload", headers=AUTH).status_code == 405
