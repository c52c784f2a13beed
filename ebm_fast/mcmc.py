"""Exact samplers on composed energies: MALA and HMC with a per-chain Metropolis accept.

Both target ``p(x) ∝ exp(-e(x) / T)`` for the composed energy ``e`` of an expression (docs/contract.md §2) and
temperature ``T``; the unadjusted chain of :mod:`ebm_fast.sampler` carries a discretisation bias
that these remove (docs/mcmc.md measures it). A chain is three small parts, as for Langevin:

* :class:`MCMCChain` -- what carries between steps: the state ``x`` ``[B, D]`` (fp32), the leaves'
  energies ``E`` ``[N, B]`` and gradients ``G`` ``[N, B, D]`` *at* ``x`` (kept, so a MALA step costs
  one model evaluation and an HMC step ``L``), the composed energy, per-chain step sizes, the
  momentum (HMC), the RNG state ``(seed, step)`` and the accept counts;
* :meth:`MCMCChain.step` -- one update in place, from the two fused operations of
  :mod:`ebm_fast.mcmc_reference` (the contract; backends chosen by :func:`ebm_fast.ops.prepare_mcmc`):

  - MALA: ``move`` (phase 0: the proposal ``x' = x - eps g + sqrt(2 T eps) xi``), the leaves at
    ``x'``, ``accept``;
  - HMC with ``L`` leapfrog steps: ``move`` (phase 1: momentum ``p = sqrt(m) xi``, half kick, drift),
    then ``L - 1`` times the leaves at ``x'`` and ``move`` (phase 2: full kick, drift), the leaves at
    ``x'``, ``accept`` (last half kick, kinetic energy, select);

  accept decisions stay on the device: nothing is read back inside the chain;
* the driver (:func:`sample`) -- a warm-up that adapts the step sizes (:class:`Adapt`, not part of
  the returned chain), then a Python loop or replays of a captured CUDA graph of ``S`` steps.

RNG steps: update ``k = 1, 2, ...`` (warm-up updates first) draws ``xi(seed, k, j)`` (docs/contract.md §4) for
the proposal noise (MALA) or the momentum (HMC), and the accept uniform of chain ``b`` from the
counter ``(lo32 b, hi32 b, lo32 k, hi32 k XOR 2**31)`` (:func:`ebm_fast.mcmc_reference.accept_uniform`).
So a seed fixes the chain on every backend.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import graphs, ops
from .chain_setup import check_int, graph_key, graph_plan, graphed_chain, replay_lengths
from .compose import Expr
from .leaf_eval import LeafEvaluator
from .model_state import frozen_parameters, inspect_model
from .mcmc_reference import METHODS, PHASE_HMC, PHASE_HMC_FIRST, PHASE_MALA
from .rng import draw_seed, seed_to_int64

__all__ = ["DEFAULT_LEAPFROG_STEPS", "TARGET_ACCEPT", "Adapt", "MCMCChain", "MCMCInfo", "StepSizeAdaptation",
           "refuse_ula_options", "sample"]

# Optimal acceptance rates for d -> infinity: MALA 0.574 (Roberts & Rosenthal 1998), HMC 0.651
# (Beskos et al. 2013); the targets of the step-size adaptation.
TARGET_ACCEPT = {"mala": 0.574, "hmc": 0.65}
DEFAULT_LEAPFROG_STEPS = 10


@dataclass
class Adapt:
    """Step-size adaptation toward a target acceptance probability, in a warm-up.

    The warm-up runs ``warmup`` updates before the returned chain (which starts where the warm-up
    ends). After each update, ``log eps`` moves by ``gain * (alpha - target) / (t + t0) ** kappa``
    (a Robbins-Monro recursion; Andrieu & Thoms 2008, section 5), where ``alpha`` is the update's
    acceptance probability ``min(1, ratio)`` -- not its 0/1 decision, which carries the same mean
    with more noise. The returned chain uses ``exp`` of the mean ``log eps`` over the second half of
    the warm-up (Polyak-Ruppert averaging; the first half is the transient from the initial step).

    Why not Hoffman & Gelman's dual averaging: its iterates move by about ``1 / (0.05 sqrt(t))``
    times the acceptance error per update, so after a few hundred updates they still straddle
    HMC's stability edge, where the acceptance falls from 0.65 to 0.17 within 10% of the step size
    (10-D Gaussian, variances 0.25..2, L = 3). The acceptance averages to the target along the
    iterates, but at their averaged step size it is 0.72 (shared) and 0.75 (per chain) for a
    target of 0.65. With a gain that falls as ``t^-kappa`` the iterates settle on the target:
    docs/mcmc.md has the measurements.

    Attributes:
        warmup: warm-up updates (>= 1).
        target: target acceptance probability (default :data:`TARGET_ACCEPT` of the method).
        per_chain: one step size per chain from its own ``alpha`` (True), or one shared step size
            from the batch mean of ``alpha`` (False).
        gain, t0, kappa: the recursion's constants (``gain, t0 > 0``, ``kappa`` in (0.5, 1]): the
            first update moves ``log eps`` by ``gain / (1 + t0) ** kappa`` = 0.49 per unit of
            acceptance error.
    """

    warmup: int
    target: float | None = None
    per_chain: bool = True
    gain: float = 3.0
    t0: float = 10.0
    kappa: float = 0.75


class StepSizeAdaptation:
    """The state of :class:`Adapt` on device tensors ``[B]`` (no host sync)."""

    def __init__(self, eps0: Tensor, cfg: Adapt, target: float):
        self.cfg, self.target = cfg, target
        self.log_eps = torch.log(eps0)
        self.log_eps_sum = torch.zeros_like(eps0)
        self.averaged = 0
        self.t = 0

    def update(self, alpha: Tensor) -> Tensor:
        """Take the update's acceptance probabilities ``[B]``; return the next step sizes ``[B]``."""
        cfg = self.cfg
        self.t += 1
        a = alpha if cfg.per_chain else alpha.mean().expand_as(alpha)
        self.log_eps = self.log_eps + (cfg.gain / (self.t + cfg.t0) ** cfg.kappa) * (a - self.target)
        if 2 * self.t > cfg.warmup:
            self.log_eps_sum += self.log_eps
            self.averaged += 1
        return torch.exp(self.log_eps)

    def final(self) -> Tensor:
        """The returned chain's step sizes: the average ``log eps`` of the warm-up's second half."""
        return torch.exp(self.log_eps_sum / self.averaged) if self.averaged else torch.exp(self.log_eps)


