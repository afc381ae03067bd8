"""Measure the serving process's resident memory per loaded index version, to size the Deployment's requests.

    .venv/bin/python deploy/measure_memory.py INDEX_ROOT_OR_VERSION [...]

For each version a fresh interpreter imports the service and builds its app (the ``base`` figure: Python,
FastAPI, numpy, hnswlib), then opens the version exactly as the service does (``ServingIndex.open``:
``IndexVersion`` with sha256 verification, every stored array read into memory, per-item response prefixes),
then a second copy of it: the service keeps the previous version for /admin/rollback, and a reload holds a
third until the swap. RSS comes from /proc/self/status (Linux only). Prints one JSON line per version.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import gc, json, resource, sys, time
from pathlib import Path

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")

from service.app import create_app
from service.settings import Settings
from service.state import ServingIndex
from index_builder.reader import IndexVersion

create_app(Settings())
gc.collect()
base = rss()
path = Path(sys.argv[1])
reader = IndexVersion.open(path, verify=True, threads=1)
gc.collect()
reader_only = rss() - base
del reader
gc.collect()
t0 = time.perf_counter()
first = ServingIndex.open(path)
seconds = time.perf_counter() - t0
gc.collect()
one = rss()
second = ServingIndex.open(path)
gc.collect()
two = rss()
m = first.reader.manifest
files = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
per_version = (two - base) / 2
print(json.dumps({
    "version": m.version,
    "n_items": m.n_items,
    "strategies": {n: {"dim": e.dim, "M": e.M, "encoding": e.encoding} for n, e in m.strategies.items()},
    "files_mib": round(files / 2**20, 1),
    "base_mib": round(base / 2**20, 1),
    "reader_only_mib": round(reader_only / 2**20, 1),
    "first_version_mib": round((one - base) / 2**20, 1),
    "per_version_mib": round(per_version / 2**20, 1),
    "bytes_per_item": round(per_version / m.n_items),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "load_seconds": round(seconds, 2),
}))
"""


def _version_dir(path: Path) -> Path:
    if (path / "manifest.json").is_file():
        return path
    current = path / "CURRENT"
    if current.is_file():
        return path / current.read_text().strip()
    raise SystemExit(f"{path}: neither an index version (manifest.json) nor an index root (CURRENT)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path, help="index roots (their CURRENT) or version folders")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parent.parent
    for path in args.paths:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(_version_dir(path))],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        )
        print(out.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
