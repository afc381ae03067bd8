"""Service settings, read from ``M2GRL_*`` environment variables into a pydantic model.

pydantic-settings is deliberately not a dependency: the handful of variables below are parsed here, and a bad
value fails at start with a message naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

ENV_PREFIX = "M2GRL_"


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


class Settings(BaseModel):
    """Everything the service reads at start. Each field ``x`` comes from ``M2GRL_X``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index_root: Path | None = Field(
        None, description="INDEX_ROOT holding <version>/ folders and CURRENT (m2grl-index publish)"
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token of /admin/*; unset = admin endpoints answer 403"
    )
    max_k: int = Field(500, ge=1, le=100_000, description="largest k a query may ask for")
    max_batch: int = Field(256, ge=1, le=100_000, description="most trigger items in one POST /v1/candidates")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request bodies above this answer 413")
    reload_poll_seconds: float | None = Field(
        None,
        gt=0,
        description="follow INDEX_ROOT/CURRENT every this many seconds; unset = only /admin/reload",
    )
    search_mode: Literal["inline", "threadpool"] = Field(
        "inline",
        description="run the hnswlib query on the event loop (inline, ~0.1 ms) or hop to the threadpool",
    )
    access_log: Literal["all", "errors", "off"] = Field(
        "errors",
        description="JSON access log lines: every request, only 4xx/5xx and slow ones (default), or none. "
        "A line costs ~30-60 us of the event loop (record, JSON, write), a third of a candidate query, and "
        "the metrics already count every request; 'all' is for debugging",
    )
    slow_request_ms: float = Field(
        250.0, ge=0, description="in 'errors' mode, requests slower than this are logged too"
    )
    log_level: str = Field("INFO", description="level of the service's JSON logs")
    bench_floor: bool = Field(
        False, description="add GET /bench/floor (50 ids, no index work): the framework floor for benchmarks"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``M2GRL_<FIELD>`` for every field; empty strings count as unset. ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw.strip() != "":
                values[name] = raw.strip()
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(err['loc'][0]).upper()}={values.get(str(err['loc'][0]))!r}: {err['msg']}"
                for err in exc.errors()
            )
            raise SettingsError(f"bad service settings: {problems}") from None

    def admin_token_bytes(self) -> bytes | None:
        if self.admin_token is None:
            return None
        token = self.admin_token.get_secret_value()
        return token.encode() if token else None
