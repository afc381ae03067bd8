"""Write a TrainedModel as a new, immutable artifact version ``ROOT/<version>/`` (layout: trainer.artifact.manifest).

Atomicity: everything is written into ``ROOT/.tmp-<version>-<pid>``, the manifest last, the result is verified
with the loader and only then renamed to ``ROOT/<version>``. A failure removes the temporary directory; a
killed writer leaves only a ``.tmp-*`` directory, which readers ignore and the next writer deletes once it is
older than an hour. So a version directory is always complete.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from trainer import __version__
from trainer.artifact import plots
from trainer.artifact.loader import Artifact
from trainer.artifact.manifest import (
    ARTIFACT_SCHEMA_VERSION,
    ITEM_VIEW,
    MANIFEST_NAME,
    TMP_PREFIX,
    VERSION_PATTERN,
    ArtifactError,
    ArtifactManifest,
    ViewInfo,
    embeddings_file,
    ids_file,
    item_attr_file,
    metric_file,
    relational_file,
)
from trainer.checksums import sha256_file
from trainer.model.metric import diversity_vectors, resolve_metric_view
from trainer.model.result import TrainedModel

log = logging.getLogger(__name__)

STALE_TMP_SECONDS = 3600


def timestamp_version(now: datetime | None = None) -> str:
    """A sortable UTC version name such as 20261204T213000Z."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def clean_stale_temps(root: Path, max_age_s: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete ``.tmp-*`` entries under root older than max_age_s (left by killed writers); returns them."""
    removed = []
    now = time.time()
    for p in root.glob(f"{TMP_PREFIX}*"):
        try:
            if now - p.stat().st_mtime <= max_age_s:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        except FileNotFoundError:
            continue  # another writer cleaned it first
        removed.append(p)
        log.info("removed stale temporary %s", p)
    return removed


def _unique_version(root: Path, base: str) -> str:
    candidate, n = base, 0
    while (root / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Rows of dicts as CSV; columns are the union of keys in order of first appearance."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _check_model(model: TrainedModel) -> None:
    """Shape consistency of the in-memory model; a clear error before anything is written."""
    if not model.views or model.views[0] != ITEM_VIEW:
        raise ValueError(f"model views must start with {ITEM_VIEW!r}: {model.views}")
    n_items, dim = model.embeddings[ITEM_VIEW].shape
    for v in model.views:
        emb = model.embeddings[v]
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise ValueError(f"embeddings[{v!r}] has shape {emb.shape}, expected (n, {dim})")
        if len(model.node_ids[v]) != emb.shape[0]:
            raise ValueError(f"node_ids[{v!r}] has {len(model.node_ids[v])} ids for {emb.shape[0]} rows")
    for v in model.views[1:]:
        if v in model.item_to_attr and len(model.item_to_attr[v]) != n_items:
            raise ValueError(
                f"item_to_attr[{v!r}] has {len(model.item_to_attr[v])} rows, item table {n_items}"
            )
    for v, W in model.W.items():
        if v not in model.views[1:]:
            raise ValueError(f"W of task item-{v} but {v!r} is not an attribute view of the model")
        if W.shape != (model.config.relation_dim, dim):
            raise ValueError(f"W[{v!r}] has shape {W.shape}, expected ({model.config.relation_dim}, {dim})")


def _save_npy(tmp: Path, rel: str, arr: np.ndarray) -> None:
    p = tmp / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, arr, allow_pickle=False)


def _write_arrays(tmp: Path, model: TrainedModel) -> None:
    for v in model.views:
        _save_npy(tmp, embeddings_file(v), np.ascontiguousarray(model.embeddings[v], dtype=np.float32))
        ids_path = tmp / ids_file(v)
        ids_path.parent.mkdir(parents=True, exist_ok=True)
        ids_path.write_text(json.dumps([str(x) for x in model.node_ids[v].tolist()]))
    for v in model.views[1:]:
        attr = model.item_to_attr.get(v)
        if attr is None:
            attr = np.full(len(model.node_ids[ITEM_VIEW]), -1, dtype=np.int32)
        _save_npy(tmp, item_attr_file(v), np.asarray(attr, dtype=np.int32))
    for v in model.W:
        item_side, attr_side = model.relational(v)
        _save_npy(tmp, relational_file(v, "W"), np.asarray(model.W[v], dtype=np.float32))
        _save_npy(tmp, relational_file(v, "item"), item_side)
        _save_npy(tmp, relational_file(v, "attr"), attr_side)
    if model.L_i is not None and model.L_ic is not None:
        L_i, L_ic = np.asarray(model.L_i, np.float64), np.asarray(model.L_ic, np.float64)
        _save_npy(tmp, metric_file("L_i"), L_i)
        _save_npy(tmp, metric_file("L_ic"), L_ic)
        _save_npy(tmp, metric_file("M_i"), L_i.T @ L_i)
        _save_npy(tmp, metric_file("M_ic"), L_ic.T @ L_ic)
        _save_npy(tmp, metric_file("z"), diversity_vectors(model))


