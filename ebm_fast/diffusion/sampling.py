"""Annealed composed sampling of time-conditioned energies.

:func:`sample_annealed` runs the reverse process over a decreasing sequence of noise levels
``t_1 > t_2 > ... > t_L``. At each level it sets every leaf model's level (``model.set_level(t)``,
an in-place write to a buffer the model reads), runs ``corrector_steps`` Langevin steps of
:func:`ebm_fast.sample` on the composed expression -- the fused step combines the leaves' energies
and gradients exactly as for any ebm_fast expression -- and then a *predictor* moves the states to
the next level.

* Corrector at level ``t``: ULA with step size ``eta_t = step_scale * sigma_t^2`` and noise
  ``sqrt(2 eta_t)``, so the chain targets ``exp(-e_root(x, t))``. The ``sigma_t^2`` scaling matches
  the curvature of a noised density, which is at most ``1 / sigma_t^2`` (for data ``N(mu, s^2 I)``
  it is ``1 / (alpha_t^2 s^2 + sigma_t^2)``), so ``step_scale < 2`` keeps every level stable.
  Composition is what needs correctors: the sum of noised energies is not the noised energy of
  the product (Du et al. 2023), and the correctors sample the composed distribution at each level.
* Predictor from ``t`` to ``t'`` (``"ddpm"``): the composed score ``s = -grad e_root`` gives
  Tweedie's estimate ``x0 = (x + sigma_t^2 s) / alpha_t`` and ``eps = -sigma_t s``, and the DDPM
  posterior step ``x' = alpha_t' x0 + sqrt(sigma_t'^2 - c^2) eps + c z`` with
  ``c^2 = (sigma_t'^2 / sigma_t^2) (1 - alpha_t^2 / alpha_t'^2)`` (DDIM with eta = 1). After the
  last level the states are replaced by Tweedie's ``x0`` (``denoise=True``) or left at ``t_L``.
  For a single concept with its exact score this is the usual ancestral sampler; for a
  composition the predictor lands off the next level's composed target and the correctors pull
  it back, so they need enough steps to mix there.

Seeds: level ``i``'s corrector chain uses seed ``seed + 2 i + 1`` and its predictor noise a
generator seeded with ``seed + 2 i + 2``, so one ``seed`` reproduces the whole run (on one device
and backend) and ``seed=None`` draws it from torch's default generator.

``expr`` may also be a callable ``level -> Expr`` for compositions whose terms change with the
level (a calibrated disjunction, :func:`ebm_fast.diffusion.disjunction`).
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..compose import Expr
from .schedule import VPSchedule

__all__ = ["sample_annealed", "level_models", "PREDICTORS"]

PREDICTORS = ("ddpm",)


def level_models(expr: Expr) -> list:
    """The distinct models of ``expr``'s leaves; each must be time-conditioned (``set_level``)."""
    out, seen = [], set()
    for leaf in expr.leaves():
        m = leaf.model
        if id(m) in seen:
            continue
        if not callable(getattr(m, "set_level", None)):
            raise TypeError(f"{leaf._repr()}: its model has no set_level(t); annealed sampling needs time-conditioned "
                            f"energy models (ebm_fast.diffusion.EnergyUNet or a model with set_level and a "
                            f"schedule)")
        seen.add(id(m))
        out.append(m)
    return out


def _composed_grad(expr: Expr, x: Tensor) -> Tensor:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(expr.energy(xg).sum(), xg)
    return g


