"""Continual learning (Du, Li & Mordatch 2020, §3.3): a new concept trained in conjunction with frozen ones.

The new concept's EBM ``E_new(x | y_new)`` is trained with contrastive divergence whose negatives
are sampled from the *composition* ``E_new(x | y_new) + sum_k E_k(x | y_k)`` of the new model and
the frozen earlier ones (each conditioned on its own label of the same training image), so the new
model learns only what the frozen ones do not already explain. Gradients flow only into the new
model: the frozen models are in eval mode with ``requires_grad=False`` and are not in the optimiser,
and the loss reads the new model's energies (the frozen energies of a fixed ``x`` are constants of
the new parameters, so they would add nothing to the contrastive gradient).

A frozen concept is given as ``"PATH=ATTRIBUTE"`` (a model file from :func:`ebm_fast.models.save_model`
or a training checkpoint, and the dataset label that conditions it), e.g.
``runs/position/model.pt=position``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .compose import And, Concept, Expr

__all__ = ["FrozenConcept", "freeze", "parse_frozen", "load_frozen", "negatives_expr", "param_digest"]


@dataclass
class FrozenConcept:
    """A frozen earlier concept: its model, the label attribute that conditions it, and where it came from."""

    model: nn.Module
    attribute: str
    path: str = ""
    digest: str = ""


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with every parameter ``requires_grad=False`` (in place); returns it.

    Eval mode also stops spectral norm's power iteration from updating its buffers, so a frozen
    model's whole ``state_dict`` stays bit-identical.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def param_digest(model: nn.Module) -> str:
    """sha256 over the bytes of every ``state_dict`` entry (names included), for bit-identity checks."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def parse_frozen(spec: str) -> tuple[str, str]:
    """``"PATH=ATTRIBUTE"`` -> ``(path, attribute)``."""
    path, sep, attribute = spec.rpartition("=")
    if not sep or not path or not attribute:
        raise ValueError(f"frozen concept: expected 'PATH=ATTRIBUTE' (e.g. runs/pos/model.pt=position), got {spec!r}")
    return path, attribute


def load_frozen(spec: str, device: torch.device | str = "cpu") -> FrozenConcept:
    """Load and freeze the concept named by ``"PATH=ATTRIBUTE"``."""
    from .models import load_model

    path, attribute = parse_frozen(spec)
    model, _ = load_model(path)
    model = freeze(model.to(device))
    return FrozenConcept(model, attribute, str(Path(path)), param_digest(model))


def negatives_expr(model: nn.Module, cond: Tensor | None, frozen: list[FrozenConcept] = (),
                   frozen_conds: list[Tensor] = ()) -> Expr:
    """The expression negatives are sampled from: ``Concept(model, cond)`` alone, or its conjunction
    with the frozen concepts, each with its per-sample condition.

    Args:
        model: the model being trained (unwrapped, never a DDP wrapper).
        cond: ``(B, ...)`` per-sample conditions of ``model``, or None for an unconditional model.
        frozen: the frozen concepts, in order.
        frozen_conds: ``(B, ...)`` per-sample conditions, one per frozen concept.
    """
    if len(frozen) != len(frozen_conds):
        raise ValueError(f"frozen_conds: expected {len(frozen)} conditions (one per frozen concept), got {len(frozen_conds)}")
    new = Concept(model, cond, per_sample=cond is not None, name="new")
    if not frozen:
        return new
    terms = [new] + [Concept(f.model, c, per_sample=True, name=f"frozen:{f.attribute}")
                     for f, c in zip(frozen, frozen_conds)]
    return And(*terms)
