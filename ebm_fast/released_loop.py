"""The research code's Langevin chain, written its way: the baseline the demos time ebm_fast against.

Per step, as the released code of Du, Li & Mordatch (2020) does it: (noise first) add Gaussian noise,
run one forward per concept on the same ``x``, combine the energies, take ``torch.autograd.grad`` of
the sum, (clip the gradient), step, clamp, detach. ``order="ula"`` adds the noise after the step
instead (the textbook unadjusted Langevin algorithm, used by the 2-D Gaussian demo).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .compose import Expr

__all__ = ["released_code_chain"]


def released_code_chain(expr: Expr, x: Tensor, *, steps: int, step_size: float, noise: float,
                        order: str = "noise_first", clamp: tuple[float, float] | None = None,
                        grad_clip: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """``steps`` updates of ``x`` on ``expr``'s composed energy; returns the detached final state."""
    if order not in ("noise_first", "ula"):
        raise ValueError(f"order: expected 'noise_first' or 'ula', got {order!r}")
    leaves = expr.leaves()
    x = x.detach()
    for _ in range(steps):
        if order == "noise_first":
            x = x + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x.requires_grad_(True)
        energy = expr.combine([leaf.energy(x) for leaf in leaves])
        (g,) = torch.autograd.grad(energy.sum(), [x])
        if grad_clip is not None:
            g = g.clamp(-grad_clip, grad_clip)
        x = x - step_size * g
        if order == "ula":
            x = x + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if clamp is not None:
            x = x.clamp(*clamp)
        x = x.detach()
    return x
