"""Several trained models of one concept as one concept file (``ebm-fast models combine``).

The file holds an :class:`ebm_fast.models.EnergyEnsemble`, ``E(x, c) = sum_i w_i E_i(x, c)`` (a
product of experts over the same condition), and loads with :func:`ebm_fast.models.load_model` like
any model file. Its ``meta`` keeps every member's own ``meta`` (training configuration and step) under
``meta["members"]``, and a full generation chain under ``meta["generation"]["chain"]`` (an ensemble
has no training chain of its own): by default the first member's chain from noise, any field given on
the command line replacing it.

    ebm-fast models combine ebm_fast/paper/assets/concepts/color.pt color_k60.pt --weights 0.5 0.5 \\
        --steps 400 --step-size 7.5 --note "why" --out color_ensemble.pt
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping, Sequence

from .models import EnergyEnsemble, load_model

__all__ = ["combine_models"]

# meta entries that describe the concept (must agree across members), not one member's training
_CONCEPT_KEYS = ("cond", "cond_type", "cond_dim")


def _classes(meta: Mapping) -> dict:
    data = meta.get("data") or {}
    return {k: data.get(k) for k in ("colors", "shapes") if data.get(k) is not None}


def combine_models(paths: Sequence[str | Path], weights: Sequence[float] | None = None, *,
                   chain: Mapping | None = None, note: str | None = None) -> tuple[EnergyEnsemble, dict]:
    """``(ensemble, meta)`` of the model files ``paths`` (see the module docstring).

    Raises:
        ValueError: fewer than two files, weights that do not fit, or members that disagree on the
            condition (``cond``, ``cond_type``, ``cond_dim``), its class names, or the resolution.
    """
    from .chains import CHAIN_FIELDS, chain_settings_of

    if len(paths) < 2:
        raise ValueError(f"models: expected at least 2 model files, got {len(paths)}")
    loaded = [load_model(p) for p in paths]
    metas = [m for _, m in loaded]
    for key in _CONCEPT_KEYS:
        found = [meta.get(key) for meta in metas]
        if len(set(map(str, found))) != 1:
            raise ValueError(f"models: expected one {key} across {[str(p) for p in paths]}, got {found}")
    classes = [_classes(meta) for meta in metas]
    if any(c != classes[0] for c in classes):
        raise ValueError(f"models: expected the same class names, got {classes}")
    ensemble = EnergyEnsemble([m for m, _ in loaded], weights)
    unknown = sorted(set(chain or {}) - set(CHAIN_FIELDS))
    if unknown:
        raise ValueError(f"chain: unknown fields {unknown} (expected some of {sorted(CHAIN_FIELDS)})")
    first = chain_settings_of({"first": loaded[0]}).to_dict()
    own_chain = {f: first[f] for f in CHAIN_FIELDS}
    own_chain.update({k: v for k, v in (chain or {}).items() if v is not None})
    meta = {key: metas[0][key] for key in _CONCEPT_KEYS if key in metas[0]}
    if "data" in metas[0]:
        meta["data"] = copy.deepcopy(metas[0]["data"])
    meta["members"] = [{"file": str(p), "weight": w, "meta": copy.deepcopy(m)}
                       for p, w, m in zip(paths, ensemble.weights, metas)]
    meta["generation"] = {"chain": own_chain}
    if note:
        meta["generation"]["chain_note"] = note
    return ensemble, meta
