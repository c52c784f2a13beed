"""Shared test support: the one tolerance table, random expression trees, and the float64 oracle."""

from __future__ import annotations

import importlib.util
import os

import torch
from hypothesis import strategies as st

import ebm_fast as ef
from ebm_fast.rng import normal_noise

# The one tolerance table: (rtol, atol) per state dtype for backend results against the oracle.
# fp32: docs/contract.md §3 (1e-5). fp16/bf16: one rounding of the stored state (2**-11, 2**-8 relative).
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-5, 1e-5),  # fp64 states run in fp32 (docs/contract.md §3)
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def backend_or_skip(name: str, device: str = "cpu") -> str:
    """The backend name if it can run on ``device``; fail (not skip) if the build should have it."""
    import pytest

    if name in ef.ops.available_backends(device):
        return name
    if name == "cpu":
        pytest.fail("the C++ backend is not built: run `pip install --no-build-isolation -e .` first")
    if (name == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
            and importlib.util.find_spec("triton") is not None):
        pytest.fail("triton is installed but its backend is unusable (is TRITON_INTERPRET=1 set?)")
    pytest.skip(f"backend {name!r} is not available on {device}")


class Dummy:
    """A stand-in energy model for tests that feed leaf energies directly (never called)."""

    def __call__(self, x, cond=None):  # pragma: no cover - not called by the step tests
        raise AssertionError("the step tests pass energies directly")


def leaf(i: int) -> ef.Concept:
    return ef.Concept(Dummy(), name=f"c{i}")


@st.composite
def expressions(draw, max_leaves: int = 8, max_depth: int = 3):
    """Random integrable expression trees with 1..max_leaves leaves (nested And/Or/Not/Scale)."""
    counter = [0]

    def build(depth: int):
        remaining = max_leaves - counter[0]
        if depth == 0 or remaining <= 1 or draw(st.booleans()):
            counter[0] += 1
            return leaf(counter[0] - 1)
        kind = draw(st.sampled_from(["and", "or", "not", "scale"]))
        if kind in ("not", "scale"):
            child = build(depth - 1)
            if kind == "not":
                return ef.Not(child, alpha=draw(st.sampled_from([0.01, 0.001, 0.5])))
            return draw(st.sampled_from([0.5, 2.0, -1.0, 3.0])) * child
        n = draw(st.integers(2, max(2, min(4, remaining))))
        kids = [build(depth - 1) for _ in range(n) if counter[0] < max_leaves]
        if len(kids) == 1:
            return kids[0]
        if kind == "and":
            coefs = draw(st.lists(st.sampled_from([1.0, 0.5, 2.0, -0.3]), min_size=len(kids),
                                  max_size=len(kids)))
            return ef.And(*kids, coefs=coefs)
        temp = draw(st.sampled_from([1.0, 0.5, 2.0, 0.25]))
        betas = draw(st.lists(st.floats(-1.0, 1.0, allow_nan=False, width=32), min_size=len(kids),
                              max_size=len(kids)))
        return ef.Or(*kids, temperature=temp, log_weights=betas)

    expr = build(max_depth)
    # Make every drawn tree sampleable: a tree whose leaves all enter negatively gets a positive term.
    # With every leaf already used, scaling by -1 flips every sign instead (max_leaves is a hard limit).
    if not any(s > 0 for s in expr.program.leaf_signs):
        expr = expr & leaf(counter[0]) if counter[0] < max_leaves else -1.0 * expr
        assert any(s > 0 for s in expr.program.leaf_signs), expr
    return expr


def oracle_weights(expr: ef.Expr, energies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` [N, B] and ``e`` [B] in float64 by autograd of ``expr.combine`` (independent of the program)."""
    e64 = energies.detach().double().clone().requires_grad_(True)
    root = expr.combine(list(e64))
    (w,) = torch.autograd.grad(root.sum(), e64)
    return w, root.detach()


def oracle_step(x, grads, energies, expr, *, step_size, noise, seed, step, order="ula", grad_clip=None,
                clamp=None):
    """docs/contract.md §3 written plainly in float64: ``(x_new, energy)``."""
    w, e = oracle_weights(expr, energies)
    b = x.shape[0]
    g = (w.reshape(*w.shape, *([1] * (x.dim() - 1))) * grads.double()).sum(0)
    if grad_clip is not None:
        g = g.clamp(-grad_clip, grad_clip)
    xi = normal_noise(seed, step, x.numel(), device=x.device).double().view(x.shape)
    moved = x.double() - step_size * g
    if order == "ula":
        new = moved + noise * xi
        if clamp is not None:
            new = new.clamp(*clamp)
    else:
        if clamp is not None:
            moved = moved.clamp(*clamp)
        new = moved + noise * xi
    assert new.shape[0] == b
    return new, e
