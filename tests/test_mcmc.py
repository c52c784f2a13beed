"""MALA/HMC chains: exactness against analytic answers (where the unadjusted chain is biased),
a disjunction split by its log-weights, a two-sample test against exact draws, seeds across
backends, step-size adaptation, the info, argument checks, and graphs/compile paths."""

from __future__ import annotations

import math

import pytest
import torch
from mcmc_support import mcmc_backend_or_skip
from scipy import stats

import ebm_fast as ef
from ebm_fast import mcmc


class Gauss(torch.nn.Module):
    """``E(x) = 0.5 sum_d (x_d - mu_d)^2 / var_d`` (exp(-E) unnormalised N(mu, diag(var)))."""

    def __init__(self, mu, var):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32))
        self.register_buffer("var", torch.as_tensor(var, dtype=torch.float32))

    def forward(self, x):
        return 0.5 * ((x - self.mu.to(x.dtype)) ** 2 / self.var.to(x.dtype)).sum(1)


def _conjunction():
    """``a & b`` with precision [2, 1] (a: var [1, 2], b: var [1, 2]) and mean [0.5, -0.25]."""
    a = ef.Concept(Gauss([1.0, -1.0], [1.0, 2.0]))
    b = ef.Concept(Gauss([0.0, 0.5], [1.0, 2.0]))
    precision = torch.tensor([2.0, 1.0])
    mean = torch.tensor([0.5, -0.25])
    return a & b, mean, 1.0 / precision


def _fresh_seed() -> int:
    return int(torch.randint(0, 2**62, ()))


# ---- exactness ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method,kw", [("mala", {}), ("hmc", {"leapfrog_steps": 4}),
                                       ("hmc", {"leapfrog_steps": 3, "mass": torch.tensor([0.5, 1.0])})])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_conjunction_of_gaussians_is_exact_where_ula_is_biased(method, kw, temperature):
    """At step 0.3 (eps * precision = 0.6 and 0.3) the unadjusted chain's stationary variance is
    1 / (lambda (1 - eps lambda / 2)): 43% and 18% too large; MALA/HMC match the exact answer."""
    expr, mean, var = _conjunction()
    var = var * temperature
    b, eps = 4000, 0.3
    x0 = 3.0 * torch.randn(b, 2)  # over-dispersed start
    seed = _fresh_seed()
    x, info = ef.sample(expr, x0, method=method, steps=150, step_size=eps, temperature=temperature, seed=seed,
                        return_info=True, **kw)
    se_mean = (var / b).sqrt()
    se_var = var * math.sqrt(2.0 / (b - 1))
    assert ((x.mean(0) - mean).abs() < 4 * se_mean).all(), (x.mean(0), mean)
    assert ((x.var(0) - var).abs() < 4 * se_var).all(), (x.var(0), var)
    assert 0.3 < float(info.accept_rate.mean()) < 1.0
    ula = ef.sample(expr, x0, steps=150, step_size=eps, noise=math.sqrt(2 * eps * temperature), order="ula",
                    seed=seed)
    assert (ula.var(0) / var > 1.10).all()  # the bias the exact samplers remove (3+ standard errors)


def _mixture():
    """``Or(a, b, log_weights)`` of N(-1.5, 1) and N(1.5, 1) in 1-D: weights 0.25 and 0.75."""
    a, b = ef.Concept(Gauss([-1.5], [1.0])), ef.Concept(Gauss([1.5], [1.0]))
    return ef.Or(a, b, log_weights=[math.log(0.25), math.log(0.75)])


