"""``ebm-fast train``'s options, generated from :class:`~ebm_fast.training.TrainConfig`'s fields.

:func:`add_train_arguments` adds one option per config field (its flag, type and help come from the
field, :func:`ebm_fast.dictconfig.option`); :func:`config_from_args` parses them into a config, starting
from the checkpoint's config when ``--resume`` finds one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import CheckpointManager
from ..dictconfig import add_config_arguments, given_fields
from .config import TrainConfig
from .trainer import is_training_state

__all__ = ["add_train_arguments", "train_parser", "config_from_args", "config_from_namespace"]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field; unset options are absent from the namespace."""
    add_config_arguments(parser, TrainConfig)


def train_parser(prog: str = "ebm-fast train") -> argparse.ArgumentParser:
    """A parser of the training options alone."""
    p = argparse.ArgumentParser(prog=prog, description="Train a conditional EBM.")
    add_train_arguments(p)
    return p


def config_from_namespace(args: argparse.Namespace) -> TrainConfig:
    """The config of parsed :func:`add_train_arguments` options; with ``--resume``, the checkpoint's config
    (in ``OUT/ckpt``) with the given options in place (the run's ``max_minutes`` is not inherited: a budget
    belongs to one invocation)."""
    given = given_fields(args, TrainConfig)
    if given.get("resume"):
        out = Path(given.get("out", TrainConfig.out))
        found = CheckpointManager(out / "ckpt").load_latest(check=is_training_state)
        if found is not None:
            base = found[0]["config"]
            base.pop("max_minutes", None)
            base.update(given)
            return TrainConfig.from_dict(base)
    return TrainConfig.from_dict(given)


def config_from_args(argv: list[str] | None) -> TrainConfig:
    """Parse ``ebm-fast train`` arguments into a config (see :func:`config_from_namespace`)."""
    return config_from_namespace(train_parser().parse_args(argv))
