"""Training presets: a dataset's preset replaces TrainConfig's defaults, never a flag the user gave."""

from __future__ import annotations

import argparse

import pytest

from trainer.commands.fit import add_config_arguments, config_from_args
from trainer.model.config import TrainConfig
from trainer.model.presets import TRAIN_PRESETS, preset_config, preset_settings


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(list(argv))


def test_paper_defaults_without_a_preset() -> None:
    assert preset_settings("tmall") == {} and preset_settings("generic") == {}
    cfg = preset_config("tmall")
    assert (cfg.lr, cfg.loss_normalisation, cfg.batch_size, cfg.window, cfg.epochs) == (
        0.01,
        "task",
        2048,
        9,
        10,
    )


def test_movielens_preset_and_flags_win() -> None:
    assert preset_config("movielens").lr == 0.001 and preset_config("movielens").loss_normalisation == "pair"
    assert preset_config("movielens", lr=0.02).lr == 0.02
    preset = preset_settings("movielens")
    assert config_from_args(_args(), preset=preset).lr == 0.001
    given = config_from_args(_args("--lr", "0.005", "--loss-normalisation", "task"), preset=preset)
    assert (given.lr, given.loss_normalisation) == (0.005, "task")
    # the preset's copy is the caller's: mutating it leaves the table intact
    preset["lr"] = 1.0
    assert TRAIN_PRESETS["movielens"]["lr"] == 0.001


def test_presets_hold_only_config_fields() -> None:
    for name, fields in TRAIN_PRESETS.items():
        assert set(fields) <= set(TrainConfig.model_fields), name
        TrainConfig(**fields)
    with pytest.raises(ValueError, match="--lr"):
        config_from_args(_args("--lr", "-1"), preset=preset_settings("movielens"))