@pytest.mark.parametrize("method,kw", [("mala", {"step_size": 0.8}), ("hmc", {"step_size": 0.5, "leapfrog_steps": 5})])
def test_disjunction_splits_by_its_log_weights(method, kw):
    """Connected modes at -1.5 and 1.5: P(x > 0) = 0.25 Phi(-1.5) + 0.75 Phi(1.5); a two-sample
    Kolmogorov-Smirnov test against exact draws of the mixture (level 1e-3)."""
    n = 4000
    x0 = torch.randn(n, 1) * 3
    x = ef.sample(_mixture(), x0, method=method, steps=200, seed=_fresh_seed(), **kw)[:, 0].double()
    phi = stats.norm.cdf
    p_right = 0.25 * phi(-1.5) + 0.75 * phi(1.5)
    frac = float((x > 0).double().mean())
    # 5 binomial standard errors: the measured spread of this fraction over seeds is 1.1-1.3 of the
    # binomial one (the chains share the step adaptation), so 4 would fail about once in 500 runs
    assert abs(frac - p_right) < 5 * math.sqrt(p_right * (1 - p_right) / n), (frac, p_right)
    gen = torch.Generator().manual_seed(_fresh_seed() % 2**31)
    comp = torch.rand(n, generator=gen) < 0.75
    exact = torch.where(comp, 1.5, -1.5) + torch.randn(n, generator=gen)
    assert stats.ks_2samp(x.numpy(), exact.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_one_update_keeps_exact_draws_exact(method):
    """Detailed balance at work: exact draws of the conjunction, one update at a step where the
    unadjusted update visibly moves them off (variance 25% too large), pass a two-sample test
    against fresh exact draws."""
    expr, mean, var = _conjunction()
    n = 6000
    gen = torch.Generator().manual_seed(_fresh_seed() % 2**31)
    x0 = mean + var.sqrt() * torch.randn(n, 2, generator=gen)
    x = ef.sample(expr, x0, method=method, steps=3, step_size=0.6, seed=_fresh_seed(),
                  leapfrog_steps=2 if method == "hmc" else None)
    exact = mean + var.sqrt() * torch.randn(n, 2, generator=gen)
    for d in range(2):
        assert stats.ks_2samp(x[:, d].numpy(), exact[:, d].numpy()).pvalue > 1e-3


# ---- seeds, backends ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_same_seed_same_chain_on_every_backend(method):
    expr, _, _ = _conjunction()
    expr = expr | ~ef.Concept(Gauss([0.3, 0.3], [4.0, 4.0])) & expr
    x0 = torch.randn(16, 2)
    seed = _fresh_seed()
    kw = dict(method=method, steps=4, step_size=1.0, seed=seed, return_energies=True, return_info=True,
              leapfrog_steps=2 if method == "hmc" else None)
    runs = {}
    for backend in ("torch", "cpu", "triton"):
        mcmc_backend_or_skip(backend)
        runs[backend] = ef.sample(expr, x0, backend=backend, **kw)
    ref_x, ref_e, ref_info = runs["torch"]
    assert 0 < int(ref_info.accepted.sum()) < ref_info.accepted.numel()
    for backend, (x, e, info) in runs.items():
        assert torch.equal(info.accepted, ref_info.accepted), backend
        torch.testing.assert_close(x, ref_x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(e, ref_e, rtol=1e-5, atol=1e-5)
    again = ef.sample(expr, x0, backend="torch", **kw)
    assert torch.equal(again[0], ref_x)


# ---- adaptation --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mala", "hmc"])
@pytest.mark.parametrize("per_chain", [True, False])
def test_adaptation_reaches_the_target_acceptance(method, per_chain):
    """On a 10-D Gaussian with variances 0.25..2, from a step size 100x too small. HMC's target
    sits on its stability edge (acceptance 0.65 at step 0.9, 0.17 at 1.0 with L = 3), where an
    averaged step size that straddles the edge lands well above the target.

    Tolerance: a chain's accept rate over the K returned updates has variance at most p (1 - p)
    however correlated its decisions, and the B chains are independent, so the batch mean lies
    within 3 sqrt(p (1 - p) / B) = 0.032 (B = 2048) of the acceptance the adapted step size gives
    with probability >= 0.997 (the mean of 2048 independent bounded terms is close to normal).
    The adapted step size itself is allowed no extra slack."""
    b, dim = 2048, 10
    expr = ef.Concept(Gauss(torch.zeros(dim), torch.linspace(0.25, 2.0, dim)))
    x0 = torch.randn(b, dim)
    _x, info = ef.sample(expr, x0, method=method, steps=100, step_size=0.01, seed=_fresh_seed(),
                        adapt=mcmc.Adapt(warmup=400, per_chain=per_chain), return_info=True,
                        leapfrog_steps=3 if method == "hmc" else None)
    target = mcmc.TARGET_ACCEPT[method]
    tol = 3 * math.sqrt(target * (1 - target) / b)
    assert abs(float(info.accept_rate.mean()) - target) < tol, (float(info.accept_rate.mean()), target, tol)
    assert info.warmup == 400 and info.step_size.shape == (b,)
    assert float(info.step_size.min()) > 0.1  # moved far from the initial 0.01
    if not per_chain:
        assert torch.equal(info.step_size, info.step_size[:1].expand(b))
    else:
        assert float(info.step_size.std()) > 0


def test_warmup_is_not_part_of_the_returned_chain():
    """With adaptation the returned K updates follow the warm-up (RNG steps W+1..W+K): the chain
    equals a run started from the warm-up's end with the adapted step sizes."""
    expr, _, _ = _conjunction()
    x0 = torch.randn(8, 2)
    seed = _fresh_seed()
    _x, e, info = ef.sample(expr, x0, method="mala", steps=5, step_size=0.1, seed=seed, adapt=20,
                           return_energies=True, return_info=True)
    assert e.shape == (5, 8) and info.accepted.shape == (5, 8)
    torch.testing.assert_close(info.accept_rate, info.accepted.float().mean(0))


# ---- info and arguments --------------------------------------------------------------------------
def test_info_and_return_layout():
    expr, _, _ = _conjunction()
    x0 = torch.randn(7, 2, dtype=torch.float64)
    out = ef.sample(expr, x0, method="hmc", steps=3, step_size=0.3, return_info=True, seed=1)
    x, info = out
    assert x.dtype == torch.float64 and x.shape == (7, 2)
    assert info.accept_rate.shape == (7,) and info.accepted is None and info.method == "hmc"
    assert info.leapfrog_steps == mcmc.DEFAULT_LEAPFROG_STEPS and info.seed == 1
    assert ef.sample(expr, x0, method="mala", steps=0, step_size=0.3).shape == (7, 2)


def test_langevin_takes_method():
    x0 = torch.randn(500, 1) * 2
    x = ef.langevin(lambda x: 0.5 * (x ** 2).sum(1) / 0.25, x0, method="mala", steps=100, step_size=0.2,
                    seed=_fresh_seed())
    assert abs(float(x.var()) - 0.25) < 4 * 0.25 * math.sqrt(2 / 499)


@pytest.mark.parametrize("bad,match", [
    (dict(clamp=(0.0, 1.0)), "clamp"),
    (dict(noise=0.1), "noise"),
    (dict(grad_clip=1.0), "grad_clip"),
    (dict(trajectory=True), "trajectory"),
    (dict(on_nonfinite="reinit", init=lambda n: torch.zeros(n, 2)), "reinit"),
    (dict(leapfrog_steps=3), "leapfrog_steps"),
    (dict(mass=2.0), "mass"),
    (dict(temperature=0.0), "temperature"),
    (dict(step_size=-1.0), "step_size"),
    (dict(step_size=[0.1, 0.2]), "schedule"),
    (dict(adapt="yes"), "adapt"),
])
def test_bad_arguments_raise_one_clear_error(bad, match):
    expr, _, _ = _conjunction()
    kw = dict(method="mala", steps=2, step_size=0.1)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        ef.sample(expr, torch.zeros(3, 2), **kw)


def test_ula_options_refused_and_default_is_ula():
    expr, _, _ = _conjunction()
    x0 = torch.randn(4, 2)
    with pytest.raises(ValueError, match="temperature"):
        ef.sample(expr, x0, steps=2, step_size=0.1, noise=0.1, temperature=2.0)
    with pytest.raises(ValueError, match="method"):
        ef.sample(expr, x0, steps=2, step_size=0.1, method="nuts")
    a = ef.sample(expr, x0, steps=3, step_size=0.1, noise=0.1, seed=4)
    b = ef.sample(expr, x0, steps=3, step_size=0.1, noise=0.1, seed=4, method="ula")
    assert torch.equal(a, b)


def test_nonfinite_start_raises():
    with pytest.raises(FloatingPointError, match="x0"):
        ef.langevin(lambda x: (x ** 2).sum(1).log() * float("nan"), torch.ones(3, 2), method="mala", steps=2,
                    step_size=0.1)


# ---- compile and graphs -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_compiled_evaluator_gives_the_eager_chain(method):
    expr, _, _ = _conjunction()
    x0 = torch.randn(16, 2)
    kw = dict(method=method, steps=4, step_size=0.3, seed=9, leapfrog_steps=2 if method == "hmc" else None)
    torch.testing.assert_close(ef.sample(expr, x0, compile=True, **kw), ef.sample(expr, x0, **kw),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["mala", "hmc"])
@pytest.mark.parametrize("backend", ["torch", "cuda", "triton"])
def test_cuda_graph_chain_equals_the_eager_chain(method, backend):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    expr, _, _ = _conjunction()
    expr = expr.__class__(*[ef.Concept(leaf.model.cuda()) for leaf in expr.leaves()])
    x0 = torch.randn(64, 2, device="cuda")
    kw = dict(method=method, steps=45, step_size=0.3, seed=_fresh_seed(), backend=backend,
              graph_steps=20, return_info=True, leapfrog_steps=3 if method == "hmc" else None)
    xg, ig = ef.sample(expr, x0, graph=True, **kw)
    xe, ie = ef.sample(expr, x0, graph=False, **kw)
    assert ig.graph in ("captured", "replayed") and ie.graph == "eager"
    torch.testing.assert_close(xg, xe, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ig.accept_rate, ie.accept_rate)
    xr, ir = ef.sample(expr, x0, graph=True, **kw)  # replayed from the cache
    assert ir.graph == "replayed"
    torch.testing.assert_close(xr, xe, rtol=1e-5, atol=1e-5)