def _write_tables_and_plots(tmp: Path, model: TrainedModel, draw: bool) -> None:
    write_csv(model.curves, tmp / "curves.csv")
    if model.L_i is not None:
        write_csv(model.metric_curve, tmp / "metric_curve.csv")
    if draw:
        _write_plots(tmp, model)


def _write_plots(tmp: Path, model: TrainedModel) -> None:
    plots.write_curves_png(model.curves, tmp / "curves.png")
    view = resolve_metric_view(model)
    if view is None:
        plots.write_embeddings_png(
            tmp / "embeddings.png", model.embeddings[ITEM_VIEW], seed=model.config.seed
        )
        return
    n_items = len(model.node_ids[ITEM_VIEW])
    plots.write_embeddings_png(
        tmp / "embeddings.png",
        model.embeddings[ITEM_VIEW],
        item_attr=model.item_to_attr.get(view, np.full(n_items, -1, dtype=np.int32)),
        attr_vectors=model.embeddings[view],
        attr_names=[str(x) for x in model.node_ids[view].tolist()],
        attr_view=view,
        seed=model.config.seed,
    )


def _file_digests(tmp: Path) -> dict[str, str]:
    files = {}
    for dirpath, _dirs, names in os.walk(tmp):
        for name in names:
            p = Path(dirpath) / name
            files[p.relative_to(tmp).as_posix()] = sha256_file(p)
    return dict(sorted(files.items()))


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.parent.parent / f"{TMP_PREFIX}{path.parent.name}-{path.name}-{os.getpid()}"
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def write_artifact(
    model: TrainedModel,
    root: Path | str,
    *,
    dataset: str,
    prepared_fingerprint: str,
    version: str | None = None,
    eval_metrics: dict[str, Any] | None = None,
    draw_plots: bool = True,
) -> Path:
    """Write ``model`` as a new version under the artifact root ``root``; returns the version directory.

    dataset / prepared_fingerprint: name and PreparedData.fingerprint() of the training data, recorded so a
        consumer can tell which data an artifact was trained on.
    version: directory name; default a UTC timestamp. A suffix -1, -2, ... is added when it already exists.
    eval_metrics: optional evaluation figures stored in the manifest (see also update_eval).
    draw_plots: write curves.png and embeddings.png (the CSVs are always written).
    """
    _check_model(model)
    root = Path(root)
    if version is not None and not VERSION_PATTERN.match(version):
        raise ValueError(
            f"version {version!r}: use letters, digits, '.', '_' and '-', not starting with '.' or '-'"
        )
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(root)
    base = version or timestamp_version()
    name = _unique_version(root, base)
    if version is not None and name != version:
        log.warning("version %s exists under %s; writing %s", version, root, name)
    tmp = root / f"{TMP_PREFIX}{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of this very pid (pid reuse)
    tmp.mkdir()
    try:
        log.info("writing artifact %s into %s", name, tmp)
        _write_arrays(tmp, model)
        _write_tables_and_plots(tmp, model, draw_plots)
        dim = model.embeddings[ITEM_VIEW].shape[1]
        manifest = ArtifactManifest(
            schema_version=ARTIFACT_SCHEMA_VERSION,
            version=name,
            created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
            trainer_version=__version__,
            dataset=dataset,
            prepared_fingerprint=prepared_fingerprint,
            config=model.config.model_dump(mode="json"),
            views=[ViewInfo(name=v, n_nodes=model.embeddings[v].shape[0], dim=dim) for v in model.views],
            relation_dim=model.config.relation_dim,
            # The engine reports sigma^2 for exactly the tasks it trained (a view without sequences has none).
            tasks=list(model.sigma2) or list(model.views) + [f"item-{v}" for v in model.W],
            relational_views=list(model.W),
            sigma2={k: float(s) for k, s in model.sigma2.items()},
            metric_view=resolve_metric_view(model) if model.L_i is not None else None,
            files=_file_digests(tmp),
            eval=eval_metrics,
        )
        (tmp / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
        Artifact.open(tmp, verify=True)  # never publish what the loader would reject
        return _publish(tmp, root, name, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, root: Path, name: str, manifest: ArtifactManifest) -> Path:
    """Rename tmp to root/name; when a concurrent writer took the name, take the next suffix."""
    base = name
    for _ in range(100):
        final = root / name
        try:
            if final.exists():
                raise FileExistsError(errno.EEXIST, "exists", str(final))
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            name = _unique_version(root, base)
            manifest = manifest.model_copy(update={"version": name})
            (tmp / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
            continue
        log.info("artifact written: %s", final)
        return final
    raise ArtifactError(f"{root}: could not find a free version name after {base}")


def update_eval(path: Path | str, metrics: dict[str, Any]) -> None:
    """Record evaluation figures in the manifest of an existing version (atomic replace of manifest.json).

    The manifest is the one file not listed in its own checksums, so the artifact stays valid.
    """
    path = Path(path)
    art = Artifact.open(path, verify=False)
    updated = art.manifest.model_copy(update={"eval": metrics})
    _write_json_atomic(path / MANIFEST_NAME, json.loads(updated.model_dump_json()))
