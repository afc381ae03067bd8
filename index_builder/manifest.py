"""``manifest.json`` of an index version: what was built, from which artifact, and the sha256 of every file.

Layout of an index version directory ``ROOT/<version>/`` (immutable once published)::

    manifest.json                    IndexManifest (this module)
    items.json                       item external ids in row order + each attribute view's value per item
    index/<strategy>.hnsw            hnswlib index of one strategy; labels = item rows
    arrays/item_vectors.npy          (n_items, dim) instance-view item embeddings e_i
    arrays/z.npy                     (n_items, dim + relation_dim) diversity vectors (when trained)
    arrays/M_i.npy, arrays/M_ic.npy  metric matrices of Sec. 6.1 (when trained)
    arrays/nodes/<view>.npy          node embeddings of each attribute view ...
    arrays/nodes/<view>.ids.json     ... and their external ids in row order
    arrays/item_attr/<view>.npy      int32 node row of each item's attribute in that view, -1 = none
    arrays/relational_item/<view>.npy  item-side relational embeddings sigma(W e_i) of the metric view
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, Field

INDEX_SCHEMA_VERSION = 1
# Kept here, not in __init__: a stale editable install may import the package as a namespace package.
BUILDER_VERSION = "0.1.0"
MANIFEST_NAME = "manifest.json"
ITEMS_NAME = "items.json"


class SourceArtifact(BaseModel):
    version: str = Field(description="the trainer artifact's own version string")
    sha256: str = Field(
        description="sha256 of the artifact's manifest.json (which lists the sha256 of its files)"
    )
    path: str | None = Field(None, description="where the artifact was read from, for humans")


class RecallCurvePoint(BaseModel):
    ef: int
    recall: float
    queries_per_second: float


class EncodingTrial(BaseModel):
    """One encoding the builder measured for a strategy (the chosen one and any it rejected)."""

    encoding: str
    space: str
    ef: int | None = Field(description="smallest ef reaching the target; None = not reached")
    recall: float = Field(description="recall at that ef, or the best seen")
    build_seconds: float


class StrategyEntry(BaseModel):
    """One strategy's index: how it was built and the measured quality at the ef the reader must set."""

    encoding: str = Field(description="how hnswlib holds the vectors (see index_builder.strategies)")
    space: str = Field(description="hnswlib space of the index vectors")
    metric: str = Field(description="meaning of the scores the reader returns (higher = closer)")
    dim: int = Field(description="dimension of the raw query vectors")
    index_dim: int = Field(
        description="dimension of the vectors hnswlib holds (dim + 1 for MIPS augmentation)"
    )
    n: int
    M: int
    ef_construction: int
    ef_search: int = Field(
        description="ef reaching the recall target; hnswlib does not save it, set it on load"
    )
    recall_k: int
    recall_at_k: float = Field(description="measured recall@recall_k at ef_search, query item excluded")
    recall_target: float
    recall_queries: int
    recall_curve: list[RecallCurvePoint]
    trials: list[EncodingTrial] = Field(description="every encoding measured, the chosen one included")
    build_seconds: float
    tune_seconds: float
    seed: int
    file: str = Field(description="path of the hnswlib index file, relative to the version directory")
    sha256: str
    vectors: str = Field(description="key in ``arrays`` of the raw vectors that queries are expressed in")
    params: dict[str, float] = Field(default_factory=dict, description="query/score transform parameters")


class ArrayEntry(BaseModel):
    path: str
    shape: list[int]
    dtype: str


class IndexManifest(BaseModel):
    schema_version: int = INDEX_SCHEMA_VERSION
    version: str
    created_at: str
    builder_version: str
    source_artifact: SourceArtifact
    n_items: int
    views: list[str] = Field(description="all views of the artifact, 'item' first")
    attribute_views: list[str]
    metric_view: str | None = Field(
        None, description="attribute view of the diversity metric model (Sec. 6.1)"
    )
    strategies: dict[str, StrategyEntry]
    items_file: str = ITEMS_NAME
    arrays: dict[str, ArrayEntry]
    node_ids: dict[str, str] = Field(description="attribute view -> JSON file of its node ids in row order")
    files: dict[str, str] = Field(description="relative path -> sha256 of every file but manifest.json")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    # The serving side's own copy of trainer.checksums.sha256_file: the service must not import the trainer.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
