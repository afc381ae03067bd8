"""``m2grl-train fit``: train M2GRL on a prepared directory, fit the diversity metric, write an artifact version."""

from __future__ import annotations

import argparse
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from trainer.model.config import TrainConfig

NAME = "fit"
HELP = "train embeddings on prepared data and write a versioned artifact"

log = logging.getLogger(__name__)
_DEST_PREFIX = "cfg_"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _comma_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. item,category")
    return items


def add_config_arguments(parser: argparse.ArgumentParser, model: type[BaseModel] = TrainConfig) -> None:
    """One flag per field of ``model``: --dim 64, --weighting adaptive, --inter-view/--no-inter-view,
    --views item,category. Defaults are left to the model, so only flags given on the command line are set."""
    group = parser.add_argument_group("training configuration (defaults: the paper's)")
    for name, info in model.model_fields.items():
        ann = info.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        origin = typing.get_origin(ann)
        if isinstance(ann, types.UnionType) or origin is typing.Union:  # X | None
            ann = args[0]
            origin = typing.get_origin(ann)
            args = list(typing.get_args(ann))
        help_text = f"{info.description or name} (default: {info.default})"
        kw: dict[str, Any] = {"dest": _DEST_PREFIX + name, "default": None, "help": help_text}
        if ann is bool:
            group.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **kw)
        elif origin is Literal:
            group.add_argument(_flag(name), choices=list(args), **kw)
        elif origin is list:
            group.add_argument(_flag(name), type=_comma_list, metavar="A,B,...", **kw)
        elif ann in (int, float, str):
            group.add_argument(_flag(name), type=ann, metavar=ann.__name__.upper(), **kw)
        else:  # a field type this generator does not know: fail loudly rather than drop the flag
            raise TypeError(f"cannot make a flag for {model.__name__}.{name}: {ann!r}")


def config_from_args(
    args: argparse.Namespace, model: type[BaseModel] = TrainConfig, preset: dict[str, Any] | None = None
) -> Any:
    """The config with the flags given on the command line over ``preset`` (the dataset's training preset);
    a bad value -> ValueError naming the flag."""
    given = {
        k[len(_DEST_PREFIX) :]: v
        for k, v in vars(args).items()
        if k.startswith(_DEST_PREFIX) and v is not None
    }
    try:
        return model(**{**(preset or {}), **given})
    except ValidationError as exc:
        problems = "; ".join(f"{_flag(str(e['loc'][0]))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"bad training option: {problems}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, required=True, help="prepared data directory (m2grl-train prepare)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="artifact root; the version is written below it"
    )
    parser.add_argument(
        "--version",
        default=None,
        help="version directory name (default: UTC timestamp like 20261204T213000Z; a suffix is added if taken)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip curves.png and embeddings.png")
    add_config_arguments(parser)


def _check_views(config: TrainConfig, available: list[str]) -> None:
    """Fail before training on views the prepared data lacks (the engine always adds 'item')."""
    if config.views is not None and (unknown := [v for v in config.views if v not in available]):
        raise ValueError(f"--views: {unknown} not in the prepared data, which has {available}")
    chosen = available if config.views is None else config.views
    if "metric_view" in config.model_fields_set and config.metric_view not in chosen:
        raise ValueError(f"--metric-view {config.metric_view}: not among the views trained, {chosen}")


def run(args: argparse.Namespace) -> int:
    from trainer.artifact.writer import write_artifact
    from trainer.data.prepared import PreparedData
    from trainer.model.metric import fit_metric
    from trainer.model.presets import preset_settings

    prepared = PreparedData(args.data)  # PreparedDataError (a ValueError) names the problem
    preset = preset_settings(prepared.manifest.dataset)
    config = config_from_args(args, preset=preset)
    if preset:
        log.info("training preset of %s: %s (flags override it)", prepared.manifest.dataset, preset)
    _check_views(config, prepared.view_names)
    try:
        from trainer.model.train import fit
    except ModuleNotFoundError as exc:
        if exc.name != "trainer.model.train":
            raise
        from trainer.cli import CommandError

        raise CommandError("the training engine (trainer.model.train) is not installed in this tree") from exc

    log.info(
        "training on %s (dataset %s, views %s)", args.data, prepared.manifest.dataset, prepared.view_names
    )
    model = fit(prepared, config)
    log.info("fitting the diversity metric model")
    fit_metric(model, prepared.view("item"), config)
    path = write_artifact(
        model,
        args.out,
        dataset=prepared.manifest.dataset,
        prepared_fingerprint=prepared.fingerprint(),
        version=args.version,
        draw_plots=not args.no_plots,
    )
    log.info("artifact: %s", path)
    print(path)
    return 0
