"""Read and verify a trained artifact (layout: trainer.artifact.manifest). numpy, json and pydantic only.

The index builder and the candidate service use this module, so it must not import torch, polars or
matplotlib, directly or through its package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from trainer.artifact.manifest import (
    ARTIFACT_SCHEMA_VERSION,
    ITEM_VIEW,
    MANIFEST_NAME,
    ArtifactError,
    ArtifactManifest,
    embeddings_file,
    ids_file,
    is_version_dir,
    item_attr_file,
    metric_file,
    relational_file,
)
from trainer.checksums import sha256_file


def list_versions(root: Path | str) -> list[Path]:
    """Complete versions under ``root``, oldest first (by manifest created_at, then name).

    Temporary directories of writers at work or killed (``.tmp-*``) and directories without a manifest are
    ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no artifact root directory here (run 'm2grl-train fit --out {root}')")
    keyed = []
    for p in root.iterdir():
        if not is_version_dir(p):
            continue
        try:
            created = str(json.loads((p / MANIFEST_NAME).read_text()).get("created_at", ""))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{p / MANIFEST_NAME}: unreadable manifest ({exc})") from exc
        keyed.append((created, p.name, p))
    return [p for _, _, p in sorted(keyed)]


class Artifact:
    """A verified, read-only artifact version. Arrays load lazily and are cached.

    Use ``Artifact.open(path)`` for one version directory or ``Artifact.latest(root)`` for the newest complete
    version under an artifact root.
    """

    def __init__(self, path: Path, manifest: ArtifactManifest) -> None:
        self.path = path
        self.manifest = manifest
        self._cache: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: Path | str, verify: bool = True) -> Artifact:
        """Open the version directory ``path``.

        verify: check that the files on disk are exactly those the manifest lists, that each has its recorded
            sha256, and that every array's shape and dtype agree with the manifest. Without it only the
            manifest is read and checked. Raises ArtifactError naming the bad file.
        """
        path = Path(path)
        if not path.is_dir():
            raise ArtifactError(f"{path}: no artifact directory here")
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ArtifactError(f"{manifest_path}: missing; {path} is not a complete artifact")
        try:
            raw = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{manifest_path}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("schema_version") != ARTIFACT_SCHEMA_VERSION:
            got = raw.get("schema_version") if isinstance(raw, dict) else None
            raise ArtifactError(
                f"{manifest_path}: schema_version {got!r}, this code reads {ARTIFACT_SCHEMA_VERSION}; "
                "train the artifact again"
            )
        try:
            manifest = ArtifactManifest.model_validate(raw)
        except ValidationError as exc:
            raise ArtifactError(f"{manifest_path}: invalid manifest: {exc}") from exc
        art = cls(path, manifest)
        if verify:
            art.verify()
        return art

    @classmethod
    def latest(cls, root: Path | str, verify: bool = True) -> Artifact:
        """The newest complete version under ``root``; never a half-written one."""
        versions = list_versions(root)
        if not versions:
            raise ArtifactError(f"{root}: holds no complete artifact version")
        return cls.open(versions[-1], verify=verify)

    # ------------------------------------------------------------------------------------------ verification
    def verify(self) -> None:
        """Raise ArtifactError unless files, checksums and shapes all agree with the manifest."""
        self._verify_file_set()
        for rel, digest in sorted(self.manifest.files.items()):
            if sha256_file(self.path / rel) != digest:
                raise ArtifactError(
                    f"{self.path / rel}: sha256 differs from manifest.json (corrupted or modified)"
                )
        self._verify_shapes()

    def _verify_file_set(self) -> None:
        listed = set(self.manifest.files)
        on_disk = set()
        for dirpath, _dirs, files in os.walk(self.path):
            for name in files:
                rel = (Path(dirpath) / name).relative_to(self.path).as_posix()
                if rel != MANIFEST_NAME:
                    on_disk.add(rel)
        if missing := sorted(listed - on_disk):
            raise ArtifactError(f"{self.path / missing[0]}: missing (listed in manifest.json)")
        if extra := sorted(on_disk - listed):
            raise ArtifactError(f"{self.path / extra[0]}: not listed in manifest.json")

    def _expect(self, rel: str, shape: tuple[int, ...], dtype: str) -> None:
        if rel not in self.manifest.files:
            raise ArtifactError(f"{self.path / rel}: required by the manifest's views/tasks but not listed")
        arr = self._npy(rel, mmap=True)
        if arr.shape != shape or arr.dtype != np.dtype(dtype):
            raise ArtifactError(
                f"{self.path / rel}: shape {arr.shape} {arr.dtype}, manifest implies {shape} {np.dtype(dtype)}"
            )

    def _verify_shapes(self) -> None:
        m = self.manifest
        n_items = m.view(ITEM_VIEW).n_nodes
        rd = m.relation_dim
        for v in m.views:
            self._expect(embeddings_file(v.name), (v.n_nodes, v.dim), "float32")
            n_ids = len(self.ids(v.name))
            if n_ids != v.n_nodes:
                raise ArtifactError(
                    f"{self.path / ids_file(v.name)}: {n_ids} ids, the view has {v.n_nodes} rows"
                )
        dim = m.view(ITEM_VIEW).dim
        for view in m.attribute_views:
            n_attr = m.view(view).n_nodes
            self._expect(item_attr_file(view), (n_items,), "int32")
            attr = self._npy(item_attr_file(view), mmap=True)
            if len(attr) and (int(attr.min()) < -1 or int(attr.max()) >= n_attr):
                raise ArtifactError(f"{self.path / item_attr_file(view)}: rows outside [-1, {n_attr})")
        for view in m.relational_views:
            self._expect(relational_file(view, "W"), (rd, dim), "float32")
            self._expect(relational_file(view, "item"), (n_items, rd), "float32")
            self._expect(relational_file(view, "attr"), (m.view(view).n_nodes, rd), "float32")
        if m.metric_view is not None:
            for name, n in (("L_i", dim), ("M_i", dim), ("L_ic", rd), ("M_ic", rd)):
                self._expect(metric_file(name), (n, n), "float64")
            self._expect(metric_file("z"), (n_items, dim + rd), "float32")

    # ------------------------------------------------------------------------------------------- accessors
    def _npy(self, rel: str, mmap: bool = False) -> np.ndarray:
        key = f"{rel}|mmap" if mmap else rel
        if key not in self._cache:
            if rel not in self.manifest.files:
                raise ArtifactError(f"{self.path / rel}: not part of this artifact")
            try:
                self._cache[key] = np.load(
                    self.path / rel, mmap_mode="r" if mmap else None, allow_pickle=False
                )
            except FileNotFoundError as exc:
                raise ArtifactError(f"{self.path / rel}: missing (listed in manifest.json)") from exc
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"{self.path / rel}: not a readable .npy file ({exc})") from exc
        return self._cache[key]

    def _check_view(self, view: str, attribute: bool = False) -> None:
        names = self.manifest.attribute_views if attribute else self.manifest.view_names
        if view not in names:
            raise KeyError(
                f"view {view!r} not in this artifact; its {'attribute ' if attribute else ''}views: {names}"
            )

    def embeddings(self, view: str = ITEM_VIEW) -> np.ndarray:
        """(n_nodes, dim) float32 input table of ``view``."""
        self._check_view(view)
        return self._npy(embeddings_file(view))

    def ids(self, view: str = ITEM_VIEW) -> list[str]:
        """External ids of ``view``; position = row of the view's tables."""
        self._check_view(view)
        rel = ids_file(view)
        if rel not in self._cache:
            try:
                ids = json.loads((self.path / rel).read_text())
            except FileNotFoundError as exc:
                raise ArtifactError(f"{self.path / rel}: missing (listed in manifest.json)") from exc
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"{self.path / rel}: not a JSON list of ids ({exc})") from exc
            if not isinstance(ids, list):
                raise ArtifactError(f"{self.path / rel}: not a JSON list of ids")
            self._cache[rel] = ids
        return self._cache[rel]

    def id_index(self, view: str = ITEM_VIEW) -> dict[str, int]:
        """External id -> row of ``view``."""
        key = f"index|{view}"
        if key not in self._cache:
            self._cache[key] = {nid: i for i, nid in enumerate(self.ids(view))}
        return self._cache[key]

    def item_attr(self, view: str) -> np.ndarray:
        """(n_items,) int32: row of each item's attribute in ``view``, -1 when it has none."""
        self._check_view(view, attribute=True)
        return self._npy(item_attr_file(view))

    def relational(self, view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W, sigmoid(W e_i) per item, sigmoid(W e_c) per attribute node) of inter-view task item-<view>."""
        if view not in self.manifest.relational_views:
            raise KeyError(
                f"no inter-view task item-{view} in this artifact; it has {self.manifest.relational_views}"
            )
        return tuple(self._npy(relational_file(view, part)) for part in ("W", "item", "attr"))  # type: ignore[return-value]

    def _metric(self, name: str) -> np.ndarray:
        if self.manifest.metric_view is None:
            raise ArtifactError(f"{self.path}: this artifact has no diversity metric model")
        return self._npy(metric_file(name))

    @property
    def M_i(self) -> np.ndarray:
        return self._metric("M_i")

    @property
    def M_ic(self) -> np.ndarray:
        return self._metric("M_ic")

    @property
    def L_i(self) -> np.ndarray:
        return self._metric("L_i")

    @property
    def L_ic(self) -> np.ndarray:
        return self._metric("L_ic")

    @property
    def z(self) -> np.ndarray:
        """(n_items, dim + relation_dim) float32 diversity vectors: L2 distance^2 = the metric's d(a, b)."""
        return self._metric("z")

    @property
    def version(self) -> str:
        return self.manifest.version

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, views={self.manifest.view_names})"
