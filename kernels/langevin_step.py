"""The fused Langevin step (docs/contract.md §3) as one Triton kernel: the ``triton`` backend.

Two layers, as in Liger-Kernel: the private ``@triton.jit`` kernel :func:`_langevin_step_kernel` and
the launcher :func:`langevin_step_triton` on validated, flattened tensors, with the backend signature
of :mod:`ebm_fast.step_reference` (:func:`ebm_fast.ops.langevin_step` is the wrapper that checks and
flattens). :func:`compile_ahead` compiles the kernel for a set of arguments without running it, so a
CUDA graph can be captured afterwards without a compile inside the capture.

Design (the step is memory-bound: it reads ``G``, ``x``, ``E`` once and writes ``x'`` once):

* Grid: one program per tile of ``BLOCK_B`` samples x ``BLOCK_D`` elements, flattened to a 1-D grid
  (``pid = sample_block * n_dchunks + d_chunk``; a 1-D grid has no 65535 limit on either count).
  For images (D = 3*64*64) the tile is one sample (``BLOCK_B = 1``) and 2048 of its elements; for
  small D (2-D toy states) one program takes many samples, so no program moves only a few bytes.
* Loads first: the program issues the loads of its ``x`` tile and of its ``[NP, BLOCK_B, BLOCK_D]``
  tile of ``G`` (one 3-D load, ``NP = next_pow2(N)``; ``N`` is a constexpr, so the padded leaves
  compile to nothing) before it evaluates the program, so their latency overlaps the evaluation.
  With 16-byte-aligned rows every thread moves 128-bit vectors (checked in the sm_90 SASS).
* Program evaluation (per sample, vectorised over the tile's samples), the two passes of
  :mod:`ebm_fast.program` in a runtime loop over the table rows (the table is data: an expression
  with the same ``M``, ``N`` and flags reuses the compiled kernel). Node energies and adjoints live
  in ``[BLOCK_B, MP]`` register tiles (``MP = next_pow2(M)``), indexed with ``tl.where``; the leaf
  energies are gathered into the tile with one load. Forward, a SUM or LSE row pulls its finished
  children (``parent == k``) in one masked reduction (SUM) or two (LSE: max, then the sum of
  ``exp(z - max)``); backward, it pushes ``adj_k * c_j`` or ``adj_k * softmax_j`` to all its
  children at once. Leaf rows cost nothing, so ``a & b & c`` needs one reduction each way. The LSE
  is the two-pass form of the reference's running log-sum-exp (same value to rounding; the largest
  term counts exactly 1 as there). Every D-chunk of a sample re-evaluates the program: O(M) work
  per sample against O(N * BLOCK_D) loaded elements.
* ``g = sum_i w_i G[i]`` reduces the 3-D tile over its leaf axis, which the load layout keeps
  inside each thread.
* Noise: with ``D % 4 == 0`` every row starts at a multiple of 4 in the flattened index ``j``, so one
  Philox call per 4 consecutive elements gives all four normals, interleaved back into place
  (``tl.interleave``). Otherwise each element runs its own Philox call and keeps lane ``j % 4`` (4x
  the RNG arithmetic, same numbers). Either way ``xi`` depends only on ``(seed, step, j)``.
* Device scalars: a 0-dim tensor ``step_size``/``noise``/``seed``/``step`` is passed as a pointer and
  loaded in the kernel (a constexpr flag per scalar selects it), so a captured CUDA graph reads the
  current value at replay; Python numbers are passed by value. A Python ``seed``/``step`` travels as
  two int32 halves excluded from Triton's value specialisation, so a new seed or step never
  recompiles (a Python int would be typed i32, i64 or u64 by its value).
* Flags: a non-finite ``G[i, b, d]`` always makes ``g[b, d]`` non-finite (``w * inf`` and ``w * NaN``
  never are finite), so one OR-reduction over the tile of "``g`` or stored ``x'`` non-finite"
  decides whether the per-leaf check of ``G`` runs at all; the energies are checked by the first
  D-chunk of each sample. Bits go to ``flag`` with ``tl.atomic_or``, only when set. ``x'`` is
  checked after the cast to x's dtype (an fp16 overflow counts), as the reference does.

Block sizes are fixed heuristics (:func:`launch_config`), not autotuned: autotuning would benchmark
inside a CUDA-graph capture. ``block_b``/``block_d``/``num_warps`` override them (tests, sweeps).
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl
from torch import Tensor

from ..program import COLUMNS, LEAF, MAX_LEAVES, MAX_NODES, SUM
from ..step_reference import ORDERS

__all__ = ["langevin_step_triton", "compile_ahead", "launch_config", "MAX_LEAVES", "MAX_NODES", "program_tile",
           "program_weights", "normal_at", "load_int64", "int64_halves", "next_pow2"]

# Registers: a program keeps NP * BLOCK_B * BLOCK_D elements of G (at most _G_ELEMS = 8192, 64 fp32
# registers a thread at 4 warps) and BLOCK_B * BLOCK_D of x (at most _MAX_TILE); the program tiles
# [BLOCK_B, MP] and the leaf-weight gather [NP, BLOCK_B, MP] stay at most _PROGRAM_ELEMS elements.
# Compiled for sm_90 with Triton's ptxas (no GPU here): N=3, fp32, D=12288 -> 144 registers, no
# spills, 128-bit loads and stores; D=37 with 2048-element tiles spilled (255 registers, 1592 bytes
# of stack) on the per-element RNG path, 256-element tiles take 93 registers.
# TODO(gpu): sweep _MAX_TILE and num_warps on an H100 at N=3, B=128, D=3*64*64.
_G_ELEMS = 8192
_MAX_TILE = 2048
_MAX_TILE_MULTI = 1024
_MIN_TILE = 256
_PROGRAM_ELEMS = 512
_NUM_WARPS = 4

# The table's layout and the order codes come from ebm_fast.program / step_reference, the same values
# the C++ kernels are checked against when ebm_fast._C loads; a kernel reads globals only as constexpr.
_LEAF = tl.constexpr(LEAF)  # LSE is the remaining kind
_SUM = tl.constexpr(SUM)
_COLS = tl.constexpr(COLUMNS)
_ULA = tl.constexpr(ORDERS["ula"])


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.lru_cache(maxsize=256)  # called on every step: keep the launcher's Python cost low
def launch_config(batch: int, dim: int, num_leaves: int, num_nodes: int) -> tuple[int, int, int]:
    """The heuristic ``(block_b, block_d, num_warps)`` for ``[batch, dim]`` states and a program of
    ``num_leaves`` leaves and ``num_nodes`` nodes."""
    np_, mp = next_pow2(num_leaves), next_pow2(num_nodes)
    # without D % 4 == 0 every element runs its own Philox call: 4x the RNG registers
    tile = max(_MIN_TILE, min(_MAX_TILE if dim % 4 == 0 else _MIN_TILE, _G_ELEMS // np_))
    block_d = min(next_pow2(dim), tile)
    if block_d < tile:  # several samples a program: their program state costs registers too
        tile = min(tile, _MAX_TILE_MULTI)
    block_b = max(1, min(next_pow2(batch), tile // block_d, _PROGRAM_ELEMS // (np_ * mp)))
    return block_b, block_d, _NUM_WARPS


@triton.jit
def _load_scalar(v, FROM_PTR: tl.constexpr):
    """A scalar argument: loaded from device memory when it was given as a 0-dim tensor."""
    if FROM_PTR:
        return tl.load(v)
    else:
        return v


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def load_int64(v, v_hi, FROM_PTR: tl.constexpr):
    """A 64-bit integer argument: loaded when given as a tensor, else rebuilt from two int32 halves."""
    if FROM_PTR:
        return tl.load(v).to(tl.int64)
    else:
        return (v_hi.to(tl.int64) << 32) | (v.to(tl.int64) & 0xFFFFFFFF)


@triton.jit
def program_tile(n_dchunks, B, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's ``BLOCK_B x BLOCK_D`` tile of a ``[B, D]`` state on the flattened 1-D grid
    (``pid = sample_block * n_dchunks + d_chunk``): ``(d_chunk, offs_b, offs_d, bmask, dmask, rows)``,
    ``rows`` being ``offs_b`` as int64 (row offsets ``rows * D`` may pass 2**31)."""
    pid = tl.program_id(0)
    pid_d = pid % n_dchunks
    offs_b = (pid // n_dchunks) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    return pid_d, offs_b, offs_d, offs_b < B, offs_d < D, offs_b.to(tl.int64)


@triton.jit
def program_weights(table_ptr, e_ptr, offs_b, bmask, B, BLOCK_B: tl.constexpr, NP: tl.constexpr, M: tl.constexpr,
                    MP: tl.constexpr):
    """The program (:mod:`ebm_fast.program`) evaluated for the samples ``offs_b`` from the leaf
    energies ``E`` ``[N, B]`` at ``e_ptr``: ``(w [NP, BLOCK_B], e_root [BLOCK_B], e_leaves [BLOCK_B, MP],
    leaf_col [MP])`` -- the leaf weights, the composed energy, the leaf energies gathered per node
    (0 off the leaves) and each node's leaf index (-1 off the leaves). Shared by the Langevin step
    and the MALA/HMC kernels (:mod:`ebm_fast.kernels.mcmc_step`)."""
    # ---- the program: its columns as [MP] vectors (row k of the table is node k) ----
    nodes = tl.arange(0, MP)
    nmask = nodes < M
    leaf_col = tl.load(table_ptr + nodes * _COLS + 1, mask=nmask, other=-1.0).to(tl.int32)
    parent_col = tl.load(table_ptr + nodes * _COLS + 2, mask=nmask, other=-1.0).to(tl.int32)
    edge_col = tl.load(table_ptr + nodes * _COLS + 3, mask=nmask, other=0.0)
    is_leaf = leaf_col >= 0
    # node energies [BLOCK_B, MP], the leaves' gathered from E (each leaf occurs once in the tree)
    e_leaves = tl.load(e_ptr + leaf_col[None, :] * B + offs_b[:, None], mask=bmask[:, None] & is_leaf[None, :],
                       other=0.0)
    ev = e_leaves
    # ---- forward (rows in post-order): a SUM or LSE node pulls its finished children ----
    # A loop, not static_range: unrolled, M = 64 took 93 s to compile for sm_90 (M = 4: 144 registers
    # either way). M is a constexpr because Triton's interpreter (numpy 2.4) cannot run a loop bounded
    # by a runtime argument.
    for k in tl.range(0, M):
        kind = tl.load(table_ptr + k * _COLS).to(tl.int32)
        if kind != _LEAF:
            child = (parent_col == k)[None, :]
            if kind == _SUM:  # e = sum_j c_j e_j
                e_k = tl.sum(tl.where(child, ev, 0.0) * edge_col[None, :], axis=1)
            else:  # e = -T log sum_j exp(z_j), z_j = -e_j / T + b_j, shifted by the largest z_j
                temp = tl.load(table_ptr + k * _COLS + 4)
                z = tl.where(child, -ev / temp + edge_col[None, :], float("-inf"))
                mx = tl.max(z, axis=1)
                # the largest term is exp(0) = 1 exactly, as in the reference's running form
                terms = tl.where(z == mx[:, None], 1.0, tl.exp(z - mx[:, None]))
                e_k = -temp * (mx + tl.log(tl.sum(tl.where(child, terms, 0.0), axis=1)))
            ev = tl.where((nodes == k)[None, :], e_k[:, None], ev)

    # ---- backward (rows reversed): a SUM or LSE node pushes its adjoint to its children ----
    adj = tl.where((nodes == M - 1)[None, :], 1.0, tl.zeros([BLOCK_B, MP], dtype=tl.float32))
    for i in tl.range(0, M):
        r = M - 1 - i
        kind = tl.load(table_ptr + r * _COLS).to(tl.int32)
        if kind != _LEAF:
            at_r = (nodes == r)[None, :]
            child = (parent_col == r)[None, :]
            adj_r = tl.sum(tl.where(at_r, adj, 0.0), axis=1)
            if kind == _SUM:  # d e / d e_j = c_j
                d = tl.zeros([BLOCK_B, MP], dtype=tl.float32) + edge_col[None, :]
            else:  # the softmax weight exp((e - e_j) / T + b_j)
                temp = tl.load(table_ptr + r * _COLS + 4)
                e_r = tl.sum(tl.where(at_r, ev, 0.0), axis=1)
                d = tl.exp((e_r[:, None] - tl.where(child, ev, e_r[:, None])) / temp + edge_col[None, :])
            adj = tl.where(child, adj_r[:, None] * d, adj)
    # leaf weights w [NP, BLOCK_B]: w_i is the adjoint of the node whose leaf is i
    leaves = tl.arange(0, NP)
    w = tl.sum(tl.where(leaf_col[None, None, :] == leaves[:, None, None], adj[None, :, :], 0.0), axis=2)
    e_root = tl.sum(tl.where((nodes == M - 1)[None, :], ev, 0.0), axis=1)
    return w, e_root, e_leaves, leaf_col


@triton.jit
def _normal4(s, t, q):
    """The four normals of Philox group ``q`` at ``(seed s, step t)`` (docs/contract.md §4)."""
    zero = q * 0
    r0, r1, r2, r3 = tl.philox(s, q.to(tl.uint32), (q >> 32).to(tl.uint32), (zero + (t & 0xFFFFFFFF)).to(tl.uint32),
                               (zero + ((t >> 32) & 0xFFFFFFFF)).to(tl.uint32))
    n0, n1 = tl.random.pair_uniform_to_normal(tl.random.uint_to_uniform_float(r0), tl.random.uint_to_uniform_float(r1))
    n2, n3 = tl.random.pair_uniform_to_normal(tl.random.uint_to_uniform_float(r2), tl.random.uint_to_uniform_float(r3))
    return n0, n1, n2, n3


@triton.jit
def normal_at(s, t, rows, offs_d, D):
    """``xi(seed, step, j)`` for ``j = row * D + d`` (docs/contract.md §4): one Philox call per element, lane ``j % 4``."""
    j = rows[:, None] * D + offs_d[None, :]
    n0, n1, n2, n3 = _normal4(s, t, j // 4)
    lane = j % 4
    return tl.where(lane == 0, n0, tl.where(lane == 1, n1, tl.where(lane == 2, n2, n3)))


@triton.jit(do_not_specialize=["seed", "seed_hi", "step", "step_hi"])
def _langevin_step_kernel(
    x_ptr, g_ptr, e_ptr, table_ptr, out_ptr, energy_ptr, flag_ptr,
    step_size, noise, seed, seed_hi, step, step_hi, grad_clip, lo, hi,
    B, D, stride_xb, stride_gn, stride_gb, stride_ob, n_dchunks,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, M: tl.constexpr,
    MP: tl.constexpr,
    ORDER: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_CLIP: tl.constexpr, HAS_CLAMP: tl.constexpr,
    STEP_SIZE_PTR: tl.constexpr, NOISE_PTR: tl.constexpr, SEED_PTR: tl.constexpr,
    STEP_PTR: tl.constexpr, ALIGNED4: tl.constexpr,
):
    pid_d, offs_b, offs_d, bmask, dmask, rows = program_tile(n_dchunks, B, D, BLOCK_B, BLOCK_D)
    mask = bmask[:, None] & dmask[None, :]
    leaves = tl.arange(0, NP)
    lmask = leaves < N

    # ---- the streaming loads, issued before the program evaluation so that they overlap it ----
    x = tl.load(x_ptr + rows[:, None] * stride_xb + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    g_ptrs = (g_ptr + leaves.to(tl.int64)[:, None, None] * stride_gn + rows[None, :, None] * stride_gb
              + offs_d[None, None, :])
    grads = tl.load(g_ptrs, mask=lmask[:, None, None] & mask[None, :, :], other=0.0).to(tl.float32)
    w, e_root, e_leaves, leaf_col = program_weights(table_ptr, e_ptr, offs_b, bmask, B, BLOCK_B, NP, M, MP)
    is_leaf = leaf_col >= 0
    tl.store(energy_ptr + offs_b, e_root, mask=bmask & (pid_d == 0))

    # ---- the update ----
    g_raw = tl.sum(w[:, :, None] * grads, axis=0)  # [BLOCK_B, BLOCK_D], fp32
    g = g_raw
    if HAS_CLIP:
        g = tl.clamp(g, -grad_clip, grad_clip, propagate_nan=tl.PropagateNan.ALL)
    moved = x - _load_scalar(step_size, STEP_SIZE_PTR) * g
    if HAS_NOISE:
        s = load_int64(seed, seed_hi, SEED_PTR)
        t = load_int64(step, step_hi, STEP_PTR)
        if ALIGNED4:
            # one Philox call per 4 consecutive elements: q = j // 4 for the tile's quads
            q = (rows[:, None] * D + pid_d * BLOCK_D) // 4 + tl.arange(0, BLOCK_D // 4)[None, :]
            n0, n1, n2, n3 = _normal4(s, t, q)
            xi = tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))  # n0 n1 n2 n3 n0 ...
        else:
            xi = normal_at(s, t, rows, offs_d, D)
        kick = _load_scalar(noise, NOISE_PTR) * xi
        if ORDER == _ULA:
            new = moved + kick
            if HAS_CLAMP:
                new = tl.clamp(new, lo, hi, propagate_nan=tl.PropagateNan.ALL)
        else:  # noise_first
            if HAS_CLAMP:
                moved = tl.clamp(moved, lo, hi, propagate_nan=tl.PropagateNan.ALL)
            new = moved + kick
    else:
        new = moved
        if HAS_CLAMP:
            new = tl.clamp(new, lo, hi, propagate_nan=tl.PropagateNan.ALL)
    y = new.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * stride_ob + offs_d[None, :], y, mask=mask)

    # ---- non-finite flags ----
    # A non-finite element of any G[i] makes g non-finite at that element (w_i * inf or * NaN is never
    # finite), so one OR-reduction over the tile decides whether the per-leaf check is needed at all.
    code = (tl.where(mask & ~(tl.abs(g_raw) < float("inf")), 1, 0)
            | tl.where(mask & ~(tl.abs(y.to(tl.float32)) < float("inf")), 2, 0))
    code = tl.reduce(code, None, _bit_or)
    if (code & 1) != 0:
        bad_g = tl.max(tl.max(tl.where(tl.abs(grads) < float("inf"), 0, 1), axis=2), axis=1)  # [NP]
        tl.atomic_or(flag_ptr, tl.sum(bad_g << leaves))  # distinct bits: their sum is their OR
    if (code & 2) != 0:
        tl.atomic_or(flag_ptr + 1, 1)
    if pid_d == 0:  # each sample's energies are checked by the program of its first D-chunk
        bad_e = is_leaf[None, :] & ~(tl.abs(e_leaves) < float("inf")) & bmask[:, None]
        bits_e = tl.reduce(tl.where(bad_e, 1 << tl.maximum(leaf_col, 0)[None, :], 0), None, _bit_or)
        if bits_e != 0:
            tl.atomic_or(flag_ptr, bits_e)


