"""Registry of evaluated methods: name (the key in metrics.json) -> class, imported on first use.

Lazy imports keep ``import trainer.eval`` free of torch and gensim until a method that needs them runs.
"""

from __future__ import annotations

import importlib
from typing import Any

from trainer.eval.methods.base import Method, MethodContext

# name -> (module, class, constructor keyword arguments)
REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "popularity": ("popularity", "Popularity", {}),
    "itemcf": ("itemcf", "ItemCF", {"window": 9}),
    "itemcf_session": ("itemcf", "ItemCF", {"window": None}),
    "item2vec_gensim": ("item2vec_gensim", "Item2VecGensim", {}),
    "deepwalk": ("deepwalk", "DeepWalk", {}),
    "eges": ("eges", "EGES", {}),
    "m2grl": ("m2grl", "M2GRL", {}),
    "m2grl_intra_only": ("m2grl", "M2GRLIntraOnly", {}),
    "m2grl_uniform": ("m2grl", "M2GRLUniform", {}),
    "m2grl_static": ("m2grl", "M2GRLStatic", {}),
    "m2grl_adaptive": ("m2grl", "M2GRLAdaptive", {}),
}
METHOD_NAMES = list(REGISTRY)


def parse_methods(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list of registry names; unknown names are an error listing the valid ones."""
    if spec.strip() == "all":
        return list(METHOD_NAMES)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError(f"no method given; valid methods: {', '.join(METHOD_NAMES)} (or 'all')")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown)}; valid methods: {', '.join(METHOD_NAMES)} (or 'all')"
        )
    return list(dict.fromkeys(names))


def create(name: str, ctx: MethodContext | None = None, **overrides: Any) -> Method:
    """A fresh, unfitted instance of method ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHOD_NAMES)}")
    module, cls_name, kwargs = REGISTRY[name]
    cls = getattr(importlib.import_module(f"trainer.eval.methods.{module}"), cls_name)
    try:
        method = cls(ctx, **{**kwargs, **overrides})
    except TypeError as exc:  # a keyword the constructor does not take
        raise ValueError(f"{name}: bad parameter override {sorted(overrides)}: {exc}") from exc
    method.name = name  # itemcf_session shares ItemCF's class
    return method


__all__ = ["METHOD_NAMES", "REGISTRY", "Method", "MethodContext", "create", "parse_methods"]
