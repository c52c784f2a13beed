"""ebm_fast.sample / ebm_fast.langevin against the released code's loop, analytic laws, and the contract.

Oracles: ``released_loop`` (the released research code's sampler written plainly: one forward per
concept, autograd of the composed energy, step, clamp, detach) and the exact stationary laws of the
discretised Langevin recursion for Gaussian energies. The graph driver's logic (device-side
counters, chunking, the cache, the fallback) runs here on the CPU with a stand-in for the CUDA
capture; the real capture is tested in test_graphs_cuda.py.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import ebm_fast as ef
from ebm_fast import graphs
from ebm_fast.models import EnergyEnsemble
from ebm_fast.rng import normal_noise

from support import TOL, backend_or_skip, expressions

BACKENDS_CPU = ["torch", "cpu"]


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs every run; the seed is in the test's report if it fails."""
    seed = secrets.randbits(62)
    torch.manual_seed(seed)
    yield seed


# ---- models -------------------------------------------------------------------------------------
class CondConvEBM(nn.Module):
    """A tiny conditional conv EBM: conv, FiLM from a one-hot condition, swish, pool, linear."""

    def __init__(self, n_cond: int = 4, ch: int = 6, in_ch: int = 3):
        super().__init__()
        self.c1 = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1, stride=2)
        self.film = nn.Linear(n_cond, 2 * ch)
        self.out = nn.Linear(ch, 1)

    def forward(self, x, c):
        h = F.silu(self.c1(x))
        h = self.c2(h)
        gamma, beta = self.film(c).chunk(2, dim=1)
        h = F.silu(h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])
        return 3.0 * self.out(h.mean((2, 3)))  # (B, 1)


class Quadratic(nn.Module):
    """``E(x, c) = lam/2 |x - mu|^2`` with ``c = (mu_1..mu_D, lam)`` (shared or per sample)."""

    def forward(self, x, c):
        mu, lam = c[:, :-1], c[:, -1]
        return 0.5 * lam * (x - mu).square().sum(1)


def onehot(i: int, n: int = 4) -> torch.Tensor:
    return F.one_hot(torch.tensor(i), n).float()


def conv_concepts(model=None):
    model = model or CondConvEBM()
    return model, [ef.Concept(model, onehot(i)) for i in range(3)]


# ---- the released code's loop (the oracle) ------------------------------------------------------
def released_loop(expr, x0, *, steps, step_size, noise, seed, clamp=(0.0, 1.0), order="noise_first"):
    """The released research code's sampler, in float32, with iteration i's noise drawn as xi(seed, i)
    ("noise_first"), or the ULA update with xi(seed, k) for update k ("ula")."""
    eta = step_size if isinstance(step_size, (list, tuple)) else [step_size] * steps
    sig = noise if isinstance(noise, (list, tuple)) else [noise] * steps
    x = x0.detach().clone().float()
    for i in range(steps):
        if order == "noise_first":
            x = x + sig[i] * normal_noise(seed, i, x.numel(), device=x.device).view_as(x)
        x.requires_grad_(True)
        energies = [leaf.energy(x) for leaf in expr.leaves()]  # one forward per concept
        e = expr.combine(energies)
        (g,) = torch.autograd.grad(e.sum(), x)
        x = x.detach() - eta[i] * g
        if order == "ula":
            x = x + sig[i] * normal_noise(seed, i + 1, x.numel(), device=x.device).view_as(x)
        if clamp is not None:
            x = x.clamp(*clamp)
    return x.detach()


def conv_expressions():
    _, (a, b, c) = conv_concepts()
    return {
        "and": a & b & c,
        "or": ef.Or(a, b, c, temperature=0.5),
        "not": a & ef.Not(b, alpha=0.3),
        "nested": ef.Or(a & ~c, 2.0 * b, log_weights=[0.3, -0.2]) & ef.Not(c, alpha=0.1),
    }


