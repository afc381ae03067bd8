"""The whole cycle on ml-latest-small, each step the command a user runs: prepare -> fit -> evaluate ->
index build -> m2grl-serve -> client queries -> a second artifact and index version -> /admin/reload under
concurrent load -> rollback. Figures (requests, failures, reloads, durations) are printed and written to
M2GRL_DRILL_REPORT when set."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from clients import M2GRLClient
from clients.sync import RetryPolicy
from index_builder.publish import list_versions, read_current
from index_builder.reader import IndexVersion
from tests.e2e.conftest import TOKEN, fit_artifact, run_tool, write_drill_report
from tests.helpers_server import running_process

NO_RETRY = RetryPolicy(retries=0)
THREADS = 4
REQUESTS_PER_THREAD = 250
RELOAD_AFTER = 150  # requests answered (all threads) before the reload is sent


def _expected_general(version: IndexVersion, item: str, k: int) -> list[str]:
    rows, _ = version.search("general", version.row_of(item), k)
    return [version.ids[r] for r in rows[0]]


def test_full_cycle_with_reload_under_load_and_rollback(prepared_ml: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    artifacts, indexes = tmp_path / "artifacts", tmp_path / "indexes"

    art1 = fit_artifact(prepared_ml, artifacts, "--no-plots", "--seed", "0")
    timings["fit_s"] = time.monotonic() - t0
    metrics_json = tmp_path / "metrics" / "metrics.json"
    run_tool(
        "m2grl-train", "evaluate", "--data", str(prepared_ml), "--artifact", str(art1),
        "--methods", "popularity,m2grl", "--seeds", "0", "--k", "10,50", "--out", str(metrics_json),
    )  # fmt: skip
    evaluation = json.loads(metrics_json.read_text())
    assert set(evaluation["methods"]) == {"popularity", "m2grl"}
    for method in ("popularity", "m2grl"):
        hr10, hr50 = evaluation["methods"][method]["hr@10"], evaluation["methods"][method]["hr@50"]
        assert 0 < hr10 <= hr50 <= 1, (method, hr10, hr50)  # a deeper cut-off never hits fewer users

    t = time.monotonic()
    run_tool(
        "m2grl-index", "--quiet", "build", "--artifact", str(art1), "--out", str(indexes), "--threads", "1"
    )
    timings["index_build_s"] = time.monotonic() - t
    v1 = read_current(indexes)
    assert list_versions(indexes) == [v1]
    index1 = IndexVersion.open(indexes / v1, threads=1)
    item_ids = json.loads((art1 / "ids" / "item.json").read_text())
    assert index1.ids == item_ids

    env = {"M2GRL_INDEX_ROOT": str(indexes), "M2GRL_ADMIN_TOKEN": TOKEN, "M2GRL_ACCESS_LOG": "off"}
    with running_process(env, timeout=60) as (url, _proc), M2GRLClient(url, token=TOKEN, retry=NO_RETRY) as c:
        info = c.index()
        assert (info.version, info.n_items, info.previous_version) == (v1, len(item_ids), None)
        assert info.artifact_version == art1.name
        probe = [item_ids[0], item_ids[len(item_ids) // 2], item_ids[-1]]
        before = {}
        for item in probe:
            general = c.candidates(item, k=10)
            assert general.ids == _expected_general(index1, item, 10) and item not in general.ids
            before[item] = general.ids
            diverse = c.candidates(item, strategy="diversity", k=10)
            own = index1.metadata(index1.row_of(item))["category"]
            assert len(diverse.ids) == 10 and item not in diverse.ids
            assert own not in {x.category for x in diverse.candidates}  # diversity leaves the category
            assert [x.score for x in diverse.candidates] == sorted(
                (x.score for x in diverse.candidates), reverse=True
            )
        batch = c.batch([*probe, "no-such-item"], k=10)
        assert [[x.item_id for x in e.candidates] for e in batch.results[:3]] == [before[i] for i in probe]
        assert batch.results[3].error is not None and batch.results[3].error.status == 404

        # A second artifact (another seed) and a second index version, published while the service runs.
        art2 = fit_artifact(prepared_ml, artifacts, "--no-plots", "--seed", "1")
        assert art2 != art1 and art2.parent == art1.parent
        run_tool(
            "m2grl-index",
            "--quiet",
            "build",
            "--artifact",
            str(art2),
            "--out",
            str(indexes),
            "--threads",
            "1",
        )
        v2 = read_current(indexes)
        assert v2 != v1 and list_versions(indexes) == [v1, v2]
        assert c.index().version == v1  # nothing polls: the service keeps v1 until told

        # Reload under load: every request recorded with its start/end time and the version that answered.
        lock = threading.Lock()
        records: list[tuple[int, float, float, str]] = []
        failures: list[str] = []
        answered = threading.Semaphore(0)

        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with M2GRLClient(url, retry=NO_RETRY) as wc:
                for i in range(REQUESTS_PER_THREAD):
                    item = item_ids[int(rng.integers(len(item_ids)))]
                    start = time.monotonic()
                    try:
                        if i % 5 == 0:
                            res = wc.batch([item, probe[0]], k=10, strategy="diversity")
                            ok = all(e.error is None and len(e.candidates) == 10 for e in res.results)
                        else:
                            res = wc.candidates(item, k=10, strategy="diversity" if i % 2 else "general")
                            ok = len(res.candidates) == 10
                        end = time.monotonic()
                        with lock:
                            records.append((seed, start, end, res.index_version))
                            if not ok:
                                failures.append(f"thread {seed} request {i}: short answer")
                    except Exception as exc:  # every failure counts, whatever it is
                        with lock:
                            failures.append(f"thread {seed} request {i}: {exc!r}")
                    answered.release()

        threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(THREADS)]
        load_start = time.monotonic()
        for th in threads:
            th.start()
        for _ in range(RELOAD_AFTER):
            assert answered.acquire(timeout=30)
        reload_start = time.monotonic()
        result = c.reload()  # what CURRENT names: v2
        reload_end = time.monotonic()
        for th in threads:
            th.join(timeout=120)
        load_seconds = time.monotonic() - load_start
        assert not any(th.is_alive() for th in threads)
        assert (result.version, result.previous_version) == (v2, v1)

        assert failures == []
        assert len(records) == THREADS * REQUESTS_PER_THREAD
        versions = {r[3] for r in records}
        assert versions == {v1, v2}
        # v1 answered everything that finished before the reload was sent, v2 everything sent after it
        # returned; and no thread ever saw v1 again once it had seen v2 (one switch, never back and forth).
        assert all(r[3] == v1 for r in records if r[2] < reload_start)
        assert all(r[3] == v2 for r in records if r[1] > reload_end)
        for seed in range(THREADS):
            seen = [r[3] for r in sorted(records) if r[0] == seed]
            switch = seen.index(v2) if v2 in seen else len(seen)
            assert set(seen[switch:]) <= {v2}, f"thread {seed} went back to {v1} after {v2}"
        n_after = sum(r[1] > reload_end for r in records)
        assert n_after > 0  # the load really continued past the reload

        index2 = IndexVersion.open(indexes / v2, threads=1)
        changed = 0
        for item in probe:
            after = c.candidates(item, k=10)
            assert after.index_version == v2
            assert after.ids == _expected_general(index2, item, 10)
            changed += after.ids != before[item]
        assert changed > 0  # another seed, other neighbours: the answers really come from the new files
        info = c.index()
        assert (info.version, info.previous_version, info.artifact_version) == (v2, v1, art2.name)

        t = time.monotonic()
        rb = c.rollback()
        rollback_s = time.monotonic() - t
        assert (rb.action, rb.version, rb.previous_version) == ("rollback", v1, v2)
        assert c.index().version == v1
        assert [c.candidates(item, k=10).ids for item in probe] == [before[i] for i in probe]
        # /readyz answers 503 while the service starts (the readiness wait polls it): that is its job.
        server_errors = [
            line for line in c.metrics_text().splitlines()
            if line.startswith("m2grl_requests_total{") and 'status="5' in line
            and float(line.split()[-1]) > 0 and 'endpoint="/readyz"' not in line
        ]  # fmt: skip
        assert server_errors == []

    figures = {
        "requests": THREADS * REQUESTS_PER_THREAD,
        "failures": len(failures),
        "threads": THREADS,
        "reloads": 1,
        "rollbacks": 1,
        "requests_before_reload": sum(r[2] < reload_start for r in records),
        "requests_after_reload": n_after,
        "reload_seconds": round(reload_end - reload_start, 3),
        "server_load_seconds": round(result.seconds, 3),
        "rollback_seconds": round(rollback_s, 4),
        "load_seconds": round(load_seconds, 2),
        "requests_per_second": round(len(records) / load_seconds, 1),
        "index_versions": [v1, v2],
        "n_items": len(item_ids),
        "total_seconds": round(time.monotonic() - t0, 1),
        **{k: round(v, 2) for k, v in timings.items()},
    }
    write_drill_report("cycle_reload_under_load", figures)
