"""``m2grl-client``: query a running candidate service from a shell.

    m2grl-client candidates 42 --strategy diversity --k 20
    m2grl-client batch 42 43 44 --k 10
    m2grl-client item 42 [--embeddings]      m2grl-client explain 42 43
    m2grl-client index                       m2grl-client reload [--version V]      m2grl-client rollback

A readable table by default, ``--json`` for scripts. ``--url`` defaults to $M2GRL_URL or
http://127.0.0.1:8000; admin calls send $M2GRL_ADMIN_TOKEN. Exit status: 0 ok, 1 the service failed or could
not be reached (5xx, connection), 2 the request was refused (4xx: unknown item, bad argument, auth).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from clients.models import (
    BatchResult,
    Candidate,
    CandidatesResult,
    Explanation,
    IndexInfo,
    ItemInfo,
    M2GRLError,
    ReloadResult,
)
from clients.sync import DEFAULT_URL, M2GRLClient, RetryPolicy


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _candidate_rows(cands: list[Candidate]) -> list[list[Any]]:
    return [[rank, c.item_id, c.score, c.category, c.shop] for rank, c in enumerate(cands, 1)]


CAND_HEADERS = ("rank", "item_id", "score", "category", "shop")


def render(result: BaseModel) -> str:
    """The human-readable form of any result type."""
    if isinstance(result, CandidatesResult):
        head = (
            f"{len(result.candidates)} {result.strategy} candidates of item {result.item_id} "
            f"(index {result.index_version}{', exhausted' if result.exhausted else ''})"
        )
        return head + "\n" + _table(CAND_HEADERS, _candidate_rows(result.candidates))
    if isinstance(result, BatchResult):
        parts = [f"{result.strategy} candidates, k={result.k} (index {result.index_version})"]
        for entry in result.results:
            if entry.error is not None:
                parts.append(f"\nitem {entry.item_id}: error {entry.error.status} {entry.error.detail}")
            else:
                parts.append(
                    f"\nitem {entry.item_id}:\n"
                    + _table(CAND_HEADERS, _candidate_rows(entry.candidates or []))
                )
        return "\n".join(parts)
    if isinstance(result, ItemInfo):
        rows: list[list[Any]] = [
            ["item_id", result.item_id],
            ["row", result.row],
            ["index", result.index_version],
        ]
        rows += [[view, value] for view, value in result.attributes.items()]
        for name, vectors in (("embedding", result.embeddings), ("relational", result.relational)):
            for view, vec in (vectors or {}).items():
                rows.append([f"{name}[{view}]", _vector(vec)])
        if result.diversity_vector is not None:
            rows.append(["diversity z", _vector(result.diversity_vector)])
        return _table(("field", "value"), rows)
    if isinstance(result, Explanation):
        rows = [
            ["items", f"{result.item_id} vs {result.other}"],
            ["categories", f"{_cell(result.category)} vs {_cell(result.other_category)}"],
            ["inner product", result.inner_product],
            ["d_i", result.d_i],
            [f"d_ic ({_cell(result.metric_view)})", result.d_ic],
            ["d = d_i + d_ic", result.d],
        ]
        return _table(("quantity", "value"), rows)
    if isinstance(result, IndexInfo):
        head = (
            f"index {result.version} (previous {_cell(result.previous_version)}), artifact "
            f"{result.artifact_version}, {result.n_items} items, loaded {result.loaded_at}"
        )
        rows = [
            [name, s.n, s.dim, s.space, s.ef_search, f"{s.recall_at_k:.4f}@{s.recall_k}"]
            for name, s in result.strategies.items()
        ]
        return head + "\n" + _table(("strategy", "n", "dim", "space", "ef", "recall"), rows)
    if isinstance(result, ReloadResult):
        return (
            f"{result.action}: now serving {result.version} (previous {_cell(result.previous_version)}), "
            f"{result.seconds:.2f} s"
        )
    return result.model_dump_json(indent=2)


def _vector(vec: list[float]) -> str:
    head = ", ".join(f"{v:.3f}" for v in vec[:6])
    return f"[{head}{', ...' if len(vec) > 6 else ''}] (dim {len(vec)})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2grl-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", default=os.environ.get("M2GRL_URL", DEFAULT_URL), help="service URL (env M2GRL_URL)"
    )
    parser.add_argument("--json", action="store_true", help="print the JSON result instead of a table")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP phase")
    parser.add_argument("--retries", type=int, default=2, help="retries on connection errors and 5xx/429")
    sub = parser.add_subparsers(dest="command", required=True)

    def query_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--strategy", choices=("general", "diversity"), default="general")
        p.add_argument("--k", type=int, default=10, help="candidates per trigger item")
        p.add_argument("--exclude", default="", help="comma-separated item ids never to return")
        p.add_argument("--exclude-categories", default="", help="comma-separated categories never to return")

    p = sub.add_parser("candidates", help="top-k candidates of one trigger item")
    p.add_argument("item")
    query_flags(p)
    p = sub.add_parser("batch", help="candidates of several trigger items in one request")
    p.add_argument("items", nargs="+")
    query_flags(p)
    p = sub.add_parser("item", help="an item's metadata (and vectors with --embeddings)")
    p.add_argument("item")
    p.add_argument("--embeddings", action="store_true")
    p = sub.add_parser("explain", help="inner product and metric distances d_i, d_ic, d of a pair")
    p.add_argument("item")
    p.add_argument("other")
    sub.add_parser("index", help="the serving index version")
    p = sub.add_parser("reload", help="load a version (default: what CURRENT names); needs M2GRL_ADMIN_TOKEN")
    p.add_argument("--version", default=None)
    sub.add_parser("rollback", help="swap back to the previous version; needs M2GRL_ADMIN_TOKEN")
    return parser


def _split(value: str) -> list[str] | None:
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def _run(client: M2GRLClient, args: argparse.Namespace) -> BaseModel:
    cmd = args.command
    if cmd == "candidates":
        return client.candidates(
            args.item,
            strategy=args.strategy,
            k=args.k,
            exclude=_split(args.exclude),
            exclude_categories=_split(args.exclude_categories),
        )
    if cmd == "batch":
        return client.batch(
            args.items,
            strategy=args.strategy,
            k=args.k,
            exclude=_split(args.exclude),
            exclude_categories=_split(args.exclude_categories),
        )
    if cmd == "item":
        return client.item(args.item, embeddings=args.embeddings)
    if cmd == "explain":
        return client.explain(args.item, args.other)
    if cmd == "index":
        return client.index()
    if cmd == "reload":
        return client.reload(args.version)
    if cmd == "rollback":
        return client.rollback()
    raise AssertionError(f"unhandled command {cmd}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with M2GRLClient(
            args.url, timeout=args.timeout, retry=RetryPolicy(retries=max(0, args.retries))
        ) as client:
            result = _run(client, args)
    except M2GRLError as exc:
        if args.json:
            print(
                json.dumps({"status": exc.status, "error": exc.detail, "message": exc.message}),
                file=sys.stderr,
            )
        else:
            print(f"m2grl-client {args.command}: error: {exc.message}", file=sys.stderr)
        return 2 if exc.status is not None and 400 <= exc.status < 500 else 1
    print(result.model_dump_json(indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
