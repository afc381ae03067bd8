"""Load benchmark of the candidate service: a real ``m2grl-serve`` process on loopback, driven by ``wrk``.

    .venv/bin/python benchmarks/bench_service.py [--items 20000] [--duration 10] [--connections 64]
                                                 [--index-root ROOT] [--out runs/bench_service.json]

Scenarios, each a fixed-duration run over 64 keep-alive connections with random trigger items (a wrk Lua
script picks them per request):

- ``floor``: GET /bench/floor/{id} -- 50 fixed ids through the same middleware and response model, no
  index work (M2GRL_BENCH_FLOOR=1): what the framework costs by itself;
- ``general`` / ``diversity``: GET /v1/items/{id}/candidates?k=50 with the search inline on the event loop;
- ``general-threadpool``: the same with M2GRL_SEARCH_MODE=threadpool (a second server), to justify inline;
- ``batch``: POST /v1/candidates with 32 trigger items, k=50 (throughput reported in items/s).

Without ``--index-root`` a synthetic clustered artifact of ``--items`` items is built with the real index
builder into a temporary directory. Without wrk on PATH (``apt-get install -y wrk``) a separate Python
process drives the load with asyncio + httpx; that driver saturates before the server does, so its figures
measure the client as much as the service (the output says which driver ran).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the repo's packages come first
BATCH_ITEMS = 32
K = 50


# ------------------------------------------------------------------------------------------- the index


class SyntheticArtifact:
    """Clustered item vectors, categories, shops, and a metric model z = [L_i e; L_ic e_ic].

    Items fall into ``n_clusters`` interest clusters (the neighbourhoods HNSW finds); each cluster spans 5
    of the ``n_cat`` categories, so about a fifth of an item's neighbours share its category -- the filter
    rate the diversity strategy sees when its metric model separates categories as trained (Sec. 6.1).
    """

    def __init__(
        self, n: int, dim: int = 64, relation_dim: int = 32, n_cat: int = 200, seed: int = 0
    ) -> None:
        rng = np.random.default_rng(seed)
        n_clusters = n_cat // 5
        self.n, self.dim = n, dim
        cluster = rng.integers(0, n_clusters, size=n)
        self.cat_of = (cluster * 5 + rng.integers(0, 5, size=n)).astype(np.int32)
        self.shop_of = rng.integers(0, 500, size=n).astype(np.int32)
        centers = rng.normal(size=(n_clusters, dim)).astype(np.float32)
        self.e = (centers[cluster] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
        self.cat_nodes = rng.normal(size=(n_cat, dim)).astype(np.float32)
        self.shop_nodes = rng.normal(size=(500, dim)).astype(np.float32)
        self.W = (rng.normal(size=(relation_dim, dim)) / np.sqrt(dim)).astype(np.float32)
        self.L_i = (np.eye(dim) + 0.1 * rng.normal(size=(dim, dim))).astype(np.float32)
        self.L_ic = (np.eye(relation_dim) + 0.1 * rng.normal(size=(relation_dim, relation_dim))).astype(
            np.float32
        )
        self.manifest = SimpleNamespace(
            version=f"synthetic-{n}", views=["item", "category", "shop"], metric_view="category"
        )

    def ids(self, view: str) -> list[str]:
        if view == "item":
            return [str(i) for i in range(self.n)]
        return [f"{view}{i}" for i in range(len(self.embeddings(view)))]

    def embeddings(self, view: str) -> np.ndarray:
        return {"item": self.e, "category": self.cat_nodes, "shop": self.shop_nodes}[view]

    def item_attr(self, view: str) -> np.ndarray:
        return {"category": self.cat_of, "shop": self.shop_of}[view]

    def relational(self, view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sig = lambda x: (1.0 / (1.0 + np.exp(-x))).astype(np.float32)  # noqa: E731
        return self.W, sig(self.e @ self.W.T), sig(self.embeddings(view) @ self.W.T)

    @property
    def M_i(self) -> np.ndarray:
        return self.L_i.T @ self.L_i

    @property
    def M_ic(self) -> np.ndarray:
        return self.L_ic.T @ self.L_ic

    @property
    def z(self) -> np.ndarray:
        e_ic = self.relational("category")[1]
        return np.hstack([self.e @ self.L_i.T, e_ic @ self.L_ic.T]).astype(np.float32)


def build_synthetic_root(root: Path, n: int) -> None:
    from index_builder.build import BuildOptions, build_from_artifact

    t0 = time.perf_counter()
    options = BuildOptions(recall_target=0.95, recall_queries=500, threads=0)
    result = build_from_artifact(SyntheticArtifact(n), root, options, progress=False)
    efs = {s: e.ef_search for s, e in result.manifest.strategies.items()}
    print(f"built synthetic index of {n} items in {time.perf_counter() - t0:.1f}s (ef {efs})", flush=True)


# ------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m service.cli`` in a subprocess; JSON logs go to a file (their cost is part of the figure)."""

    def __init__(self, root: Path, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "M2GRL_INDEX_ROOT": str(root), "M2GRL_BENCH_FLOOR": "1", **env}
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--port", str(self.port)],
            cwd=REPO,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {log_path}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready within 120 s; see {log_path}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()


