"""M2GRL trainer: logs -> sessions -> multi-view graphs -> multi-task embeddings -> artifact."""

__version__ = "0.1.0"
