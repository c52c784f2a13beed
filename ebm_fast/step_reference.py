"""The fused Langevin step (docs/contract.md §3) in plain PyTorch: the ``torch`` backend and the readable reference.

Every backend implements the same launcher signature on validated, flattened tensors (see
:func:`ebm_fast.ops.langevin_step` for the checks):

    step(x, grads, energies, table, *, step_size, noise, seed, step, order, grad_clip, clamp,
         out, energy_out, flag) -> None

    x          [B, D]     float32/float16/bfloat16, inner stride 1
    grads      [N, B, D]  dtype of x, inner stride 1
    energies   [N, B]     float32, contiguous
    table      [M, 5]     float32 program table on x's device (ebm_fast.program)
    step_size, noise      Python float, or a 0-dim float32 tensor on x's device (a schedule entry)
    seed, step            Python int (seed in [0, 2**64), step >= 0), or a 0-dim int64 tensor on
                          x's device (a seed tensor holds the key's 64 bits)
    order                 0 = "ula", 1 = "noise_first"
    grad_clip             None or c > 0: g = clamp(g, -c, c) element-wise
    clamp                 None or (lo, hi)
    out        [B, D]     dtype of x, inner stride 1 (may be x itself)
    energy_out [B]        float32: composed energy at x
    flag       [2]        int32, OR-ed into: flag[0] bit i = leaf i had a non-finite energy or
                          gradient; flag[1] = 1 if the new state holds a non-finite value
"""

from __future__ import annotations

import torch
from torch import Tensor

from .program import Program
from .rng import normal_noise

__all__ = ["langevin_step_torch", "ORDERS"]

ORDERS = {"ula": 0, "noise_first": 1}


def _leaf_bitmask(bad: Tensor) -> Tensor:
    """int32 0-dim tensor with bit i set where ``bad[i]`` (no host sync)."""
    bits = torch.ones_like(bad, dtype=torch.int64) << torch.arange(bad.numel(), device=bad.device)
    total = (bits * bad.to(torch.int64)).sum()
    return torch.where(total >= 2**31, total - 2**32, total).to(torch.int32)


def langevin_step_torch(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, *, step_size,
                        noise, seed, step, order: int, grad_clip, clamp, out: Tensor,
                        energy_out: Tensor, flag: Tensor) -> None:
    n, b, d = grads.shape
    program = Program(table=table, num_leaves=n, leaf_signs=(), description="")
    w, e = program.weights_and_energy(energies)
    g = torch.einsum("nb,nbd->bd", w, grads.float())
    if grad_clip is not None:
        g = g.clamp(-grad_clip, grad_clip)
    x32 = x.float()
    moved = x32 - step_size * g
    if isinstance(noise, float) and noise == 0.0:
        xi = None  # no noise asked for: skip the RNG (the result is the same)
    else:
        xi = noise * normal_noise(seed, step, b * d, device=x.device).view(b, d)
    if order == ORDERS["ula"]:
        new = moved if xi is None else moved + xi
        if clamp is not None:
            new = new.clamp(clamp[0], clamp[1])
    else:
        if clamp is not None:
            moved = moved.clamp(clamp[0], clamp[1])
        new = moved if xi is None else moved + xi
    bad_leaf = ~torch.isfinite(energies).all(dim=1) | ~torch.isfinite(grads).reshape(n, -1).all(dim=1)
    flag[0].bitwise_or_(_leaf_bitmask(bad_leaf))
    energy_out.copy_(e)
    out.copy_(new)
    flag[1].bitwise_or_((~torch.isfinite(out).all()).to(torch.int32))
