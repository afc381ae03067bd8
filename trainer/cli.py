"""``m2grl-train``: one sub-command per module in trainer/commands (prepare, synth, fit, evaluate, ...)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
COMMAND_MODULES = ["prepare", "synth", "fit", "evaluate", "export_projector"]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m2grl-train", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"trainer.commands.{mod_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"trainer.commands.{mod_name}":
                continue  # command not built yet
            raise
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except (CommandError, ValueError, FileNotFoundError, KeyError) as exc:
        # Known failure modes of bad input: one clear line, never a traceback.
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"m2grl-train {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Disk full, permissions, ...: outputs are written through temp dirs, so none is half-written.
        from trainer.io_errors import describe_os_error

        print(f"m2grl-train {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