# ---- equality with the released loop -------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("name", ["and", "or", "not", "nested"])
def test_noise_free_chain_equals_released_loop(name, backend):
    expr = conv_expressions()[name]
    x0 = torch.rand(5, 3, 8, 8)
    kw = dict(steps=6, step_size=0.05, noise=0.0, seed=secrets.randbits(40), clamp=(0.0, 1.0))
    got = ef.sample(expr, x0, backend=backend_or_skip(backend), **kw)
    want = released_loop(expr, x0, **kw)
    assert not torch.equal(want, x0.clamp(0, 1))  # the chain moved
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS_CPU)
@pytest.mark.parametrize("order", ["noise_first", "ula"])
def test_noisy_chain_with_schedules_equals_released_loop(order, backend):
    """The step-index convention: released iteration i uses eta_i, sigma_i and xi(seed, i)."""
    expr = conv_expressions()["nested"]
    x0 = torch.rand(4, 3, 8, 8)
    steps = 5
    eta = [0.05 * (1 + i) for i in range(steps)]
    sigma = [0.02 / (1 + i) for i in range(steps)]
    seed = secrets.randbits(60)
    got = ef.sample(expr, x0, steps=steps, step_size=eta, noise=torch.tensor(sigma), seed=seed, order=order,
                    backend=backend_or_skip(backend), clamp=(0.0, 1.0))
    want = released_loop(expr, x0, steps=steps, step_size=eta, noise=sigma, seed=seed, order=order)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the last step adds no noise (noise_first): the output lies in the clamp range
    if order == "noise_first":
        assert got.min() >= 0.0 and got.max() <= 1.0


@pytest.mark.parametrize("memory_format", ["auto", "contiguous", "channels_last"])
@pytest.mark.parametrize("grouping", ["batched", "per_leaf"])
def test_grouping_and_memory_format_agree(grouping, memory_format):
    expr = conv_expressions()["and"]
    x0 = torch.rand(3, 3, 8, 8)
    kw = dict(steps=4, step_size=0.05, noise=0.01, seed=7, clamp=(0.0, 1.0))
    got, info = ef.sample(expr, x0, grouping=grouping, memory_format=memory_format, return_info=True, **kw)
    nhwc = memory_format != "contiguous"  # auto: a conv model on the CPU gets NHWC inputs
    assert info.grouping == [([0, 1, 2], grouping + ("+channels_last" if nhwc else ""))]
    torch.testing.assert_close(got, released_loop(expr, x0, **kw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["and", "nested"])
def test_threads_give_the_same_chain(name):
    """Leaves on plain models compute the same numbers in any thread: the chains are equal."""
    expr = conv_expressions()[name]
    x0 = torch.rand(3, 3, 8, 8)
    chain = dict(steps=4, step_size=0.05, noise=0.01, seed=secrets.randbits(40), clamp=(0.0, 1.0))
    one, info1 = ef.sample(expr, x0, workers=1, grouping="per_leaf", return_info=True, **chain)
    two, info2 = ef.sample(expr, x0, workers=2, grouping="per_leaf", return_info=True, **chain)
    assert (info1.workers, info2.workers) == (1, 2)
    assert torch.equal(one, two)
    torch.testing.assert_close(two, released_loop(expr, x0, **chain), rtol=1e-5, atol=1e-5)
    # an ensemble leaf's members run as separate passes: the chain agrees with the released loop
    a = conv_concepts()[1][0]
    mixed = a & ef.Concept(EnergyEnsemble([a.model, CondConvEBM()], weights=[0.6, 0.4]), onehot(1))
    got, info = ef.sample(mixed, x0, workers=3, return_info=True, **chain)
    assert info.workers == 3
    torch.testing.assert_close(got, released_loop(mixed, x0, **chain), rtol=1e-5, atol=1e-5)


# random expression trees (support.expressions) over two shared models, shared and per-sample conditions
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=expressions(max_leaves=6, max_depth=3), data=st.data())
def test_random_trees_match_released_loop(expr, data):
    b, d = 4, 3
    models = [Quadratic(),
              lambda x, c: (x * c[:, :d]).sin().sum(1, keepdim=True) + 0.5 * x.square().sum(1, keepdim=True)]
    for leaf in expr.leaves():
        k = data.draw(st.integers(0, 1))
        leaf.model = models[k]
        per_sample = data.draw(st.booleans())
        c = torch.rand(b, d + 1) if per_sample else torch.rand(d + 1)
        c[..., -1] += 0.5
        leaf.cond, leaf.per_sample = c, per_sample
    x0 = torch.randn(b, d)
    grouping = data.draw(st.sampled_from(["auto", "batched", "per_leaf"]))
    kw = dict(steps=3, step_size=0.1, noise=0.05, seed=data.draw(st.integers(0, 2**40)), clamp=None, order="ula")
    got = ef.sample(expr, x0, grouping=grouping, **kw)
    torch.testing.assert_close(got, released_loop(expr, x0, **kw), rtol=1e-5, atol=1e-5)


