"""Run methods under the offline protocol and collect metrics.json's content.

Every method is fitted on the prepared directory, asked for max(K) candidates per test user's trigger,
checked against the protocol (no trigger, no history item, no duplicates) and scored. Methods that
depend on the seed run once per seed and report mean, sample std and per-seed values; deterministic
ones (popularity, itemcf) run once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from trainer.data.prepared import PreparedData
from trainer.eval.diversity import discovery_metrics, discovery_set, item_categories
from trainer.eval.methods import Method, MethodContext, create
from trainer.eval.methods.base import MethodUnavailable
from trainer.eval.metrics import ranking_metrics
from trainer.eval.protocol import EvalSet, build_eval_set

log = logging.getLogger(__name__)

DIVERSITY_K = 50


@dataclass
class EvalOptions:
    methods: list[str]
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = None
    artifact: Path | None = None
    category_view: str | None = None
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per method name, constructor overrides of its hyper-parameters (tests, tuning)."""
    skip_unavailable: bool = False
    """With ``--methods all``: record a method whose trainer is not installed as skipped instead of failing."""


def check_recommendations(recs: np.ndarray, ev: EvalSet, k: int, name: str) -> None:
    """Raise if a method broke the protocol: wrong shape, a banned item, a repeated item."""
    if recs.shape != (ev.n_users, k):
        raise RuntimeError(f"{name}: returned shape {recs.shape}, expected {(ev.n_users, k)}")
    if (recs >= ev.n_items).any() or (recs < -1).any():
        raise RuntimeError(f"{name}: returned item rows outside [0, {ev.n_items})")
    users = np.repeat(np.arange(ev.n_users, dtype=np.int64), np.diff(ev.history_indptr))
    banned = users * ev.n_items + ev.history_items
    keys = np.arange(ev.n_users, dtype=np.int64)[:, None] * ev.n_items + recs
    bad = (recs >= 0) & np.isin(keys, banned)
    if bad.any():
        u = int(np.flatnonzero(bad.any(axis=1))[0])
        raise RuntimeError(f"{name}: recommended an item of the training history of user {ev.users[u]!r}")
    s = np.sort(recs, axis=1)
    if ((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any():
        raise RuntimeError(f"{name}: recommended the same item twice to one user")


def _aggregate(runs: list[dict[str, Any]], several_seeds: bool) -> dict[str, Any]:
    metric_names = list(runs[0]["metrics"])
    out: dict[str, Any] = {}
    if len(runs) == 1:
        out.update(runs[0]["metrics"])
        if several_seeds:  # a deterministic method: the same schema, std 0 by construction
            out.update({f"{m}_std": 0.0 for m in metric_names})
            out["deterministic"] = True
    else:
        for m in metric_names:
            vals = np.array([r["metrics"][m] for r in runs])
            out[m] = float(vals.mean())
            out[f"{m}_std"] = float(vals.std(ddof=1))
        out["per_seed"] = {str(r["seed"]): r["metrics"] for r in runs}
    out["seeds"] = [r["seed"] for r in runs]
    out["params"] = runs[0]["params"]
    out["seconds"] = float(np.mean([r["seconds"] for r in runs]))
    return out


def _category_view(prepared: PreparedData, method: Method, requested: str | None) -> str | None:
    if requested is not None:
        return requested
    found = getattr(method, "category_view", None)
    if found:
        return found
    views = prepared.attribute_views
    return "category" if "category" in views else (views[0] if views else None)


def diversity_report(
    prepared: PreparedData, ev: EvalSet, method: Method, general: np.ndarray, requested_view: str | None
) -> dict[str, Any]:
    """Discovery metrics of the general and diversity strategies of a fitted M2GRL method."""
    view = _category_view(prepared, method, requested_view)
    z = getattr(method, "z", None)
    if view is None:
        return {"skipped": "the prepared data has no attribute view to take categories from"}
    categories = item_categories(prepared, view)
    ds = discovery_set(ev, categories)
    out: dict[str, Any] = {
        "method": method.name,
        "category_view": view,
        "n_discovery_users": len(ds.users),
        "general": discovery_metrics(general, ds, categories, DIVERSITY_K),
    }
    if z is None:
        out["diversity"] = {"skipped": "no diversity metric model (artifact without z / model without L)"}
        return out
    exclude = ev.exclude()
    diverse = z.recommend(ev.triggers, DIVERSITY_K, exclude, group=categories)
    check_recommendations(diverse, ev, DIVERSITY_K, f"{method.name} diversity")
    out["diversity"] = discovery_metrics(diverse, ds, categories, DIVERSITY_K)
    return out


def run_evaluation(prepared: PreparedData, options: EvalOptions) -> dict[str, Any]:
    """Everything metrics.json holds (see trainer.commands.evaluate)."""
    ks = sorted(set(options.ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"K values must be positive integers, got {options.ks}")
    for name in options.methods:  # bad overrides fail now, not after an hour of other methods
        create(name, MethodContext(), **options.method_overrides.get(name, {}))
    ev = build_eval_set(prepared)
    if ev.n_users == 0:
        raise ValueError(f"{prepared.path}: no test users (no user has a new, known item among test events)")
    log.info("protocol: %d test users, %d items", ev.n_users, ev.n_items)
    exclude = ev.exclude()
    k_max = max(ks)
    methods: dict[str, Any] = {}
    diversity: dict[str, Any] | None = None
    jobs = [(name, seed) for name in options.methods for seed in options.seeds]
    runs: dict[str, list[dict[str, Any]]] = {}
    skipped: set[str] = set()
    for name, seed in tqdm(jobs, desc="evaluate", unit="run"):
        if name in skipped:
            continue
        ctx = MethodContext(seed=seed, epochs=options.epochs, artifact=options.artifact)
        method = create(name, ctx, **options.method_overrides.get(name, {}))
        if method.deterministic and name in runs:
            continue
        t0 = time.perf_counter()
        try:
            method.fit(prepared)
        except MethodUnavailable as exc:
            if not options.skip_unavailable:
                raise ValueError(str(exc)) from exc
            log.warning("skipping %s: %s", name, exc)
            methods[name] = {"skipped": str(exc)}
            skipped.add(name)
            continue
        recs = method.recommend(ev.triggers, k_max, exclude)
        seconds = time.perf_counter() - t0
        check_recommendations(recs, ev, k_max, name)
        metrics = ranking_metrics(recs, ev.truth_indptr, ev.truth_items, ev.n_items, ks)
        log.info("%s seed %d: hr@%d %.4f (%.1fs)", name, seed, k_max, metrics[f"hr@{k_max}"], seconds)
        runs.setdefault(name, []).append(
            {"seed": seed, "metrics": metrics, "params": method.params, "seconds": seconds}
        )
        if diversity is None and name == "m2grl":
            general = recs if k_max >= DIVERSITY_K else method.recommend(ev.triggers, DIVERSITY_K, exclude)
            diversity = diversity_report(
                prepared, ev, method, general[:, :DIVERSITY_K], options.category_view
            )
    methods = {
        n: _aggregate(runs[n], len(options.seeds) > 1) if n in runs else methods[n] for n in options.methods
    }
    protocol = {
        **ev.summary,
        "ks": ks,
        "seeds": list(options.seeds),
        "epochs_override": options.epochs,
        "metrics": "hr, precision, recall: means over test users; f1 = 2PR/(P+R) of the means; fractions",
    }
    result: dict[str, Any] = {"protocol": protocol, "n_test_users": ev.n_users, "methods": methods}
    if diversity is not None:
        result["diversity"] = diversity
    return result


def parse_int_list(spec: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"{what}: expected comma-separated integers, got {spec!r}") from exc
    if not values:
        raise ValueError(f"{what}: expected at least one integer, got {spec!r}")
    return values
