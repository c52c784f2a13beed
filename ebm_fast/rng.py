"""The noise of the fused step (docs/contract.md §4) in torch integer ops: the reference every backend matches.

``xi(seed, step, j)`` for flattened element ``j``: with ``q = j // 4`` and ``r = j % 4``,
``(r0, r1, r2, r3) = Philox4x32-10(key=seed as uint64, counter=(lo32 q, hi32 q, lo32 step, hi32 step))``,
``u_k = uint_to_uniform_float(r_k)``, ``(n0, n1)``, ``(n2, n3)`` from Box-Muller on ``(u0, u1)`` and
``(u2, u3)``, and ``xi = n_r`` -- bit for bit the definitions of ``triton.language.random``. The
noise therefore depends only on ``(seed, step, j)``: not on block sizes, threads or backend.

Unsigned 32-bit arithmetic is emulated in int64 tensors; the 32x32-bit products are split into
16-bit halves so that no intermediate overflows int64.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["philox4x32", "normal_noise", "uniform_from_uint32", "box_muller", "seed_to_int64",
           "draw_seed"]

MASK32 = 0xFFFFFFFF
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
UNIFORM_SCALE = 4.6566127342e-10  # largest s with (2**31 - 1) * s < 1 in fp32 (Triton's constant)
TWO_PI = 6.283185307179586


def seed_to_int64(seed: int) -> int:
    """A seed in ``[0, 2**64)`` as the int64 with the same 64 bits (how an int64 tensor holds it: seeds
    >= 2**63 become negative). Negative seeds are refused, so no two ints name the same key
    (:func:`ebm_fast.ops.check_seed` is the rule user input goes through)."""
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64) (64 bits), got {seed}")
    return seed - 2**64 if seed >= 2**63 else seed


def draw_seed() -> int:
    """A fresh seed from torch's default generator (so ``torch.manual_seed`` makes runs repeatable)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64).item())


def _mul_hi_lo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of ``a * b`` for a 32-bit constant ``a`` and int64 ``b`` in ``[0, 2**32)``."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    t_hi = a_hi * b  # < 2**48
    t_lo = a_lo * b  # < 2**48
    hi = (t_hi + (t_lo >> 16)) >> 16
    lo = (((t_hi & 0xFFFF) << 16) + t_lo) & MASK32
    return hi, lo


def philox4x32(seed: int | Tensor, c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor,
               n_rounds: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32 with key ``seed`` (64 bits) on int64 tensors holding uint32 values."""
    if isinstance(seed, Tensor):
        s = seed.to(torch.int64)
        k0, k1 = s & MASK32, (s >> 32) & MASK32
    else:
        s = seed_to_int64(seed)
        k0, k1 = s & MASK32, (s >> 32) & MASK32
    for _ in range(n_rounds):
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def uniform_from_uint32(r: Tensor) -> Tensor:
    """Triton's ``uint_to_uniform_float`` for uint32 values held in int64: fp32 in ``[0, 1)``."""
    signed = torch.where(r >= 2**31, r - 2**32, r)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * UNIFORM_SCALE


def box_muller(u1: Tensor, u2: Tensor) -> tuple[Tensor, Tensor]:
    """Triton's ``pair_uniform_to_normal`` in fp32."""
    u1 = torch.clamp_min(u1, 1.0e-7)
    th = TWO_PI * u2
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(th), r * torch.sin(th)


def normal_noise(seed: int | Tensor, step: int | Tensor, numel: int, device: torch.device | str = "cpu",
                 offset: int = 0) -> Tensor:
    """``xi(seed, step, j)`` for ``j`` in ``[offset, offset + numel)``, fp32 of shape ``[numel]``.

    ``seed`` and ``step`` may be Python ints or int64 0-dim tensors (on ``device``).
    """
    device = torch.device(device)
    first_q, last_q = offset // 4, (offset + numel + 3) // 4
    q = torch.arange(first_q, last_q, dtype=torch.int64, device=device)
    if isinstance(step, Tensor):
        st = step.to(device=device, dtype=torch.int64)
        c2, c3 = (st & MASK32).expand_as(q), ((st >> 32) & MASK32).expand_as(q)
    else:
        st = int(step)
        if st < 0:
            raise ValueError(f"step must be >= 0, got {st}")
        c2 = torch.full_like(q, st & MASK32)
        c3 = torch.full_like(q, (st >> 32) & MASK32)
    if isinstance(seed, Tensor):
        seed = seed.to(device=device)
    r0, r1, r2, r3 = philox4x32(seed, q & MASK32, (q >> 32) & MASK32, c2, c3)
    n0, n1 = box_muller(uniform_from_uint32(r0), uniform_from_uint32(r1))
    n2, n3 = box_muller(uniform_from_uint32(r2), uniform_from_uint32(r3))
    noise = torch.stack([n0, n1, n2, n3], dim=1).reshape(-1)
    start = offset - first_q * 4
    return noise[start:start + numel]