# ---- stationary laws of the discretised process -----------------------------------------------------
def quad(mu, lam) -> ef.Concept:
    return ef.Concept(Quadratic(), torch.tensor([*mu, lam], dtype=torch.float32))


@pytest.mark.parametrize("order", ["ula", "noise_first"])
def test_conjunction_of_gaussians_reaches_ar1_law(order):
    """x' = x - eta Lam (x - mu*) + sigma xi is AR(1) with a = 1 - eta Lam: var = sigma^2 / (1 - a^2)
    (not the continuous 1/Lam), mean the precision-weighted mu*. noise_first's output has no last
    noise: var a^2 sigma^2 / (1 - a^2)."""
    lam1, lam2, mu1, mu2 = 1.0, 3.0, (0.0, 0.5), (1.0, -2.0)
    expr = quad(mu1, lam1) & quad(mu2, lam2)
    lam, eta = lam1 + lam2, 0.15
    sigma = math.sqrt(2 * eta)
    a = 1 - eta * lam  # 0.4: the discretised variance is 1.43x the continuous one
    mean = torch.tensor([(lam1 * m1 + lam2 * m2) / lam for m1, m2 in zip(mu1, mu2)])
    var = sigma**2 / (1 - a * a) * (a * a if order == "noise_first" else 1.0)
    n_chains = 4000
    x = ef.sample(expr, torch.rand(n_chains, 2) * 4 - 2, steps=40, step_size=eta, noise=sigma, clamp=None,
                  order=order)  # a**40 ~ 1e-16: no memory of x0
    # 2 dims x 4000 independent chains: mean SE = sqrt(var/4000) per dim, var relative SE
    # sqrt(2/7999) = 1.6%; 5 SE bounds (false alarm ~1e-6)
    se_mean = math.sqrt(var / n_chains)
    assert (x.mean(0) - mean).abs().max() < 5 * se_mean, (x.mean(0), mean)
    v = x.var(0).mean().item()
    assert abs(v / var - 1) < 5 * math.sqrt(2 / (2 * n_chains - 1)), (v, var)


def test_disjunction_splits_by_mixture_weights():
    """Or with log-weights (log .3, log .7) of unit Gaussians at -1.5, +1.5: P(x > 0) = .3 Phi(-1.5) +
    .7 Phi(1.5) = 0.673 and E x = 0.6; all chains start in the left mode, so passing needs mixing."""
    from scipy.stats import norm

    w = (0.3, 0.7)
    expr = ef.Or(quad((-1.5,), 1.0), quad((1.5,), 1.0), log_weights=[math.log(w[0]), math.log(w[1])])
    eta = 0.1
    n_chains = 10000
    # 250 steps = 25 time units: measured P(x>0) 0.652 after 150 steps, 0.665 after 250 and 500
    x = ef.sample(expr, torch.full((n_chains, 1), -3.0), steps=250, step_size=eta, noise=math.sqrt(2 * eta),
                  clamp=None, order="ula")
    p_right = w[0] * norm.cdf(-1.5) + w[1] * norm.cdf(1.5)
    frac = (x > 0).float().mean().item()
    # binomial SE sqrt(p(1-p)/n) = 0.0047: 5 SE, plus 0.015 for ULA's O(eta) bias (the per-mode
    # variance is inflated by 1/(1 - eta/2) = 1.05, which moves P(x>0) by ~0.005)
    assert abs(frac - p_right) < 5 * math.sqrt(p_right * (1 - p_right) / n_chains) + 0.015, (frac, p_right)
    mix_var = 1 + 1.5**2 - 0.6**2  # SE 0.017
    assert abs(x.mean().item() - 0.6) < 5 * math.sqrt(mix_var / n_chains) + 0.03


def test_negation_pushes_mass_away():
    """a & Not(b, 0.5), a at 0, b at (1, 1), unit precisions: Lam = 0.5, mu* = (0 - 0.5*1)/0.5 = -1."""
    expr = quad((0.0, 0.0), 1.0) & ef.Not(quad((1.0, 1.0), 1.0), alpha=0.5)
    eta, n_chains = 0.2, 4000
    sigma = math.sqrt(2 * eta)
    a = 1 - eta * 0.5
    var = sigma**2 / (1 - a * a)
    x = ef.sample(expr, torch.randn(n_chains, 2), steps=150, step_size=eta, noise=sigma, clamp=None, order="ula")
    se = math.sqrt(var / n_chains)
    assert (x.mean(0) + 1.0).abs().max() < 5 * se  # mean -1: away from b, beyond a's own mean 0
    assert abs(x.var(0).mean().item() / var - 1) < 5 * math.sqrt(2 / (2 * n_chains - 1))


