"""Dataset loaders: each reads one publisher's own format and returns a :class:`LoadedDataset` in the
canonical form of :mod:`trainer.data.schema`.

``load_dataset(name, path, **options)`` dispatches through :data:`LOADERS`:

- ``movielens``: a GroupLens folder (any layout); without a path, downloads ``variant``.
- ``tmall``: Tmall IJCAI-15 ``user_log_format1*.csv`` (file or directory); option ``year``.
- ``taobao``: Taobao ``UserBehavior.csv`` (file or directory); option ``max_bad_fraction``.
- ``generic``: ``path`` is the events file (or option ``events_path``); options ``items_path`` and the
  column mapping of :func:`~trainer.data.loaders.generic.load_generic` (``views`` is taken for
  ``view_cols``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.data.loaders.generic import load_generic
from trainer.data.loaders.movielens import load_movielens
from trainer.data.loaders.taobao import load_taobao
from trainer.data.loaders.tmall import load_tmall
from trainer.data.schema import LoadedDataset

Loader = Callable[..., LoadedDataset]

LOADERS: dict[str, Loader] = {
    "movielens": load_movielens,
    "tmall": load_tmall,
    "taobao": load_taobao,
    "generic": load_generic,
}

# Tianchi data needs an account to download, and a generic log is the user's own.
_NEEDS_PATH = {
    "tmall": "download user_log_format1.csv from https://tianchi.aliyun.com/dataset/42 and pass its path",
    "taobao": "download UserBehavior.csv from https://tianchi.aliyun.com/dataset/649 and pass its path",
    "generic": "pass the events file",
}


def load_dataset(name: str, path: Path | str | None, **options: Any) -> LoadedDataset:
    """Load dataset ``name`` (a key of :data:`LOADERS`) from ``path`` with loader-specific ``options``.

    Raises ValueError for an unknown name, a missing path where the loader cannot download, or an option
    the loader does not take; :class:`~trainer.data.schema.DataFormatError` for bad data.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    if name == "generic":
        # Callers that name every generic option by keyword: ``events_path`` and ``views``.
        if path is None and "events_path" in options:
            path = options.pop("events_path")
        if "views" in options and "view_cols" not in options:
            options["view_cols"] = options.pop("views")
    if path is None and name in _NEEDS_PATH:
        raise ValueError(f"dataset {name!r} needs a path: {_NEEDS_PATH[name]}")
    loader = LOADERS[name]
    signature = inspect.signature(loader)
    try:
        signature.bind(path, **options)
    except TypeError as exc:
        accepted = list(signature.parameters)[1:]
        raise ValueError(f"dataset {name!r}: {exc}; options it takes: {', '.join(accepted)}") from exc
    return loader(path, **options)


__all__ = ["LOADERS", "load_dataset", "load_generic", "load_movielens", "load_taobao", "load_tmall"]
