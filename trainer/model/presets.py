"""Training defaults per dataset: the paper's values (TrainConfig), except where a dataset measured otherwise.

Flags and explicit overrides always win over a preset; a preset only replaces TrainConfig's defaults.

MovieLens (measured on ml-latest-small, views item + category, HR@50 under the evaluation protocol):
at the paper's Adam lr 0.01 every Adam-trained method fills its top 50 with rare items (M2GRL 0.25 against
0.37 at lr 0.001; DeepWalk and EGES alike), and under the paper's task balance the alignment task, with ~10x
fewer pairs than the item task, dominates the item vectors (uniform weighting 0.31 -> 0.38 with per-pair
normalisation). The Tmall sample, sparse like the paper's Taobao data, wants the paper's values: lr 0.01 with
the task balance gives 0.104-0.115, lr 0.001 leaves rare items near their initialisation (0.025, below
popularity's 0.037).
"""

from __future__ import annotations

from typing import Any

from trainer.model.config import TrainConfig

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "movielens": {"lr": 0.001, "loss_normalisation": "pair"},
}


def preset_settings(dataset: str) -> dict[str, Any]:
    """The preset's fields for a prepared dataset name (``PreparedManifest.dataset``); {} for the paper's."""
    return dict(TRAIN_PRESETS.get(dataset, {}))


def preset_config(dataset: str, **overrides: Any) -> TrainConfig:
    """TrainConfig with the dataset's preset under the given overrides."""
    return TrainConfig(**{**preset_settings(dataset), **overrides})