def sample_annealed(expr: Expr | Callable[[int], Expr], x0: Tensor, schedule: VPSchedule | None = None, *,
                    levels: int | Sequence[int] = 50, corrector_steps: int = 1, step_scale: float = 0.1,
                    step_size: float | Callable[[int], float] | None = None,
                    predictor: str = "ddpm", denoise: bool = True, seed: int | None = None,
                    method: str | None = None, backend: str = "auto", graph: bool | str = "auto",
                    trajectory: bool = False, **sample_kwargs):
    """The reverse process of a composed diffusion energy with Langevin correctors at each level.

    Args:
        expr: an ebm_fast expression over time-conditioned concepts, or ``level -> expression``.
        x0: ``(B, ...)`` starting states at the first level, usually ``torch.randn`` (level ``T``
            is ``N(0, I)`` up to ``alpha_T``).
        schedule: the noise schedule (default: the leaf models', which must agree).
        levels: the number of levels (evenly spaced from ``T`` down to 1) or an explicit strictly
            decreasing sequence of integer levels in ``[1, T]``.
        corrector_steps: Langevin steps per level (``K >= 0``).
        step_scale: ``eta_t = step_scale * sigma_t^2`` (when ``step_size`` is None).
        step_size: the corrector step size instead: a number for every level, or ``level -> eta``.
            The ``sigma_t^2`` rule is stable for any data but moves little once ``sigma_t^2`` falls
            below the composed target's variance, where a chain freezes; a composition (whose
            noised energies are not the noised energy of the composed distribution) needs its
            correctors to mix there (measured on a product of two 2-D Gaussians whose exact mean
            is 0.504, 4000 chains: 50 levels, ``step_scale=0.5``, K = 5 gave 0.462; 20 levels,
            K = 50, ``step_size=0.004`` gave 0.503; docs/diffusion.md).
        predictor: ``"ddpm"`` (module docstring).
        denoise: replace the final states by Tweedie's clean estimate.
        seed: base seed (module docstring); None draws one from torch's default generator.
        method: the corrector: None or ``"ula"`` (unadjusted, ``order="ula"``), ``"mala"`` (step
            ``eta_t``, Metropolis-adjusted, so no step-size bias) or ``"hmc"`` (leapfrog step
            ``sqrt(2 eta_t)``, the size at which one leapfrog step is a MALA step of ``eta_t``);
            MALA/HMC options (``leapfrog_steps``, ``adapt``...) go through ``sample_kwargs``.
        backend, graph: passed to :func:`ebm_fast.sample`.
        trajectory: also return the states after each level, ``(L, B, ...)``.
        sample_kwargs: more keyword arguments for :func:`ebm_fast.sample` (``grouping``, ``workers``...).

    Returns:
        ``x`` (x0's shape), or ``(x, trajectory)``.
    """
    from ..sampler import sample

    make = expr if (callable(expr) and not isinstance(expr, Expr)) else None
    if make is None and not isinstance(expr, Expr):
        raise TypeError(f"expr must be an ebm_fast expression or a callable level -> expression, got "
                        f"{type(expr).__name__}")
    if not isinstance(x0, Tensor) or x0.dim() < 2 or not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating Tensor of shape (B, ...), got "
                        f"{type(x0).__name__ if not isinstance(x0, Tensor) else (x0.dtype, tuple(x0.shape))}")
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    if not (isinstance(step_scale, (int, float)) and 0 < step_scale < 2):
        raise ValueError(f"step_scale must be a number in (0, 2) (eta_t = step_scale * sigma_t^2), got {step_scale!r}")
    for k in ("steps", "step_size", "noise", "clamp", "order", "seed"):
        if k in sample_kwargs:
            raise ValueError(f"sample_annealed sets {k!r} of each corrector chain itself; do not pass it")
    if make is not None and schedule is None:
        schedule = getattr(make, "schedule", None)
        if schedule is None:
            raise ValueError("schedule: pass schedule= when expr is a callable level -> expression")
    models = level_models(expr) if make is None else []
    if schedule is None:
        schedules = {(m.schedule.T, m.schedule.kind) for m in models if hasattr(m, "schedule")}
        if len(schedules) != 1:
            raise ValueError(f"schedule: the leaf models use {len(schedules)} different schedules {sorted(schedules)}; "
                             f"pass schedule= explicitly")
        schedule = next(m.schedule for m in models if hasattr(m, "schedule"))
    if isinstance(levels, int) and not isinstance(levels, bool):
        lv = schedule.levels(levels)
    else:
        lv = [int(v) for v in levels]
        if not lv or any(not 1 <= v <= schedule.T for v in lv) or any(a <= b for a, b in zip(lv, lv[1:])):
            raise ValueError(f"levels must be strictly decreasing integers in [1, {schedule.T}], got {list(levels)}")
    extra = dict(sample_kwargs)
    if method not in (None, "ula"):
        if "method" not in inspect.signature(sample).parameters:
            raise ValueError(f"method={method!r}: this version of ebm_fast.sample has no method argument (ULA only); "
                             f"leave method=None")
        extra["method"] = method
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
    seed = int(seed)
    x = x0.detach().clone()
    traj = []
    for i, t in enumerate(lv):
        e = make(t) if make is not None else expr
        for m in (level_models(e) if make is not None else models):
            m.set_level(t)
        sig = float(schedule.sigmas[t])
        if corrector_steps:
            if step_size is None:
                eta = step_scale * sig * sig
            else:
                eta = float(step_size(t) if callable(step_size) else step_size)
            if not eta > 0:
                raise ValueError(f"step_size: expected a positive corrector step size at level {t}, got {eta!r}")
            if "method" not in extra:  # ULA: x' = x - eta g + sqrt(2 eta) xi
                kw = dict(step_size=eta, noise=(2 * eta) ** 0.5, order="ula")
            elif extra["method"] == "hmc":  # one leapfrog step of size eps is MALA with eta = eps^2 / 2
                kw = dict(step_size=(2 * eta) ** 0.5)
            else:
                kw = dict(step_size=eta)
            x = sample(e, x, steps=corrector_steps, clamp=None, seed=seed + 2 * i + 1, backend=backend, graph=graph,
                       **kw, **extra)
        nxt = lv[i + 1] if i + 1 < len(lv) else 0
        a, a2 = float(schedule.alphas[t]), float(schedule.alphas[nxt])
        s2 = float(schedule.sigmas[nxt])
        if nxt == 0:
            x = _tweedie(e, x, a, sig) if denoise else x
        else:
            score = -_composed_grad(e, x)
            x0_hat = (x + sig * sig * score) / a
            eps_hat = -sig * score
            c2 = max((s2 * s2) / (sig * sig) * (1 - (a * a) / (a2 * a2)), 0.0)
            gen = torch.Generator(device=x.device).manual_seed(seed + 2 * i + 2)
            z = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            x = a2 * x0_hat + max(s2 * s2 - c2, 0.0) ** 0.5 * eps_hat + c2 ** 0.5 * z
        x = x.detach()
        if trajectory:
            traj.append(x.clone())
    return (x, torch.stack(traj)) if trajectory else x


def _tweedie(expr: Expr, x: Tensor, alpha: float, sigma: float) -> Tensor:
    """``E[x_0 | x_t = x] = (x - sigma^2 grad e(x)) / alpha``."""
    return (x - sigma * sigma * _composed_grad(expr, x)) / alpha
