"""The fused MALA/HMC operations (:mod:`ebm_fast.mcmc_reference`) as two Triton kernels: the ``triton`` backend.

Layers as in :mod:`ebm_fast.kernels.langevin_step`: private ``@triton.jit`` kernels and launchers on
validated, flattened tensors with the reference's signatures (:mod:`ebm_fast.mcmc` validates once
per chain).

* :func:`_program_weights` -- the program evaluator (the two passes of :mod:`ebm_fast.program`) for
  a block of samples: leaf weights ``w`` ``[NP, BLOCK_B]`` and the root energy ``[BLOCK_B]``.
* ``_move_kernel`` -- grid of ``BLOCK_B x BLOCK_D`` tiles; composes ``g`` and applies the phase's
  update (MALA proposal, HMC first leapfrog step with the momentum draw, HMC leapfrog step). The
  momentum is read and written in the same pass as the position.
* ``_accept_kernel`` -- one program per ``BLOCK_B`` chains, two sweeps over D: the first reduces
  ``sum xi^2`` and the reverse term (MALA: ``(x - x' + eps g')^2``; HMC: the kinetic energy after the
  last half kick), then the decision is made per chain; the second copies the proposal's state,
  gradients and energies into the accepted chains (nothing is written for a rejected one).

Noise: each element runs its own Philox call and keeps lane ``j % 4`` (SPEC §4), so any ``D`` works.
Loops over D chunks and program rows have constexpr bounds (Triton's interpreter cannot run a loop
bounded by a runtime argument); a chain keeps one ``D`` and one program, so this compiles once.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl
from torch import Tensor

from .langevin_step import _int64_halves, _load_int64, _next_pow2

__all__ = ["mcmc_move_triton", "mcmc_accept_triton"]

_LEAF = tl.constexpr(0)
_SUM = tl.constexpr(1)
_TILE = 1024  # elements of a [BLOCK_B, BLOCK_D] tile
_MAX_BLOCK_D = 256
_PROGRAM_ELEMS = 512  # [NP, BLOCK_B, MP] gather of the leaf weights
_NUM_WARPS = 4


@functools.lru_cache(maxsize=256)
def _blocks(batch: int, dim: int, num_leaves: int, num_nodes: int) -> tuple[int, int]:
    np_, mp = _next_pow2(num_leaves), _next_pow2(num_nodes)
    block_d = min(_next_pow2(max(dim, 1)), _MAX_BLOCK_D)
    block_b = max(1, min(_next_pow2(batch), _TILE // block_d, _PROGRAM_ELEMS // (np_ * mp)))
    return block_b, block_d


@triton.jit
def _program_weights(table_ptr, e_ptr, offs_b, bmask, B, BLOCK_B: tl.constexpr, NP: tl.constexpr,
                     M: tl.constexpr, MP: tl.constexpr):
    """``(w [NP, BLOCK_B], e_root [BLOCK_B])`` of the samples ``offs_b`` from leaf energies ``[N, B]``."""
    nodes = tl.arange(0, MP)
    nmask = nodes < M
    leaf_col = tl.load(table_ptr + nodes * 5 + 1, mask=nmask, other=-1.0).to(tl.int32)
    parent_col = tl.load(table_ptr + nodes * 5 + 2, mask=nmask, other=-1.0).to(tl.int32)
    edge_col = tl.load(table_ptr + nodes * 5 + 3, mask=nmask, other=0.0)
    is_leaf = leaf_col >= 0
    ev = tl.load(e_ptr + leaf_col[None, :] * B + offs_b[:, None], mask=bmask[:, None] & is_leaf[None, :], other=0.0)
    for k in tl.range(0, M):  # forward: a SUM / LSE row pulls its finished children
        kind = tl.load(table_ptr + k * 5).to(tl.int32)
        if kind != _LEAF:
            child = (parent_col == k)[None, :]
            if kind == _SUM:
                e_k = tl.sum(tl.where(child, ev, 0.0) * edge_col[None, :], axis=1)
            else:
                temp = tl.load(table_ptr + k * 5 + 4)
                z = tl.where(child, -ev / temp + edge_col[None, :], float("-inf"))
                mx = tl.max(z, axis=1)
                terms = tl.where(z == mx[:, None], 1.0, tl.exp(z - mx[:, None]))
                e_k = -temp * (mx + tl.log(tl.sum(tl.where(child, terms, 0.0), axis=1)))
            ev = tl.where((nodes == k)[None, :], e_k[:, None], ev)
    adj = tl.where((nodes == M - 1)[None, :], 1.0, tl.zeros([BLOCK_B, MP], dtype=tl.float32))
    for i in tl.range(0, M):  # backward: a SUM / LSE row pushes its adjoint to its children
        r = M - 1 - i
        kind = tl.load(table_ptr + r * 5).to(tl.int32)
        if kind != _LEAF:
            at_r = (nodes == r)[None, :]
            child = (parent_col == r)[None, :]
            adj_r = tl.sum(tl.where(at_r, adj, 0.0), axis=1)
            if kind == _SUM:
                d = tl.zeros([BLOCK_B, MP], dtype=tl.float32) + edge_col[None, :]
            else:
                temp = tl.load(table_ptr + r * 5 + 4)
                e_r = tl.sum(tl.where(at_r, ev, 0.0), axis=1)
                d = tl.exp((e_r[:, None] - tl.where(child, ev, e_r[:, None])) / temp + edge_col[None, :])
            adj = tl.where(child, adj_r[:, None] * d, adj)
    leaves = tl.arange(0, NP)
    w = tl.sum(tl.where(leaf_col[None, None, :] == leaves[:, None, None], adj[None, :, :], 0.0), axis=2)
    e_root = tl.sum(tl.where((nodes == M - 1)[None, :], ev, 0.0), axis=1)
    return w, e_root


@triton.jit
def _normal(s, t, rows, offs_d, D):
    """``xi(seed, step, j)`` for ``j = row * D + d`` (SPEC §4), one Philox call per element."""
    j = rows[:, None] * D + offs_d[None, :]
    q = j // 4
    zero = q * 0
    r0, r1, r2, r3 = tl.philox(s, q.to(tl.uint32), (q >> 32).to(tl.uint32), (zero + (t & 0xFFFFFFFF)).to(tl.uint32),
                               (zero + ((t >> 32) & 0xFFFFFFFF)).to(tl.uint32))
    n0, n1 = tl.random.pair_uniform_to_normal(tl.random.uint_to_uniform_float(r0), tl.random.uint_to_uniform_float(r1))
    n2, n3 = tl.random.pair_uniform_to_normal(tl.random.uint_to_uniform_float(r2), tl.random.uint_to_uniform_float(r3))
    lane = j % 4
    return tl.where(lane == 0, n0, tl.where(lane == 1, n1, tl.where(lane == 2, n2, n3)))


@triton.jit(do_not_specialize=["seed", "seed_hi", "step", "step_hi"])
def _move_kernel(x_ptr, g_ptr, e_ptr, table_ptr, eps_ptr, inv_mass_ptr, p_ptr, out_ptr, energy_ptr,
                 temperature, two_t, seed, seed_hi, step, step_hi, B, D, n_dchunks,
                 BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr, N: tl.constexpr,
                 M: tl.constexpr, MP: tl.constexpr, PHASE: tl.constexpr, HAS_MASS: tl.constexpr,
                 SEED_PTR: tl.constexpr, STEP_PTR: tl.constexpr):
    pid = tl.program_id(0)
    pid_d = pid % n_dchunks
    pid_b = pid // n_dchunks
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    bmask = offs_b < B
    dmask = offs_d < D
    mask = bmask[:, None] & dmask[None, :]
    rows = offs_b.to(tl.int64)
    tile = rows[:, None] * D + offs_d[None, :]
    leaves = tl.arange(0, NP)
    x = tl.load(x_ptr + tile, mask=mask, other=0.0)
    grads = tl.load(g_ptr + leaves.to(tl.int64)[:, None, None] * B * D + tile[None, :, :],
                    mask=(leaves < N)[:, None, None] & mask[None, :, :], other=0.0)
    w, e_root = _program_weights(table_ptr, e_ptr, offs_b, bmask, B, BLOCK_B, NP, M, MP)
    tl.store(energy_ptr + offs_b, e_root, mask=bmask & (pid_d == 0))
    g = tl.sum(w[:, :, None] * grads, axis=0)
    eps = tl.load(eps_ptr + offs_b, mask=bmask, other=0.0)[:, None]
    if PHASE == 0:  # MALA proposal
        xi = _normal(_load_int64(seed, seed_hi, SEED_PTR), _load_int64(step, step_hi, STEP_PTR), rows, offs_d, D)
        new = x - eps * g + tl.sqrt_rn(eps * two_t) * xi
    else:
        if PHASE == 1:  # momentum draw p = sqrt(m) xi, then the first half kick
            xi = _normal(_load_int64(seed, seed_hi, SEED_PTR), _load_int64(step, step_hi, STEP_PTR), rows, offs_d,
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
    s = _load_int64(seed, seed_hi, SEED_PTR)
    t = _load_int64(step, step_hi, STEP_PTR)
    w, e_new = _program_weights(table_ptr, ep_ptr, offs_b, bmask, B, BLOCK_B, NP, M, MP)
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
        xi = tl.where(mask, _normal(s, t, rows, offs_d, D), 0.0)
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


def mcmc_move_triton(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, *, phase: int, step_size: Tensor,
                     temperature: float, inv_mass: Tensor | None, seed, step, momentum: Tensor | None, out: Tensor,
                     energy_out: Tensor) -> None:
    """The move of :mod:`ebm_fast.mcmc_reference` (contiguous float32 tensors)."""
    n, b, d = grads.shape
    if b == 0:
        return
    m = table.shape[0]
    block_b, block_d = _blocks(b, d, n, m)
    n_dchunks = max(1, -(-d // block_d))
    grid = (-(-b // block_b) * n_dchunks,)
    p = momentum if momentum is not None else x  # never touched by phase 0
    inv_m = inv_mass if inv_mass is not None else step_size
    _move_kernel[grid](x, grads, energies, table, step_size, inv_m, p, out, energy_out, float(temperature),
                       2.0 * float(temperature), *_int64_halves("seed", seed), *_int64_halves("step", step), b, d,
                       n_dchunks, BLOCK_B=block_b, BLOCK_D=block_d, NP=_next_pow2(n), N=n, M=m, MP=_next_pow2(m),
                       PHASE=int(phase), HAS_MASS=inv_mass is not None, SEED_PTR=isinstance(seed, Tensor),
                       STEP_PTR=isinstance(step, Tensor), num_warps=_NUM_WARPS)


def mcmc_accept_triton(x: Tensor, proposal: Tensor, grads_p: Tensor, energies_p: Tensor, table: Tensor, *,
                       method: int, step_size: Tensor, temperature: float, inv_mass: Tensor | None, seed, step,
                       momentum: Tensor | None, grads: Tensor, energies: Tensor, energy: Tensor, accept_out: Tensor,
                       alpha_out: Tensor) -> None:
    """The accept of :mod:`ebm_fast.mcmc_reference` (contiguous float32 tensors)."""
    n, b, d = grads_p.shape
    if b == 0:
        return
    m = table.shape[0]
    block_b, block_d = _blocks(b, d, n, m)
    grid = (-(-b // block_b),)
    p = momentum if momentum is not None else x  # never read by MALA
    inv_m = inv_mass if inv_mass is not None else step_size
    _accept_kernel[grid](x, proposal, grads_p, energies_p, table, step_size, inv_m, p, grads, energies, energy,
                         accept_out, alpha_out, float(temperature), 4.0 * float(temperature),
                         *_int64_halves("seed", seed), *_int64_halves("step", step), b, d, BLOCK_B=block_b,
                         BLOCK_D=block_d, NP=_next_pow2(n), N=n, M=m, MP=_next_pow2(m), NDC=max(1, -(-d // block_d)),
                         METHOD=int(method), HAS_MASS=inv_mass is not None, SEED_PTR=isinstance(seed, Tensor),
                         STEP_PTR=isinstance(step, Tensor), num_warps=_NUM_WARPS)
