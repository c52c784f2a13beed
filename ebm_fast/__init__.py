"""ebm_fast: fast sampling, composition, training and inference for energy-based models.

Concepts are energy models (``Concept(model, cond)``) combined by conjunction ``a & b``,
disjunction ``a | b`` and negation ``~a`` (Du, Li & Mordatch 2020), and sampled with Langevin
dynamics through one fused step per backend (``ebm_fast.ops.langevin_step``).
"""

from __future__ import annotations

import importlib

from . import ops
from .compose import And, Concept, Expr, Not, Or, Scale
from .version import __version__

__all__ = ["Concept", "Expr", "And", "Or", "Not", "Scale", "ops", "sample", "langevin", "ReplayBuffer",
           "__version__"]

# Names whose modules import heavier parts (models, training, data) load on first use.
_LAZY = {
    "sample": "sampler",
    "langevin": "sampler",
    "ReplayBuffer": "replay",
}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ebm_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
