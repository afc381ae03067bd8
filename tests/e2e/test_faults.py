"""Reliability drills: writers killed mid-write, a corrupt version published by hand, an index root that
appears after the service starts, and a full disk. Each drill asserts the invariant that matters to a reader:
a version directory is complete or absent, CURRENT names a servable version, the serving version keeps
answering."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from index_builder.publish import CURRENT_NAME, VERSION_RE, list_versions, read_current, write_current
from index_builder.reader import IndexVersion
from service.app import create_app
from service.settings import Settings
from tests.e2e.conftest import TOKEN, build_index, run_tool, tool, write_drill_report
from tests.helpers_server import REPO, running_process, running_server, wait_until
from tests.test_service import metric

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def built_root(artifact_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index root with one version built by ``m2grl-index build`` from the session artifact."""
    root = tmp_path_factory.mktemp("e2e-faults") / "indexes"
    build_index(artifact_root, root)
    return root


@pytest.fixture()
def index_root(built_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "indexes"
    shutil.copytree(built_root, root)
    return root


def _snapshot(root: Path) -> tuple[str | None, list[str], list[str]]:
    """(CURRENT, versions, every other entry) of an index or artifact root."""
    names = sorted(p.name for p in root.iterdir())
    versions = [n for n in names if (root / n).is_dir() and not n.startswith(".")]
    current = (root / CURRENT_NAME).read_text().strip() if (root / CURRENT_NAME).exists() else None
    return current, versions, [n for n in names if n not in versions and n not in (CURRENT_NAME, ".lock")]


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 60.0) -> float:
    """SIGKILL ``proc`` as soon as ``condition()`` holds (polled every millisecond); returns the wait."""
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (status {proc.returncode}) before the moment to kill it came")
        if time.monotonic() - start > timeout:
            proc.kill()
            pytest.fail("the moment to kill the process never came")
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return time.monotonic() - start


# -------------------------------------------------------------------------------------- killed writers


