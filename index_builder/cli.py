"""``m2grl-index``: build, verify and list HNSW index versions of M2GRL embeddings.

    m2grl-index build --artifact PATH --out INDEX_ROOT [--strategies general,diversity] [--M 16]
                      [--ef-construction 200] [--recall-target 0.98] [--keep 3] [--threads 0]
    m2grl-index verify INDEX_ROOT[/VERSION]
    m2grl-index list INDEX_ROOT

Exit status: 0 success, 1 a build or verification that failed its quality check (recall), 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from index_builder.manifest import MANIFEST_NAME
from index_builder.publish import CURRENT_NAME, PublishError, list_versions, read_current
from index_builder.recall import RecallNotReached

PROG = "m2grl-index"


class CommandError(Exception):
    """User-facing failure: one line on stderr, exit status 2."""


def _strategy_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of strategy names")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "build", help="build, recall-check and publish an index version from a trainer artifact"
    )
    b.add_argument(
        "--artifact",
        required=True,
        type=Path,
        help="trainer artifact version directory, or a root (newest version)",
    )
    b.add_argument("--out", required=True, type=Path, help="index root (created if missing)")
    b.add_argument(
        "--strategies", type=_strategy_list, default=None, help="default: all the artifact supports"
    )
    # 32, not hnswlib's usual 16: on real artifacts the inner-product (general) index reaches recall@50 0.98
    # at ef 100 with M 32 (11.9k q/s per core) against ef 300 with M 16 (2.9k q/s); see README "Indexes".
    b.add_argument("--M", type=int, default=32, help="HNSW graph degree (memory ~ 2*M ints per item)")
    b.add_argument("--ef-construction", type=int, default=200, help="HNSW insertion beam width")
    b.add_argument("--recall-target", type=float, default=0.98, help="recall@50 that ef must reach")
    b.add_argument(
        "--encoding",
        action="append",
        default=[],
        metavar="STRATEGY=ENCODING",
        help="force an encoding (e.g. general=ip or general=mips-l2) instead of measuring each",
    )
    b.add_argument("--keep", type=int, default=3, help="published versions to keep")
    b.add_argument("--threads", type=int, default=0, help="0 = all cores")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--no-verify-artifact", action="store_true", help="skip the artifact's checksum verification"
    )
    b.set_defaults(_run=cmd_build)

    v = sub.add_parser("verify", help="re-check checksums and recall of a version (CURRENT by default)")
    v.add_argument("path", type=Path, help="INDEX_ROOT (its CURRENT version) or INDEX_ROOT/VERSION")
    v.add_argument("--threads", type=int, default=0, help="0 = all cores")
    v.set_defaults(_run=cmd_verify)

    ls = sub.add_parser("list", help="list versions under an index root and mark CURRENT")
    ls.add_argument("root", type=Path)
    ls.set_defaults(_run=cmd_list)
    return parser


def _open_artifact(path: Path, verify: bool):
    if not path.is_dir():
        raise CommandError(f"{path}: artifact directory does not exist")
    try:
        from trainer.artifact.loader import Artifact
    except ModuleNotFoundError as exc:
        raise CommandError(
            f"cannot read artifacts: {exc.name} is not installed (install m2grl[train])"
        ) from None
    if (path / MANIFEST_NAME).is_file():
        return Artifact.open(path, verify=verify)
    # An artifact root: its newest complete version.
    return Artifact.latest(path, verify=verify)


def cmd_build(args: argparse.Namespace) -> int:
    from index_builder.build import BuildOptions, build_from_artifact

    encodings = {}
    for item in args.encoding:
        name, sep, enc = item.partition("=")
        if not sep or not name or not enc:
            raise CommandError(f"--encoding {item!r}: expected STRATEGY=ENCODING, e.g. general=ip")
        encodings[name.strip()] = enc.strip()
    try:
        options = BuildOptions(
            strategies=args.strategies,
            encodings=encodings,
            M=args.M,
            ef_construction=args.ef_construction,
            recall_target=args.recall_target,
            keep=args.keep,
            threads=args.threads,
            seed=args.seed,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        field = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "options"
        raise CommandError(f"{field}: {err['msg']}") from None
    artifact = _open_artifact(args.artifact, verify=not args.no_verify_artifact)
    result = build_from_artifact(artifact, args.out, options, progress=not args.quiet)
    print(f"published {result.path} (CURRENT)")
    for name, entry in result.manifest.strategies.items():
        print(
            f"  {name:<10} {entry.encoding:<8} n={entry.n} dim={entry.dim} ef={entry.ef_search} "
            f"recall@{entry.recall_k}={entry.recall_at_k:.4f} build={entry.build_seconds:.1f}s"
        )
    if result.deleted:
        print(f"  retention deleted: {', '.join(result.deleted)}")
    return 0


def _resolve_version(path: Path) -> Path:
    if (path / MANIFEST_NAME).is_file():
        return path
    if (path / CURRENT_NAME).is_file():
        version = read_current(path)
        return path / version
    if not path.exists():
        raise CommandError(f"{path}: does not exist")
    raise CommandError(
        f"{path}: neither an index version (no {MANIFEST_NAME}) nor an index root (no {CURRENT_NAME})"
    )


def cmd_verify(args: argparse.Namespace) -> int:
    from index_builder.reader import IndexVersion
    from index_builder.recall import RecallProbe, measure_recall

    path = _resolve_version(args.path)
    version = IndexVersion.open(path, verify=True, threads=args.threads or -1)
    print(f"{path}: {len(version.manifest.files)} files, sha256 ok; {version.n_items} items")
    header = (
        f"{'strategy':<10} {'encoding':<8} {'n':>9} {'dim':>5} {'M':>4} {'efC':>5} {'ef':>5} "
        f"{'built':>7} {'now':>7} {'target':>7}  status"
    )
    print(header)
    failed = 0
    for name in version.strategies:
        h = version.handle(name)
        e = h.entry
        probe = RecallProbe.make(h.strategy, h.raw, e.recall_k, e.recall_queries, e.seed)
        now = measure_recall(h.index, h.encoding, h.params, probe, ef=e.ef_search)
        ok = now >= e.recall_target
        failed += not ok
        print(
            f"{name:<10} {e.encoding:<8} {e.n:>9} {e.dim:>5} {e.M:>4} {e.ef_construction:>5} {e.ef_search:>5} "
            f"{e.recall_at_k:>7.4f} {now:>7.4f} {e.recall_target:>7.3f}  {'ok' if ok else 'BELOW TARGET'}"
        )
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    from index_builder.manifest import IndexManifest

    root: Path = args.root
    if not root.is_dir():
        raise CommandError(f"{root}: index root does not exist")
    current = read_current(root)
    versions = list_versions(root)
    if not versions:
        print(f"{root}: no versions")
        return 0
    print(f"{'':2}{'version':<24} {'items':>9}  {'artifact':<24} strategies (ef, recall@50)")
    for v in versions:
        try:
            m = IndexManifest.model_validate_json((root / v / MANIFEST_NAME).read_text())
            strategies = ", ".join(
                f"{n} ({e.ef_search}, {e.recall_at_k:.3f})" for n, e in m.strategies.items()
            )
            line = f"{m.n_items:>9}  {m.source_artifact.version:<24} {strategies}"
        except (OSError, ValueError) as exc:
            line = f"{'?':>9}  unreadable manifest: {exc.__class__.__name__}"
        print(f"{'*' if v == current else ' '} {v:<24} {line}")
    if current is not None and current not in versions:
        print(f"warning: CURRENT names {current}, which does not exist", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from index_builder.reader import IndexVersionError

    try:
        return int(args._run(args) or 0)
    except RecallNotReached as exc:
        print(f"{PROG} {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except (CommandError, IndexVersionError, PublishError, ValueError, FileNotFoundError, KeyError) as exc:
        msg = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        # One line whatever the exception (pydantic errors span several).
        msg = "; ".join(line.strip() for line in msg.splitlines() if line.strip())
        print(f"{PROG} {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:
        from trainer.io_errors import describe_os_error

        # Disk full, permissions, ...: publication is atomic, so nothing was published; say what failed.
        print(
            f"{PROG} {args.command}: error: {describe_os_error(exc)}; nothing was published", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
