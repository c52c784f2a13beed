"""The last updates of a chain in plain torch autograd, keeping their graph (``sample(differentiable=n)``).

Training objectives such as improved contrastive divergence (Du et al. 2021) backpropagate through
the sampler's final step: its KL term differentiates ``E(x_K)`` where ``x_K = x_{K-1} - eta grad
E_theta(x_{K-1})`` depends on the parameters ``theta`` through the gradient. The fused step computes
no parameter gradient and keeps no graph, so :func:`ebm_fast.sample` runs the first ``K - n`` updates
fused and hands the state to :func:`autograd_steps` for the last ``n``: the same update (docs/contract.md §3,
the same noise ``xi(seed, s)`` of §4, the same schedule entries), with the composed gradient
taken by ``torch.autograd.grad(..., create_graph=True)`` on the models as the caller left them
(parameters keep their ``requires_grad``). The result is the chain's state with a graph back to the
parameters and to the state at update ``K - n``; backpropagating through it costs what ``n``
double-backward steps cost.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .compose import Expr
from .rng import normal_noise

__all__ = ["autograd_steps"]


def autograd_steps(expr: Expr, x: Tensor, *, first: int, step_size: Sequence[float], noise: Sequence[float],
                   order: str, seed: int, clamp: tuple[float, float] | None, grad_clip: float | None,
                   model_dtype: torch.dtype) -> Tensor:
    """Updates ``first + 1 .. first + n`` (``n = len(step_size)``) of the chain, differentiable.

    Args:
        expr: the composed expression.
        x: ``[B, ...]`` the state after update ``first`` as the fused chain leaves it (for
            ``noise_first``: before the noise ``noise[0] * xi(seed, first)`` that precedes the next update).
        first: the updates already done.
        step_size, noise: the schedules' entries ``first .. first + n - 1``.
        order, seed, clamp, grad_clip: as for :func:`ebm_fast.sample`.
        model_dtype: the dtype the models are fed.

    Returns:
        float32 ``[B, ...]``: the final state, with its autograd graph.
    """
    shape, device = x.shape, x.device

    def xi(s: int) -> Tensor:
        return normal_noise(seed, s, x.numel(), device=device).view(shape)

    # the caller asked for a graph: record one even under no_grad / inference_mode
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().float().clone().requires_grad_(True)
        for i, (eta, sigma) in enumerate(zip(step_size, noise)):
            s = first + i + 1  # the update's RNG step (sampler module docstring)
            if order == "noise_first" and sigma != 0.0:
                x = x + sigma * xi(s - 1)
            energy = expr.energy(x if model_dtype == torch.float32 else x.to(model_dtype))
            (g,) = torch.autograd.grad(energy.float().sum(), x, create_graph=True)
            if grad_clip is not None:
                g = g.clamp(-grad_clip, grad_clip)
            x = x - eta * g
            if order == "ula" and sigma != 0.0:
                x = x + sigma * xi(s)
            if clamp is not None:
                x = x.clamp(clamp[0], clamp[1])
    return x
