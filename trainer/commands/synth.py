"""``m2grl-train synth``: generate a synthetic behaviour log with planted category/shop structure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.data.prepare import atomic_directory
from trainer.data.synth import SynthOptions, generate

NAME = "synth"
HELP = "generate a synthetic log (items in categories and shops, Markov-walk sessions) with its planted truth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, required=True, help="number of items")
    parser.add_argument("--users", type=int, required=True, help="number of users")
    parser.add_argument("--events", type=int, required=True, help="number of events (>= users)")
    parser.add_argument("--out", type=Path, required=True, help="directory to create")
    parser.add_argument("--categories", type=int, help="number of categories (default: items / 50)")
    parser.add_argument("--shops", type=int, help="number of shops (default: items / 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stay-prob", type=float, default=0.8, help="walk stays in its category with this probability"
    )
    parser.add_argument("--mean-session-len", type=float, default=8.0)
    parser.add_argument(
        "--chunk-events", type=int, default=1_000_000, help="events generated per chunk (memory)"
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (atomically)")


def run(args: argparse.Namespace) -> int:
    opts = SynthOptions(
        n_items=args.items,
        n_users=args.users,
        n_events=args.events,
        n_categories=args.categories,
        n_shops=args.shops,
        seed=args.seed,
        stay_prob=args.stay_prob,
        mean_session_len=args.mean_session_len,
        chunk_events=args.chunk_events,
    )
    with atomic_directory(args.out, force=args.force) as tmp:
        summary = generate(opts, tmp)
    print(json.dumps({k: v for k, v in summary.items() if k != "options"}))
    return 0
