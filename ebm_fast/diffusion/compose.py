"""Composition of diffusion concepts, built from the ebm_fast algebra so that the fused step does it.

A *diffusion concept* is a time-conditioned energy ``E(x, t | c)`` trained by denoising score
matching; its gradient is exact (at convergence) but its level is not: DSM fixes ``E`` only up to
a constant per condition and level, ``E(x, t | c) = -log p_t(x | c) + k_c(t)``. That decides which
operators carry over.

* **Conjunction** (Liu et al. 2022, Composable Diffusion): the product of conditionals divided by
  the unconditional, ``p(x | c_1, ..., c_n) ∝ p(x) prod_i p(x | c_i) / p(x)`` when the conditions
  are independent given ``x``, i.e. the energy ``E_u + sum_i w_i (E_i - E_u)`` with weights
  ``w_i = 1`` (``w_i > 1``: classifier-free guidance). Constants only shift it: exact.
* **Negation**: ``E_u - w (E_c - E_u)`` added to a conjunction (``p(x) (p(x) / p(x | c))^w``,
  Composable Diffusion's negative prompt). Its weights must keep the total curvature positive (a
  Gaussian example: precision ``(1 + w) / v_u - w / v_c > 0``); a negation alone with ``w >= 1``
  need not define a distribution.
* **Disjunction**: a mixture ``sum_j pi_j p(x | c_j)`` is ``-log sum_j exp(-(E_j - k_j) + log pi_j)``,
  which needs the unknown ``k_j``. Principled answer: the importance identity
  ``E_{x ~ p_t}[exp(-(E_j - E_u))] = Z_j / Z_u`` (``p_t`` the unconditional noised data) gives
  ``r_j(t) = log (Z_j / Z_u)``, and ``E_j + r_j`` are all ``-log p_t(x | c_j)`` plus the same
  constant. The estimate uses noised data samples (:func:`log_partition_ratios`); for a class
  condition the weights ``p(c | x) / p(c)`` are bounded by ``1 / p(c)``, so the estimate is tame,
  but for a continuous condition (a position) the weights peak sharply at small noise and the
  estimate needs many samples -- and it is only as good as ``E_j - E_u`` itself, whose errors enter
  exponentiated. Summing or averaging raw energies, or a log-sum-exp without the offsets, weights
  the terms by ``exp(k_j)``: one condition wins every chain.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..compose import And, Concept, Expr, Or

__all__ = ["concept", "unconditional", "conjunction", "disjunction", "CalibratedDisjunction",
           "log_partition_ratios"]


def _packed(model, cond) -> Tensor:
    spec = getattr(model, "cond_spec", None)
    if isinstance(cond, Mapping):
        if spec is None:
            raise TypeError("a condition given as a dict needs a model with a cond_spec (EnergyUNet)")
        return spec.pack(cond)
    if not isinstance(cond, Tensor):
        raise TypeError(f"condition: expected a dict of attributes or a packed Tensor, got {type(cond).__name__}")
    if spec is not None and cond.shape[-1:] != (spec.width,):
        raise ValueError(f"condition: expected a packed tensor of width {spec.width}, got shape {tuple(cond.shape)}")
    return cond


def concept(model, cond: Mapping[str, Any] | Tensor | None = None, *, per_sample: bool = False,
            name: str | None = None) -> Concept:
    """``Concept(model, packed cond)``: a dict of attributes (``{"color": 0}``) or a packed tensor;
    None is the unconditional concept (every attribute absent)."""
    c = model.cond_spec.pack({}) if cond is None else _packed(model, cond)
    if per_sample and c.dim() == 1:
        raise ValueError("per_sample=True needs packed conditions of shape (B, width)")
    return Concept(model, c, per_sample=per_sample, name=name)


def unconditional(model, batch: int | None = None) -> Concept:
    """The model with every attribute absent (``batch``: a per-sample condition of that size, so it
    groups with per-sample conditional leaves)."""
    if batch is None:
        return concept(model, None, name="uncond")
    return Concept(model, model.cond_spec.pack({}, batch=batch), per_sample=True, name="uncond")


def _weights(name: str, w, n: int) -> list[float]:
    if w is None:
        return [1.0] * n
    w = [float(v) for v in ([w] * n if isinstance(w, (int, float)) else w)]
    if len(w) != n:
        raise ValueError(f"{name}: expected {n} weights, got {len(w)}")
    return w


def conjunction(model, conds: Sequence, *, weights=None, negated: Sequence = (), negated_weights=None,
                per_sample: bool = False) -> Expr:
    """``E_u + sum_i w_i (E_i - E_u) - sum_j v_j (E_j - E_u)`` as one :class:`ebm_fast.And`.

    Args:
        model: a conditional time-conditioned energy model (its unconditional = every attribute absent).
        conds: conditions (dicts of attributes or packed tensors) to satisfy.
        weights: one guidance weight per condition or one for all (default 1: the product rule).
        negated: conditions to avoid; ``negated_weights`` likewise (default 1).
        per_sample: conditions are ``(B, width)``.

    The leaves share ``model``, so the fused sampler evaluates them in one group. The unconditional
    leaf's coefficient is ``1 - sum w + sum v``.
    """
    conds, negated = list(conds), list(negated)
    if not conds and not negated:
        raise ValueError("conjunction: give at least one condition")
    w = _weights("weights", weights, len(conds))
    v = _weights("negated_weights", negated_weights, len(negated))
    leaves = [concept(model, c, per_sample=per_sample) for c in conds + negated]
    batch = leaves[0].cond.shape[0] if per_sample else None
    coefs = w + [-x for x in v]
    cu = 1.0 - sum(w) + sum(v)
    if cu == 0.0:  # one condition at weight 1: the conditional itself, no unconditional pass
        return And(*leaves, coefs=coefs)
    return And(unconditional(model, batch), *leaves, coefs=[cu] + coefs)


@torch.no_grad()
def log_partition_ratios(terms: Sequence[Expr], base: Expr, x0: Tensor, levels: Sequence[int], schedule, *,
                         noise_draws: int = 1, batch_size: int = 256,
                         generator: torch.Generator | None = None) -> Tensor:
    """``r_j(t) = log E_{x ~ p_t}[exp(-(e_j(x) - e_base(x)))]`` for each term and level, ``(J, L)``.

    ``x ~ p_t`` is ``alpha_t x0 + sigma_t eps`` over the rows of ``x0`` (samples of the data that
    ``base`` models, in the model's coordinates), ``noise_draws`` noises per row. ``terms`` and
    ``base`` are expressions over time-conditioned models (their levels are set here).
    """
    from .sampling import level_models

    models = {id(m): m for e in list(terms) + [base] for m in level_models(e)}.values()
    out = torch.empty(len(terms), len(levels), dtype=torch.float64)
    for li, t in enumerate(levels):
        for m in models:
            m.set_level(int(t))
        a, s = float(schedule.alphas[t]), float(schedule.sigmas[t])
        diffs = [[] for _ in terms]
        for _ in range(noise_draws):
            for lo in range(0, x0.shape[0], batch_size):
                xb = x0[lo:lo + batch_size]
                x = a * xb + s * torch.randn(xb.shape, generator=generator, dtype=xb.dtype).to(xb.device)
                eb = base.energy(x).double()
                for j, term in enumerate(terms):
                    diffs[j].append(term.energy(x).double() - eb)
        for j in range(len(terms)):
            d = torch.cat(diffs[j])
            out[j, li] = torch.logsumexp(-d, 0) - torch.log(torch.tensor(float(d.numel()), dtype=torch.float64))
    return out


class CalibratedDisjunction:
    """``level -> Or(term_1, ..., term_n; log_weights = log pi_j - r_j(level))`` (a mixture whose
    terms' unknown constants are removed; see the module docstring). Pass it as the expression of
    :func:`ebm_fast.diffusion.sample_annealed`. ``r_j`` is interpolated linearly between the
    calibrated levels (held constant beyond them)."""

    def __init__(self, terms: Sequence[Expr], ratios: Tensor, levels: Sequence[int], schedule,
                 log_weights: Sequence[float] | None = None):
        self.terms = tuple(terms)
        lv = [int(t) for t in levels]
        self.log_weights = list(log_weights) if log_weights is not None else [0.0] * len(self.terms)
        if tuple(ratios.shape) != (len(self.terms), len(lv)) or len(self.log_weights) != len(self.terms):
            raise ValueError(f"CalibratedDisjunction: {len(self.terms)} terms need ratios of shape "
                             f"({len(self.terms)}, {len(lv)}) and {len(self.terms)} log_weights, got "
                             f"{tuple(ratios.shape)} and {len(self.log_weights)}")
        order = sorted(range(len(lv)), key=lambda i: lv[i])
        self.levels = torch.tensor([lv[i] for i in order], dtype=torch.float64)
        self.ratios = ratios.double()[:, order]
        self.schedule = schedule

    def offsets(self, t: int) -> list[float]:
        """``r_j(t)`` for every term."""
        return [float(np.interp(float(t), self.levels.numpy(), r.numpy())) for r in self.ratios]

    def __call__(self, t: int) -> Or:
        r = self.offsets(t)
        return Or(*self.terms, log_weights=[b - rj for b, rj in zip(self.log_weights, r)])


def disjunction(model, conds: Sequence, *, x0: Tensor, levels: Sequence[int], weights=None,
                log_weights: Sequence[float] | None = None, noise_draws: int = 1,
                generator: torch.Generator | None = None) -> CalibratedDisjunction:
    """A mixture of the conditionals ``p(x | c_j)`` (mixture weights ``exp(log_weights)``,
    default equal), calibrated at ``levels`` with the data ``x0`` (see the module docstring).

    Each term is ``conjunction(model, [c_j], weights=w_j)`` (``w_j = 1``: the plain conditional),
    calibrated against the unconditional energy.
    """
    conds = list(conds)
    if len(conds) < 2:
        raise ValueError("disjunction: give at least two conditions")
    w = _weights("weights", weights, len(conds))
    terms = [conjunction(model, [c], weights=[wj]) for c, wj in zip(conds, w)]
    r = log_partition_ratios(terms, unconditional(model), x0, levels, model.schedule, noise_draws=noise_draws,
                             generator=generator)
    return CalibratedDisjunction(terms, r, levels, model.schedule, log_weights)
