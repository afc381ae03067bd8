"""Atomic publication of index versions under an index root, the CURRENT pointer, and retention.

Layout of an index root::

    ROOT/CURRENT          one line: the version the service should load
    ROOT/<version>/       a complete, immutable index version (see index_builder.manifest)
    ROOT/.tmp-*           staging and deletion in progress; never a version, ignored by readers
    ROOT/.lock            serialises publishers (flock)

A version directory appears under its final name only by ``rename`` of a fully written and fsynced staging
directory, and CURRENT is replaced by write-temp, fsync, rename: a reader sees the old state or the new one,
never a half-written one, whatever point a build is killed at.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

log = logging.getLogger(__name__)

CURRENT_NAME = "CURRENT"
TMP_PREFIX = ".tmp-"
VERSION_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}Z$")
_STAGING_RE = re.compile(r"^\.tmp-(\d{8}T\d{6}\.\d{6}Z)-\d+$")
# Staging directories older than this are leftovers of killed builds, not builds in progress.
STALE_TMP_SECONDS = 24 * 3600


class PublishError(RuntimeError):
    pass


def format_version(moment: datetime) -> str:
    """Sortable UTC timestamp with microseconds, e.g. ``20250102T030405.000006Z``."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def list_versions(root: Path | str) -> list[str]:
    """Published versions under ``root``, oldest first (names sort chronologically)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if VERSION_RE.match(p.name) and p.is_dir())


def read_current(root: Path | str) -> str | None:
    """The version CURRENT names, or None when nothing has been published yet."""
    path = Path(root) / CURRENT_NAME
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not VERSION_RE.match(text):
        raise PublishError(f"{path}: does not name a version (got {text[:40]!r})")
    return text


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and directory below ``path`` (bottom-up), so a rename publishes durable content."""
    for dirpath, _, filenames in os.walk(path, topdown=False):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


@contextlib.contextmanager
def publish_lock(root: Path) -> Iterator[None]:
    """Exclusive lock of the root for the short publish step (concurrent builders queue here)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _parse_version(version: str) -> datetime:
    return datetime.strptime(version, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)


def _reserved_versions(root: Path) -> list[str]:
    """Versions taken by published directories and by staging directories of builds in progress."""
    taken = list_versions(root)
    for p in root.iterdir():
        m = _STAGING_RE.match(p.name)
        if m:
            taken.append(m.group(1))
    return sorted(taken)


def next_version(root: Path, now: datetime | None = None) -> str:
    """A fresh version name: the current UTC time, bumped past every taken version if needed."""
    version = format_version(now or datetime.now(UTC))
    taken = _reserved_versions(root) if root.is_dir() else []
    if taken and version <= taken[-1]:
        # Clock stepped backwards, or two builds within one microsecond: stay unique and increasing.
        version = format_version(_parse_version(taken[-1]) + timedelta(microseconds=1))
    return version


@dataclass
class Staging:
    """A reserved version name and the hidden directory its files are written to."""

    root: Path
    version: str
    path: Path


def begin(root: Path) -> Staging:
    """Reserve a version and create its staging directory ``ROOT/.tmp-<version>-<pid>``."""
    root.mkdir(parents=True, exist_ok=True)
    with publish_lock(root):
        for name in clean_stale_staging(root):
            log.info("removed leftover %s of a killed build", name)
        version = next_version(root)
        path = root / f"{TMP_PREFIX}{version}-{os.getpid()}"
        path.mkdir()
    return Staging(root=root, version=version, path=path)


def abort(staging: Staging) -> None:
    shutil.rmtree(staging.path, ignore_errors=True)


def _commit_dir(staging: Path, final: Path) -> None:
    """The publishing rename (a separate function so tests can kill a build exactly here)."""
    os.rename(staging, final)


def commit(staging: Staging, *, make_current: bool = True, keep: int | None = None) -> list[str]:
    """Publish a fully written staging directory, point CURRENT at it, apply retention.

    Returns the versions deleted by retention.
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    fsync_tree(staging.path)
    root = staging.root
    with publish_lock(root):
        final = root / staging.version
        if final.exists():
            raise PublishError(f"{final} already exists; refusing to overwrite an immutable version")
        _commit_dir(staging.path, final)
        fsync_dir(root)
        if make_current:
            write_current(root, staging.version)
        return apply_retention(root, keep) if keep is not None else []


def write_current(root: Path, version: str) -> None:
    """Point CURRENT at ``version`` atomically (write temp, fsync, rename, fsync directory)."""
    if not (root / version).is_dir():
        raise PublishError(f"{root / version}: no such version")
    tmp = root / f"{TMP_PREFIX}CURRENT-{os.getpid()}-{time.time_ns()}"
    with open(tmp, "w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / CURRENT_NAME)
    fsync_dir(root)


def remove_version(root: Path, version: str) -> None:
    """Delete a version: first rename it out of the version namespace, then remove the files."""
    doomed = root / f"{TMP_PREFIX}delete-{version}-{time.time_ns()}"
    os.rename(root / version, doomed)
    fsync_dir(root)
    shutil.rmtree(doomed, ignore_errors=True)


def apply_retention(root: Path, keep: int) -> list[str]:
    """Keep the newest ``keep`` versions and the one CURRENT names; delete the rest. Returns deleted names."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    current = read_current(root)
    versions = list_versions(root)
    doomed = [v for v in versions[:-keep] if v != current]
    for version in doomed:
        remove_version(root, version)
        log.info("deleted index version %s (retention keeps %d)", version, keep)
    return doomed


def clean_stale_staging(root: Path, max_age_s: float = STALE_TMP_SECONDS) -> list[str]:
    """Remove staging/deletion leftovers of builds killed long ago (fresh ones may belong to a live build)."""
    removed = []
    if not root.is_dir():
        return removed
    now = time.time()
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX) and now - p.lstat().st_mtime > max_age_s:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed
