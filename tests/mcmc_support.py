"""Test support for MALA/HMC: analytic leaf models, random expressions over them, and the float64
oracle of one MALA or HMC update written the slow, obvious way (autograd of ``expr.energy``, a plain
leapfrog loop, the acceptance ratio from the densities themselves)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support import backend_or_skip, expressions

import ebm_fast as ef
from ebm_fast import _native
from ebm_fast.rng import normal_noise, philox4x32, uniform_from_uint32

# Hypothesis examples, largest B and largest D of the random-tree oracle tests, per backend (Triton
# runs through its interpreter here: fewer, smaller cases).
ORACLE_CASES = {"torch": (25, 24, 7), "cpu": (25, 40, 9), "triton": (5, 6, 5), "cuda": (25, 64, 33)}

# Chains whose uniform lies this close to their oracle acceptance probability are not compared:
# fp32 kernels against the fp64 oracle differ by ~1e-6 in log alpha.
DECISION_MARGIN = 1e-4


class Bowl:
    """``E(x) = 0.5 sum_d a_d (x_d - c_d)^2 + s sum_d cos(x_d)``: smooth, non-Gaussian for s != 0."""

    def __init__(self, gen: torch.Generator, dim: int):
        self.a = 0.5 + 1.5 * torch.rand(dim, generator=gen, dtype=torch.float64)
        self.c = torch.randn(dim, generator=gen, dtype=torch.float64)
        self.s = float(torch.rand((), generator=gen)) * 0.5

    def __call__(self, x):
        a, c = self.a.to(x.dtype), self.c.to(x.dtype)
        return 0.5 * (a * (x - c) ** 2).sum(1) + self.s * torch.cos(x).sum(1)


def with_models(expr: ef.Expr, make) -> ef.Expr:
    """``expr`` with leaf ``i`` (depth-first) replaced by ``Concept(make(i))``."""
    counter = [0]

    def rebuild(node):
        if isinstance(node, ef.Concept):
            counter[0] += 1
            return ef.Concept(make(counter[0] - 1), name=f"bowl{counter[0] - 1}")
        return node._with_children(tuple(rebuild(c) for c in node.children()))

    return rebuild(expr)


@st.composite
def bowl_expressions(draw, dim: int, max_leaves: int = 5):
    """Random nested And/Or/Not/Scale expressions whose leaves are :class:`Bowl` s of dimension ``dim``."""
    shape = draw(expressions(max_leaves=max_leaves))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return with_models(shape, lambda i: Bowl(gen, dim))


def mcmc_backend_or_skip(name: str) -> str:
    backend_or_skip(name)
    if name in ("cpu", "cuda") and not _native.has_mcmc():
        pytest.fail("ebm_fast._C has no MALA/HMC kernels: rebuild it (pip install --no-build-isolation -e .)")
    return name


def contract_uniform(seed: int, step: int, batch: int) -> torch.Tensor:
    """The accept uniforms as docs/mcmc.md states them, from the Philox primitive (float64 [B])."""
    b = torch.arange(batch, dtype=torch.int64)
    c2 = torch.full_like(b, step & 0xFFFFFFFF)
    c3 = torch.full_like(b, ((step >> 32) & 0xFFFFFFFF) ^ 0x80000000)
    r0, _, _, _ = philox4x32(seed, b & 0xFFFFFFFF, b >> 32, c2, c3)
    return uniform_from_uint32(r0).double()


def _energy_grad(expr: ef.Expr, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    e = expr.energy(x)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), g


def oracle_update(expr: ef.Expr, x: torch.Tensor, *, method: str, step_size, temperature: float, seed: int,
                  step: int, leapfrog_steps: int = 1, mass=None):
    """One MALA/HMC update of every chain of ``x`` [B, D] in float64.

    Returns ``(x_new, accepted, alpha, u)``: the new states, bool decisions, acceptance
    probabilities ``min(1, exp(log a))`` and the uniforms.
    """
    x = x.double()
    b, d = x.shape
    eps = torch.as_tensor(step_size, dtype=torch.float64).expand(b).reshape(b, 1)
    t = float(temperature)
    m = torch.ones(d, dtype=torch.float64) if mass is None else torch.as_tensor(mass, dtype=torch.float64).reshape(d)
    xi = normal_noise(seed, step, b * d).double().view(b, d)
    e0, g0 = _energy_grad(expr, x)
    if method == "mala":
        prop = x - eps * g0 + torch.sqrt(2 * eps * t) * xi
        e1, g1 = _energy_grad(expr, prop)
        log_q_forward = -((prop - x + eps * g0) ** 2).sum(1) / (4 * eps[:, 0] * t)
        log_q_reverse = -((x - prop + eps * g1) ** 2).sum(1) / (4 * eps[:, 0] * t)
        log_alpha = -(e1 - e0) / t + log_q_reverse - log_q_forward
    else:
        p = xi * torch.sqrt(m)
        h0 = e0 / t + 0.5 * (p * p / m).sum(1)
        q = x.clone()
        g = g0
        for _ in range(leapfrog_steps):
            p = p - 0.5 * eps * g / t
            q = q + eps * p / m
            e1, g = _energy_grad(expr, q)
            p = p - 0.5 * eps * g / t
        prop = q
        h1 = e1 / t + 0.5 * (p * p / m).sum(1)
        log_alpha = h0 - h1
    alpha = torch.where(torch.isfinite(log_alpha), torch.exp(log_alpha.clamp(max=0)), torch.zeros_like(log_alpha))
    u = contract_uniform(seed, step, b)
    accepted = torch.isfinite(log_alpha) & (u < alpha)
    return torch.where(accepted[:, None], prop, x), accepted, alpha, u


def check_one_update(expr, x, *, backend, method, step_size, temperature, seed, leapfrog_steps=None, mass=None):
    """The fused update against :func:`oracle_update`, per chain, decisions included."""
    b = x.shape[0]
    out, info = ef.sample(expr, x, method=method, steps=1, step_size=step_size, temperature=temperature, seed=seed,
                          backend=backend, leapfrog_steps=leapfrog_steps, mass=mass,
                          return_energies=True, return_info=True)[0::2]
    ref, acc, alpha, u = oracle_update(expr, x, method=method, step_size=step_size, temperature=temperature,
                                       seed=seed, step=1, leapfrog_steps=leapfrog_steps or 1, mass=mass)
    decisive = (u - alpha).abs() > DECISION_MARGIN
    got = info.accepted[0]
    assert torch.equal(got[decisive], acc[decisive]), (got, acc, alpha, u)
    rows = decisive & (got == acc)
    torch.testing.assert_close(out[rows].double(), ref[rows], rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(info.accept_rate.double(), got.double())
    assert int(decisive.sum()) >= math.ceil(0.9 * b) - 1
    return acc


def check_random_trees(backend: str, method: str, *, log_step: tuple[float, float], shared_step: float) -> None:
    """:func:`check_one_update` on Hypothesis cases: random nested expressions of :class:`Bowl` s,
    sizes up to :data:`ORACLE_CASES`, 64-bit seeds, temperatures 0.5..2, and either one step size
    ``shared_step`` or per-chain step sizes log-uniform in ``exp(log_step)``; for HMC also L in 1..4
    and an optional diagonal mass."""
    mcmc_backend_or_skip(backend)
    examples, max_b, max_d = ORACLE_CASES[backend]
    hmc = method == "hmc"

    @settings(max_examples=examples, deadline=None)
    @given(data=st.data(), b=st.integers(1, max_b), d=st.integers(1, max_d), seed=st.integers(0, 2**64 - 1),
           temperature=st.sampled_from([1.0, 0.5, 2.0]), per_chain=st.booleans(),
           leapfrog=st.integers(1, 4) if hmc else st.none(), with_mass=st.booleans() if hmc else st.just(False))
    def run(data, b, d, seed, temperature, per_chain, leapfrog, with_mass):
        expr = data.draw(bowl_expressions(d))
        gen = torch.Generator().manual_seed(seed % 2**31)
        x = torch.randn(b, d, generator=gen, dtype=torch.float64)
        eps = torch.exp(torch.empty(b).uniform_(*log_step, generator=gen)) if per_chain else shared_step
        mass = 0.3 + 2 * torch.rand(d, generator=gen) if with_mass else None
        check_one_update(expr, x, backend=backend, method=method, step_size=eps, temperature=temperature, seed=seed,
                         leapfrog_steps=leapfrog, mass=mass)

    run()


def check_oracle_sees_both_decisions(method: str, make_expr, *, log_step: tuple[float, float], seed: int,
                                     leapfrog_steps: int = 1) -> None:
    """On 200 chains of ``make_expr(leaf)`` (``leaf()`` makes a fresh 3-D :class:`Bowl` concept) with
    step sizes log-uniform in ``exp(log_step)``, the oracle both accepts and rejects (else the oracle
    tests could not catch a flipped accept test)."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    expr = make_expr(lambda: ef.Concept(Bowl(gen, 3)))
    x = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    eps = torch.exp(torch.empty(200).uniform_(*log_step, generator=gen))
    _, acc, alpha, _ = oracle_update(expr, x, method=method, step_size=eps, temperature=1.0, seed=seed, step=1,
                                     leapfrog_steps=leapfrog_steps)
    assert 20 < int(acc.sum()) < 180 and float(alpha.min()) < 0.5