@dataclass
class MCMCInfo:
    """Diagnostics of one MALA/HMC call (``return_info=True``).

    Attributes:
        method: ``"mala"`` or ``"hmc"``; leapfrog_steps: L (1 for MALA).
        seed, steps, warmup: the RNG seed, K and the warm-up updates before the chain.
        backend: the fused operations' backend; graph: as :class:`ebm_fast.sampler.SampleInfo`.
        accept_rate: float32 ``(B,)``: accepted fraction of the K returned updates, per chain.
        step_size: float32 ``(B,)``: the step sizes of the returned chain (after adaptation).
        accepted: bool ``(K, B)`` per-update decisions, with ``return_energies=True`` (else None).
        energies: float32 ``(K, B)`` composed energy after each update, with ``return_energies=True``.
        grouping, workers, warnings: as :class:`ebm_fast.sampler.SampleInfo`.
    """

    method: str
    leapfrog_steps: int
    seed: int
    steps: int
    warmup: int
    backend: str
    graph: str
    accept_rate: Tensor
    step_size: Tensor
    accepted: Tensor | None = None
    energies: Tensor | None = None
    grouping: list = field(default_factory=list)
    workers: int = 1
    warnings: list = field(default_factory=list)


# ---- the chain --------------------------------------------------------------------------------
class MCMCChain:
    """A MALA/HMC chain's buffers and its in-place update (see the module docstring).

    Args:
        evaluator: the leaves' energies and gradients (``grad_dtype`` float32).
        kernels: ``(backend, move, accept, table)`` from :func:`ebm_fast.ops.prepare_mcmc`.
        shape: the state's shape ``[B, ...]``.
        method: ``"mala"`` or ``"hmc"``; leapfrog_steps: L; temperature: T.
        inv_mass: None or float32 ``[D]``: the diagonal of the inverse mass (HMC).
        device_scalars: seed and step counter in device memory (advanced on the device; capturable).
    """

    def __init__(self, evaluator: LeafEvaluator, kernels: tuple, shape: Sequence[int], device: torch.device, *,
                 method: str, leapfrog_steps: int, temperature: float, inv_mass: Tensor | None,
                 device_scalars: bool):
        self.evaluator = evaluator
        self.backend, self._move, self._accept, self.table = kernels
        self.shape = tuple(shape)
        self.method, self.method_code = method, METHODS[method]
        self.leapfrog_steps, self.temperature = leapfrog_steps, float(temperature)
        self.device_scalars = device_scalars
        b, d, n = self.shape[0], math.prod(self.shape[1:]), evaluator.num_leaves
        self.batch, self.dim, self.num_leaves = b, d, n
        f32 = dict(dtype=torch.float32, device=device)
        self.x = torch.zeros(b, d, **f32)
        self.proposal = torch.zeros(b, d, **f32)
        self.momentum = torch.zeros(b, d, **f32) if method == "hmc" else None
        self.inv_mass = None if inv_mass is None else torch.zeros(d, **f32)
        if inv_mass is not None:
            self.inv_mass.copy_(inv_mass)
        self.grads = torch.zeros(n, b, d, **f32)
        self.energies = torch.zeros(n, b, **f32)
        self.energy = torch.zeros(b, **f32)
        self.scratch = torch.zeros(b, **f32)  # energies at intermediate leapfrog points (unused)
        self.step_size = torch.zeros(b, **f32)
        self.accepted = torch.zeros(b, **f32)
        self.alpha = torch.zeros(b, **f32)
        self.accept_sum = torch.zeros(b, **f32)
        if device_scalars:
            self.seed_t = torch.zeros((), dtype=torch.int64, device=device)
            self.step_t = torch.zeros((), dtype=torch.int64, device=device)
        self.seed, self.s = 0, 1

    def _leaves(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        e, g = self.evaluator(flat.view(self.shape))
        return e, g.view(self.num_leaves, self.batch, self.dim)

    def load(self, x0: Tensor, seed: int, step_size: Tensor, first_step: int = 1) -> tuple[Tensor, Tensor]:
        """Start at ``x0`` with per-chain ``step_size`` ``[B]``; the first update draws RNG step
        ``first_step``. Returns the leaves' ``(E, G)`` at ``x0`` (the caller checks them once)."""
        self.x.copy_(x0.reshape(self.batch, self.dim))
        e, g = self._leaves(self.x)
        self.energies.copy_(e)
        self.grads.copy_(g)
        self.step_size.copy_(step_size)
        self.accept_sum.zero_()
        self.seed = seed
        self.set_step(first_step)
        if self.device_scalars:
            self.seed_t.fill_(seed_to_int64(seed))
        return e, g

    def set_step(self, s: int) -> None:
        self.s = s
        if self.device_scalars:
            self.step_t.fill_(s)

    def _rng(self) -> tuple[Any, Any]:
        return (self.seed_t, self.step_t) if self.device_scalars else (self.seed, self.s)

    def step(self) -> None:
        """One MALA/HMC update of the whole batch, in place (no host sync)."""
        seed, s = self._rng()
        common = dict(step_size=self.step_size, temperature=self.temperature, inv_mass=self.inv_mass, seed=seed,
                      step=s)
        if self.method == "mala":
            self._move(self.x, self.grads, self.energies, self.table, phase=PHASE_MALA, momentum=None,
                       out=self.proposal, energy_out=self.energy, **common)
        else:
            self._move(self.x, self.grads, self.energies, self.table, phase=PHASE_HMC_FIRST,
                       momentum=self.momentum, out=self.proposal, energy_out=self.energy, **common)
            for _ in range(self.leapfrog_steps - 1):
                e, g = self._leaves(self.proposal)
                self._move(self.proposal, g, e, self.table, phase=PHASE_HMC, momentum=self.momentum,
                           out=self.proposal, energy_out=self.scratch, **common)
        e, g = self._leaves(self.proposal)
        self._accept(self.x, self.proposal, g, e, self.table, method=self.method_code, momentum=self.momentum,
                     grads=self.grads, energies=self.energies, energy=self.energy, accept_out=self.accepted,
                     alpha_out=self.alpha, **common)
        self.accept_sum.add_(self.accepted)
        if self.device_scalars:
            self.step_t.add_(1)
        else:
            self.s += 1

    def run_steps(self, n: int) -> None:
        for _ in range(n):
            self.step()


# ---- argument checks --------------------------------------------------------------------------
def _positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def _step_sizes(step_size: Any, batch: int, device: torch.device) -> Tensor:
    """float32 ``[B]`` per-chain step sizes from a number or a ``(B,)`` tensor."""
    if isinstance(step_size, Tensor):
        if step_size.dim() != 1 or step_size.shape[0] != batch or not step_size.is_floating_point():
            raise ValueError(f"step_size as a tensor must be a float tensor of shape ({batch},) (one step size per "
                             f"chain), got {step_size.dtype} {tuple(step_size.shape)}")
        eps = step_size.detach().to(device=device, dtype=torch.float32)
        if device.type == "cpu" and not bool(((eps > 0) & torch.isfinite(eps)).all()):
            raise ValueError("step_size must hold finite numbers > 0")
        return eps.clone()
    if isinstance(step_size, Sequence) and not isinstance(step_size, str):
        raise TypeError("step_size of method='mala'/'hmc' is a number or a (B,) tensor of per-chain step sizes, not "
                        "a schedule (use adapt= to tune it in a warm-up)")
    return torch.full((batch,), _positive("step_size", step_size), dtype=torch.float32, device=device)


def _inverse_mass(mass: Any, sample_shape: tuple, device: torch.device) -> Tensor | None:
    """None (unit mass) or float32 ``[D]``: the diagonal of ``M^-1``."""
    if mass is None:
        return None
    d = math.prod(sample_shape)
    if isinstance(mass, Tensor):
        if tuple(mass.shape) not in (tuple(sample_shape), (d,)) or not mass.is_floating_point():
            raise ValueError(f"mass must be a number or a float tensor of the sample shape {tuple(sample_shape)} "
                             f"(or ({d},)): the diagonal mass, got {mass.dtype} {tuple(mass.shape)}")
        m = mass.detach().reshape(d).to(device=device, dtype=torch.float32)
        if not bool(((m > 0) & torch.isfinite(m)).all()):
            raise ValueError("mass must hold finite numbers > 0")
        return 1.0 / m
    return torch.full((d,), 1.0 / _positive("mass", mass), dtype=torch.float32, device=device)


def _adapt_config(adapt: Any, method: str) -> tuple[Adapt | None, float]:
    if adapt is None or adapt is False:
        return None, TARGET_ACCEPT[method]
    if isinstance(adapt, numbers.Integral) and not isinstance(adapt, bool):
        adapt = Adapt(warmup=int(adapt))
    if not isinstance(adapt, Adapt):
        raise TypeError(f"adapt must be None, a number of warm-up steps or an ebm_fast.mcmc.Adapt, got {adapt!r}")
    if isinstance(adapt.warmup, bool) or not isinstance(adapt.warmup, int) or adapt.warmup < 1:
        raise ValueError(f"adapt.warmup must be an int >= 1, got {adapt.warmup!r}")
    if not (adapt.gain > 0 and adapt.t0 > 0 and 0.5 < adapt.kappa <= 1):
        raise ValueError(f"adapt needs gain > 0, t0 > 0 and 0.5 < kappa <= 1, got gain={adapt.gain}, t0={adapt.t0}, "
                         f"kappa={adapt.kappa}")
    target = TARGET_ACCEPT[method] if adapt.target is None else float(adapt.target)
    if not 0.0 < target < 1.0:
        raise ValueError(f"adapt.target must be in (0, 1), got {target}")
    return adapt, target


def _check_leaves(leaves, e: Tensor, g: Tensor, seed: int) -> None:
    """One read at the start of a chain: the leaves must be finite at ``x0``."""
    bad = ~torch.isfinite(e).all(dim=1) | ~torch.isfinite(g).reshape(g.shape[0], -1).all(dim=1)
    if bool(bad.any()):
        names = ", ".join(f"{leaves[i]!r} (leaf {i})" for i in torch.nonzero(bad).flatten().tolist())
        raise FloatingPointError(f"non-finite energy or gradient at x0 in {names} (seed {seed}): MALA/HMC start "
                                 "from a state of finite energy")


def refuse_ula_options(method: str, *, noise, clamp, grad_clip, trajectory, init, on_nonfinite) -> None:
    """Raise ``ValueError`` for an option of the unadjusted chain that MALA/HMC do not take."""
    if method not in METHODS:
        raise ValueError(f"method must be 'ula', 'mala' or 'hmc', got {method!r}")
    if clamp is not None:
        raise ValueError(f"method={method!r} does not clamp (a clamp breaks detailed balance, so the chain would not "
                         f"sample exp(-e/T)); leave clamp unset (None, the default), got {clamp}")
    if noise is not None:
        raise ValueError(f"method={method!r} takes no noise: it follows from step_size and temperature "
                         "(sqrt(2 T step_size) for MALA); leave noise unset")
    if grad_clip is not None:
        raise ValueError(f"method={method!r} takes no grad_clip (the accept step needs the true gradient)")
    if trajectory:
        raise ValueError(f"method={method!r} records no trajectory; use return_energies / return_info")
    if init is not None or on_nonfinite != "raise":
        raise ValueError(f"method={method!r} rejects non-finite proposals itself: init and on_nonfinite='reinit' "
                         "are options of method='ula'")


# ---- the driver -------------------------------------------------------------------------------
def sample(expr: Expr, x0: Tensor, *, method: str, steps: int, step_size, temperature: float = 1.0,
           leapfrog_steps: int | None = None, mass=None, adapt: Adapt | int | None = None, seed: int | None = None,
           backend: str = "auto", graph: bool | str = "auto", grouping: str = "auto", memory_format: str = "auto",
           compile: bool | dict = False, autocast: torch.dtype | None = None, workers: int | None = None,
           return_energies: bool = False, return_info: bool = False,
           graph_steps: int = graphs.DEFAULT_GRAPH_STEPS):
    """K MALA or HMC updates on a composed energy, from ``x0`` (reached through :func:`ebm_fast.sample`).

    Args:
        expr, x0, steps, seed, backend, graph, grouping, memory_format, compile, autocast, workers,
            graph_steps: as for :func:`ebm_fast.sample` (the state is stepped in fp32).
        method: ``"mala"`` or ``"hmc"``.
        step_size: ``eps``: a number or a float ``(B,)`` tensor of per-chain step sizes (the initial
            ones when ``adapt`` is given).
        temperature: ``T`` of the target ``exp(-e/T)`` (default 1).
        leapfrog_steps: HMC's L (default 10); not allowed with MALA.
        mass: HMC's diagonal mass: None (identity), a number, or a tensor of the sample shape.
        adapt: None, a number of warm-up steps, or :class:`Adapt`: adaptation of the
            step size in a warm-up before the returned chain.
        return_energies: also return the composed energies ``[K, B]`` after each update (and record
            the per-update decisions in the info). Runs eagerly.
        return_info: also return an :class:`MCMCInfo`.

    Returns:
        ``x`` (x0's shape, dtype, device), or ``(x, energies?, info?)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be 'ula', 'mala' or 'hmc', got {method!r}")
    if not isinstance(expr, Expr):
        raise TypeError(f"expr must be an ebm_fast expression (Concept, And, Or, Not, Scale), got "
                        f"{type(expr).__name__}")
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2:
        got = f"{x0.dtype} {tuple(x0.shape)}" if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a floating Tensor of shape (B, ...) with at least 2 dimensions, got {got}")
    steps = check_int("steps", steps, 0)
    graph_steps = check_int("graph_steps", graph_steps, 1)
    temperature = _positive("temperature", temperature)
    if method == "mala":
        if leapfrog_steps not in (None, 1):
            raise ValueError(f"leapfrog_steps is an HMC option; method='mala' got leapfrog_steps={leapfrog_steps}")
        if mass is not None:
            raise ValueError("mass is an HMC option; method='mala' takes none")
        leapfrog_steps = 1
    else:
        leapfrog_steps = check_int("leapfrog_steps", DEFAULT_LEAPFROG_STEPS if leapfrog_steps is None
                                    else leapfrog_steps, 1)
    if not (isinstance(graph, bool) or (isinstance(graph, str) and graph == "auto")):
        raise ValueError(f"graph must be 'auto', True or False, got {graph!r}")
    cfg, target = _adapt_config(adapt, method)
    device = x0.device
    batch = x0.shape[0]
    eps0 = _step_sizes(step_size, batch, device)
    inv_mass = _inverse_mass(mass, tuple(x0.shape[1:]), device)
    kernels = ops.prepare_mcmc(expr, device, backend=backend)
    if seed is None:
        seed = draw_seed()
    seed = ops.check_seed(seed)
    warmup = cfg.warmup if cfg is not None else 0
    leaves = expr.leaves()
    parts = [inspect_model(leaf.model) for leaf in leaves]
    modules = list({id(m): m for p in parts for m in p.modules}.values())

    with torch.inference_mode(False), frozen_parameters(modules):
        evaluator = LeafEvaluator(leaves, batch, x0.shape[1:], device, model_dtype=x0.dtype,
                                  grad_dtype=torch.float32, grouping=grouping, memory_format=memory_format,
                                  autocast=autocast, compile=compile, workers=workers)
        info = MCMCInfo(method=method, leapfrog_steps=leapfrog_steps, seed=seed, steps=steps, warmup=warmup,
                        backend=kernels[0], graph="eager", accept_rate=torch.zeros(batch, device=device),
                        step_size=eps0, grouping=evaluator.modes, workers=evaluator.workers,
                        warnings=list(evaluator.warnings))
        energies = torch.zeros(steps, batch, dtype=torch.float32, device=device) if return_energies else None
        accepted = torch.zeros(steps, batch, dtype=torch.bool, device=device) if return_energies else None
        x0f = x0.detach().to(torch.float32)
        if batch == 0:
            result = x0f.clone()
        else:
            use_graph, why = graph_plan(graph, device, steps, return_energies, modules, parts)
            if not use_graph and why:
                info.graph = f"eager: {why}"

            def new_chain(device_scalars: bool) -> MCMCChain:
                return MCMCChain(evaluator, kernels, x0.shape, device, method=method, leapfrog_steps=leapfrog_steps,
                                 temperature=temperature, inv_mass=inv_mass, device_scalars=device_scalars)

            window = max(1, min(graph_steps, steps))
            chain, replays = None, None
            if use_graph:
                key = graph_key(expr, leaves, parts, modules, x0, (
                    "mcmc", method, leapfrog_steps, temperature, inv_mass is None, kernels[0], grouping,
                    memory_format, str(autocast), repr(sorted(compile.items())) if isinstance(compile, dict)
                    else compile, window))
                chain, replays, info.graph = _graphed_chain(key, new_chain, leaves, x0f, seed, eps0, steps, window)
                if chain is None and "failed (" in info.graph:
                    info.warnings.append(info.graph)
            if chain is None:
                chain = new_chain(device_scalars=False)
            elif inv_mass is not None:
                chain.inv_mass.copy_(inv_mass)  # a cached chain: this call's mass
            e0, g0 = chain.load(x0f, seed, eps0, first_step=1)
            _check_leaves(leaves, e0, g0, seed)
            if cfg is not None:
                adaptation = StepSizeAdaptation(eps0, cfg, target)
                for _ in range(warmup):
                    chain.step()
                    chain.step_size.copy_(adaptation.update(chain.alpha))
                chain.step_size.copy_(adaptation.final())
            chain.accept_sum.zero_()
            chain.set_step(warmup + 1)
            if replays is not None:
                for n in replay_lengths(steps, window):
                    replays[n]()
            else:
                for k in range(steps):
                    chain.step()
                    if energies is not None:
                        energies[k].copy_(chain.energy)
                        accepted[k].copy_(chain.accepted > 0)
            info.accept_rate = chain.accept_sum / max(steps, 1)
            info.step_size = chain.step_size.clone()
            result = chain.x.view(x0.shape).clone()
        info.energies, info.accepted = energies, accepted

    out = [result.to(x0.dtype)]
    if energies is not None:
        out.append(energies)
    if return_info:
        out.append(info)
    return out[0] if len(out) == 1 else tuple(out)


def _graphed_chain(key: tuple, new_chain: Callable[[bool], MCMCChain], leaves, x0: Tensor, seed: int, eps0: Tensor,
                   steps: int, window: int):
    """``(chain, replays, info.graph)``: a cached or newly captured chain (its buffers static, its seed
    and step counter on the device), or ``(None, None, why)`` when capture fails (warned once per key).
    The caller loads the chain."""

    def capture(chain: MCMCChain, n: int) -> Callable[[], None]:
        chain.load(x0, seed, eps0)  # the capture's warm-up steps need a valid state
        return graphs.capture(lambda: chain.run_steps(n), chain.step, x0.device)

    return graphed_chain(key, new_chain, leaves, replay_lengths(steps, window), capture, what="MCMC", stacklevel=4)
