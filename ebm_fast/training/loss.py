"""The contrastive-divergence loss and its conditional ranking term, as functions on tensors.

* :func:`contrastive_loss` -- the paper's ``mean(E+ - E-) + alpha * mean(E+^2 + E-^2)``.
* :func:`mismatched_conditions` -- a wrong condition per positive, for the ranking term.
* :func:`adversarial_positives` -- positives moved towards their wrong conditions (``cond_adv``).
* :func:`ranking_terms` -- ``softplus(E(x|c+) - E(x|c~))`` and the ``E(x|c~)^2`` regulariser.

The trainer (:class:`ebm_fast.training.Trainer`) draws every random number here from its own
generator, so the terms are repeatable and resumable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["contrastive_loss", "mismatched_conditions", "adversarial_positives", "ranking_terms"]


def contrastive_loss(e_pos: Tensor, e_neg: Tensor, alpha: float) -> Tensor:
    """``mean(E+ - E-) + alpha * mean(E+^2 + E-^2)`` of energies ``(B,)`` (Du & Mordatch 2019): lowers the
    data's energy, raises the negatives', and keeps both near 0."""
    return (e_pos - e_neg).mean() + alpha * (e_pos.square() + e_neg.square()).mean()


def mismatched_conditions(cond: Tensor, classes: int | None, jitter: float, gen: torch.Generator) -> Tensor:
    """A wrong condition for each row of ``cond``: another class drawn uniformly for class indices
    (``classes`` of them), the label of another batch element (a random permutation) for continuous labels.

    With ``jitter`` = s > 0, every second continuous one is instead the row's own label plus Gaussian noise
    of scale s: a near miss, which teaches the energy to peak sharply at the true value rather than only to
    tell it from a far-away one. Drawn from ``gen`` (on the CPU)."""
    b = cond.shape[0]
    if not cond.is_floating_point():
        shift = torch.randint(1, max(classes, 2), (b,), generator=gen).to(cond.device)
        return (cond + shift.view(b, *([1] * (cond.dim() - 1)))) % classes
    perm = torch.randperm(b, generator=gen).to(cond.device)
    wrong = cond[perm]
    if jitter > 0:
        near = cond + jitter * torch.randn(cond.shape, generator=gen).to(cond)
        wrong[1::2] = near[1::2]  # cond[perm] is a copy
    return wrong


def adversarial_positives(model: nn.Module, x_pos: Tensor, cond_pos: Tensor, cond_wrong: Tensor, differs: Tensor,
                          eps: float, steps: int, gen: torch.Generator) -> Tensor:
    """The positives ``(B, C, H, W)`` moved towards their wrong conditions, for the ``cond_adv`` term.

    A uniform random start in the L-inf ball of radius ``eps`` around each image, then ``steps``
    signed-gradient steps that raise the ranking loss ``softplus(E(x|c+) - E(x|c~))`` (rows where
    ``differs`` is False count for nothing), each projected back into the ball and into [0, 1]. One step
    has size eps (a one-step attack with a random start); n > 1 steps have size 2.5 eps / n each
    (projected gradient descent as Madry et al. set it), so the attack can cross the ball and come back.
    The aim: a condition read from what moving a pixel by eps cannot change, so that lowering
    ``E(x | c)`` draws ``c``. A one-step attack can leave the label readable from such pixel changes
    (docs/training.md); several steps are the known remedy. The random start is drawn from ``gen``.
    """
    b = x_pos.shape[0]
    size = eps if steps == 1 else 2.5 * eps / steps
    lo, hi = x_pos - eps, x_pos + eps
    x = (x_pos + (torch.rand(x_pos.shape, generator=gen) * 2 - 1).to(x_pos) * eps).clamp(0, 1)
    conds = torch.cat([cond_pos, cond_wrong])
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            e = model(torch.cat([x, x]), conds).reshape(2 * b, -1).sum(1)
            rank = (F.softplus(e[:b] - e[b:]) * differs).sum()
            (grad,) = torch.autograd.grad(rank, x)
        x = torch.minimum(torch.maximum(x.detach() + size * grad.sign(), lo), hi).clamp(0, 1)
    return x


def ranking_terms(e_right: Tensor, e_wrong: Tensor, differs: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean softplus(E(x|c+) - E(x|c~)), mean E(x|c~)^2)`` over the rows where ``differs`` (pairs whose
    two labels are equal cannot be told apart and are left out)."""
    pairs = differs.sum().clamp(min=1)
    rank = (F.softplus(e_right - e_wrong) * differs).sum() / pairs
    reg = (e_wrong.square() * differs).sum() / pairs
    return rank, reg
