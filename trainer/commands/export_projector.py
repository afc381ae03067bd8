"""``m2grl-train export-projector``: vectors.tsv + metadata.tsv of one artifact view for the Embedding Projector."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

NAME = "export-projector"
HELP = "export one view of an artifact as TSV files for the TensorFlow Embedding Projector"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifact",
        type=Path,
        required=True,
        help="an artifact version directory, or an artifact root (its newest complete version is used)",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for vectors.tsv and metadata.tsv")
    parser.add_argument("--view", default="item", help="view to export, or 'z' for the diversity vectors")
    parser.add_argument("--limit", type=int, default=None, help="export only the first N rows")


def run(args: argparse.Namespace) -> int:
    from trainer.artifact.loader import Artifact
    from trainer.artifact.manifest import MANIFEST_NAME
    from trainer.artifact.projector import export_projector

    path: Path = args.artifact
    art = Artifact.open(path) if (path / MANIFEST_NAME).exists() else Artifact.latest(path)
    n = export_projector(art, args.out, view=args.view, limit=args.limit)
    log.info("exported %d rows of view %s from %s to %s", n, args.view, art.path, args.out)
    return 0
