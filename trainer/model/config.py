"""Training configuration: plain values with the paper's defaults (KDD 2020, Sec. 5.1 and appendix 8.2)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TrainConfig(BaseModel):
    """Hyper-parameters of ``m2grl-train fit``. Every field is also a command-line flag."""

    dim: int = Field(64, ge=2, le=1024, description="embedding dimension of every view")
    relation_dim: int = Field(64, ge=2, le=1024, description="output size of each inter-view matrix W")
    window: int = Field(9, ge=1, description="skip-gram window c (paper: 9)")
    reduced_window: bool = Field(
        True, description="word2vec's reduced window: each centre uses a window drawn uniformly from 1..c"
    )
    negatives: int = Field(5, ge=1, description="negative samples per positive pair")
    ns_exponent: float = Field(0.75, description="negatives drawn from unigram^ns_exponent")
    subsample: float = Field(0.0, ge=0.0, description="word2vec frequent-node subsampling threshold; 0 = off")
    walks_per_node: int = Field(
        0, ge=0, description="extra DeepWalk-style weighted walks per node (0 = sessions only)"
    )
    walk_length: int = Field(10, ge=2)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(2048, ge=1)
    lr: float = Field(
        0.01,
        gt=0,
        description="Adam learning rate (paper: 0.01; the MovieLens preset uses 0.001, see trainer.model.presets)",
    )
    optimizer: Literal["adam", "sgd"] = "adam"
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clipping (paper: 1)")
    loss_normalisation: Literal["pair", "task"] = Field(
        "task",
        description="pair: every pair of every task weighs 1/batch_size, as when each task trains on its own "
        "batches; task: a task's loss is the mean over its pairs in the step (tasks with few pairs then "
        "get large per-pair gradients)",
    )
    weighting: Literal["adaptive", "uniform", "static"] = "adaptive"
    sigma2_min: float = Field(
        0.05, gt=0, description="clamp of sigma^2 from below: no task weight exceeds 1/sigma2_min"
    )
    static_item_weight: float = 0.05
    inter_view: bool = Field(True, description="train the inter-view alignment tasks")
    views: list[str] | None = Field(None, description="views to use; None = all views of the prepared data")
    metric_epochs: int = Field(5, ge=0)
    metric_margin: float = Field(1.0, gt=0)
    metric_pairs: int = Field(200_000, ge=0, description="training pairs for the diversity metric model")
    metric_view: str = Field(
        "category",
        description="attribute view c of the diversity metric model's e_ic = sigmoid(W_ic e_i) (paper Sec. 6.1); "
        "when left at the default and the data has no such view, the first attribute view is used",
    )
    threads: int = Field(0, ge=0, description="worker threads; 0 = all cores")
    seed: int = 0
    log_every: int = Field(100, ge=1, description="record a training-curve row every this many steps")