def test_trainer_killed_while_writing_leaves_no_version(
    prepared_ml: Path, artifact_root: Path, tmp_path: Path
) -> None:
    from trainer.artifact.loader import Artifact

    root = tmp_path / "artifacts"
    shutil.copytree(artifact_root, root)
    previous = Artifact.latest(root).path
    _, versions_before, _ = _snapshot(root)
    # With plots the writer spends about a second inside its .tmp-* directory: time enough to be caught there.
    proc = subprocess.Popen(
        tool("m2grl-train") + ["fit", "--data", str(prepared_ml), "--out", str(root), "--seed", "3"]
        + ["--views", "item,category", "--epochs", "1", "--dim", "16", "--relation-dim", "16"]
        + ["--walks-per-node", "2", "--metric-pairs", "2000", "--metric-epochs", "1", "--threads", "1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    waited = _kill_when(proc, lambda: any(p.name.startswith(".tmp-") for p in root.iterdir()))
    _, versions_after, others = _snapshot(root)
    assert versions_after == versions_before  # no version directory appeared, complete or not
    assert any(o.startswith(".tmp-") for o in others)  # it really died mid-write
    assert Artifact.latest(root).path == previous  # readers still get the previous version, verified
    write_drill_report("trainer_killed_mid_write", {"killed_after_s": round(waited, 2), "leftover": others})

    # An empty root and the same kill: readers get "no version", not a half-written one.
    empty = tmp_path / "empty-artifacts"
    empty.mkdir()
    proc = subprocess.Popen(
        tool("m2grl-train") + ["fit", "--data", str(prepared_ml), "--out", str(empty)]
        + ["--views", "item,category", "--epochs", "1", "--dim", "16", "--relation-dim", "16"]
        + ["--walks-per-node", "2", "--metric-pairs", "2000", "--metric-epochs", "1", "--threads", "1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _kill_when(proc, lambda: any(p.name.startswith(".tmp-") for p in empty.iterdir()))
    with pytest.raises(Exception, match="no complete artifact version"):
        Artifact.latest(empty)


def test_index_build_killed_before_publish_changes_nothing(artifact_root: Path, index_root: Path) -> None:
    before = _snapshot(index_root)
    current = before[0]
    # 1) Killed while building the HNSW graphs (nothing is written under the root until they pass recall).
    proc = subprocess.Popen(
        tool("m2grl-index") + ["build", "--artifact", str(artifact_root), "--out", str(index_root)]
        + ["--threads", "1", "--ef-construction", "400"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stderr:  # the first strategy done: the build is under way
        if "built" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert _snapshot(index_root) == before

    # 2) Killed with every file written and fsynced, at the publishing rename itself (the hook the publisher
    # keeps for exactly this): the staging directory is left behind, no version, CURRENT untouched.
    killer = (
        "import os, signal, sys\n"
        "from index_builder import publish\n"
        "publish._commit_dir = lambda staging, final: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from index_builder.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc2 = subprocess.run(
        [sys.executable, "-c", killer, "--quiet", "build", "--artifact", str(artifact_root), "--out", str(index_root)]
        + ["--threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc2.returncode == -signal.SIGKILL, proc2.stderr[-2000:]
    cur, versions, others = _snapshot(index_root)
    assert (cur, versions) == before[:2]
    staged = [o for o in others if o.startswith(".tmp-")]
    assert len(staged) == 1 and (index_root / staged[0] / "manifest.json").is_file()  # complete, unpublished
    assert list_versions(index_root) == before[1] and read_current(index_root) == current
    IndexVersion.open(index_root / current, threads=1)  # still verifies (checksums, recall metadata)

    # The next build publishes normally beside the leftover, which readers never take for a version.
    build_index(artifact_root, index_root)
    new = read_current(index_root)
    assert new != current and list_versions(index_root) == [*before[1], new]
    verify = run_tool("m2grl-index", "verify", str(index_root), "--threads", "1")
    assert new in verify.stdout + verify.stderr


# ------------------------------------------------------------------------------------ corrupt publication


def _later_version(version: str) -> str:
    """A valid, later version name (a hand-made copy must sort after the one it copies)."""
    assert VERSION_RE.match(version)
    return version[:-2] + str((int(version[-2]) + 1) % 10) + "Z"


def test_truncated_index_published_by_hand_is_refused(index_root: Path) -> None:
    v1 = read_current(index_root)
    bad = _later_version(v1)
    with (
        running_server(create_app(Settings(index_root=index_root, admin_token=TOKEN))) as url,
    ):
        some = IndexVersion.open(index_root / v1, threads=1).ids[5]
        answer = httpx.get(f"{url}/v1/items/{some}/candidates?k=10").json()
        shutil.copytree(index_root / v1, index_root / bad)
        hnsw = index_root / bad / "index" / "general.hnsw"
        hnsw.write_bytes(hnsw.read_bytes()[: hnsw.stat().st_size // 3])
        write_current(index_root, bad)
        before = metric(httpx.get(url + "/metrics").text, "m2grl_index_reloads_total", result="failure")
        r = httpx.post(url + "/admin/reload", headers=AUTH)
        assert r.status_code == 422 and r.json()["error"] == "reload_failed", r.text
        assert "general.hnsw" in r.json()["detail"]
        info = httpx.get(url + "/v1/index").json()
        assert info["version"] == v1
        assert httpx.get(f"{url}/v1/items/{some}/candidates?k=10").json() == answer
        assert httpx.get(url + "/readyz").status_code == 200
        after = metric(httpx.get(url + "/metrics").text, "m2grl_index_reloads_total", result="failure")
        assert after == before + 1


def test_service_becomes_ready_when_the_first_version_is_published(
    artifact_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "not-yet"  # does not exist when the service starts
    env = {"M2GRL_INDEX_ROOT": str(root), "M2GRL_RELOAD_POLL_SECONDS": "0.5", "M2GRL_ACCESS_LOG": "off"}
    with running_process(env, ready=False, timeout=60) as (url, _proc):
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503
        assert httpx.get(url + "/v1/items/1/candidates").status_code == 503
        build_index(artifact_root, root)
        published = time.monotonic()
        wait_until(url + "/readyz", timeout=10)
        ready_after = time.monotonic() - published
        assert httpx.get(url + "/v1/index").json()["version"] == read_current(root)
    assert ready_after < 10
    write_drill_report(
        "ready_after_first_publish", {"poll_seconds": 0.5, "ready_after_s": round(ready_after, 2)}
    )


# -------------------------------------------------------------------------------------------- disk full


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_an_artifact(prepared_ml: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from trainer.cli import main as train_main

    root = tmp_path / "artifacts"
    calls = {"n": 0}
    real_save = np.save

    def save_then_fail(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # a few arrays land, then the disk is full
            _enospc()
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_fail)
    args = ["fit", "--data", str(prepared_ml), "--out", str(root), "--no-plots"]
    args += ["--views", "item,category", "--epochs", "1", "--dim", "8", "--relation-dim", "8"]
    args += ["--walks-per-node", "1", "--metric-pairs", "500", "--metric-epochs", "1", "--threads", "1"]
    assert train_main(args) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert calls["n"] == 4
    assert list(root.iterdir()) == []  # no version, and the writer removed its .tmp-* directory


def test_disk_full_while_publishing_an_index(artifact_root: Path, index_root: Path, monkeypatch) -> None:
    from index_builder import build as build_mod
    from index_builder import publish
    from index_builder.build import BuildOptions, build_from_artifact
    from trainer.artifact.loader import Artifact

    artifact = Artifact.latest(artifact_root)
    options = BuildOptions(threads=1, recall_target=0.9)
    before = _snapshot(index_root)

    # a) the disk fills while the version's files are written: nothing published, staging removed.
    monkeypatch.setattr(build_mod.np, "save", _enospc)
    with pytest.raises(OSError, match="No space left"):
        build_from_artifact(artifact, index_root, options, progress=False)
    monkeypatch.undo()
    assert _snapshot(index_root) == before

    # b) the disk fills when CURRENT is replaced: the new version is complete (it was renamed in whole) but
    # CURRENT still names the old one, so nothing changes for readers.
    monkeypatch.setattr(publish.os, "replace", _enospc)
    with pytest.raises(OSError, match="No space left"):
        build_from_artifact(artifact, index_root, options, progress=False)
    monkeypatch.undo()
    cur, versions, others = _snapshot(index_root)
    assert cur == before[0]
    new = [v for v in versions if v not in before[1]]
    for v in new:
        IndexVersion.open(index_root / v, threads=1)  # complete and verified, or absent
    assert not [o for o in others if o.startswith(".tmp-") and not o.startswith(".tmp-CURRENT")]


@pytest.fixture()
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real full disk. Skips where mounting is not permitted (non-root CI)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); the injected ENOSPC drills cover it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _build_on(root: Path, artifact_root: Path):
    return run_tool(
        "m2grl-index", "--quiet", "build", "--artifact", str(artifact_root), "--out", str(root), "--threads", "1",
        check=False,
    )  # fmt: skip


def test_index_build_on_a_full_disk_publishes_nothing(artifact_root: Path, tiny_tmpfs: Path) -> None:
    root = tiny_tmpfs / "indexes"
    proc = _build_on(root, artifact_root)
    assert proc.returncode != 0
    assert list_versions(root) == [] and read_current(root) is None
    assert not [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]  # staging removed
    assert shutil.disk_usage(tiny_tmpfs).used < 64 * 1024  # and its space given back


def test_index_build_on_a_full_disk_says_so_in_one_line(artifact_root: Path, tiny_tmpfs: Path) -> None:
    proc = _build_on(tiny_tmpfs / "indexes", artifact_root)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "No space left on device" in proc.stderr or "disk full" in proc.stderr.lower(), proc.stderr[-800:]
