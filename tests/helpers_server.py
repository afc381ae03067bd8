"""Test helpers of the service and client tests: real index roots and real uvicorn servers on loopback.

``build_index_root`` runs the real index builder (index_builder.build) on a small planted artifact;
``running_server`` serves an app with uvicorn on 127.0.0.1 and a free port in a background thread (or
``running_process`` runs ``m2grl-serve`` in a subprocess), waits for /healthz and always stops it, bounded.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np

from index_builder.build import BuildOptions, build_from_artifact

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- index roots


@dataclass
class PlantedArtifact:
    """A trainer-artifact look-alike with known vectors, categories, shops and metric model.

    Item ``i`` has id ``str(100 + i)``, category ``cat{i % n_cat}``, shop ``shop{i % 3}`` (every 7th item
    has no shop). The diversity vectors are z = [L_i e_i ; L_ic e_ic] with M = L^T L, exactly as the trainer
    computes them, so d(a, b) of Eq. 11 equals |z_a - z_b|^2.
    """

    n: int = 60
    dim: int = 8
    relation_dim: int = 4
    n_cat: int = 4
    seed: int = 0
    version: str = "art-1"
    label: str = ""  # prefix of item and category ids (e.g. characters that JSON must escape)
    e: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.e = rng.normal(size=(self.n, self.dim)).astype(np.float32)
        self.cat_nodes = rng.normal(size=(self.n_cat, self.dim)).astype(np.float32)
        self.shop_nodes = rng.normal(size=(3, self.dim)).astype(np.float32)
        self.cat_of = (np.arange(self.n) % self.n_cat).astype(np.int32)
        shop = (np.arange(self.n) % 3).astype(np.int32)
        shop[::7] = -1
        self.shop_of = shop
        self.W = rng.normal(size=(self.relation_dim, self.dim)).astype(np.float32)
        self.L_i = (rng.normal(size=(self.dim, self.dim)) * 0.5).astype(np.float32)
        self.L_ic = (rng.normal(size=(self.relation_dim, self.relation_dim)) * 0.5).astype(np.float32)
        self.manifest = SimpleNamespace(
            version=self.version, views=["item", "category", "shop"], metric_view="category"
        )

    # -- the artifact reading API the builder uses
    def ids(self, view: str) -> list[str]:
        if view == "item":
            return [self.item_id(i) for i in range(self.n)]
        if view == "category":
            return [f"{self.label}cat{c}" for c in range(self.n_cat)]
        return [f"shop{s}" for s in range(3)]

    def embeddings(self, view: str) -> np.ndarray:
        return {"item": self.e, "category": self.cat_nodes, "shop": self.shop_nodes}[view]

    def item_attr(self, view: str) -> np.ndarray:
        return {"category": self.cat_of, "shop": self.shop_of}[view]

    def relational(self, view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        item_side = 1.0 / (1.0 + np.exp(-(self.e @ self.W.T)))
        attr_side = 1.0 / (1.0 + np.exp(-(self.embeddings(view) @ self.W.T)))
        return self.W, item_side.astype(np.float32), attr_side.astype(np.float32)

    @property
    def e_ic(self) -> np.ndarray:
        return self.relational("category")[1]

    @property
    def M_i(self) -> np.ndarray:
        return (self.L_i.T @ self.L_i).astype(np.float32)

    @property
    def M_ic(self) -> np.ndarray:
        return (self.L_ic.T @ self.L_ic).astype(np.float32)

    @property
    def z(self) -> np.ndarray:
        return np.hstack([self.e @ self.L_i.T, self.e_ic @ self.L_ic.T]).astype(np.float32)

    # -- expected answers, computed here independently of the service
    def item_id(self, row: int) -> str:
        return f"{self.label}{100 + row}"

    def category(self, row: int) -> str:
        return f"{self.label}cat{self.cat_of[row]}"

    def exact_general(self, row: int) -> list[int]:
        """All other rows by descending inner product with ``row``."""
        scores = self.e.astype(np.float64) @ self.e[row].astype(np.float64)
        order = [int(r) for r in np.argsort(-scores, kind="stable") if r != row]
        return order

    def exact_diversity(self, row: int) -> list[int]:
        z = self.z.astype(np.float64)
        d = ((z - z[row]) ** 2).sum(axis=1)
        return [int(r) for r in np.argsort(d, kind="stable") if r != row]


def build_index_root(root: Path, artifact: PlantedArtifact | None = None, keep: int = 10) -> str:
    """Publish one index version of ``artifact`` under ``root`` with the real builder; returns its name."""
    artifact = artifact or PlantedArtifact()
    options = BuildOptions(
        recall_target=0.9, recall_queries=artifact.n, threads=1, keep=keep, ef_schedule=[64]
    )
    return build_from_artifact(artifact, root, options, progress=False).version


# ------------------------------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(url: str, *, timeout: float = 20.0, status: int = 200) -> None:
    """Poll ``url`` until it answers ``status``; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=1.0)
            if r.status_code == status:
                return
            last = r.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer {status} within {timeout}s (last: {last!r})")


@contextlib.contextmanager
def running_server(app: Any, *, ready: bool = True, timeout: float = 20.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1:<free port> in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(url + "/healthz", timeout=timeout)
        if ready:
            wait_until(url + "/readyz", timeout=timeout)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)


@contextlib.contextmanager
def running_process(
    env: dict[str, str], *, ready: bool = True, timeout: float = 30.0
) -> Iterator[tuple[str, Any]]:
    """Run ``m2grl-serve`` in a subprocess (stderr to a pipe); yields (URL, process). Terminated at exit."""
    port = free_port()
    full_env = {**os.environ, **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--port", str(port)],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(url + ("/readyz" if ready else "/healthz"), timeout=timeout)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
