"""Clients of the m2grl candidate service: httpx + pydantic only (no service, numpy or hnswlib imports).

``M2GRLClient`` (blocking) and ``AsyncM2GRLClient`` (asyncio) return the typed results of
:mod:`clients.models` and raise :class:`M2GRLError` subclasses; ``m2grl-client`` is the command line.
"""

from clients.async_ import AsyncM2GRLClient
from clients.models import (
    AuthError,
    BadRequestError,
    ConflictError,
    M2GRLError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnavailableError,
    UnknownItemError,
)
from clients.sync import M2GRLClient, RetryPolicy

__all__ = [
    "AsyncM2GRLClient",
    "AuthError",
    "BadRequestError",
    "ConflictError",
    "M2GRLClient",
    "M2GRLError",
    "NotFoundError",
    "RateLimitedError",
    "RetryPolicy",
    "ServerError",
    "TransportError",
    "UnavailableError",
    "UnknownItemError",
]
