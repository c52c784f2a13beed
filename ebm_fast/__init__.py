"""ebm_fast: fast sampling, composition, training and inference for energy-based models.

Concepts are energy models (``Concept(model, cond)``) combined by conjunction ``a & b``,
disjunction ``a | b`` and negation ``~a`` (Du, Li & Mordatch 2020), and sampled with Langevin
dynamics through one fused step per backend (``ebm_fast.ops.langevin_step``).
"""

from __future__ import annotations

import importlib
import os

# OpenMP threads that spin while waiting starve each other when the machine is busy: under load on a
# 2-core CPU, a 16x16 conv ran 60x slower with 2 torch threads (48 ms vs 0.7 ms) until the wait
# policy was passive (0.9-1.4 ms). Only takes effect if torch is not imported yet; a user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _moved, ops
from .compose import (And, Concept, Expr, Negated, Not, Or, Scale, balance_conjunctions, balance_disjunctions,
                      per_column)
from .version import __version__

_moved.install()  # old module paths (ebm_fast.judges, ebm_fast.data.scenes, ...) keep working

__all__ = ["Concept", "Expr", "And", "Or", "Not", "Scale", "Negated", "per_column", "balance_disjunctions",
           "balance_conjunctions", "ops",
           "sample", "langevin", "ReplayBuffer", "sample_annealed", "__version__"]

# Names whose modules import heavier parts (models, training, data) load on first use.
_LAZY = {
    "sample": "sampler",
    "langevin": "sampler",
    "ReplayBuffer": "replay",
    "sample_annealed": "diffusion",
}
# Modules reachable as attributes (``ef.diffusion``, ``ef.mcmc``) without an explicit import.
_LAZY_SUBPACKAGES = ("diffusion", "mcmc")


def __getattr__(name: str):
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ebm_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
