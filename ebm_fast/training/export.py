"""A run's inference model from its newest checkpoint, without its data: :func:`export_checkpoint`."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import CheckpointManager
from ..models import model_from_config, save_model
from .trainer import is_training_state

__all__ = ["export_checkpoint"]


def export_checkpoint(run: str | os.PathLike, path: str | os.PathLike) -> tuple[Path, int]:
    """Write the model of the newest good checkpoint in ``run/ckpt`` (its EMA weights when the run keeps
    them) to ``path`` for :func:`ebm_fast.models.load_model`, with the same meta a finished run's
    ``model.pt`` has (condition, data, step, training config). Returns ``(path, step)``.

    Raises:
        FileNotFoundError: no checkpoint in ``run/ckpt``.
        ebm_fast.checkpoint.CheckpointError: checkpoints exist but none is a usable training state.
        ValueError: the run's model was not built by :mod:`ebm_fast.models` (no recorded architecture).
    """
    found = CheckpointManager(Path(run) / "ckpt").load_latest(map_location="cpu", check=is_training_state)
    if found is None:
        raise FileNotFoundError(f"{Path(run) / 'ckpt'}: no checkpoint (is {run} an ebm-fast train run folder?)")
    state, source = found
    if not state.get("model_config"):
        raise ValueError(f"{source}: the run's model records no architecture (not built by ebm_fast.models); "
                         "save it with ebm_fast.models.save_model from your own code")
    model = model_from_config(state["model_config"])
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    meta = {**state.get("meta", {}), "step": int(state["step"]), "train_config": state["config"]}
    save_model(path, model, meta)
    return Path(path), int(state["step"])
