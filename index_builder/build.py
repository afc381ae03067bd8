"""Build one recall-checked HNSW index per strategy from a trainer artifact and publish an index version.

The artifact is any object with the trainer artifact's reading API (``trainer.artifact.loader.Artifact``):
``manifest`` (``.version``, ``.views``), ``embeddings(view)``, ``ids(view)``, ``item_attr(view)``,
``relational(view) -> (W, item_side, attr_side)``, ``M_i``, ``M_ic``, ``z``. Nothing here imports the trainer,
so the builder also runs on a bare object that quacks the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator
from tqdm import tqdm

from index_builder import publish
from index_builder.manifest import (
    BUILDER_VERSION,
    ITEMS_NAME,
    MANIFEST_NAME,
    ArrayEntry,
    EncodingTrial,
    IndexManifest,
    RecallCurvePoint,
    SourceArtifact,
    StrategyEntry,
    sha256_file,
)
from index_builder.recall import (
    DEFAULT_EF_SCHEDULE,
    RECALL_K,
    RECALL_QUERIES,
    RecallNotReached,
    RecallProbe,
    RecallReport,
    tune_ef,
)
from index_builder.strategies import (
    Encoding,
    Strategy,
    StrategyUnavailable,
    available_strategies,
    get_strategy,
    metric_array,
)

log = logging.getLogger(__name__)
ITEM_VIEW = "item"


class ArtifactError(ValueError):
    """The artifact's arrays are inconsistent (wrong shapes, non-finite values, bad attribute rows)."""


class BuildOptions(BaseModel):
    """Options of ``m2grl-index build``.

    ``M`` is the number of graph neighbours per node in HNSW (memory ~ 2M ints per item), ``ef_construction``
    the search beam while inserting (graph quality vs build time). ``recall_target`` is the recall@k that the
    search beam ``ef`` must reach on ``recall_queries`` sampled items; the smallest ef of ``ef_schedule`` that
    reaches it is stored for the reader.
    """

    strategies: list[str] | None = Field(None, description="None = every strategy the artifact supports")
    M: int = Field(16, ge=2, le=256)
    ef_construction: int = Field(200, ge=1)
    recall_target: float = Field(0.98, gt=0.0, le=1.0)
    recall_k: int = Field(RECALL_K, ge=1)
    recall_queries: int = Field(RECALL_QUERIES, ge=1)
    ef_schedule: list[int] = Field(default_factory=lambda: list(DEFAULT_EF_SCHEDULE), min_length=1)
    encodings: dict[str, str] = Field(
        default_factory=dict, description="strategy -> encoding to use instead of measuring all of them"
    )
    keep: int = Field(3, ge=1, description="published versions to keep (CURRENT's is never deleted)")
    threads: int = Field(0, ge=0, description="hnswlib threads; 0 = all cores available to this process")
    seed: int = 0

    @field_validator("ef_schedule")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if any(ef < 1 for ef in v):
            raise ValueError("ef values must be >= 1")
        return sorted(set(v))

    @model_validator(mode="after")
    def _known_encodings(self) -> BuildOptions:
        for name, enc in self.encodings.items():
            get_strategy(name).encoding(enc)
        return self

    @field_validator("strategies")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("strategies must not be empty")
            for name in v:
                get_strategy(name)
            v = list(dict.fromkeys(v))  # "general,general" builds it once
        return v

    def n_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))


@dataclass
class BuiltIndex:
    strategy: Strategy
    encoding: Encoding
    index: hnswlib.Index
    raw: np.ndarray
    params: dict[str, float]
    build_seconds: float
    report: RecallReport
    trials: list[EncodingTrial] = field(default_factory=list)


@dataclass
class BuildResult:
    version: str
    path: Path
    manifest: IndexManifest
    deleted: list[str]


