"""Shared fixtures. Real datasets come from M2GRL_DATA_DIR (CI and developers: ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_ENV = "M2GRL_DATA_DIR"


def shared_dataset(name: str) -> Path:
    """Path of a dataset folder under M2GRL_DATA_DIR, or skip the test with a message naming the variable."""
    root = os.environ.get(DATA_ENV)
    if not root:
        pytest.skip(f"{DATA_ENV} is not set; point it at a directory holding {name}/")
    path = Path(root) / name
    if not path.exists():
        pytest.skip(f"{path} does not exist; set {DATA_ENV} to a directory holding {name}/")
    return path


@pytest.fixture(scope="session")
def ml_small_dir() -> Path:
    return shared_dataset("ml-latest-small")


@pytest.fixture(scope="session")
def tmall_dir() -> Path:
    return shared_dataset("tmall-ijcai15-user-log-sample")
