"""``m2grl-serve``: run the candidate service with uvicorn, one process.

    M2GRL_INDEX_ROOT=indexes M2GRL_ADMIN_TOKEN=secret m2grl-serve --host 127.0.0.1 --port 8000

Settings come from ``M2GRL_*`` environment variables (see service.settings). One process per container on
purpose: metrics live in process memory and the index is loaded once per process; scale with replicas.
"""

from __future__ import annotations

import argparse
import logging
import sys

from service.logging import configure_logging
from service.settings import Settings, SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2grl-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--index-root", default=None, help="overrides M2GRL_INDEX_ROOT")
    parser.add_argument("--log-level", default=None, help="overrides M2GRL_LOG_LEVEL (default INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, object] = {}
    if args.index_root:
        overrides["index_root"] = args.index_root
    if args.log_level:
        overrides["log_level"] = args.log_level
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        print(f"m2grl-serve: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    # Imported after logging is configured so import-time log lines are JSON too.
    import uvicorn

    from service.app import create_app

    app = create_app(settings)
    logging.getLogger("m2grl.service").info("listening on http://%s:%d", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False, workers=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
