"""Benchmark the HNSW indexes of the index builder against exact numpy search.

For each data set and size: build time, index file size per item (hnswlib holds the same image in memory), recall@50 against ef,
single-query latency (one thread) and batch-of-256 throughput (all threads), next to exact numpy search, and
the smallest ef reaching the recall target with its one-thread queries per second.

Data sets:
- ``random``: i.i.d. Gaussian vectors, the hard case for graph search in 64-d (no low-dimensional structure);
- ``clustered``: a mixture of Gaussians (n / 300 components) with item norms spread log-normally (sigma 0.5,
  as measured on a trained Tmall artifact: 5th..95th percentile norm ratio ~5), closer to real embeddings;
- ``artifact``: a trained artifact (``--artifact``): its item embeddings (general) and diversity vectors z.

The general strategy (inner product) is measured with both of its encodings (hnswlib 'ip' and the MIPS-to-L2
reduction); the diversity strategy (squared L2) with its one.

    .venv/bin/python benchmarks/bench_index.py --sizes 30000,300000 --out runs/bench_index.json
    .venv/bin/python benchmarks/bench_index.py --sizes 0 --artifact runs/artifacts/<version> --M 16,32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import hnswlib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index_builder.build import build_hnsw  # noqa: E402
from index_builder.recall import DEFAULT_EF_SCHEDULE, RecallProbe  # noqa: E402
from index_builder.strategies import Encoding, Strategy, get_strategy  # noqa: E402

K = 50
BATCH = 256


def random_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def clustered_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_comp = max(10, n // 300)
    centers = rng.normal(size=(n_comp, dim)).astype(np.float32)
    # Components of different spread and size, as categories of a catalogue are.
    weights = rng.dirichlet(np.full(n_comp, 0.5))
    comp = rng.choice(n_comp, size=n, p=weights)
    spread = rng.uniform(0.2, 0.6, n_comp).astype(np.float32)
    x = centers[comp] + rng.normal(size=(n, dim)).astype(np.float32) * spread[comp, None]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return (x * rng.lognormal(0.0, 0.5, (n, 1))).astype(np.float32)


def exact_timing(strategy: Strategy, raw: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """numpy exact top-50: one query at a time and in batches of 256 (BLAS uses all threads)."""
    n_single = min(200, len(queries))
    t0 = time.perf_counter()
    for q in queries[:n_single]:
        s = strategy.exact_scores(q[None], raw)[0]
        top = np.argpartition(-s, K)[:K]
        top[np.argsort(-s[top])]
    single_ms = (time.perf_counter() - t0) / n_single * 1e3
    n_batch = min(len(queries), 4 * BATCH)
    t0 = time.perf_counter()
    for start in range(0, n_batch, BATCH):
        s = strategy.exact_scores(queries[start : start + BATCH], raw)
        top = np.argpartition(-s, K, axis=1)[:, :K]
        np.take_along_axis(s, top, axis=1)
    batch_qps = n_batch / (time.perf_counter() - t0)
    return {"exact_single_ms": single_ms, "exact_batch_qps": batch_qps}


def hnsw_timing(index: hnswlib.Index, queries: np.ndarray, threads: int) -> dict[str, float]:
    n_single = min(1000, len(queries))
    t0 = time.perf_counter()
    for q in queries[:n_single]:
        index.knn_query(q[None], k=K, num_threads=1)
    single_s = (time.perf_counter() - t0) / n_single
    t0 = time.perf_counter()
    for start in range(0, len(queries), BATCH):
        index.knn_query(queries[start : start + BATCH], k=K, num_threads=threads)
    batch_qps = len(queries) / (time.perf_counter() - t0)
    return {"single_ms": single_s * 1e3, "single_qps_1thread": 1.0 / single_s, "batch_qps": batch_qps}


def bench_case(
    dataset: str,
    strategy: Strategy,
    encoding: Encoding,
    raw: np.ndarray,
    probe: RecallProbe,
    *,
    M: int,
    ef_construction: int,
    threads: int,
    target: float,
    efs: list[int],
) -> dict:
    n, dim = raw.shape
    index_vectors, params = encoding.prepare(raw)
    t0 = time.perf_counter()
    index = build_hnsw(
        index_vectors, encoding.space, M=M, ef_construction=ef_construction, threads=threads, progress=False
    )
    build_s = time.perf_counter() - t0
    del index_vectors
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.hnsw"
        index.save_index(str(path))
        file_bytes = path.stat().st_size
    queries = encoding.query_transform(raw[probe.rows], params)
    curve = []
    chosen = None
    for ef in efs:
        index.set_ef(ef)
        recall = probe.recall(probe.search(index, encoding, params, threads))
        point = {"ef": ef, "recall": recall, **hnsw_timing(index, queries, threads)}
        curve.append(point)
        if chosen is None and recall >= target:
            chosen = point
        if recall >= 0.999:
            break
    return {
        "dataset": dataset,
        "n": n,
        "dim": dim,
        "strategy": strategy.name,
        "encoding": encoding.name,
        "M": M,
        "ef_construction": ef_construction,
        "threads": threads,
        "build_s": build_s,
        "file_bytes": file_bytes,
        "bytes_per_item": file_bytes / n,
        "target": target,
        "ef_at_target": chosen["ef"] if chosen else None,
        "at_target": chosen,
        "curve": curve,
        **exact_timing(strategy, raw, raw[probe.rows]),
    }


def fmt_row(r: dict) -> str:
    t = r["at_target"]
    at = (
        f"{t['ef']:>5} {t['recall']:>6.3f} {t['single_ms']:>7.3f} {t['single_qps_1thread']:>8.0f} {t['batch_qps']:>8.0f}"
        if t
        else f"{'-':>5} {max(p['recall'] for p in r['curve']):>6.3f} {'-':>7} {'-':>8} {'-':>8}"
    )
    return (
        f"{r['dataset']:<10} {r['n']:>8} {r['dim']:>4} {r['strategy'] + '/' + r['encoding']:<18} {r['M']:>3} "
        f"{r['build_s']:>7.1f} {r['bytes_per_item']:>6.0f} {at} "
        f"{r['exact_single_ms']:>7.3f} {r['exact_batch_qps']:>8.0f}"
    )


HEADER = (
    f"{'dataset':<10} {'n':>8} {'dim':>4} {'strategy/encoding':<18} {'M':>3} {'build_s':>7} {'B/item':>6} "
    f"{'ef':>5} {'recall':>6} {'1q_ms':>7} {'1q/s/1t':>8} {'b256q/s':>8} {'ex_1qms':>7} {'exb256/s':>8}"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="30000,300000", help="synthetic sizes; 0 = none; 1000000 takes long")
    p.add_argument("--datasets", default="random,clustered")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--artifact", type=Path, help="also benchmark a trained artifact (version dir or root)")
    p.add_argument("--M", default="16", help="comma-separated graph degrees")
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="0 = all cores")
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--target", type=float, default=0.98)
    p.add_argument("--efs", default=",".join(str(e) for e in DEFAULT_EF_SCHEDULE if e <= 1600))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)

    threads = args.threads or len(os.sched_getaffinity(0))
    efs = sorted({max(int(e), K + 1) for e in args.efs.split(",")})
    Ms = [int(m) for m in args.M.split(",")]
    data: list[tuple[str, str, np.ndarray]] = []  # (dataset, strategy, raw)
    for size in (int(s) for s in args.sizes.split(",") if int(s) > 0):
        for ds in args.datasets.split(","):
            make = {"random": random_vectors, "clustered": clustered_vectors}[ds]
            x = make(size, args.dim, args.seed)
            data += [(ds, "diversity", x), (ds, "general", x)]
    if args.artifact is not None:
        from trainer.artifact.loader import Artifact

        art = (
            Artifact.open(args.artifact)
            if (args.artifact / "manifest.json").is_file()
            else Artifact.latest(args.artifact)
        )
        name = f"art:{art.manifest.dataset}"
        data.append((name, "general", np.ascontiguousarray(art.embeddings("item"), dtype=np.float32)))
        if art.manifest.metric_view is not None:
            data.append((name, "diversity", np.ascontiguousarray(art.z, dtype=np.float32)))

    print(
        f"hnswlib {getattr(hnswlib, '__version__', '0.8')}, numpy {np.__version__}, {threads} threads, "
        f"{platform.processor() or platform.machine()}; k={K}, target recall@{K} {args.target}"
    )
    print(HEADER, flush=True)
    results = []
    for ds, sname, raw in data:
        strategy = get_strategy(sname)
        probe = RecallProbe.make(strategy, raw, K, args.queries, args.seed)
        for M in Ms:
            for enc in strategy.encodings:
                r = bench_case(
                    ds,
                    strategy,
                    enc,
                    raw,
                    probe,
                    M=M,
                    ef_construction=args.ef_construction,
                    threads=threads,
                    target=args.target,
                    efs=efs,
                )
                results.append(r)
                print(fmt_row(r), flush=True)
                curve = " ".join(f"{c['ef']}:{c['recall']:.3f}" for c in r["curve"])
                print(f"{'':12}recall@{K} by ef: {curve}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"k": K, "threads": threads, "target": args.target, "results": results}
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
