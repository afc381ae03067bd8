"""``make demo``: the main job end to end on the embedded default (MovieLens ml-latest-small).

prepare -> fit -> evaluate -> build indexes -> serve on 127.0.0.1:8000.
Each step is the command a user would run; this module only chains them and prints what it did.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def _tool(name: str) -> str:
    """The console script installed beside this interpreter (the venv's bin)."""
    return str(Path(sys.executable).with_name(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m2grl-demo", description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="prepared data, artifacts, indexes")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (paper: 10)")
    parser.add_argument("--no-serve", action="store_true", help="stop after building the indexes")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    runs: Path = args.runs
    runs.mkdir(parents=True, exist_ok=True)
    data_dir = os.environ.get("M2GRL_DATA_DIR")
    local = Path(data_dir) / "ml-latest-small" if data_dir else None
    prepared = runs / "prepared" / "ml-latest-small"
    artifacts = runs / "artifacts"
    indexes = runs / "indexes"

    cmd = [_tool("m2grl-train"), "prepare", "--dataset", "movielens", "--out", str(prepared), "--force"]
    if local is not None and local.exists():
        cmd += ["--path", str(local)]
    else:
        print("M2GRL_DATA_DIR not set or without ml-latest-small: downloading it from GroupLens")
    _run(cmd)
    stats = json.loads((prepared / "stats.json").read_text())
    print(json.dumps({k: v for k, v in stats.items() if k != "options"}, indent=2))

    _run(
        [_tool("m2grl-train"), "fit", "--data", str(prepared), "--out", str(artifacts)]
        + ["--views", "item,category", "--epochs", str(args.epochs)]
    )
    artifact = max((p for p in artifacts.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)

    metrics = runs / "metrics" / "metrics.json"
    _run(
        [_tool("m2grl-train"), "evaluate", "--data", str(prepared), "--artifact", str(artifact)]
        + ["--methods", "popularity,itemcf,m2grl", "--seeds", "0", "--out", str(metrics)]
    )
    print((metrics.parent / "metrics.md").read_text())

    _run([_tool("m2grl-index"), "build", "--artifact", str(artifact), "--out", str(indexes)])
    _run([_tool("m2grl-index"), "list", str(indexes)])

    if args.no_serve:
        return 0
    base = f"http://{args.host}:{args.port}"
    some_item = json.loads((artifact / "ids" / "item.json").read_text())[0]
    print(
        "\nServing. Try, in another terminal:\n"
        f"  curl '{base}/v1/items/{some_item}/candidates?k=10'\n"
        f"  curl '{base}/v1/items/{some_item}/candidates?strategy=diversity&k=10'\n"
        f"  curl '{base}/v1/index'\n"
        f"  {_tool('m2grl-client')} --url {base} candidates {some_item} --k 10\n"
        f"  open {base}/docs  (OpenAPI)   {base}/metrics  (Prometheus)\n",
        flush=True,
    )
    env = {**os.environ, "M2GRL_INDEX_ROOT": str(indexes.resolve())}
    _run([_tool("m2grl-serve"), "--host", args.host, "--port", str(args.port)], env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
