"""The fused MALA/HMC operations in plain PyTorch: the ``torch`` backend and the readable reference.

Two operations cover both samplers (docs/mcmc.md states the contract; every backend computes the
same functions with fp32 arithmetic):

* **move** -- one pass over ``[B, D]`` that composes the leaves' gradients with the program's
  per-sample weights (docs/contract.md §2) and moves the state:

  ====== ============================ =========================================================
  phase  name                         update (``g = sum_i w_i G_i``, ``eps`` per chain, ``T``)
  ====== ============================ =========================================================
  0      MALA proposal                ``x' = x - eps g + sqrt(2 T eps) xi``
  1      HMC first leapfrog step      ``p = xi / sqrt(m^-1) - (0.5 eps / T) g``; ``x' = x + eps m^-1 p``
  2      HMC leapfrog step            ``p = p - (eps / T) g``;  ``x' = x + eps m^-1 p``
  ====== ============================ =========================================================

  with ``xi = xi(seed, step, b D + d)`` the normal noise of docs/contract.md §4. It also writes the composed
  energy at ``x``. Phase 1's kick is the leapfrog's first half kick; phase 2's is the merged
  "last half kick of one leapfrog step + first half kick of the next".

* **accept** -- one pass per chain over the proposal: the composed energy ``e'`` and gradient
  ``g'`` at ``x'`` (the program evaluator), a row reduction over D, the log acceptance ratio, a
  uniform from the Philox stream, and the select:

  * MALA: ``log a = (e - e') / T + sum_d xi^2 / 2 - sum_d (x - x' + eps g')^2 / (4 T eps)``
    (``sum xi^2 / 2`` is the forward proposal's exponent, regenerated from the stream);
  * HMC: ``p' = p - (0.5 eps / T) g'`` (the last half kick),
    ``log a = (e - e') / T + sum_d xi^2 / 2 - sum_d m^-1 p'^2 / 2`` (the initial kinetic energy is
    ``sum xi^2 / 2`` for ``p = sqrt(m) xi``);
  * ``u = uint_to_uniform_float(r0)`` of ``Philox4x32-10(key=seed, counter=(lo32 b, hi32 b,
    lo32 step, hi32 step XOR 2**31))`` (:func:`accept_uniform`; bit 31 of the last counter word
    keeps it apart from every noise counter of docs/contract.md §4 while ``step < 2**63``);
  * accepted iff ``log a`` is finite and ``u < exp(min(log a, 0))`` (a NaN or infinite ratio, from a
    non-finite proposal, rejects); accepted rows of ``x``, ``G``, ``E`` and ``e`` take the
    proposal's values, ``accept_out = 1`` or ``0``, ``alpha_out = exp(min(log a, 0))`` (0 where
    ``log a`` is not finite).

Launcher signatures (flattened, validated tensors; :mod:`ebm_fast.mcmc` builds them)::

    move(x, grads, energies, table, *, phase, step_size, temperature, inv_mass, seed, step,
         momentum, out, energy_out) -> None
    accept(x, proposal, grads_p, energies_p, table, *, method, step_size, temperature, inv_mass,
           seed, step, momentum, grads, energies, energy, accept_out, alpha_out) -> None

    x, proposal, out     [B, D]     float32, contiguous (``out`` may be ``x`` in phase 2)
    grads, grads_p       [N, B, D]  float32, contiguous
    energies, energies_p [N, B]     float32, contiguous
    table                [M, 5]     float32 program table (ebm_fast.program; on the host for torch)
    step_size            [B]        float32 per-chain step size eps
    temperature          Python float T > 0
    inv_mass             None or [D] float32: the diagonal of M^-1
    seed, step           Python int, or 0-dim int64 tensors on x's device
    momentum             [B, D] float32 (HMC; None for MALA)
    energy_out, energy   [B]        float32 composed energy at the current state
    accept_out, alpha_out [B]       float32
"""

from __future__ import annotations

import torch
from torch import Tensor

from .program import Program
from .rng import MASK32, normal_noise, philox4x32, uniform_from_uint32

__all__ = ["mcmc_move_torch", "mcmc_accept_torch", "accept_uniform", "METHODS", "PHASE_MALA",
           "PHASE_HMC_FIRST", "PHASE_HMC", "ACCEPT_TAG"]

