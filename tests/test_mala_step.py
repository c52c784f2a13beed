"""One fused MALA update on every backend against the float64 oracle of tests/mcmc_support.py:
states and accept decisions per chain, on random nested expressions (And/Or/Not/Scale)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mcmc_support import (
    bowl_expressions,
    check_one_update,
    mcmc_backend_or_skip,
    oracle_update,
)

import ebm_fast as ef

# Triton runs through its interpreter here: fewer, smaller cases.
CASES = {"torch": (25, 24, 7), "cpu": (25, 40, 9), "triton": (5, 6, 5), "cuda": (25, 64, 33)}  # examples, B, D


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton", "cuda"])
def test_mala_update_matches_oracle_on_random_trees(backend):
    mcmc_backend_or_skip(backend)
    examples, max_b, max_d = CASES[backend]

    @settings(max_examples=examples, deadline=None)
    @given(data=st.data(), b=st.integers(1, max_b), d=st.integers(1, max_d), seed=st.integers(0, 2**64 - 1),
           temperature=st.sampled_from([1.0, 0.5, 2.0]), per_chain=st.booleans())
    def run(data, b, d, seed, temperature, per_chain):
        expr = data.draw(bowl_expressions(d))
        gen = torch.Generator().manual_seed(seed % 2**31)
        x = torch.randn(b, d, generator=gen, dtype=torch.float64)
        # log-uniform step sizes from 0.02 to 2.7: both decisions occur
        eps = torch.exp(torch.empty(b).uniform_(-4.0, 1.0, generator=gen)) if per_chain else 0.3
        check_one_update(expr, x, backend=backend, method="mala", step_size=eps, temperature=temperature, seed=seed)

    run()


def test_oracle_accepts_and_rejects():
    """The oracle comparison sees both decisions (else it could not catch a flipped test)."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    from mcmc_support import Bowl

    expr = ef.Concept(Bowl(gen, 3)) & ef.Or(ef.Concept(Bowl(gen, 3)), ef.Concept(Bowl(gen, 3)))
    x = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    eps = torch.exp(torch.empty(200).uniform_(-4.0, 1.0, generator=gen))
    _, acc, alpha, _ = oracle_update(expr, x, method="mala", step_size=eps, temperature=1.0, seed=5, step=1)
    assert 20 < int(acc.sum()) < 180 and float(alpha.min()) < 0.5


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_nonfinite_proposal_is_rejected(backend):
    """A proposal whose energy is NaN is rejected (the chain keeps its state) instead of poisoning it."""
    mcmc_backend_or_skip(backend)

    def energy(x):
        e = 0.5 * (x ** 2).sum(1)
        return torch.where(x[:, 0] > 3.0, torch.full_like(e, float("nan")), e)

    x0 = torch.full((4, 2), 2.9)
    x, _info = ef.langevin(energy, x0, method="mala", steps=3, step_size=0.5, seed=3, backend=backend,
                          return_info=True)
    assert torch.isfinite(x).all()
    assert (x[:, 0] <= 3.0).all()
