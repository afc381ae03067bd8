"""Download of public datasets from their publishers into a local cache (MovieLens from GroupLens).

The cache is ``$M2GRL_CACHE_DIR`` or ``~/.cache/m2grl``, the source GroupLens or the mirror named by
``$M2GRL_MOVIELENS_URL``. A variant lives in ``<cache>/<variant>/`` as GroupLens' zip extracts it (e.g. ``<cache>/ml-10m/ml-10M100K/ratings.dat``), with a small
``m2grl-download.json`` recording the URL and the archive's sha256.

Integrity: the archive is streamed to a temporary file next to its final name and renamed only after its
checksum is verified; a mismatch deletes it and raises :class:`DownloadError`. Checksums come from the
table :data:`MOVIELENS` (sha256 as recorded by TensorFlow Datasets' ``url_checksums/movielens.txt``; MD5
as published by GroupLens beside each archive, ``<variant>.zip.md5``); sha256 is checked when known,
else MD5 (ml-10m). Where neither is known (ml-latest, ml-32m), the archive is accepted when it holds the
expected files, and the sha256 it computed is logged and printed so that it can be recorded here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

log = logging.getLogger(__name__)

CACHE_ENV = "M2GRL_CACHE_DIR"
BASE_URL_ENV = "M2GRL_MOVIELENS_URL"
GROUPLENS_BASE_URL = "https://files.grouplens.org/datasets/movielens"
MARKER = "m2grl-download.json"
_CHUNK = 1 << 20


class DownloadError(ValueError):
    """A download that failed, or whose archive is not what was expected (checksum, content)."""


@dataclass(frozen=True)
class Archive:
    """What is known of a published archive."""

    folder: str
    """Top-level folder of the zip."""
    members: tuple[str, ...]
    """Files that must be in ``folder`` for the archive to be usable."""
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


_CSV = ("ratings.csv", "movies.csv")
MOVIELENS: dict[str, Archive] = {
    # ml-latest-small and ml-latest are "development" datasets that GroupLens may regenerate; the
    # ml-latest-small sha256 below is that of the 2018-09 build, current since 2018.
    "ml-latest-small": Archive(
        "ml-latest-small",
        _CSV,
        sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        size=978_202,
    ),
    "ml-latest": Archive("ml-latest", _CSV),
    "ml-100k": Archive(
        "ml-100k",
        ("u.data", "u.item"),
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        md5="0e33842e24a9c977be4e0107933c0723",
        size=4_924_029,
    ),
    "ml-1m": Archive(
        "ml-1m",
        ("ratings.dat", "movies.dat"),
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        md5="c4d9eecfca2ab87c1945afe126590906",
        size=5_917_549,
    ),
    "ml-10m": Archive("ml-10M100K", ("ratings.dat", "movies.dat"), md5="ce571fd55effeba0271552578f2648bd"),
    "ml-20m": Archive(
        "ml-20m",
        _CSV,
        sha256="96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
        md5="cd245b17a1ae2cc31bb14903e1204af3",
        size=198_702_078,
    ),
    "ml-25m": Archive(
        "ml-25m",
        _CSV,
        sha256="8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
        md5="6b51fb2759a8657d3bfcbfc42b592ada",
        size=261_978_986,
    ),
    "ml-32m": Archive("ml-32m", _CSV),
}


def resolve_cache_dir(override: Path | str | None = None) -> Path:
    """The download cache: ``override``, else ``$M2GRL_CACHE_DIR``, else ``~/.cache/m2grl``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "m2grl"


