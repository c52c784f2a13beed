"""Training conditional EBMs by contrastive divergence, in parts.

* :mod:`.config` -- :class:`TrainConfig`, every setting with its help (the CLI's options come from it).
* :mod:`.data` -- :class:`ConditionalData`, :func:`load_data` (registered sources or an .npz),
  :func:`synthetic_data`.
* :mod:`.loss` -- the contrastive loss, the conditional ranking term, adversarial positives.
* :mod:`.state` -- devices and processes (DDP), the chains' model mode, checkpoint contents, the log.
* :mod:`.trainer` -- :class:`Trainer`: negatives, update, checkpoints, export, grids, the loop.
* :mod:`.options` -- the argparse options generated from the config, :func:`config_from_args`.

``Trainer(TrainConfig(...)).train()`` runs a run; ``ebm-fast train`` is the command.
"""

from __future__ import annotations

from .config import ATTRIBUTES, OBJECTIVES, RESUME_OVERRIDABLE, TrainConfig, label_key
from .data import ConditionalData, load_data, load_npz, register_data_source, synthetic_data
from .options import config_from_args
from .state import roughness
from .trainer import Trainer, train

__all__ = ["TrainConfig", "ConditionalData", "Trainer", "load_data", "load_npz", "synthetic_data", "train",
           "register_data_source", "config_from_args", "roughness", "label_key", "ATTRIBUTES", "OBJECTIVES",
           "RESUME_OVERRIDABLE"]
