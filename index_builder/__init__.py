"""M2GRL index builder: recall-checked HNSW indexes per retrieval strategy, published atomically.

Reads a trainer artifact, builds one hnswlib index per strategy (``general``: inner-product search over the
instance-view item embeddings; ``diversity``: L2 search over the metric model's vectors z, Sec. 6.1 of the
paper), checks recall@50 against exact numpy search, and writes a self-contained, immutable index version
that the candidate service reads through :mod:`index_builder.reader`.

Only numpy, hnswlib, pydantic and tqdm are imported here: the serving image carries no torch or polars.
"""

from index_builder.manifest import BUILDER_VERSION as __version__

__all__ = ["__version__"]
