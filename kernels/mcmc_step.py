"""The fused MALA/HMC operations (:mod:`ebm_fast.mcmc_reference`) as two Triton kernels: the ``triton`` backend.

Layers as in :mod:`ebm_fast.kernels.langevin_step`: private ``@triton.jit`` kernels and launchers on
validated, flattened tensors with the reference's signatures (:mod:`ebm_fast.mcmc` validates once
per chain).

* the program evaluator and the noise are the Langevin kernel's jit helpers
  (:func:`ebm_fast.kernels.langevin_step.program_weights`, ``normal_at``);
* ``_move_kernel`` -- grid of ``BLOCK_B x BLOCK_D`` tiles; composes ``g`` and applies the phase's
  update (MALA proposal, HMC first leapfrog step with the momentum draw, HMC leapfrog step). The
  momentum is read and written in the same pass as the position.
* ``_accept_kernel`` -- one program per ``BLOCK_B`` chains, two sweeps over D: the first reduces
  ``sum xi^2`` and the reverse term (MALA: ``(x - x' + eps g')^2``; HMC: the kinetic energy after the
  last half kick), then the decision is made per chain; the second copies the proposal's state,
  gradients and energies into the accepted chains (nothing is written for a rejected one).

Noise: each element runs its own Philox call and keeps lane ``j % 4`` (docs/contract.md §4), so any ``D`` works.
Loops over D chunks and program rows have constexpr bounds (Triton's interpreter cannot run a loop
bounded by a runtime argument); a chain keeps one ``D`` and one program, so this compiles once.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl
from torch import Tensor

from .langevin_step import (
    int64_halves,
    load_int64,
    next_pow2,
    normal_at,
    program_tile,
    program_weights,
)

__all__ = ["mcmc_move_triton", "mcmc_accept_triton"]

_TILE = 1024  # elements of a [BLOCK_B, BLOCK_D] tile
_MAX_BLOCK_D = 256
_PROGRAM_ELEMS = 512  # [NP, BLOCK_B, MP] gather of the leaf weights
_NUM_WARPS = 4


@functools.lru_cache(maxsize=256)
def _blocks(batch: int, dim: int, num_leaves: int, num_nodes: int) -> tuple[int, int]:
    np_, mp = next_pow2(num_leaves), next_pow2(num_nodes)
    block_d = min(next_pow2(max(dim, 1)), _MAX_BLOCK_D)
    block_b = max(1, min(next_pow2(batch), _TILE // block_d, _PROGRAM_ELEMS // (np_ * mp)))
    return block_b, block_d


@triton.jit(do_not_specialize=["seed", "seed_hi", "step", "step_hi"])
def _move_kernel(x_ptr, g_ptr, e_ptr, table_ptr, eps_ptr, inv_mass_ptr, p_ptr, out_ptr, energy_ptr,
                 temperature, two_t, seed, seed_hi, step, step_hi, B, D, n_dchunks,
                 BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr, N: tl.constexpr,
                 M: tl.constexpr, MP: tl.constexpr, PHASE: tl.constexpr, HAS_MASS: tl.constexpr,
                 SEED_PTR: tl.constexpr, STEP_PTR: tl.constexpr):
    pid_d, offs_b, offs_d, bmask, dmask, rows = program_tile(n_dchunks, B, D, BLOCK_B, BLOCK_D)
    mask = bmask[:, None] & dmask[None, :]
    tile = rows[:, None] * D + offs_d[None, :]
    leaves = tl.arange(0, NP)
    x = tl.load(x_ptr + tile, mask=mask, other=0.0)
    grads = tl.load(g_ptr + leaves.to(tl.int64)[:, None, None] * B * D + tile[None, :, :],
                    mask=(leaves < N)[:, None, None] & mask[None, :, :], other=0.0)
    w, e_root, _, _ = program_weights(table_ptr, e_ptr, offs_b, bmask, B, BLOCK_B, NP, M, MP)
    tl.store(energy_ptr + offs_b, e_root, mask=bmask & (pid_d == 0))
    g = tl.sum(w[:, :, None] * grads, axis=0)
    eps = tl.load(eps_ptr + offs_b, mask=bmask, other=0.0)[:, None]
    if PHASE == 0:  # MALA proposal
        xi = normal_at(load_int64(seed, seed_hi, SEED_PTR), load_int64(step, step_hi, STEP_PTR), rows, offs_d, D)
        new = x - eps * g + tl.sqrt_rn(eps * two_t) * xi
    else:
        if PHASE == 1:  # momentum draw p = sqrt(m) xi, then the first half kick
            xi = normal_at(load_int64(seed, seed_hi, SEED_PTR), load_int64(step, step_hi, STEP_PTR), rows, offs_d,
                         D)
            if HAS_MASS:
                xi = xi / tl.sqrt_rn(tl.load(inv_mass_ptr + offs_d, mask=dmask, other=1.0))[None, :]
            p = xi - (0.5 * eps / temperature) * g
        else:  # the merged full kick
            p = tl.load(p_ptr + tile, mask=mask, other=0.0) - (eps / temperature) * g
        tl.store(p_ptr + tile, p, mask=mask)
        if HAS_MASS:
            new = x + eps * (p * tl.load(inv_mass_ptr + offs_d, mask=dmask, other=1.0)[None, :])
        else:
            new = x + eps * p
    tl.store(out_ptr + tile, new, mask=mask)


@triton.jit(do_not_specialize=["seed", "seed_hi", "step", "step_hi"])
def _accept_kernel(x_ptr, xp_ptr, gp_ptr, ep_ptr, table_ptr, eps_ptr, inv_mass_ptr, p_ptr, g_ptr, e_ptr,
                   energy_ptr, accept_ptr, alpha_ptr, temperature, four_t, seed, seed_hi, step, step_hi, B, D,
                   BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr, N: tl.constexpr,
                   M: tl.constexpr, MP: tl.constexpr, NDC: tl.constexpr, METHOD: tl.constexpr,
                   HAS_MASS: tl.constexpr, SEED_PTR: tl.constexpr, STEP_PTR: tl.constexpr):
    pid = tl.program_id(0)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    bmask = offs_b < B
    rows = offs_b.to(tl.int64)
    leaves = tl.arange(0, NP)
    lmask = leaves < N
    s = load_int64(seed, seed_hi, SEED_PTR)
    t = load_int64(step, step_hi, STEP_PTR)
    w, e_new, _, _ = program_weights(table_ptr, ep_ptr, offs_b, bmask, B, BLOCK_B, NP, M, MP)
    eps = tl.load(eps_ptr + offs_b, mask=bmask, other=1.0)
    forward = tl.zeros([BLOCK_B], dtype=tl.float32)
    reverse = tl.zeros([BLOCK_B], dtype=tl.float32)
    for c in tl.range(0, NDC):  # sweep 1: the row reductions
        offs_d = c * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        mask = bmask[:, None] & dmask[None, :]
        tile = rows[:, None] * D + offs_d[None, :]
        grads = tl.load(gp_ptr + leaves.to(tl.int64)[:, None, None] * B * D + tile[None, :, :],
                        mask=lmask[:, None, None] & mask[None, :, :], other=0.0)
        g = tl.sum(w[:, :, None] * grads, axis=0)
        xi = tl.where(mask, normal_at(s, t, rows, offs_d, D), 0.0)
        forward += tl.sum(xi * xi, axis=1)
        if METHOD == 0:
            r = (tl.load(x_ptr + tile, mask=mask, other=0.0) - tl.load(xp_ptr + tile, mask=mask, other=0.0)
                 + eps[:, None] * g)
            reverse += tl.sum(tl.where(mask, r * r, 0.0), axis=1)
        else:
            pf = tl.load(p_ptr + tile, mask=mask, other=0.0) - (0.5 * eps / temperature)[:, None] * g
            k = pf * pf
            if HAS_MASS:
                k = k * tl.load(inv_mass_ptr + offs_d, mask=dmask, other=0.0)[None, :]
            reverse += tl.sum(tl.where(mask, k, 0.0), axis=1)
    if METHOD == 0:
        reverse = reverse / (eps * four_t)
    else:
        reverse = 0.5 * reverse
    e_old = tl.load(energy_ptr + offs_b, mask=bmask, other=0.0)
    log_alpha = (e_old - e_new) / temperature + 0.5 * forward - reverse
    finite = tl.abs(log_alpha) < float("inf")
    alpha = tl.where(finite, tl.exp(tl.minimum(log_alpha, 0.0)), 0.0)
    zero = offs_b * 0
    r0, _, _, _ = tl.philox(s, offs_b.to(tl.uint32), (rows >> 32).to(tl.uint32),
                            (zero + (t & 0xFFFFFFFF)).to(tl.uint32),
                            ((zero + ((t >> 32) & 0xFFFFFFFF)) ^ 0x80000000).to(tl.uint32))
    u = tl.random.uint_to_uniform_float(r0)
    acc = finite & (u < alpha) & bmask
    tl.store(alpha_ptr + offs_b, alpha, mask=bmask)
    tl.store(accept_ptr + offs_b, tl.where(acc, 1.0, 0.0), mask=bmask)
    tl.store(energy_ptr + offs_b, tl.where(acc, e_new, e_old), mask=bmask)
    e_leaf = tl.load(ep_ptr + leaves[:, None] * B + offs_b[None, :], mask=lmask[:, None] & acc[None, :], other=0.0)
    tl.store(e_ptr + leaves[:, None] * B + offs_b[None, :], e_leaf, mask=lmask[:, None] & acc[None, :])
    for c in tl.range(0, NDC):  # sweep 2: accepted chains take the proposal's state and gradients
        offs_d = c * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = acc[:, None] & (offs_d < D)[None, :]
        tile = rows[:, None] * D + offs_d[None, :]
        tl.store(x_ptr + tile, tl.load(xp_ptr + tile, mask=mask, other=0.0), mask=mask)
        lt = leaves.to(tl.int64)[:, None, None] * B * D + tile[None, :, :]
        lm = lmask[:, None, None] & mask[None, :, :]
        tl.store(g_ptr + lt, tl.load(gp_ptr + lt, mask=lm, other=0.0), mask=lm)


def _common(x: Tensor, grads: Tensor, table: Tensor, step_size: Tensor, inv_mass: Tensor | None, seed, step,
            momentum: Tensor | None) -> tuple[tuple, dict, int, int, tuple]:
    """What both launches share: ``(rng_and_sizes, meta, block_d, row_blocks, (inv_mass, momentum))``,
    an absent inverse mass or momentum replaced by a placeholder tensor that the kernel never reads
    (``HAS_MASS`` is False; MALA never touches the momentum)."""
    n, b, d = grads.shape
    m = table.shape[0]
    block_b, block_d = _blocks(b, d, n, m)
    rng = (*int64_halves("seed", seed), *int64_halves("step", step), b, d)
    meta = dict(BLOCK_B=block_b, BLOCK_D=block_d, NP=next_pow2(n), N=n, M=m, MP=next_pow2(m),
                HAS_MASS=inv_mass is not None, SEED_PTR=isinstance(seed, Tensor), STEP_PTR=isinstance(step, Tensor),
                num_warps=_NUM_WARPS)
    placeholders = (inv_mass if inv_mass is not None else step_size, momentum if momentum is not None else x)
    return rng, meta, block_d, -(-b // block_b), placeholders


def mcmc_move_triton(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, *, phase: int, step_size: Tensor,
                     temperature: float, inv_mass: Tensor | None, seed, step, momentum: Tensor | None, out: Tensor,
                     energy_out: Tensor) -> None:
    """The move of :mod:`ebm_fast.mcmc_reference` (contiguous float32 tensors)."""
    if x.shape[0] == 0:
        return
    rng, meta, block_d, row_blocks, (inv_m, p) = _common(x, grads, table, step_size, inv_mass, seed, step, momentum)
    n_dchunks = max(1, -(-x.shape[1] // block_d))
    _move_kernel[(row_blocks * n_dchunks,)](x, grads, energies, table, step_size, inv_m, p, out, energy_out,
                                            float(temperature), 2.0 * float(temperature), *rng, n_dchunks,
                                            PHASE=int(phase), **meta)


def mcmc_accept_triton(x: Tensor, proposal: Tensor, grads_p: Tensor, energies_p: Tensor, table: Tensor, *,
                       method: int, step_size: Tensor, temperature: float, inv_mass: Tensor | None, seed, step,
                       momentum: Tensor | None, grads: Tensor, energies: Tensor, energy: Tensor, accept_out: Tensor,
                       alpha_out: Tensor) -> None:
    """The accept of :mod:`ebm_fast.mcmc_reference` (contiguous float32 tensors)."""
    if x.shape[0] == 0:
        return
    rng, meta, block_d, row_blocks, (inv_m, p) = _common(x, grads_p, table, step_size, inv_mass, seed, step,
                                                         momentum)
    _accept_kernel[(row_blocks,)](x, proposal, grads_p, energies_p, table, step_size, inv_m, p, grads, energies,
                                  energy, accept_out, alpha_out, float(temperature), 4.0 * float(temperature), *rng,
                                  NDC=max(1, -(-x.shape[1] // block_d)), METHOD=int(method), **meta)
