"""The prepared-data directory: the contract between preparation and everything that trains or evaluates.

Layout of a prepared directory ``DIR``::

    DIR/manifest.json               PreparedManifest (schema version, dataset, options, views, sha256 per file)
    DIR/stats.json                  figures of the preparation (see trainer.data.prepare)
    DIR/events.parquet              clean events: user_id, item_id, timestamp, [rating, dwell_seconds, action],
                                    pos (Int32, 0-based position in the user's ordered clean events),
                                    split ("train" | "test"), session (Int64 session id; null for test events)
    DIR/items.parquet               item_id + one Utf8 column per side-information view (items of clean events)
    DIR/views/<view>/nodes.parquet  node_id (Utf8), count (Int64: training events mapped to the node);
                                    row number = node index. View ``item`` holds every item of a training event.
    DIR/views/<view>/sequences.npz  tokens (int32 node indices), offsets (int64, len n_sequences + 1):
                                    the view's training sessions after consecutive-duplicate removal,
                                    only those with >= 2 nodes
    DIR/views/<view>/edges.npz      src, dst (int32), weight (int64): directed graph of consecutive pairs
    DIR/views/<view>/item_to_node.npy  (attribute views only) int32, one entry per item-view node:
                                    the node index of that item's attribute, -1 when it has none

Arrays are plain ``.npy``/``.npz`` and tables Parquet so that nothing here needs torch to read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from trainer.data.schema import ITEM_VIEW

PREPARED_SCHEMA_VERSION = 1


class PreparedManifest(BaseModel):
    schema_version: int = PREPARED_SCHEMA_VERSION
    dataset: str
    source: str = Field(description="where the raw data was read from")
    created_at: str
    options: dict[str, Any] = Field(description="the preparation options in force (preset + flags)")
    views: list[str] = Field(description="all views, 'item' first")
    files: dict[str, str] = Field(description="relative path -> sha256")

    def fingerprint(self) -> str:
        """A short hash of the prepared content, recorded by artifacts trained on it."""
        blob = json.dumps(sorted(self.files.items())).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class PreparedDataError(ValueError):
    """A prepared directory that is missing, incomplete or of an incompatible schema."""


@dataclass
class ViewData:
    """One view's graph and node sequences, as integer arrays."""

    name: str
    node_ids: np.ndarray  # object array of str, index = node index
    node_counts: np.ndarray  # int64
    seq_tokens: np.ndarray  # int32
    seq_offsets: np.ndarray  # int64, len n_sequences + 1
    edge_src: np.ndarray  # int32
    edge_dst: np.ndarray  # int32
    edge_weight: np.ndarray  # int64
    item_to_node: np.ndarray | None  # int32 per item-view node; None for the item view itself

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    @property
    def n_sequences(self) -> int:
        return len(self.seq_offsets) - 1

    def sequences(self) -> list[np.ndarray]:
        """The sequences as a list of arrays (convenient for small data and tests; not for hot paths)."""
        return np.split(self.seq_tokens, self.seq_offsets[1:-1]) if self.n_sequences else []

    @cached_property
    def node_index(self) -> dict[str, int]:
        return {nid: i for i, nid in enumerate(self.node_ids.tolist())}


def save_view(view_dir: Path, view: ViewData) -> None:
    """Write one view in the layout above (used by preparation; readers use PreparedData)."""
    view_dir.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "node_id": pl.Series(view.node_ids.tolist(), dtype=pl.Utf8),
            "count": view.node_counts.astype(np.int64),
        }
    ).write_parquet(view_dir / "nodes.parquet")
    np.savez(
        view_dir / "sequences.npz",
        tokens=view.seq_tokens.astype(np.int32),
        offsets=view.seq_offsets.astype(np.int64),
    )
    np.savez(
        view_dir / "edges.npz",
        src=view.edge_src.astype(np.int32),
        dst=view.edge_dst.astype(np.int32),
        weight=view.edge_weight.astype(np.int64),
    )
    if view.item_to_node is not None:
        np.save(view_dir / "item_to_node.npy", view.item_to_node.astype(np.int32))


def load_view(view_dir: Path, name: str) -> ViewData:
    nodes = pl.read_parquet(view_dir / "nodes.parquet")
    seq = np.load(view_dir / "sequences.npz")
    edges = np.load(view_dir / "edges.npz")
    i2n = view_dir / "item_to_node.npy"
    return ViewData(
        name=name,
        node_ids=np.array(nodes["node_id"].to_list(), dtype=object),
        node_counts=nodes["count"].to_numpy().astype(np.int64),
        seq_tokens=seq["tokens"],
        seq_offsets=seq["offsets"],
        edge_src=edges["src"],
        edge_dst=edges["dst"],
        edge_weight=edges["weight"],
        item_to_node=np.load(i2n) if name != ITEM_VIEW and i2n.exists() else None,
    )


class PreparedData:
    """Read-only access to a prepared directory; tables and views load lazily."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not self.path.is_dir():
            raise PreparedDataError(
                f"{self.path}: no prepared data directory here (run 'm2grl-train prepare')"
            )
        if not manifest_path.exists():
            raise PreparedDataError(
                f"{manifest_path}: missing; {self.path} is not a complete prepared directory"
            )
        raw = json.loads(manifest_path.read_text())
        if raw.get("schema_version") != PREPARED_SCHEMA_VERSION:
            raise PreparedDataError(
                f"{manifest_path}: schema_version {raw.get('schema_version')!r}, this code reads "
                f"{PREPARED_SCHEMA_VERSION}; prepare the data again"
            )
        self.manifest = PreparedManifest.model_validate(raw)
        self._views: dict[str, ViewData] = {}

    @property
    def view_names(self) -> list[str]:
        return list(self.manifest.views)

    @property
    def attribute_views(self) -> list[str]:
        return [v for v in self.manifest.views if v != ITEM_VIEW]

    @cached_property
    def stats(self) -> dict[str, Any]:
        return json.loads((self.path / "stats.json").read_text())

    @cached_property
    def events(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "events.parquet")

    @cached_property
    def items(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "items.parquet")

    def train_events(self) -> pl.DataFrame:
        return self.events.filter(pl.col("split") == "train")

    def test_events(self) -> pl.DataFrame:
        return self.events.filter(pl.col("split") == "test")

    def view(self, name: str) -> ViewData:
        if name not in self.manifest.views:
            raise KeyError(f"view {name!r} not in {self.manifest.views}")
        if name not in self._views:
            self._views[name] = load_view(self.path / "views" / name, name)
        return self._views[name]

    def fingerprint(self) -> str:
        return self.manifest.fingerprint()
