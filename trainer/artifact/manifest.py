"""The artifact manifest and the artifact's file layout (shared by writer and loader; numpy/pydantic only).

Layout of one artifact version ``ROOT/<version>/``::

    manifest.json                     ArtifactManifest (below); lists the sha256 of every other file
    embeddings/<view>.npy             (n_nodes, dim) float32: the view's input ("instance") table
    ids/<view>.json                   JSON list of external ids; position = row of the view's tables
    item_attr/<view>.npy              (n_items,) int32 per attribute view: row of the item's attribute, -1 none
    relational/item-<view>/W.npy      (relation_dim, dim) float32: W of inter-view task item-<view>
    relational/item-<view>/item.npy   (n_items, relation_dim) float32: sigmoid(W e_i)
    relational/item-<view>/attr.npy   (n_<view>, relation_dim) float32: sigmoid(W e_c)
    metric/L_i.npy, metric/L_ic.npy   float64 factors of the diversity metric, M = L^T L (paper Sec. 6.1)
    metric/M_i.npy, metric/M_ic.npy   float64 metric matrices
    metric/z.npy                      (n_items, dim + relation_dim) float32 diversity vectors, ||z_a - z_b||^2 = d
    metric_curve.csv                  loss and mean distances of the metric model per epoch
    curves.csv, curves.png            loss and sigma^2 per task over training steps (paper Fig. 5)
    embeddings.png                    2-D PCA of item and category vectors (paper Fig. 6)

The ``metric/`` files and ``metric_curve.csv`` are absent when the data has no attribute view; plots are absent
when the writer was asked not to draw them. Directories whose name starts with '.' (``.tmp-*``) are writers
at work or killed writers, never artifacts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

ARTIFACT_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
ITEM_VIEW = "item"  # same value as trainer.data.schema.ITEM_VIEW, which imports polars
TMP_PREFIX = ".tmp-"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactError(ValueError):
    """An artifact that is missing, incomplete, corrupted or of an incompatible schema; names the bad file."""


class ViewInfo(BaseModel):
    name: str
    n_nodes: int = Field(ge=0)
    dim: int = Field(ge=1)


class ArtifactManifest(BaseModel):
    schema_version: int = ARTIFACT_SCHEMA_VERSION
    version: str = Field(description="name of the version directory")
    created_at: str = Field(description="UTC ISO-8601 time of writing, microseconds")
    trainer_version: str
    dataset: str
    prepared_fingerprint: str = Field(description="PreparedData.fingerprint() of the training data")
    config: dict[str, Any] = Field(description="the TrainConfig in force, as a dict")
    views: list[ViewInfo] = Field(description="'item' first")
    relation_dim: int
    tasks: list[str] = Field(description="trained tasks: intra-view '<view>' and inter-view 'item-<view>'")
    relational_views: list[str] = Field(description="attribute views with an inter-view task (a W matrix)")
    sigma2: dict[str, float] = Field(description="final sigma^2 of each task's uncertainty weight")
    metric_view: str | None = Field(
        description="attribute view of the diversity metric model; None = no model"
    )
    files: dict[str, str] = Field(description="relative POSIX path -> sha256 of every file but manifest.json")
    eval: dict[str, Any] | None = Field(None, description="evaluation figures, when computed")

    def view(self, name: str) -> ViewInfo:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(f"view {name!r} not in this artifact; its views: {self.view_names}")

    @property
    def view_names(self) -> list[str]:
        return [v.name for v in self.views]

    @property
    def attribute_views(self) -> list[str]:
        return [v.name for v in self.views if v.name != ITEM_VIEW]


def embeddings_file(view: str) -> str:
    return f"embeddings/{view}.npy"


def ids_file(view: str) -> str:
    return f"ids/{view}.json"


def item_attr_file(view: str) -> str:
    return f"item_attr/{view}.npy"


def relational_file(view: str, part: str) -> str:
    """part: 'W', 'item' or 'attr'."""
    return f"relational/item-{view}/{part}.npy"


def metric_file(name: str) -> str:
    """name: 'L_i', 'L_ic', 'M_i', 'M_ic' or 'z'."""
    return f"metric/{name}.npy"


def is_version_dir(path: Path) -> bool:
    """A complete version: a directory not named '.*' holding a manifest (written last, then renamed in)."""
    return path.is_dir() and not path.name.startswith(".") and (path / MANIFEST_NAME).is_file()