def build_hnsw(
    vectors: np.ndarray,
    space: str,
    *,
    M: int = 32,
    ef_construction: int = 200,
    threads: int = -1,
    seed: int = 0,
    progress: bool = True,
    label: str = "",
) -> hnswlib.Index:
    """An hnswlib index over ``vectors`` with labels = row numbers, inserted in chunks under a progress bar."""
    n, dim = vectors.shape
    index = hnswlib.Index(space=space, dim=dim)
    index.init_index(max_elements=max(n, 1), M=M, ef_construction=ef_construction, random_seed=seed)
    chunk = int(min(50_000, max(2_000, n // 50)))
    with tqdm(total=n, desc=f"hnsw {label}".strip(), unit="item", disable=not progress, leave=False) as bar:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            index.add_items(vectors[start:stop], np.arange(start, stop), num_threads=threads)
            bar.update(stop - start)
    return index


def build_encoding(
    strategy: Strategy,
    encoding: Encoding,
    raw: np.ndarray,
    probe: RecallProbe,
    options: BuildOptions,
    progress: bool = True,
    max_ef: int | None = None,
) -> BuiltIndex:
    """Build one encoding of a strategy and search the ef schedule (up to ``max_ef``) for the recall target."""
    index_vectors, params = encoding.prepare(raw)
    t0 = time.perf_counter()
    index = build_hnsw(
        index_vectors,
        encoding.space,
        M=options.M,
        ef_construction=options.ef_construction,
        threads=options.n_threads(),
        seed=options.seed,
        progress=progress,
        label=f"{strategy.name}/{encoding.name}",
    )
    build_s = time.perf_counter() - t0
    del index_vectors
    report = tune_ef(
        index,
        encoding,
        params,
        probe,
        target=options.recall_target,
        schedule=options.ef_schedule,
        threads=options.n_threads(),
    )
    curve = ", ".join(f"ef {p.ef}: {p.recall:.4f}" for p in report.curve)
    log.info(
        "%s/%s: built %d items in %.1fs; recall@%d %s",
        strategy.name,
        encoding.name,
        raw.shape[0],
        build_s,
        report.k,
        curve,
    )
    return BuiltIndex(strategy, encoding, index, raw, params, build_s, report)


def build_strategy(
    strategy: Strategy, raw: np.ndarray, options: BuildOptions, progress: bool = True
) -> BuiltIndex:
    """Build and recall-check one strategy's index; RecallNotReached when no encoding reaches the target.

    Encodings are tried in the strategy's order; the one reaching the target with the smallest ef wins (the
    search beam is what query time grows with). Later encodings are skipped once one reaches the target at
    the first ef of the schedule, which cannot be beaten.
    """
    probe = RecallProbe.make(strategy, raw, options.recall_k, options.recall_queries, options.seed)
    forced = options.encodings.get(strategy.name)
    encodings = [strategy.encoding(forced)] if forced else list(strategy.encodings)
    trials: list[BuiltIndex] = []
    for encoding in encodings:
        # A later encoding only wins with a smaller ef: do not search beyond the best one found so far.
        best_ef = min((t.report.ef for t in trials if t.report.reached), default=None)
        built = build_encoding(strategy, encoding, raw, probe, options, progress, max_ef=best_ef)
        trials.append(built)
        if built.report.reached and built.report.ef == built.report.curve[0].ef:
            break
    summary = [
        EncodingTrial(
            encoding=t.encoding.name,
            space=t.encoding.space,
            ef=t.report.ef,
            recall=t.report.recall,
            build_seconds=round(t.build_seconds, 3),
        )
        for t in trials
    ]
    reached = [t for t in trials if t.report.reached]
    if not reached:
        best = "; ".join(f"{t.encoding}: best recall {t.recall:.4f}" for t in summary)
        raise RecallNotReached(
            f"strategy {strategy.name!r}: recall@{probe.k} target {options.recall_target} not reached at ef up to "
            f"{max(p.ef for t in trials for p in t.report.curve)} (M {options.M}, ef_construction "
            f"{options.ef_construction}; {best}); nothing published. Raise --M or --ef-construction, "
            "or lower --recall-target"
        )
    chosen = min(reached, key=lambda t: (t.report.ef, -t.report.recall))
    chosen.trials = summary
    if len(trials) > 1:
        log.info("%s: using encoding %s (ef %d)", strategy.name, chosen.encoding.name, chosen.report.ef)
    return chosen


# --- reading the artifact ----------------------------------------------------------------------------------


def _views(artifact: Any) -> list[str]:
    names = getattr(artifact.manifest, "view_names", None)
    if names is None:
        raw = getattr(artifact.manifest, "views", None) or [ITEM_VIEW]
        names = [v if isinstance(v, str) else v.name for v in raw]
    views = [str(v) for v in names]
    if ITEM_VIEW not in views:
        raise ArtifactError(f"artifact views {views} lack the instance view {ITEM_VIEW!r}")
    return [ITEM_VIEW] + [v for v in views if v != ITEM_VIEW]


def _artifact_path(artifact: Any) -> Path | None:
    for attr in ("path", "root", "directory"):
        value = getattr(artifact, attr, None)
        if isinstance(value, str | os.PathLike):
            return Path(value)
    return None


def artifact_checksum(artifact: Any) -> str:
    """sha256 of the artifact's manifest.json (which carries the sha256 of every artifact file).

    An in-memory artifact without a directory is identified by the sha256 of its manifest's JSON dump.
    """
    path = _artifact_path(artifact)
    if path is not None and (path / MANIFEST_NAME).is_file():
        return sha256_file(path / MANIFEST_NAME)
    manifest = artifact.manifest
    blob = (
        manifest.model_dump_json()
        if hasattr(manifest, "model_dump_json")
        else json.dumps(manifest, default=str)
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _metric_view(artifact: Any, attribute_views: list[str]) -> str | None:
    named = getattr(artifact.manifest, "metric_view", None)
    if named:
        return str(named)
    # The paper's metric model pairs the instance view with the category view (Sec. 6.1).
    if metric_array(artifact, "z") is not None and "category" in attribute_views:
        return "category"
    return None


def _matrix(
    name: str, value: Any, rows: int | None = None, cols: int | None = None, dtype: type = np.float32
) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 2:
        raise ArtifactError(f"artifact {name}: expected a 2-d array, got shape {arr.shape}")
    if rows is not None and arr.shape[0] != rows:
        raise ArtifactError(f"artifact {name}: {arr.shape[0]} rows, expected {rows}")
    if cols is not None and arr.shape[1] != cols:
        raise ArtifactError(f"artifact {name}: {arr.shape[1]} columns, expected {cols}")
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise ArtifactError(f"artifact {name}: non-finite value in row {bad}")
    return np.ascontiguousarray(arr, dtype=dtype)


@dataclass
class _ArtifactData:
    views: list[str]
    attribute_views: list[str]
    metric_view: str | None
    item_ids: list[str]
    arrays: dict[str, np.ndarray]  # key -> array, key as in IndexManifest.arrays
    node_ids: dict[str, list[str]]
    attributes: dict[str, list[str | None]]


def read_artifact(artifact: Any) -> _ArtifactData:
    """Everything an index version copies from the artifact, with shapes and references checked."""
    views = _views(artifact)
    attribute_views = views[1:]
    item_ids = [str(x) for x in artifact.ids(ITEM_VIEW)]
    n = len(item_ids)
    if n < 2:
        raise ArtifactError(f"artifact has {n} items; an index needs at least 2")
    if len(set(item_ids)) != n:
        raise ArtifactError("artifact item ids are not unique")
    item_vectors = _matrix("embeddings('item')", artifact.embeddings(ITEM_VIEW), rows=n)
    dim = item_vectors.shape[1]
    arrays: dict[str, np.ndarray] = {"item_vectors": item_vectors}
    node_ids: dict[str, list[str]] = {}
    attributes: dict[str, list[str | None]] = {}
    for view in attribute_views:
        ids = [str(x) for x in artifact.ids(view)]
        arrays[f"nodes/{view}"] = _matrix(
            f"embeddings({view!r})", artifact.embeddings(view), rows=len(ids), cols=dim
        )
        node_ids[view] = ids
        attr = np.asarray(artifact.item_attr(view))
        if attr.shape != (n,) or attr.dtype.kind not in "iu":
            raise ArtifactError(
                f"artifact item_attr({view!r}): expected {n} integers, got {attr.dtype} {attr.shape}"
            )
        bad = np.flatnonzero((attr < -1) | (attr >= len(ids)))
        if len(bad):
            raise ArtifactError(
                f"artifact item_attr({view!r}): item row {bad[0]} points at node {attr[bad[0]]}, "
                f"outside [-1, {len(ids)})"
            )
        attr = attr.astype(np.int32)
        arrays[f"item_attr/{view}"] = attr
        values = np.asarray(ids + [None], dtype=object)[np.where(attr >= 0, attr, len(ids))]
        attributes[view] = values.tolist()
    metric_view = _metric_view(artifact, attribute_views)
    if metric_view is not None:
        if metric_view not in attribute_views:
            raise ArtifactError(
                f"artifact metric view {metric_view!r} is not one of its views {attribute_views}"
            )
        try:
            _, item_side, _ = artifact.relational(metric_view)
        except KeyError:
            # No inter-view task for the metric view: the metric model then saw e_ic = 0, nothing to copy.
            log.warning("artifact has no relational embeddings of metric view %r", metric_view)
        else:
            arrays[f"relational_item/{metric_view}"] = _matrix(
                f"relational({metric_view!r}) item side", item_side, rows=n
            )
    for name in ("M_i", "M_ic"):
        value = metric_array(artifact, name)
        if value is not None:
            # float64 as trained: explain/debug code recomputes Eq. 11 with them.
            arrays[name] = _matrix(name, value, dtype=np.float64)
    z = metric_array(artifact, "z")
    if z is not None:
        arrays["z"] = _matrix("z", z, rows=n)
    return _ArtifactData(views, attribute_views, metric_view, item_ids, arrays, node_ids, attributes)


# --- writing a version ---------------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _write_version(
    staging: publish.Staging,
    data: _ArtifactData,
    built: list[BuiltIndex],
    options: BuildOptions,
    source: SourceArtifact,
) -> IndexManifest:
    root = staging.path
    files: dict[str, str] = {}

    def record(rel: str) -> str:
        files[rel] = sha256_file(root / rel)
        return files[rel]

    _write_json(root / ITEMS_NAME, {"ids": data.item_ids, "attributes": data.attributes})
    record(ITEMS_NAME)
    arrays: dict[str, ArrayEntry] = {}
    for key, arr in data.arrays.items():
        rel = f"arrays/{key}.npy"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, arr)
        record(rel)
        arrays[key] = ArrayEntry(path=rel, shape=list(arr.shape), dtype=str(arr.dtype))
    node_files: dict[str, str] = {}
    for view, ids in data.node_ids.items():
        rel = f"arrays/nodes/{view}.ids.json"
        _write_json(root / rel, ids)
        record(rel)
        node_files[view] = rel
    strategies: dict[str, StrategyEntry] = {}
    for b in built:
        rel = f"index/{b.strategy.name}.hnsw"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        b.index.save_index(str(root / rel))
        vectors_key = next((k for k, a in data.arrays.items() if a is b.raw), f"strategy/{b.strategy.name}")
        if vectors_key not in arrays:
            vrel = f"arrays/{vectors_key}.npy"
            (root / vrel).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / vrel, b.raw)
            record(vrel)
            arrays[vectors_key] = ArrayEntry(path=vrel, shape=list(b.raw.shape), dtype=str(b.raw.dtype))
        strategies[b.strategy.name] = StrategyEntry(
            encoding=b.encoding.name,
            space=b.encoding.space,
            metric=b.strategy.metric,
            dim=b.raw.shape[1],
            index_dim=b.index.dim,
            n=b.raw.shape[0],
            M=options.M,
            ef_construction=options.ef_construction,
            ef_search=int(b.report.ef),
            recall_k=b.report.k,
            recall_at_k=b.report.recall,
            recall_target=options.recall_target,
            recall_queries=b.report.n_queries,
            recall_curve=[RecallCurvePoint(**vars(p)) for p in b.report.curve],
            trials=b.trials,
            build_seconds=round(b.build_seconds, 3),
            tune_seconds=round(b.report.seconds, 3),
            seed=options.seed,
            file=rel,
            sha256=record(rel),
            vectors=vectors_key,
            params=b.params,
        )
    manifest = IndexManifest(
        version=staging.version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        builder_version=BUILDER_VERSION,
        source_artifact=source,
        n_items=len(data.item_ids),
        views=data.views,
        attribute_views=data.attribute_views,
        metric_view=data.metric_view,
        strategies=strategies,
        arrays=arrays,
        node_ids=node_files,
        files=files,
    )
    (root / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
    return manifest


def _strategy_vectors(strategy: Strategy, artifact: Any, data: _ArtifactData) -> np.ndarray:
    raw = _matrix(f"{strategy.name} vectors", strategy.vectors(artifact), rows=len(data.item_ids))
    # Share the copied array when the strategy's vectors are one of them, so it is stored once.
    for arr in data.arrays.values():
        if arr.shape == raw.shape and np.array_equal(arr, raw):
            return arr
    return raw


def build_from_artifact(
    artifact: Any, out_root: Path | str, options: BuildOptions | None = None, *, progress: bool = True
) -> BuildResult:
    """Build every requested strategy, check recall, and publish a new version under ``out_root``.

    Nothing is written under ``out_root`` unless every strategy reaches the recall target; the new version
    becomes CURRENT and retention keeps the newest ``options.keep`` versions.
    """
    options = options or BuildOptions()
    out_root = Path(out_root)
    if out_root.exists() and not out_root.is_dir():
        raise ValueError(f"{out_root}: index root exists and is not a directory")
    data = read_artifact(artifact)
    if options.strategies is None:
        names = []
        for name in available_strategies():
            try:
                get_strategy(name).vectors(artifact)
            except StrategyUnavailable as exc:
                log.warning("skipping strategy %s: %s", name, exc)
                continue
            names.append(name)
    else:
        names = list(options.strategies)
    built = []
    for name in names:
        strategy = get_strategy(name)
        built.append(build_strategy(strategy, _strategy_vectors(strategy, artifact, data), options, progress))
    source = SourceArtifact(
        version=str(getattr(artifact.manifest, "version", "unknown")),
        sha256=artifact_checksum(artifact),
        path=str(_artifact_path(artifact)) if _artifact_path(artifact) else None,
    )
    staging = publish.begin(out_root)
    try:
        manifest = _write_version(staging, data, built, options, source)
        deleted = publish.commit(staging, keep=options.keep)
    except BaseException:
        publish.abort(staging)
        raise
    path = out_root / staging.version
    log.info("published index version %s (%s) at %s", staging.version, ", ".join(names), path)
    return BuildResult(version=staging.version, path=path, manifest=manifest, deleted=deleted)
