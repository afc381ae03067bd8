"""``m2grl-train evaluate``: the offline protocol of the paper's Sec. 5.1 on a prepared directory."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from trainer.data.prepared import PreparedData
from trainer.eval.methods import METHOD_NAMES, parse_methods
from trainer.eval.report import markdown_report
from trainer.eval.runner import EvalOptions, parse_int_list, run_evaluation

NAME = "evaluate"
HELP = "offline HitRate/Precision/Recall/F1@K of M2GRL and baselines on prepared data (paper Sec. 5.1)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="prepared directory (m2grl-train prepare)")
    parser.add_argument(
        "--artifact", type=Path, help="artifact version directory: m2grl reads its item vectors"
    )
    parser.add_argument(
        "--methods",
        default="all",
        help=f"comma-separated methods or 'all' (default); valid: {', '.join(METHOD_NAMES)}",
    )
    parser.add_argument("--k", default="10,20,50", help="cut-offs K (default 10,20,50)")
    parser.add_argument("--seeds", default="0", help="seeds of the stochastic methods, e.g. 0,1,2")
    parser.add_argument(
        "--epochs", type=int, help="epochs of every trained method (default: each method's own)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="override a method's hyper-parameter (repeatable), e.g. eges.lr=0.001; VALUE is read as JSON if it can be",
    )
    parser.add_argument("--category-view", help="attribute view holding categories for the discovery metrics")
    parser.add_argument(
        "--index",
        type=Path,
        help="published index version (INDEX_ROOT/VERSION): also score its strategies as the service "
        "queries them and report the difference to exact search",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="metrics.json to write (metrics.md beside it)"
    )


def parse_params(specs: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``["eges.lr=0.001", ...]`` -> ``{"eges": {"lr": 0.001}}``; values are JSON when they parse as JSON."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        target, sep, raw = spec.partition("=")
        method, dot, key = target.partition(".")
        if not sep or not dot or not method or not key:
            raise ValueError(f"--param {spec!r}: expected METHOD.KEY=VALUE, e.g. eges.lr=0.001")
        if method not in methods:
            raise ValueError(f"--param {spec!r}: method {method!r} is not among the evaluated ones {methods}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(method, {})[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods)
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    options = EvalOptions(
        methods=methods,
        ks=parse_int_list(args.k, "--k"),
        seeds=parse_int_list(args.seeds, "--seeds"),
        epochs=args.epochs,
        artifact=args.artifact,
        category_view=args.category_view,
        method_overrides=parse_params(args.param, methods),
        skip_unavailable=args.methods.strip() == "all",
    )
    if options.artifact is not None and not options.artifact.exists():
        raise FileNotFoundError(f"--artifact {options.artifact}: no such directory")
    if args.index is not None and not (args.index / "manifest.json").exists():
        raise FileNotFoundError(f"--index {args.index}: not an index version directory (no manifest.json)")
    prepared = PreparedData(args.data)
    result = run_evaluation(prepared, options)
    if args.index is not None:
        from trainer.eval.index_check import index_vs_exact
        from trainer.eval.protocol import build_eval_set

        result["index_vs_exact"] = index_vs_exact(
            prepared, build_eval_set(prepared), args.index, options.ks, ("general", "diversity")
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    md = args.out.with_suffix(".md")
    md.write_text(markdown_report(result) + "\n")
    log.info("wrote %s and %s", args.out, md)
    return 0