# ------------------------------------------------------------------------------------------- drivers

LUA_COMMON = """
local ids = {%(ids)s}
math.randomseed(%(seed)d)
local function pick() return ids[math.random(#ids)] end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\\nRESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d, "non2xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""

LUA_GET = """
request = function()
  return wrk.format("GET", string.format("%(path)s", pick()))
end
"""

LUA_BATCH = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local items = {}
  for i = 1, %(batch)d do items[i] = '"' .. pick() .. '"' end
  local body = '{"items": [' .. table.concat(items, ",") .. '], "k": %(k)d}'
  return wrk.format("POST", "/v1/candidates", nil, body)
end
"""


def run_wrk(
    url: str, lua: str, duration: float, connections: int, threads: int, workdir: Path
) -> dict[str, Any]:
    script = workdir / f"s{random.randrange(1 << 30)}.lua"
    script.write_text(lua)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(duration)}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[len("RESULT ") :])
    seconds = r["duration_us"] / 1e6
    return {
        "requests": r["requests"],
        "rps": r["requests"] / seconds,
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "errors": r["non2xx"] + r["socket_errors"],
    }


PY_DRIVER = textwrap.dedent(
    """
    import asyncio, json, random, sys, time
    import httpx
    url, kind, duration, conns, ids = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
    lat, errors = [], 0
    async def worker(client, stop):
        global errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                if kind == "batch":
                    r = await client.post("/v1/candidates", json={"items": random.choices(ids, k=%(batch)d), "k": %(k)d})
                else:
                    r = await client.get(kind.replace("{id}", random.choice(ids)))
                if r.status_code != 200: errors += 1
            except httpx.HTTPError:
                errors += 1
            lat.append(time.perf_counter() - t0)
    async def main():
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
            t0 = time.perf_counter(); stop = t0 + duration
            await asyncio.gather(*(worker(client, stop) for _ in range(conns)))
            return time.perf_counter() - t0
    seconds = asyncio.run(main())
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    print(json.dumps({"requests": len(lat), "rps": len(lat) / seconds, "p50_ms": pct(0.5), "p90_ms": pct(0.9),
                      "p99_ms": pct(0.99), "max_ms": lat[-1] * 1000, "errors": errors}))
    """
)


