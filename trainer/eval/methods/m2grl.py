"""``m2grl`` and its ablations: retrieval by inner product on the instance-view (item) vectors (Sec. 5.1).

- ``m2grl``: the full model (inter-view tasks, adaptive uncertainty weighting). With ``--artifact`` its
  item vectors (and diversity vectors z) are read from that artifact, mapped to the prepared item rows
  by external id; otherwise it is trained here with ``trainer.model.train.fit``.
- ``m2grl_adaptive``: the same configuration, always trained here (comparable with the ablations).
- ``m2grl_intra_only``: intra-view tasks only (``inter_view=False``).
- ``m2grl_uniform`` / ``m2grl_static``: loss weighting ``uniform`` / ``static`` instead of ``adaptive``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import polars as pl

from trainer.data.prepared import PreparedData
from trainer.data.schema import ITEM_VIEW
from trainer.eval.methods.base import (
    EmbeddingRetriever,
    Method,
    MethodContext,
    MethodUnavailable,
    apply_overrides,
    popularity_order,
)

log = logging.getLogger(__name__)


def map_rows(prepared_ids: np.ndarray, source_ids: list[str]) -> np.ndarray:
    """For each prepared item id, its row in ``source_ids`` (``-1`` when absent)."""
    left = pl.DataFrame({"item_id": pl.Series(prepared_ids.tolist(), dtype=pl.Utf8)}).with_row_index("i")
    right = pl.DataFrame({"item_id": pl.Series(source_ids, dtype=pl.Utf8)}).with_row_index("src")
    joined = left.join(right, on="item_id", how="left").sort("i")
    return joined["src"].fill_null(-1).to_numpy().astype(np.int64)


def align(vectors: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectors re-ordered to prepared rows (zeros where absent) and the has-vector mask."""
    has = rows >= 0
    out = np.zeros((len(rows), vectors.shape[1]), dtype=np.float32)
    out[has] = np.asarray(vectors, dtype=np.float32)[rows[has]]
    return out, has


class M2GRL(Method):
    name = "m2grl"
    overrides: ClassVar[dict[str, Any]] = {}
    reads_artifact: ClassVar[bool] = True
    fits_metric: ClassVar[bool] = True
    """Train the diversity metric model too (only ``m2grl`` reports the discovery figures)."""

    def __init__(self, ctx: MethodContext | None = None, **overrides: Any) -> None:
        super().__init__(ctx)
        from trainer.model.config import TrainConfig

        apply_overrides(dict.fromkeys(TrainConfig.model_fields), overrides, self.name)
        self.extra = dict(overrides)
        self.z: EmbeddingRetriever | None = None
        self.category_view: str | None = None

    def fit(self, prepared: PreparedData) -> None:
        ids = prepared.view(ITEM_VIEW).node_ids
        fallback = popularity_order(prepared)
        if self.reads_artifact and self.ctx.artifact is not None:
            from trainer.artifact.loader import Artifact

            art = Artifact.open(self.ctx.artifact)
            if art.manifest.prepared_fingerprint != prepared.fingerprint():
                log.warning(
                    "artifact %s was trained on prepared data %s, evaluating on %s",
                    self.ctx.artifact,
                    art.manifest.prepared_fingerprint,
                    prepared.fingerprint(),
                )
            rows = map_rows(ids, art.ids(ITEM_VIEW))
            vectors, has = align(art.embeddings(ITEM_VIEW), rows)
            self.category_view = art.manifest.metric_view
            if self.category_view is not None:
                z, _ = align(art.z, rows)
                self.z = EmbeddingRetriever(z, fallback, has, metric="l2")
            self.params = {
                "artifact": str(self.ctx.artifact),
                "artifact_version": art.version,
                "items_in_artifact": int(has.sum()),
                **art.manifest.config,
                "retrieval": "dot",
            }
        else:
            try:
                from trainer.model.train import fit
            except ImportError as exc:
                raise MethodUnavailable(
                    f"{self.name} needs trainer.model.train.fit, not available: {exc}"
                ) from exc
            from trainer.model.presets import preset_config

            settings = {**self.overrides, **self.extra, "seed": self.ctx.seed}
            if self.ctx.epochs is not None:
                settings["epochs"] = self.ctx.epochs
            config = preset_config(prepared.manifest.dataset, **settings)
            model = fit(prepared, config)
            if self.fits_metric and prepared.attribute_views and config.metric_epochs > 0:
                from trainer.model.metric import fit_metric

                fit_metric(model, prepared.view(ITEM_VIEW), config)
            rows = map_rows(ids, list(model.node_ids[ITEM_VIEW]))
            vectors, has = align(model.embeddings[ITEM_VIEW], rows)
            if model.L_i is not None:
                from trainer.model.metric import diversity_vectors

                self.category_view = model.config.metric_view
                z, _ = align(diversity_vectors(model), rows)
                self.z = EmbeddingRetriever(z, fallback, has, metric="l2")
            self.params = {**model.config.model_dump(), "retrieval": "dot"}
        self.retriever = EmbeddingRetriever(vectors, fallback, has, metric="dot")

    def recommend(self, triggers: np.ndarray, k: int, exclude: list[set[int]]) -> np.ndarray:
        return self.retriever.recommend(triggers, k, exclude)


class _Ablation(M2GRL):
    """Paper Table 3: always trained here (never read from an artifact), without the metric model."""

    fits_metric = False
    reads_artifact = False


class M2GRLAdaptive(_Ablation):
    name = "m2grl_adaptive"
    overrides = {"weighting": "adaptive"}


class M2GRLIntraOnly(_Ablation):
    name = "m2grl_intra_only"
    overrides = {"inter_view": False}


class M2GRLUniform(_Ablation):
    name = "m2grl_uniform"
    overrides = {"weighting": "uniform"}


class M2GRLStatic(_Ablation):
    name = "m2grl_static"
    overrides = {"weighting": "static"}