# ---- seeds -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_same_seed_same_samples_different_seeds_differ(backend):
    backend = backend_or_skip(backend)
    expr = conv_expressions()["nested"]
    x0 = torch.rand(3, 3, 8, 8)
    kw = dict(steps=4, step_size=0.05, noise=0.05, backend=backend)
    s = secrets.randbits(63)
    x1, x2 = ef.sample(expr, x0, seed=s, **kw), ef.sample(expr, x0, seed=s, **kw)
    assert torch.equal(x1, x2)
    assert not torch.allclose(x1, ef.sample(expr, x0, seed=s + 1, **kw), atol=1e-3)


def test_backends_agree_for_one_seed():
    backend_or_skip("cpu")
    expr = conv_expressions()["or"]
    x0 = torch.rand(3, 3, 8, 8)
    kw = dict(steps=4, step_size=0.05, noise=0.05, seed=secrets.randbits(63))
    torch.testing.assert_close(ef.sample(expr, x0, backend="cpu", **kw), ef.sample(expr, x0, backend="torch", **kw),
                               rtol=1e-5, atol=1e-5)


def test_seed_none_draws_from_torch_default_generator():
    expr = conv_expressions()["and"]
    x0 = torch.rand(2, 3, 8, 8)
    kw = dict(steps=2, step_size=0.05, noise=0.05)
    torch.manual_seed(1234)
    x1, info1 = ef.sample(expr, x0, return_info=True, **kw)
    torch.manual_seed(1234)
    x2, info2 = ef.sample(expr, x0, return_info=True, **kw)
    assert info1.seed == info2.seed and torch.equal(x1, x2)
    x3, info3 = ef.sample(expr, x0, return_info=True, **kw)
    assert info3.seed != info1.seed and not torch.equal(x1, x3)


