"""One fused MALA update on every backend against the float64 oracle of tests/mcmc_support.py:
states and accept decisions per chain, on random nested expressions (And/Or/Not/Scale)."""

from __future__ import annotations

import pytest
import torch
from mcmc_support import (
    check_oracle_sees_both_decisions,
    check_random_trees,
    mcmc_backend_or_skip,
)

import ebm_fast as ef


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton", "cuda"])
def test_mala_update_matches_oracle_on_random_trees(backend):
    # per-chain step sizes from 0.02 to 2.7: both decisions occur
    check_random_trees(backend, "mala", log_step=(-4.0, 1.0), shared_step=0.3)


def test_oracle_accepts_and_rejects():
    check_oracle_sees_both_decisions("mala", lambda leaf: leaf() & ef.Or(leaf(), leaf()), log_step=(-4.0, 1.0),
                                     seed=5)


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
