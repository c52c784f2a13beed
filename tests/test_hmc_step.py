"""One fused HMC update (L leapfrog steps, optional diagonal mass) on every backend against the
float64 oracle of tests/mcmc_support.py: states and accept decisions per chain, on random nested
expressions (And/Or/Not/Scale)."""

from __future__ import annotations

import pytest
import torch
from mcmc_support import (
    Bowl,
    check_oracle_sees_both_decisions,
    check_random_trees,
    mcmc_backend_or_skip,
)

import ebm_fast as ef


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton", "cuda"])
def test_hmc_update_matches_oracle_on_random_trees(backend):
    check_random_trees(backend, "hmc", log_step=(-3.0, 0.5), shared_step=0.4)


def test_oracle_accepts_and_rejects():
    check_oracle_sees_both_decisions("hmc", lambda leaf: leaf() & ~leaf() | leaf(), log_step=(-2.0, 1.0), seed=7,
                                     leapfrog_steps=3)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_scalar_mass_equals_its_tensor(backend):
    """``mass=2.0`` and a tensor of 2s give the same chain."""
    mcmc_backend_or_skip(backend)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    expr = ef.Concept(Bowl(gen, 3))
    x0 = torch.randn(5, 3, generator=gen)
    kw = dict(method="hmc", steps=2, step_size=0.3, leapfrog_steps=2, seed=11, backend=backend)
    a = ef.sample(expr, x0, mass=2.0, **kw)
    b = ef.sample(expr, x0, mass=torch.full((3,), 2.0), **kw)
    assert torch.equal(a, b)