# ---- memory and the caller's model state -------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RSSProbe(nn.Module):
    """Allocates ~1 MB of activations per forward (4 x 256 kB) and records the process RSS at every call."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(64) / 8)
        self.peak = 0

    def forward(self, x):
        assert x.requires_grad and not self.w.requires_grad
        self.peak = max(self.peak, _rss_bytes())
        h = (x.repeat(1, 64) * self.w.repeat(64)).tanh()  # (16, 4096) fp32 = 256 kB per activation
        return h.square().sum(1)


def test_memory_does_not_grow_with_steps():
    """An autograd graph kept across steps would hold ~1 MB per step: ~1 GB after 1000 steps."""
    probe = RSSProbe()
    x0 = torch.rand(16, 64)
    ef.langevin(probe, x0, steps=10, step_size=1e-3, noise=1e-2, seed=1)
    probe.peak = 0
    ef.langevin(probe, x0, steps=10, step_size=1e-3, noise=1e-2, seed=2)
    peak_short = probe.peak
    probe.peak = 0
    ef.langevin(probe, x0, steps=1000, step_size=1e-3, noise=1e-2, seed=3)
    assert probe.peak - peak_short < 64 * 2**20, (peak_short, probe.peak)
    assert probe.w.requires_grad and probe.w.grad is None


def test_parameter_flags_and_modes_restored_even_on_error():
    model, (a, b, c) = conv_concepts()
    model.c1.weight.requires_grad_(False)
    model.train()
    model.film.eval()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    seen = []
    orig = model.forward

    def forward(x, cond):
        seen.append(all(not p.requires_grad for p in model.parameters()))
        if len(seen) == 5:
            raise RuntimeError("boom")
        return orig(x, cond)

    model.forward = forward
    x0 = torch.rand(2, 3, 8, 8)
    ef.sample(a & b, x0, steps=1, step_size=0.1, noise=0.1)
    assert seen and all(seen)
    with pytest.raises(RuntimeError, match="boom"):
        ef.sample(a & b & c, x0, steps=3, step_size=0.1, noise=0.1, grouping="per_leaf")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())


def test_batchnorm_in_train_mode_runs_per_leaf_with_one_warning():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(1), nn.LazyLinear(1))
    model(torch.rand(2, 3, 8, 8))  # materialise the lazy layer
    cm = lambda x, c: model(x * (1 + c.sum(1)[:, None, None, None]))  # noqa: E731
    a, b = ef.Concept(cm, torch.tensor([0.1])), ef.Concept(cm, torch.tensor([0.2]))
    x0 = torch.rand(4, 3, 8, 8)
    kw = dict(steps=2, step_size=0.05, noise=0.0, seed=1, clamp=(0.0, 1.0))
    with pytest.warns(RuntimeWarning, match="BatchNorm in training mode") as rec:
        x, info = ef.sample(a & b, x0, return_info=True, **kw)
    assert len(rec) == 1 and info.grouping == [([0, 1], "per_leaf+channels_last")]
    # per leaf, batch statistics over B rows: what the released loop computes
    torch.testing.assert_close(x, released_loop(a & b, x0, **kw), rtol=1e-5, atol=1e-5)
    assert model.training and model[1].training
    with pytest.raises(ValueError, match="couples the samples"):
        ef.sample(a & b, x0, grouping="batched", **kw)


# ---- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 3])
def test_langevin_accepts_energy_shapes_and_diagnostics(k):
    """energy_fn may return (B,) (k = 0), (B, 1) or (B, k): the trailing dimensions are summed."""
    w = torch.randn(3, max(k, 1))

    def energy(x):
        e = 0.5 * x.square().sum(1, keepdim=True) + (x @ w).sin()  # (B, max(k, 1))
        return e.sum(1) if k == 0 else e

    x0 = torch.randn(5, 3)
    steps, every = 7, 3
    seed = secrets.randbits(40)
    x, energies, traj, info = ef.langevin(energy, x0, steps=steps, step_size=0.1, noise=0.0, order="ula", seed=seed,
                                         return_energies=True, trajectory=True, every=every, return_info=True)
    ref = released_loop(ef.Concept(energy), x0, steps=steps, step_size=0.1, noise=0.0, seed=seed, clamp=None,
                        order="ula")
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    assert energies.shape == (steps, 5) and traj.shape == (steps // every + 1, 5, 3)
    torch.testing.assert_close(traj[0], x0)
    torch.testing.assert_close(traj[-1], released_loop(ef.Concept(energy), x0, steps=every * (steps // every),
                                                       step_size=0.1, noise=0.0, seed=seed, clamp=None, order="ula"))
    # energies[k-1] is the energy where update k took its gradient: energies[0] = E(x0)
    e0 = energy(x0).reshape(5, -1).sum(1)
    torch.testing.assert_close(energies[0], e0, rtol=1e-5, atol=1e-5)
    assert info.graph.startswith("eager")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_state_dtypes_keep_x0_dtype(dtype):
    x0 = torch.randn(6, 4)
    kw = dict(steps=3, step_size=0.1, noise=0.05, seed=5, clamp=None)
    energy = lambda x: 0.5 * (x.float() - 1.0).square().sum(1)  # noqa: E731
    want = ef.langevin(energy, x0, **kw)
    got = ef.langevin(energy, x0.to(dtype), **kw)
    assert got.dtype == dtype and got.shape == x0.shape
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.float(), want, rtol=4 * rtol, atol=4 * atol)  # 3 steps of rounding


def test_autocast_bf16_keeps_state_fp32():
    model, (a, b, c) = conv_concepts()
    expr = a & b & c
    seen = []
    orig = model.c1.forward
    model.c1.forward = lambda x: seen.append((x.dtype, orig(x).dtype)) or orig(x)
    x0 = torch.rand(3, 3, 8, 8)
    kw = dict(steps=3, step_size=0.05, noise=0.01, seed=11)
    got = ef.sample(expr, x0, autocast=torch.bfloat16, **kw)
    assert got.dtype == torch.float32
    assert seen and all(s == (torch.float32, torch.bfloat16) for s in seen)  # fp32 state, bf16 conv
    # bf16 forward: ~3 significant digits in the gradients, step 0.05 * |g| ~ 0.05
    torch.testing.assert_close(got, ef.sample(expr, x0, **kw), rtol=0, atol=2e-2)


def test_noncontiguous_x0_empty_batch_and_zero_steps():
    expr = conv_expressions()["and"]
    big = torch.rand(6, 3, 8, 16)
    x0 = big[::2, :, :, ::2]
    kw = dict(steps=2, step_size=0.05, noise=0.05, seed=3)
    torch.testing.assert_close(ef.sample(expr, x0, **kw), ef.sample(expr, x0.contiguous(), **kw), rtol=0, atol=0)
    assert ef.sample(expr, torch.rand(0, 3, 8, 8), **kw).shape == (0, 3, 8, 8)
    x = ef.sample(expr, x0, steps=0, step_size=0.05, noise=0.05)
    assert torch.equal(x, x0) and x.data_ptr() != x0.data_ptr()


def test_inference_mode_and_no_grad_callers():
    expr = conv_expressions()["and"]
    x0 = torch.rand(2, 3, 8, 8)
    kw = dict(steps=2, step_size=0.05, noise=0.05, seed=9)
    want = ef.sample(expr, x0, **kw)
    with torch.no_grad():
        torch.testing.assert_close(ef.sample(expr, x0, **kw), want, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(ef.sample(expr, x0.clone(), **kw), want, rtol=0, atol=0)


# ---- bad input -------------------------------------------------------------------------------------
def _bad_cases():
    _, (a, b, _) = conv_concepts()
    x0 = torch.rand(2, 3, 8, 8)
    ok = dict(steps=2, step_size=0.1, noise=0.1)
    per = ef.Concept(a.model, torch.rand(3, 4), per_sample=True)
    return [
        ((a, "x"), ok, TypeError, "x0 must be a Tensor"),
        ((a, x0.long()), ok, TypeError, "floating dtype"),
        ((a, torch.rand(5)), ok, ValueError, "at least 2 dimensions"),
        (("a", x0), ok, TypeError, "ebm_fast expression"),
        ((~a, x0), ok, ValueError, "no normalisable distribution"),
        ((a, x0), {**ok, "steps": -1}, ValueError, "steps must be >= 0"),
        ((a, x0), {**ok, "steps": 2.0}, TypeError, "steps must be an int"),
        ((a, x0), {**ok, "step_size": [0.1]}, ValueError, "one entry per step"),
        ((a, x0), {**ok, "step_size": torch.ones(3)}, ValueError, r"shape \(2,\)"),
        ((a, x0), {**ok, "noise": float("nan")}, ValueError, "noise must be finite"),
        ((a, x0), {**ok, "step_size": -0.1}, ValueError, "step_size must be finite and >= 0"),
        ((a, x0), {**ok, "order": "euler"}, ValueError, "order must be"),
        ((a, x0), {**ok, "clamp": (1.0, 0.0)}, ValueError, "clamp must be"),
        ((a, x0), {**ok, "grad_clip": 0.0}, ValueError, "grad_clip"),
        ((a, x0), {**ok, "backend": "gpu"}, ValueError, "backend must be one of"),
        ((a, x0), {**ok, "graph": "yes"}, ValueError, "graph must be"),
        ((a, x0), {**ok, "graph": True}, ValueError, "graph=True is impossible: CUDA graphs need CUDA"),
        ((a, x0), {**ok, "on_nonfinite": "ignore"}, ValueError, "on_nonfinite"),
        ((a, x0), {**ok, "on_nonfinite": "reinit", "clamp": None}, ValueError, "needs fresh states"),
        ((a, x0), {**ok, "seed": 2**64}, ValueError, "64 bits"),
        # -1 would be the Philox key 2**64 - 1 without a word: refused, as ops.langevin_step refuses it
        ((a, x0), {**ok, "seed": -1}, ValueError, r"seed must be in \[0, 2\*\*64\)"),
        ((a, x0), {**ok, "seed": -2**63}, ValueError, r"seed must be in \[0, 2\*\*64\)"),
        ((a, x0), {**ok, "noise": None}, TypeError, "noise must be a number, a schedule"),
        ((a, x0), {**ok, "differentiable": -1}, ValueError, "differentiable must be >= 0"),
        ((a, x0), {"steps": 2, "step_size": 0.1, "method": "mala", "differentiable": 1}, ValueError,
         "options of the unadjusted method='ula'"),
        ((a, x0), {**ok, "grouping": "smart"}, ValueError, "grouping must be"),
        ((a, x0), {**ok, "autocast": torch.float64}, ValueError, "autocast"),
        ((a, x0), {**ok, "workers": 0}, ValueError, "workers must be None"),
        ((a & per, x0), ok, ValueError, "per-sample condition must have batch size 2"),
        ((ef.Concept(lambda x: x.sum()), x0), ok, ValueError, "batch size 2"),
        ((ef.Concept(lambda x: x.detach().sum((1, 2, 3))), x0), ok, ValueError, "do not depend on x"),
    ]


@pytest.mark.parametrize("args, kwargs, exc, match", _bad_cases())
def test_bad_input_raises_clear_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ef.sample(*args, **kwargs)


def test_langevin_rejects_non_callables():
    with pytest.raises(TypeError, match="energy_fn must be callable"):
        ef.langevin(3.0, torch.rand(2, 2), steps=1, step_size=0.1, noise=0.1)


# ---- non-finite values ------------------------------------------------------------------------------
class Exploding(nn.Module):
    """Finite for the first ``ok_calls`` calls, then NaN energies on every row."""

    def __init__(self, ok_calls: int):
        super().__init__()
        self.calls, self.ok_calls = 0, ok_calls

    def forward(self, x, c):
        self.calls += 1
        e = 0.5 * (x - c[:, :1]).square().sum(1)
        return e * float("nan") if self.calls > self.ok_calls else e


def test_nonfinite_raises_naming_leaf_and_step():
    good = quad((0.0, 0.0), 1.0)
    bad = ef.Concept(Exploding(ok_calls=3), torch.tensor([0.5]), name="exploding-concept")
    with pytest.raises(FloatingPointError, match=r"exploding-concept \(leaf 1\) during step 4 of 6"):
        ef.sample(good & bad, torch.rand(4, 2), steps=6, step_size=0.1, noise=0.1, clamp=None)


def test_reinit_restarts_bad_chains_and_counts_them():
    n, bad_rows, steps = 6, [1, 4], 5
    flags = torch.zeros(n, 3)
    flags[bad_rows, 2] = 1.0

    def model(x, c):  # rows flagged in c get a NaN energy and gradient at every step: 0 * log(0)
        return 0.5 * (x - c[:, :2]).square().sum(1) + x[:, 0] * (0.0 * torch.log(1.0 - c[:, 2]))

    clean = ef.Concept(model, torch.zeros(n, 3), per_sample=True)
    dirty = ef.Concept(model, flags, per_sample=True, name="nan-rows")
    x0 = torch.rand(n, 2)
    kw = dict(steps=steps, step_size=0.1, noise=0.1, clamp=(0.0, 1.0), seed=secrets.randbits(40))
    x, info = ef.sample(dirty, x0, on_nonfinite="reinit", return_info=True, **kw)
    ref = ef.sample(clean, x0, **kw)
    good = [i for i in range(n) if i not in bad_rows]
    assert torch.equal(x[good], ref[good])  # healthy chains are untouched
    assert torch.isfinite(x).all() and (x[bad_rows] >= 0).all() and (x[bad_rows] <= 1).all()
    assert info.reinitialized == steps * len(bad_rows)  # re-initialised after every step (CPU: per step)
    assert info.nonfinite_leaves == ["nan-rows"] and info.nonfinite_state
    # a user init is used for the fresh states
    x2 = ef.sample(dirty, x0, on_nonfinite="reinit", init=lambda k: torch.full((k, 2), 7.0), **{**kw, "clamp": None})
    assert torch.equal(x2[bad_rows], torch.full((2, 2), 7.0))


# ---- the graph driver on the CPU (a stand-in for the CUDA capture) ------------------------------------
@pytest.fixture
def fake_graphs(monkeypatch):
    """Make graph=True run the graph path on CPU tensors: capture = record the steps, replay = run them."""
    graphs.clear_cache()
    monkeypatch.setattr(graphs, "graph_support", lambda device: None)
    record = {"captured": []}

    def fake_capture(run, warmup, device, warmup_steps=graphs.WARMUP_STEPS):
        for _ in range(warmup_steps):
            warmup()
        record["captured"].append(run)
        return run

    monkeypatch.setattr(graphs, "capture", fake_capture)
    yield record
    graphs.clear_cache()


@pytest.mark.parametrize("steps", [7, 20, 45])
def test_graph_driver_matches_eager(fake_graphs, steps):
    expr = conv_expressions()["nested"]
    x0 = torch.rand(3, 3, 8, 8)
    kw = dict(steps=steps, step_size=0.03, noise=[0.05 / (1 + i) for i in range(steps)], seed=secrets.randbits(60))
    want = ef.sample(expr, x0, graph=False, **kw)
    got, info = ef.sample(expr, x0, graph=True, return_info=True, **kw)
    assert info.graph == "captured"
    # one graph of S = min(20, K) steps, plus one of K mod S steps
    assert len(fake_graphs["captured"]) == (2 if steps % min(20, steps) else 1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_graph_cache_hits_reuses_in_place_weights_and_recaptures_reallocated(fake_graphs):
    model, (a, b, c) = conv_concepts()
    expr = a & ~b
    x0 = torch.rand(2, 3, 8, 8)
    kw = dict(steps=5, step_size=0.05, noise=0.02, seed=4)
    ef.sample(expr, x0, graph=True, **kw)
    assert graphs.cache_info()["captures"] == 1
    # same key, new condition values and new weights in place: a hit, with the new numbers
    with torch.no_grad():
        model.c1.weight.mul_(1.5)
    expr2 = ef.Concept(model, onehot(2)) & ~ef.Concept(model, onehot(3))
    got, info = ef.sample(expr2, x0, graph=True, return_info=True, **kw)
    assert info.graph == "replayed" and graphs.cache_info()["hits"] == 1
    torch.testing.assert_close(got, ef.sample(expr2, x0, graph=False, **kw), rtol=1e-6, atol=1e-6)
    # re-allocated parameters: a new key, a new capture
    model.c1.weight = nn.Parameter(model.c1.weight.detach().clone())
    _, info = ef.sample(expr2, x0, graph=True, return_info=True, **kw)
    assert info.graph == "captured" and graphs.cache_info()["captures"] == 2
    # a different expression structure misses too
    ef.sample(a | b, x0, graph=True, **kw)
    assert graphs.cache_info()["captures"] == 3


def test_graph_cache_tells_columns_apart(fake_graphs):
    """Concept(m, column=j) leaves differ only in the column they read: a cached chain of column 0 must
    not serve column 1."""
    net = nn.Sequential(nn.Flatten(1), nn.Linear(6, 2))
    x0 = torch.rand(3, 2, 3)
    kw = dict(steps=4, step_size=0.2, noise=0.01, seed=secrets.randbits(40))
    for j in (0, 1):
        got, info = ef.sample(ef.Concept(net, column=j), x0, graph=True, return_info=True, **kw)
        assert info.graph == "captured"
        torch.testing.assert_close(got, ef.sample(ef.Concept(net, column=j), x0, graph=False, **kw), **dict(
            zip(("rtol", "atol"), TOL[torch.float32])))


def test_graph_capture_failure_falls_back_with_one_warning(fake_graphs, monkeypatch):
    def failing_capture(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "capture", failing_capture)
    expr = conv_expressions()["and"]
    x0 = torch.rand(2, 3, 8, 8)
    kw = dict(steps=4, step_size=0.05, noise=0.02, seed=8)
    with pytest.warns(RuntimeWarning, match="capture of the Langevin chain failed .*not permitted"):
        got, info = ef.sample(expr, x0, graph=True, return_info=True, **kw)
    assert "failed" in info.graph
    torch.testing.assert_close(got, ef.sample(expr, x0, graph=False, **kw), rtol=1e-6, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = ef.sample(expr, x0, graph=True, return_info=True, **kw)  # no second warning
    assert "failed before" in info.graph


def test_graph_auto_skips_uninspectable_callables(fake_graphs):
    class Opaque:
        __slots__ = ("scale",)

        def __init__(self):
            self.scale = 1.0

    holder = Opaque()
    expr = ef.Concept(lambda x: holder.scale * x.square().sum(1))
    _, info = ef.sample(expr, torch.rand(3, 2), steps=3, step_size=0.1, noise=0.1, return_info=True)
    assert info.graph.startswith("eager: a model callable holds objects")


def test_graph_driver_reports_nonfinite_chunk(fake_graphs):
    bad = ef.Concept(Exploding(ok_calls=23 + graphs.WARMUP_STEPS), torch.tensor([0.5]), name="late-nan")
    with pytest.raises(FloatingPointError, match=r"late-nan \(leaf 0\) during steps 21-30 of 30"):
        ef.sample(bad, torch.rand(3, 2), steps=30, step_size=0.1, noise=0.1, clamp=None, graph=True, graph_steps=10)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile imports torch.jit internals
def test_compiled_energy_gives_the_same_chain():
    model, (a, b, c) = conv_concepts()
    expr = a & ~b
    x0 = torch.rand(3, 3, 8, 8)
    kw = dict(steps=3, step_size=0.05, noise=0.01, seed=secrets.randbits(40))
    torch.testing.assert_close(ef.sample(expr, x0, compile=True, **kw), ef.sample(expr, x0, **kw),
                               rtol=1e-5, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())