def run_python(url: str, kind: str, duration: float, connections: int, ids: list[str]) -> dict[str, Any]:
    code = PY_DRIVER % {"batch": BATCH_ITEMS, "k": K}
    args = [sys.executable, "-c", code, url, kind, str(duration), str(connections), json.dumps(ids)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration + 120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- main


SCENARIOS: list[tuple[str, str, str]] = [
    # (name, server, GET path with %s for the id, or "batch")
    ("floor", "inline", "/bench/floor/%s"),
    ("general", "inline", f"/v1/items/%s/candidates?k={K}&strategy=general"),
    ("diversity", "inline", f"/v1/items/%s/candidates?k={K}&strategy=diversity"),
    ("batch", "inline", "batch"),
    ("general-threadpool", "threadpool", f"/v1/items/%s/candidates?k={K}&strategy=general"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--index-root", type=Path, default=None, help="serve this index root instead of a synthetic one"
    )
    p.add_argument("--items", type=int, default=20_000, help="items of the synthetic index")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    p.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of unmeasured load before each scenario"
    )
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--only", default=None, help="comma-separated scenario names")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench_service.json")
    args = p.parse_args(argv)
    driver = args.driver
    if driver == "auto":
        driver = "wrk" if shutil.which("wrk") else "python"
    if driver == "wrk" and not shutil.which("wrk"):
        p.error("wrk is not on PATH (apt-get install -y wrk), use --driver python")
    wanted = set(args.only.split(",")) if args.only else None
    scenarios = [s for s in SCENARIOS if wanted is None or s[0] in wanted]

    with tempfile.TemporaryDirectory(prefix="m2grl-bench-") as tmp:
        workdir = Path(tmp)
        root = args.index_root
        if root is None:
            root = workdir / "indexes"
            build_synthetic_root(root, args.items)
        from index_builder.reader import open_current

        ids = open_current(root, verify=False).ids
        sample = random.Random(0).sample(ids, min(2000, len(ids)))
        lua_ids = ",".join(json.dumps(i) for i in sample)
        results: dict[str, dict[str, Any]] = {}
        for mode in ("inline", "threadpool"):
            todo = [s for s in scenarios if s[1] == mode]
            if not todo:
                continue
            server = Server(root, workdir / f"server-{mode}.log", M2GRL_SEARCH_MODE=mode)
            try:
                for name, _, path in todo:
                    if driver == "wrk":
                        body = LUA_BATCH if path == "batch" else LUA_GET
                        lua = LUA_COMMON % {"ids": lua_ids, "seed": 1} + body % {
                            "path": path,
                            "batch": BATCH_ITEMS,
                            "k": K,
                        }
                        if args.warmup > 0:
                            run_wrk(
                                server.url, lua, max(1, args.warmup), args.connections, args.threads, workdir
                            )
                        res = run_wrk(server.url, lua, args.duration, args.connections, args.threads, workdir)
                    else:
                        kind = "batch" if path == "batch" else path.replace("%s", "{id}")
                        res = run_python(server.url, kind, args.duration, args.connections, sample)
                    res["items_per_s"] = res["rps"] * (BATCH_ITEMS if path == "batch" else 1)
                    results[name] = res
                    print(
                        f"{name:<20} {res['rps']:>9.0f} req/s {res['items_per_s']:>9.0f} items/s "
                        f"p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:6.2f} ms  errors {res['errors']}",
                        flush=True,
                    )
            finally:
                server.stop()

    summary = _summary(results)
    print()
    print(
        f"driver: {driver}"
        + (" (measures the Python client as much as the server)" if driver == "python" else "")
    )
    print(f"{'scenario':<20} {'req/s':>9} {'items/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in results.items():
        print(
            f"{name:<20} {r['rps']:>9.0f} {r['items_per_s']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>7}"
        )
    for key, value in summary.items():
        print(f"{key}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "driver": driver,
        "connections": args.connections,
        "duration_s": args.duration,
        "batch_items": BATCH_ITEMS,
        "k": K,
        "index_root": str(args.index_root) if args.index_root else f"synthetic {args.items} items",
        "cpu_count": os.cpu_count(),
        "results": results,
        "summary": summary,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


def _summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    floor, single, batch = results.get("floor"), results.get("general"), results.get("batch")
    if floor and single:
        out["single_vs_floor_rps"] = round(single["rps"] / floor["rps"], 3)
        out["single_vs_floor_p99"] = round(single["p99_ms"] / max(floor["p99_ms"], 1e-9), 3)
        out["goal_rps_ge_0.7x_floor"] = out["single_vs_floor_rps"] >= 0.7
        out["goal_p99_le_1.5x_floor"] = out["single_vs_floor_p99"] <= 1.5
    if batch and single:
        out["batch_vs_single_items"] = round(batch["items_per_s"] / single["items_per_s"], 2)
        out["goal_batch_ge_5x_single"] = out["batch_vs_single_items"] >= 5
    tp = results.get("general-threadpool")
    if tp and single:
        out["inline_vs_threadpool_rps"] = round(single["rps"] / tp["rps"], 3)
    return out


if __name__ == "__main__":
    sys.exit(main())