def download_movielens(
    variant: str = "ml-latest-small",
    *,
    cache_dir: Path | str | None = None,
    base_url: str | None = None,
    archives: dict[str, Archive] | None = None,
    force: bool = False,
) -> Path:
    """Download and extract a MovieLens variant; return the extracted folder (reused when present).

    Parameters
    ----------
    variant
        GroupLens name, one of :data:`MOVIELENS` (``ml-latest-small``, ``ml-1m``, ...).
    cache_dir
        Where to keep it; default ``$M2GRL_CACHE_DIR`` or ``~/.cache/m2grl``.
    base_url
        Where the ``<variant>.zip`` files are served; default ``$M2GRL_MOVIELENS_URL`` (a mirror) or
        GroupLens.
    archives
        Checksum table to use instead of :data:`MOVIELENS`.
    force
        Download again even when the variant is already in the cache.
    """
    table = MOVIELENS if archives is None else archives
    if variant not in table:
        raise DownloadError(f"unknown MovieLens variant {variant!r}; known: {', '.join(sorted(table))}")
    archive = table[variant]
    target = resolve_cache_dir(cache_dir) / variant
    folder = target / archive.folder
    if not force and (target / MARKER).is_file() and _has_members(folder, archive):
        log.info("using cached %s at %s", variant, folder)
        return folder

    base_url = base_url or os.environ.get(BASE_URL_ENV) or GROUPLENS_BASE_URL
    url = f"{base_url.rstrip('/')}/{variant}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    zip_path = target.parent / f"{variant}.zip"
    sha256 = fetch(url, zip_path, archive)
    try:
        _extract(zip_path, target, archive)
    finally:
        zip_path.unlink(missing_ok=True)
    (target / MARKER).write_text(json.dumps({"url": url, "sha256": sha256, "variant": variant}, indent=2))
    return folder


def fetch(url: str, destination: Path, archive: Archive) -> str:
    """Stream ``url`` to ``destination`` through a temporary file, verify it, rename it into place, and
    return its sha256. On any failure the temporary file is removed."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    tmp = Path(tmp_name)
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)
            except (urllib.error.URLError, OSError) as exc:
                raise DownloadError(f"cannot download {url}: {exc}") from exc
            with response:
                total = int(response.headers.get("Content-Length") or 0) or archive.size
                with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name, disable=None) as bar:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        sha256.update(chunk)
                        md5.update(chunk)
                        bar.update(len(chunk))
        _verify(url, sha256.hexdigest(), md5.hexdigest(), archive)
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sha256.hexdigest()


def _verify(url: str, sha256: str, md5: str, archive: Archive) -> None:
    if archive.sha256 is not None:
        if sha256 != archive.sha256:
            raise DownloadError(f"{url}: sha256 is {sha256}, expected {archive.sha256}; the file was deleted")
        log.info("%s: sha256 verified", url)
    elif archive.md5 is not None:
        if md5 != archive.md5:
            raise DownloadError(f"{url}: md5 is {md5}, expected {archive.md5}; the file was deleted")
        log.info("%s: md5 verified (sha256 %s)", url, sha256)
    else:
        # Nothing to compare with: content is checked on extraction, and the digest is reported so that
        # it can be recorded in MOVIELENS.
        message = f"{url}: no checksum on record; downloaded archive has sha256 {sha256}"
        log.warning(message)
        print(message, file=sys.stderr)


def _has_members(folder: Path, archive: Archive) -> bool:
    return all((folder / m).is_file() for m in archive.members)


def _extract(zip_path: Path, target: Path, archive: Archive) -> None:
    """Extract into a temporary folder beside ``target``, check the expected members, then move it into
    place, so that an interrupted extraction never looks like a complete one."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                names = zf.namelist()
                for name in names:
                    pure = PurePosixPath(name)
                    if pure.is_absolute() or ".." in pure.parts:
                        raise DownloadError(f"{zip_path}: unsafe member path {name!r}")
                missing = [
                    f"{archive.folder}/{m}" for m in archive.members if f"{archive.folder}/{m}" not in names
                ]
                if missing:
                    raise DownloadError(f"{zip_path}: archive lacks {', '.join(missing)}")
                zf.extractall(staging)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{zip_path}: not a zip archive ({exc})") from exc
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