def int64_halves(name: str, v) -> tuple:
    """``(lo, hi)`` of a Python int's 64 bits as signed int32 values, or ``(v, 0)`` for a tensor.

    Passing halves keeps the kernel's argument types fixed (Triton types a Python int as i32, i64 or
    u64 by its value, which would compile new variants as a seed or step grows).
    """
    if isinstance(v, Tensor):
        return v, 0
    if not -(2**63) <= v < 2**64:
        raise ValueError(f"{name} must fit in 64 bits, got {v}")
    v &= 0xFFFFFFFFFFFFFFFF
    lo, hi = v & 0xFFFFFFFF, v >> 32
    return lo - (1 << 32) if lo >= 1 << 31 else lo, hi - (1 << 32) if hi >= 1 << 31 else hi


def _kernel_args(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, *, step_size, noise, seed, step,
                 order: int, grad_clip, clamp, out: Tensor, energy_out: Tensor, flag: Tensor,
                 block_b: int | None = None, block_d: int | None = None, num_warps: int | None = None):
    """``(grid, args, meta)`` of one launch (shared by the launch and :func:`compile_ahead`)."""
    n, b, d = grads.shape
    m = table.shape[0]
    if not 1 <= n <= MAX_LEAVES or not 1 <= m <= MAX_NODES:
        raise ValueError(f"the Triton step supports 1..{MAX_LEAVES} leaves and 1..{MAX_NODES} program nodes, "
                         f"got {n} leaves and {m} nodes")
    hb, hd, hw = launch_config(b, d, n, m)
    block_b, block_d, num_warps = block_b or hb, block_d or hd, num_warps or hw
    # -(-a // b) rounds up; triton.cdiv is a jit function whose host call costs ~13 us
    n_dchunks = max(1, -(-d // block_d))  # D = 0 still writes the energies
    grid = (-(-b // block_b) * n_dchunks,)
    flags = [isinstance(v, Tensor) for v in (step_size, noise, seed, step)]
    has_noise = flags[1] or noise != 0.0  # a Python 0.0 skips the RNG, as the reference does
    args = (x, grads, energies, table, out, energy_out, flag, step_size, noise, *int64_halves("seed", seed),
            *int64_halves("step", step),
            0.0 if grad_clip is None else float(grad_clip),
            0.0 if clamp is None else float(clamp[0]), 0.0 if clamp is None else float(clamp[1]),
            b, d, x.stride(0), grads.stride(0), grads.stride(1), out.stride(0), n_dchunks)
    meta = dict(BLOCK_B=block_b, BLOCK_D=block_d, N=n, NP=next_pow2(n), M=m, MP=next_pow2(m), ORDER=int(order),
                HAS_NOISE=bool(has_noise), HAS_CLIP=grad_clip is not None, HAS_CLAMP=clamp is not None,
                STEP_SIZE_PTR=flags[0], NOISE_PTR=flags[1], SEED_PTR=flags[2], STEP_PTR=flags[3],
                ALIGNED4=d % 4 == 0 and block_d % 4 == 0, num_warps=num_warps)
    return grid, args, meta


def langevin_step_triton(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, *, step_size, noise, seed,
                         step, order: int, grad_clip, clamp, out: Tensor, energy_out: Tensor, flag: Tensor,
                         block_b: int | None = None, block_d: int | None = None,
                         num_warps: int | None = None) -> None:
    """One fused step (docs/contract.md §3) with the launcher signature of :mod:`ebm_fast.step_reference`.

    Args:
        x: ``[B, D]`` float32/float16/bfloat16, inner stride 1 (rows may be strided).
        grads: ``[N, B, D]`` dtype of x, inner stride 1; ``1 <= N <= 32``.
        energies: ``[N, B]`` float32, contiguous.
        table: ``[M, 5]`` float32 program table on x's device (:mod:`ebm_fast.program`), ``M <= 64``.
        step_size, noise: Python numbers, or 0-dim float32 tensors on x's device (read in the kernel).
        seed, step: Python ints, or 0-dim int64 tensors on x's device (read in the kernel).
        order: 0 = ula, 1 = noise_first.
        grad_clip: None or ``c > 0``.  clamp: None or ``(lo, hi)``.
        out: ``[B, D]`` dtype of x, inner stride 1 (may be ``x``).
        energy_out: ``[B]`` float32.  flag: ``[2]`` int32, OR-ed into.
        block_b, block_d, num_warps: override :func:`launch_config` (powers of two); the result does
            not depend on them.
    """
    if x.shape[0] == 0:
        return
    grid, args, meta = _kernel_args(x, grads, energies, table, step_size=step_size, noise=noise, seed=seed,
                                    step=step, order=order, grad_clip=grad_clip, clamp=clamp, out=out,
                                    energy_out=energy_out, flag=flag, block_b=block_b, block_d=block_d,
                                    num_warps=num_warps)
    _langevin_step_kernel[grid](*args, **meta)


def compile_ahead(x: Tensor, *args, **kwargs) -> None:
    """Compile (not run) the kernel :func:`langevin_step_triton` would launch for the same arguments.

    Call it before capturing a CUDA graph that contains the step, so no compile happens during the
    capture. Nothing is read or written. A no-op under the interpreter.
    """
    if x.shape[0] == 0:
        return
    grid, args, meta = _kernel_args(x, *args, **kwargs)
    compiled = _langevin_step_kernel.warmup(*args, grid=grid, **meta)
    if hasattr(compiled, "result"):  # Triton's asynchronous compile mode returns a future
        compiled = compiled.result()
    load_module = getattr(compiled, "_init_handles", None)  # None under the interpreter
    if load_module is not None:
        load_module()  # load the binary now too, so that inside a capture only the launch happens
