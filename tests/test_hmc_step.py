"""One fused HMC update (L leapfrog steps, optional diagonal mass) on every backend against the
float64 oracle of tests/mcmc_support.py: states and accept decisions per chain, on random nested
expressions (And/Or/Not/Scale)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mcmc_support import (
    Bowl,
    bowl_expressions,
    check_one_update,
    mcmc_backend_or_skip,
    oracle_update,
)

import ebm_fast as ef

CASES = {"torch": (20, 24, 7), "cpu": (20, 40, 9), "triton": (4, 6, 5), "cuda": (20, 64, 33)}  # examples, B, D


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton", "cuda"])
def test_hmc_update_matches_oracle_on_random_trees(backend):
    mcmc_backend_or_skip(backend)
    examples, max_b, max_d = CASES[backend]

    @settings(max_examples=examples, deadline=None)
    @given(data=st.data(), b=st.integers(1, max_b), d=st.integers(1, max_d), seed=st.integers(0, 2**64 - 1),
           temperature=st.sampled_from([1.0, 0.5, 2.0]), per_chain=st.booleans(), leapfrog=st.integers(1, 4),
           with_mass=st.booleans())
    def run(data, b, d, seed, temperature, per_chain, leapfrog, with_mass):
        expr = data.draw(bowl_expressions(d))
        gen = torch.Generator().manual_seed(seed % 2**31)
        x = torch.randn(b, d, generator=gen, dtype=torch.float64)
        eps = torch.exp(torch.empty(b).uniform_(-3.0, 0.5, generator=gen)) if per_chain else 0.4
        mass = 0.3 + 2 * torch.rand(d, generator=gen) if with_mass else None
        check_one_update(expr, x, backend=backend, method="hmc", step_size=eps, temperature=temperature, seed=seed,
                         leapfrog_steps=leapfrog, mass=mass)

    run()


def test_oracle_accepts_and_rejects():
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    expr = ef.Concept(Bowl(gen, 3)) & ~ef.Concept(Bowl(gen, 3)) | ef.Concept(Bowl(gen, 3))
    x = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    eps = torch.exp(torch.empty(200).uniform_(-2.0, 1.0, generator=gen))
    _, acc, alpha, _ = oracle_update(expr, x, method="hmc", step_size=eps, temperature=1.0, seed=7, step=1,
                                     leapfrog_steps=3)
    assert 20 < int(acc.sum()) < 180 and float(alpha.min()) < 0.5


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_scalar_mass_equals_its_tensor(backend):
    """``mass=2.0`` and a tensor of 2s give the same chain."""
    mcmc_backend_or_skip(backend)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    expr = ef.Concept(Bowl(gen, 3))
    x0 = torch.randn(5, 3, generator=gen)
    kw = dict(method="hmc", steps=2, step_size=0.3, leapfrog_steps=2, seed=11, clamp=None, backend=backend)
    a = ef.sample(expr, x0, mass=2.0, **kw)
    b = ef.sample(expr, x0, mass=torch.full((3,), 2.0), **kw)
    assert torch.equal(a, b)
