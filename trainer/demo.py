"""``make demo``: the main job end to end on the embedded default (MovieLens ml-latest-small).

prepare -> fit (short schedule) -> evaluate -> build indexes -> serve on 127.0.0.1:8000.
Each step is the same command a user would run; this module only chains them and prints what it did.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def _run(cmd: list[str]) -> None:
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _entry(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m2grl-demo", description=__doc__)
    parser.add_argument(
        "--runs", type=Path, default=Path("runs"), help="where prepared data, artifacts, indexes go"
    )
    parser.add_argument("--epochs", type=int, default=3, help="short schedule for the demo (paper: 10)")
    parser.add_argument("--no-serve", action="store_true", help="stop after building the indexes")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    runs: Path = args.runs
    runs.mkdir(parents=True, exist_ok=True)
    data_dir = os.environ.get("M2GRL_DATA_DIR")
    local = Path(data_dir) / "ml-latest-small" if data_dir else None
    prepared = runs / "prepared" / "ml-latest-small"

    cmd = _entry("trainer.cli") + ["prepare", "--dataset", "movielens", "--out", str(prepared), "--force"]
    if local is not None and local.exists():
        cmd += ["--path", str(local)]
    else:
        print("M2GRL_DATA_DIR not set or without ml-latest-small: downloading it from GroupLens")
    _run(cmd)
    stats = json.loads((prepared / "stats.json").read_text())
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
