"""Shared pieces of the end-to-end drills: the console scripts run as subprocesses (as users run them), one
prepared ml-latest-small and one small trained artifact per session, and the drill-report writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers_server import REPO

BIN = Path(sys.executable).parent
# Small schedules: the drills test the machinery, not the quality of the embeddings.
FIT_FLAGS = [
    "--views", "item,category", "--epochs", "1", "--dim", "16", "--relation-dim", "16",
    "--walks-per-node", "2", "--metric-pairs", "2000", "--metric-epochs", "1", "--threads", "1",
]  # fmt: skip
TOKEN = "e2e-admin-token"


def tool(name: str) -> list[str]:
    """The installed console script beside this interpreter, or ``python -m`` of its module."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    module = {"m2grl-train": "trainer.cli", "m2grl-index": "index_builder.cli", "m2grl-serve": "service.cli"}
    return [sys.executable, "-m", module[name]]


def run_tool(name: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run a console script to completion; on an unexpected exit status fail with its stderr."""
    proc = subprocess.run(tool(name) + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def build_index(artifact: Path, out: Path) -> subprocess.CompletedProcess:
    """``m2grl-index build`` of an artifact (version or root) into the index root ``out``, one thread."""
    return run_tool(
        "m2grl-index", "--quiet", "build", "--artifact", str(artifact), "--out", str(out), "--threads", "1"
    )


def fit_artifact(prepared: Path, out: Path, *extra: str) -> Path:
    """``m2grl-train fit`` with the small schedule; returns the artifact version directory it printed."""
    proc = run_tool("m2grl-train", "fit", "--data", str(prepared), "--out", str(out), *FIT_FLAGS, *extra)
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def prepared_ml(ml_small_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e-prepared") / "ml-latest-small"
    run_tool(
        "m2grl-train", "prepare", "--dataset", "movielens", "--path", str(ml_small_dir), "--out", str(out)
    )
    return out


@pytest.fixture(scope="session")
def artifact_root(prepared_ml: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact root holding one version trained with seed 0 (tests copy it rather than add to it)."""
    root = tmp_path_factory.mktemp("e2e-artifacts") / "artifacts"
    fit_artifact(prepared_ml, root, "--no-plots", "--seed", "0")
    return root


def write_drill_report(section: str, figures: dict) -> None:
    """Print the figures and merge them into the JSON file named by M2GRL_DRILL_REPORT, if set."""
    print(f"\n[drill] {section}: {json.dumps(figures, sort_keys=True)}")
    target = os.environ.get("M2GRL_DRILL_REPORT")
    if not target:
        return
    path = Path(target)
    report = json.loads(path.read_text()) if path.is_file() else {}
    report[section] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
