"""Langevin chains for images of composed concepts: their settings and how to run them.

:class:`ChainSettings` says how a chain runs; :func:`sample_images` runs one from uniform noise in
[0, 1]. The settings default to the chain the concepts were trained with, as recorded in each model
file (:func:`chain_settings_of`), run as long as the training's persistent chains were on average
(:func:`from_noise_steps`: K / (1 - p) with a replay buffer); without that record, to
:class:`ebm_fast.training.TrainConfig`'s defaults (60 steps, step size 10, noise 0.005, element-wise
gradient clip 0.01, the released code's ``noise_first`` order). :func:`resolve_device` turns a device
name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a device this machine has.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from .compose import Expr, balance_conjunctions, balance_disjunctions
from .training.config import TrainConfig

__all__ = ["ChainSettings", "CHAIN_FIELDS", "chain_settings_of", "generation_chain", "from_noise_steps",
           "agreed_chain_fields", "recorded_chains", "sample_images", "concepts_resolution", "to_uint8",
           "resolve_device"]

_TRAIN = TrainConfig  # class attributes hold the dataclass defaults


@dataclass
class ChainSettings:
    """How image chains are run: ``steps`` K, ``step_size``, ``noise``, ``grad_clip`` (element-wise,
    None = off), ``order`` (``noise_first``/``ula``), ``backend``, ``resolution`` (None: the concepts'
    training resolution), ``batch_size`` (chains sampled at once), ``balance_and`` (scale every
    conjunction's terms to the weakest one's gradient at the starting noise,
    :func:`ebm_fast.compose.balance_conjunctions`), ``balance_or`` (give every disjunction's terms
    equal weight at their own modes, :func:`ebm_fast.compose.balance_disjunctions`),
    ``balance_strength`` (the fraction of that correction applied) and ``balance_steps`` (the length
    of the chain of each term alone that finds those modes)."""

    steps: int = _TRAIN.langevin_steps
    step_size: float = _TRAIN.step_size
    noise: float = _TRAIN.noise
    grad_clip: float | None = _TRAIN.sample_grad_clip
    order: str = _TRAIN.order
    backend: str = "auto"
    resolution: int | None = None
    batch_size: int = 128
    balance_and: bool = False
    balance_or: bool = False
    # half the gap: on Disj(Position 1, Position 2) chosen at 128 samples (seed 0), then 0.452 / 0.450
    # at 1000 fresh ones (seed 1), where the whole gap overshoots (docs/sampling.md)
    balance_strength: float = 0.5
    balance_steps: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps: expected an integer >= 0, got {self.steps!r}")
        if not math.isfinite(self.balance_strength):
            raise ValueError(f"balance_strength: expected a finite number, got {self.balance_strength!r}")
        if not isinstance(self.balance_steps, int) or self.balance_steps < 0:
            raise ValueError(f"balance_steps: expected an integer >= 0, got {self.balance_steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {self.batch_size!r}")
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 1):
            raise ValueError(f"resolution: expected a positive integer or None, got {self.resolution!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The chain in a few words: ``"400 steps of 7.5, noise 0.005, clip 0.01"``."""
        clip = "no clip" if self.grad_clip is None else f"clip {self.grad_clip:g}"
        return f"{self.steps} steps of {self.step_size:g}, noise {self.noise:g}, {clip}"


def concepts_resolution(concepts: Mapping) -> int:
    """The image size the concepts were trained at (their data's ``scene_config``, else the model's
    registered resolution, else 32); ValueError if they disagree."""
    found = {}
    for attr, (model, meta) in concepts.items():
        r = (((meta or {}).get("data") or {}).get("scene_config") or {}).get("resolution")
        r = r or (getattr(model, "config", {}) or {}).get("resolution")
        if r:
            found[attr] = int(r)
    if len(set(found.values())) > 1:
        raise ValueError(f"concepts: expected one training resolution, got {found} (pass a resolution)")
    return next(iter(found.values()), 32)


def _device_of(expr: Expr) -> torch.device:
    for leaf in expr.leaves():
        for p in getattr(leaf.model, "parameters", lambda: iter(()))():
            return p.device
    return torch.device("cpu")


