"""``m2grl-train prepare``: read a dataset, clean, split, sessionise and build the per-view graphs."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from trainer.data.prepare import PrepareOptions, prepare, preset_options
from trainer.data.schema import LoadedDataset

NAME = "prepare"
HELP = "prepare a dataset: clean, train/test split, sessions, per-view sequences and graphs"

DATASETS = ["movielens", "tmall", "taobao", "generic", "synth"]
# Flags of the generic loader, passed through as keyword arguments of load_dataset("generic", ...).
GENERIC_FLAGS = {
    "events": "events_path",
    "items": "items_path",
    "user_col": "user_col",
    "item_col": "item_col",
    "time_col": "time_col",
    "time_format": "time_format",
    "rating_col": "rating_col",
    "dwell_col": "dwell_col",
    "action_col": "action_col",
    "session_col": "session_col",
    "views": "views",
}

log = logging.getLogger(__name__)


def _float_or_none(text: str) -> float | None:
    if text.lower() in ("none", "off", ""):
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="publisher format of the raw data")
    parser.add_argument("--path", type=Path, help="raw data file or folder (movielens: optional, downloads)")
    parser.add_argument("--out", required=True, type=Path, help="prepared directory to create")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (atomically)")
    parser.add_argument(
        "--variant", default="ml-latest-small", help="movielens variant (default: %(default)s)"
    )

    generic = parser.add_argument_group("generic loader (--dataset generic)")
    generic.add_argument("--events", type=Path, help="events file (CSV or Parquet)")
    generic.add_argument("--items", type=Path, help="items file with one column per side-information view")
    generic.add_argument("--user-col", help="events column holding the user id")
    generic.add_argument("--item-col", help="events (and items) column holding the item id")
    generic.add_argument("--time-col", help="events column holding the time")
    generic.add_argument("--time-format", help="time format (e.g. unix, unix_ms, or a strftime pattern)")
    generic.add_argument("--rating-col", help="events column holding a rating")
    generic.add_argument("--dwell-col", help="events column holding the dwell time in seconds")
    generic.add_argument("--action-col", help="events column holding the behaviour type")
    generic.add_argument("--session-col", help="events column holding an app-session id (enables merging)")
    generic.add_argument("--views", help="comma-separated items columns to use as views")

    # Defaults are suppressed so that only the flags actually given override the dataset's preset.
    opts = parser.add_argument_group("preparation options (defaults: the dataset's preset)")
    sup = argparse.SUPPRESS
    opts.add_argument("--min-rating", type=_float_or_none, default=sup, help="drop ratings below (or 'none')")
    opts.add_argument(
        "--min-dwell", type=_float_or_none, default=sup, help="drop dwell below, seconds ('none')"
    )
    opts.add_argument(
        "--min-user-events", type=int, default=sup, help="events a user needs to get test events"
    )
    opts.add_argument("--test-events", type=int, default=sup, help="held-out last events per user")
    opts.add_argument("--session-gap", type=int, default=sup, help="idle seconds that split a session")
    opts.add_argument("--max-session-len", type=int, default=sup, help="longer sessions are chunked")
    opts.add_argument(
        "--merge-gap", type=int, default=sup, help="merge app sessions closer than this, seconds"
    )


def option_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The PrepareOptions fields given on the command line."""
    return {name: getattr(args, name) for name in PrepareOptions.model_fields if hasattr(args, name)}


def load(args: argparse.Namespace) -> LoadedDataset:
    if args.dataset == "synth":
        if args.path is None:
            raise ValueError("--dataset synth needs --path (a directory written by 'm2grl-train synth')")
        from trainer.data.synth import load_synth

        return load_synth(args.path)

    from trainer.data.loaders import load_dataset

    if args.dataset == "generic":
        kwargs = {
            kw: getattr(args, flag) for flag, kw in GENERIC_FLAGS.items() if getattr(args, flag) is not None
        }
        kwargs.setdefault("events_path", args.path)  # --path works as the events file too
        if kwargs["events_path"] is None:
            raise ValueError("--dataset generic needs --events (the events file)")
        if "views" in kwargs:
            kwargs["views"] = [v.strip() for v in kwargs["views"].split(",") if v.strip()]
        return load_dataset("generic", None, **kwargs)
    if args.dataset == "movielens":
        return load_dataset("movielens", args.path, variant=args.variant)
    if args.path is None:
        raise ValueError(f"--dataset {args.dataset} needs --path")
    return load_dataset(args.dataset, args.path)


def run(args: argparse.Namespace) -> int:
    options = preset_options(args.dataset, **option_overrides(args))
    if args.out.exists() and not args.force:
        # Refuse before the (possibly long) load.
        raise ValueError(f"{args.out} already exists; pass --force to replace it")
    dataset = load(args)
    stats = prepare(dataset, options, args.out, force=args.force)
    summary = {k: v for k, v in stats.items() if k not in ("views", "options")}
    print(json.dumps(summary))
    for view, figures in stats["views"].items():
        print(f"view {view}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    return 0
