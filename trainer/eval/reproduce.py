"""``make eval``: the README's Results tables, reproduced from the raw datasets.

For each dataset: prepare (preset options) -> evaluate every method over seeds 0,1,2 -> metrics.json and
metrics.md under ``RUNS/eval/<dataset>/``. MovieLens uses the views item and category (the README's
protocol), the Tmall sample item, category, shop and brand. Takes several minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

M2GRL_METHODS = ["m2grl", "m2grl_intra_only", "m2grl_uniform", "m2grl_static", "m2grl_adaptive"]
DATASETS = {
    # name: (loader, folder under M2GRL_DATA_DIR, views of the M2GRL runs or None for all)
    "ml-latest-small": ("movielens", "ml-latest-small", ["item", "category"]),
    "tmall-sample": ("tmall", "tmall-ijcai15-user-log-sample", None),
}


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m2grl-eval-reproduce", description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args(argv)
    data_root = os.environ.get("M2GRL_DATA_DIR")
    if not data_root:
        print("make eval: set M2GRL_DATA_DIR to the directory holding the datasets", file=sys.stderr)
        return 2
    for name in args.datasets.split(","):
        if name not in DATASETS:
            print(f"make eval: unknown dataset {name!r}; known: {', '.join(DATASETS)}", file=sys.stderr)
            return 2
        loader, folder, views = DATASETS[name]
        prepared = args.runs / "prepared" / name
        out = args.runs / "eval" / name / "metrics.json"
        subprocess.run(
            [_tool("m2grl-train"), "prepare", "--dataset", loader, "--path", str(Path(data_root) / folder)]
            + ["--out", str(prepared), "--force"],
            check=True,
        )
        cmd = [_tool("m2grl-train"), "evaluate", "--data", str(prepared), "--methods", args.methods]
        cmd += ["--seeds", args.seeds, "--out", str(out)]
        if views is not None:
            for method in M2GRL_METHODS:
                cmd += ["--param", f"{method}.views={json.dumps(views)}"]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        print((out.parent / "metrics.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