def sample_images(expr: Expr, n: int, settings: ChainSettings, resolution: int, seed: int) -> Tensor:
    """``n`` images ``(n, 3, resolution, resolution)`` float32 in [0, 1] from ``expr``, chains started
    from uniform noise drawn with ``seed`` (the Langevin noise uses ``seed`` too). Leaves with
    per-sample conditions must hold exactly ``n`` of them. With ``settings.balance_and`` the
    conjunctions are first balanced at that noise. With ``settings.balance_or`` the
    disjunctions are first balanced at their terms' modes, found by ``settings.balance_steps`` steps
    of each term alone from the same noise."""
    from .sampler import sample

    device = _device_of(expr)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x0 = torch.rand(n, 3, resolution, resolution, generator=gen).to(device)

    def chain(e: Expr, x: Tensor, steps: int) -> Tensor:
        return sample(e, x, steps=steps, step_size=settings.step_size, noise=settings.noise, clamp=(0.0, 1.0),
                      grad_clip=settings.grad_clip, order=settings.order, seed=int(seed), backend=settings.backend)

    if settings.balance_and:
        expr = balance_conjunctions(expr, x0)
    if settings.balance_or:
        expr = balance_disjunctions(expr, x0, settle=lambda term, x: chain(term, x, settings.balance_steps),
                                    strength=settings.balance_strength)
    x = chain(expr, x0, settings.steps)
    return x.detach().float().clamp(0.0, 1.0).cpu()


def to_uint8(images: Tensor) -> np.ndarray:
    """float ``(N, 3, H, W)`` in [0, 1] -> uint8 ``(N, H, W, 3)`` (what the grid writers take)."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# Chain options that default to the concepts' own training chain (see chain_settings_of).
CHAIN_FIELDS = {"steps": "langevin_steps", "step_size": "step_size", "noise": "noise", "grad_clip": "sample_grad_clip",
                "order": "order"}


def from_noise_steps(train_config: Mapping) -> int:
    """Langevin steps for a chain started from uniform noise that matches the training's chains.

    Training continues chains from its replay buffer: each draw extends a stored chain by ``K`` steps
    with probability ``p`` and starts a fresh one otherwise, so the chains it learned from were on
    average ``K / (1 - p)`` steps long (400 for K = 20, p = 0.95). Without a buffer (p = 0) it is ``K``.
    """
    k = int(train_config["langevin_steps"])
    p = float(train_config.get("replay_p", 0.0) or 0.0)
    if not 0.0 <= p < 1.0:
        return k
    return max(k, int(round(k / (1.0 - p))))


def generation_chain(meta: Mapping | None) -> dict:
    """The chain fields a concept's file recommends for sampling from noise
    (``meta["generation"]["chain"]``, a subset of :data:`CHAIN_FIELDS`' keys), measured to generate
    better than its training chain; ``{}`` when it names none."""
    chain = dict(((meta or {}).get("generation") or {}).get("chain") or {})
    unknown = sorted(set(chain) - set(CHAIN_FIELDS))
    if unknown:
        raise ValueError(f"generation chain: unknown fields {unknown} (expected some of {sorted(CHAIN_FIELDS)})")
    return chain


def chain_settings_of(concepts: Mapping | None, **overrides) -> ChainSettings:
    """Chain settings for sampling ``concepts`` from noise: the Langevin chain they were trained with
    (step size, noise, gradient clip, order from each model's recorded ``train_config``; steps
    :func:`from_noise_steps`, as long as the training's persistent chains), with the fields a model's
    file recommends for generation (:func:`generation_chain`) in place of those. Each field takes the
    concepts' value where all of them record a chain and agree on that field, else
    :class:`ChainSettings`' default (:func:`agreed_chain_fields`); ``overrides`` win. A file without a
    training chain (an ensemble of trained models, :class:`ebm_fast.models.EnergyEnsemble`) counts
    when its recommended chain names every field."""
    return ChainSettings(**{**agreed_chain_fields(recorded_chains(concepts)), **overrides})


def agreed_chain_fields(recorded: Mapping[str, tuple | None]) -> dict:
    """The fields of ``CHAIN_FIELDS`` on which every chain in ``recorded`` (:func:`recorded_chains`)
    agrees; none where a concept records no chain."""
    if not recorded or None in recorded.values():
        return {}
    return {f: vals[0] for f, *vals in zip(CHAIN_FIELDS, *recorded.values()) if len(set(vals)) == 1}


def recorded_chains(concepts: Mapping | None) -> dict[str, tuple | None]:
    """Per concept, the values of ``CHAIN_FIELDS`` it records (its training chain with its file's
    recommended generation fields in place), or None where it records no complete chain."""
    out: dict[str, tuple | None] = {}
    for name, (_, meta) in (concepts or {}).items():
        tc = (meta or {}).get("train_config") or {}
        own = {}
        if all(v in tc for v in CHAIN_FIELDS.values()):
            own = {f: from_noise_steps(tc) if f == "steps" else tc[v] for f, v in CHAIN_FIELDS.items()}
        own.update(generation_chain(meta))
        out[name] = tuple(own[f] for f in CHAIN_FIELDS) if all(f in own for f in CHAIN_FIELDS) else None
    return out


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; otherwise ``torch.device(name)``, checked to exist here.

    Raises:
        ValueError: naming the device, when the name is not a device or this machine lacks it
            (``cuda`` without a CUDA device, ``cuda:N`` past the last one).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r}: this machine has no CUDA device (use cpu or auto)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
    return dev
