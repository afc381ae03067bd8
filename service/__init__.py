"""The candidate service: a FastAPI app that answers candidate queries from a published HNSW index version.

No torch, no polars: the serving image needs only numpy, hnswlib, fastapi, uvicorn, pydantic and
prometheus-client. ``service.app.create_app`` builds the app; ``m2grl-serve`` (service.cli) runs it.
"""