METHODS = {"mala": 0, "hmc": 1}
PHASE_MALA, PHASE_HMC_FIRST, PHASE_HMC = 0, 1, 2
ACCEPT_TAG = 0x80000000  # XOR-ed into hi32(step): the accept uniforms' counters


def accept_uniform(seed: int | Tensor, step: int | Tensor, batch: int, device: torch.device | str = "cpu") -> Tensor:
    """The accept test's uniform of chains ``0..batch-1`` at ``step``: float32 ``[batch]`` in ``[0, 1)``."""
    device = torch.device(device)
    b = torch.arange(batch, dtype=torch.int64, device=device)
    if isinstance(step, Tensor):
        st = step.to(device=device, dtype=torch.int64)
        c2, c3 = (st & MASK32).expand_as(b), (((st >> 32) & MASK32) ^ ACCEPT_TAG).expand_as(b)
    else:
        st = int(step)
        c2 = torch.full_like(b, st & MASK32)
        c3 = torch.full_like(b, ((st >> 32) & MASK32) ^ ACCEPT_TAG)
    if isinstance(seed, Tensor):
        seed = seed.to(device=device)
    r0, _, _, _ = philox4x32(seed, b & MASK32, (b >> 32) & MASK32, c2, c3)
    return uniform_from_uint32(r0)


def _composed(grads: Tensor, energies: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
    """``(g [B, D], e [B])``: the composed gradient and energy (docs/contract.md §2) in fp32."""
    n = grads.shape[0]
    program = Program(table=table, num_leaves=n, leaf_signs=(), description="")
    w, e = program.weights_and_energy(energies.float())
    return torch.einsum("nb,nbd->bd", w, grads.float()), e


def mcmc_move_torch(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, *, phase: int, step_size: Tensor,
                    temperature: float, inv_mass: Tensor | None, seed, step, momentum: Tensor | None, out: Tensor,
                    energy_out: Tensor) -> None:
    b, d = x.shape
    g, e = _composed(grads, energies, table)
    eps = step_size[:, None]
    if phase == PHASE_MALA:
        xi = normal_noise(seed, step, b * d, device=x.device).view(b, d)
        new = x - eps * g + torch.sqrt(eps * (2.0 * temperature)) * xi
    else:
        if phase == PHASE_HMC_FIRST:
            xi = normal_noise(seed, step, b * d, device=x.device).view(b, d)
            p0 = xi if inv_mass is None else xi / torch.sqrt(inv_mass)
            p = p0 - (0.5 * eps / temperature) * g
        else:
            p = momentum - (eps / temperature) * g
        momentum.copy_(p)
        new = x + eps * (p if inv_mass is None else p * inv_mass)
    energy_out.copy_(e)
    out.copy_(new)


def mcmc_accept_torch(x: Tensor, proposal: Tensor, grads_p: Tensor, energies_p: Tensor, table: Tensor, *,
                      method: int, step_size: Tensor, temperature: float, inv_mass: Tensor | None, seed, step,
                      momentum: Tensor | None, grads: Tensor, energies: Tensor, energy: Tensor, accept_out: Tensor,
                      alpha_out: Tensor) -> None:
    b, d = x.shape
    g, e_new = _composed(grads_p, energies_p, table)
    eps = step_size[:, None]
    xi = normal_noise(seed, step, b * d, device=x.device).view(b, d)
    forward = 0.5 * (xi * xi).sum(1)
    if method == METHODS["mala"]:
        r = x - proposal + eps * g
        reverse = (r * r).sum(1) / (step_size * (4.0 * temperature))
    else:
        pf = momentum - (0.5 * eps / temperature) * g
        k = pf * pf if inv_mass is None else pf * pf * inv_mass
        reverse = 0.5 * k.sum(1)
    log_alpha = (energy - e_new) / temperature + forward - reverse
    finite = torch.isfinite(log_alpha)
    alpha = torch.where(finite, torch.exp(log_alpha.clamp(max=0.0)), torch.zeros_like(log_alpha))
    u = accept_uniform(seed, step, b, device=x.device)
    acc = finite & (u < alpha)
    x.copy_(torch.where(acc[:, None], proposal, x))
    grads.copy_(torch.where(acc[None, :, None], grads_p, grads))
    energies.copy_(torch.where(acc[None, :], energies_p, energies))
    energy.copy_(torch.where(acc, e_new, energy))
    accept_out.copy_(acc.float())
    alpha_out.copy_(alpha)
