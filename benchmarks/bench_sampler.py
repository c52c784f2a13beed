"""Composed Langevin chains against their baselines, all timed in the same process (issue 3).

    pytest benchmarks/bench_sampler.py --benchmark-only [--benchmark-json=benchmarks/results/sampler_<device>.json]
    EBM_FAST_BENCH_COMPILE=0 ...   # skip the torch.compile variant (~30 s of compilation per shape on a CPU)

Workloads (docs/contract.md §5, issue 3):

* ``conv32`` / ``conv64``: three concepts of one conditional conv EBM (``ebm_fast.models`` ``small32``
  architecture, no spectral norm, eval mode), ``(a & b) & ~c``-style composition of one-hot conditions
  at 32x32 and 64x64, ``noise_first`` with clamp (the released code's loop);
* ``gmm2d``: a 2-D Gaussian mixture energy (8 components), B = 1024;
* ``mlp``: an MLP 2-128-128-1 energy, B = 1024.

Baselines: the released code's loop (one forward per concept, autograd of the summed energy, step,
clamp, detach), the network floor (K x the faster of one batched N·B forward + input-gradient pass
and N passes of B rows, parameters frozen), a hand-written autograd loop (small energies), and
TorchEBM's ``LangevinDynamics`` when ``torchebm`` imports, set to the same chain (its
``noise_scale`` is ``noise / sqrt(2 step_size)``), which is checked before timing: fed the same
noise, its chain must equal ``ef.langevin``'s. Variants are timed round-robin (the order
rotates every round), so drifting machine load hits all of them alike, and the fastest round per variant is kept; every figure, ratio, the device, dtype, shapes, backend and thread count go to ``extra_info``.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ebm_fast as ef
from ebm_fast.model_state import frozen_parameters
from ebm_fast.models import build_model
from ebm_fast.rng import normal_noise
from machine import device_name
from timing import timed

# torch.compile imports torch.jit internals that warn; the project's pytest config turns warnings into errors
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"
COMPILE = os.environ.get("EBM_FAST_BENCH_COMPILE", "1") != "0"


def record(benchmark, ours: Callable[[], object], times: dict[str, float], ours_name: str, floor: float | None,
           **meta) -> None:
    info = benchmark.extra_info
    info.update(meta)
    info.update(device=device_name("cuda" if ON_GPU else "cpu"), torch=torch.__version__,
                threads=torch.get_num_threads(),
                backend=ef.ops.resolve_backend("auto", DEVICE))
    info["ms"] = {k: round(v * 1e3, 3) for k, v in times.items()}
    t = times[ours_name]
    info["speedup"] = {k: round(v / t, 3) for k, v in times.items() if k != ours_name and not k.startswith("floor")}
    if floor is not None:
        info["network_floor_ms"] = round(floor * 1e3, 3)
        info["ours_over_floor"] = round(t / floor, 3)
    benchmark.pedantic(ours, rounds=3, iterations=1, warmup_rounds=0)


# ---- the released code's loop and the network floor ----------------------------------------------
def released_loop(model, conds, x0, steps, eta, sigma, not_alpha):
    """The released code, per step: noise, one forward per concept, autograd of the composed energy,
    step, clamp, detach (parameters keep requires_grad as in training code)."""
    x = x0.clone()
    for i in range(steps):
        x = x + sigma * torch.randn_like(x)
        x.requires_grad_(True)
        ea, eb, ec = (model(x, c) for c in conds)
        e = ea + eb - not_alpha * ec
        (g,) = torch.autograd.grad(e.sum(), x)
        x = (x - eta * g).clamp(0.0, 1.0).detach()
    return x


def floor_batched(model, cond_cat, x0, n, steps):
    with frozen_parameters([model]):
        for _ in range(steps):
            xb = x0.unsqueeze(0).expand(n, *x0.shape).reshape(n * x0.shape[0], *x0.shape[1:]).requires_grad_(True)
            torch.autograd.grad(model(xb, cond_cat).sum(), xb)


def floor_per_leaf(model, conds, x0, steps, memory_format=torch.contiguous_format):
    """K x (N forwards of B rows + one input-gradient backward); ``conds=[None]``: ``model(x)``."""
    with frozen_parameters([model]):
        for _ in range(steps):
            xin = x0.contiguous(memory_format=memory_format)
            xs = [xin.detach().requires_grad_(True) for _ in conds]
            outs = [model(x) if c is None else model(x, c) for x, c in zip(xs, conds)]
            torch.autograd.grad([o.sum() for o in outs], xs)


# ---- conv compositions -----------------------------------------------------------------------------
CONV = {
    # name: (resolution, batch, steps) -- CPU sizes are smaller; the GPU sizes are the targets
    "conv32": (32, 32, 5) if not ON_GPU else (32, 32, 60),
    "conv64_b16": (64, 16, 5) if not ON_GPU else (64, 16, 60),
    "conv64_b128": None if not ON_GPU else (64, 128, 60),
}


@pytest.mark.parametrize("name", [k for k, v in CONV.items() if v is not None])
def test_conv_composition(benchmark, name):
    res, batch, steps = CONV[name]
    torch.manual_seed(0)
    model = build_model("small32", cond_dim=4, spectral_norm=False).to(DEVICE).eval()
    conds = [F.one_hot(torch.tensor(i), 4).float().to(DEVICE) for i in range(3)]
    a, b, c = (ef.Concept(model, cc) for cc in conds)
    alpha = 0.01
    expr = a & b & ef.Not(c, alpha=alpha)
    x0 = torch.rand(batch, 3, res, res, device=DEVICE)
    eta, sigma = 0.01, 0.005
    cb = [cc.expand(batch, 4).contiguous() for cc in conds]
    cat = torch.cat(cb)
    kw = dict(steps=steps, step_size=eta, noise=sigma, clamp=(0.0, 1.0))  # the released loop's clamp
    other = "per_leaf" if ON_GPU else "batched"  # the grouping "auto" does not pick on this device
    variants = {
        "ebm_fast.sample": lambda: ef.sample(expr, x0, **kw),
        f"ebm_fast.sample[{other}]": lambda: ef.sample(expr, x0, grouping=other, **kw),
        "reference loop": lambda: released_loop(model, cb, x0, steps, eta, sigma, alpha),
        "floor: batched pass": lambda: floor_batched(model, cat, x0, 3, steps),  # docs/contract.md §5: standard layout
        "floor: per-leaf passes": lambda: floor_per_leaf(model, cb, x0, steps),
        "floor: per-leaf passes, channels_last input":
            lambda: floor_per_leaf(model, cb, x0, steps, torch.channels_last),
    }
    if not ON_GPU:  # the three passes of a step one after another (the default runs them in threads)
        variants["ebm_fast.sample[workers=1]"] = lambda: ef.sample(expr, x0, workers=1, **kw)
    if ON_GPU:
        variants["ebm_fast.sample[eager]"] = lambda: ef.sample(expr, x0, graph=False, **kw)
        variants["ebm_fast.sample[bf16]"] = lambda: ef.sample(expr, x0, autocast=torch.bfloat16, **kw)
    if COMPILE:
        variants["ebm_fast.sample[compile]"] = lambda: ef.sample(expr, x0, compile=True, **kw)
    times = timed(variants, rounds=7)
    floor = min(times["floor: batched pass"], times["floor: per-leaf passes"])
    info = benchmark.extra_info
    info["network_floor_channels_last_ms"] = round(times["floor: per-leaf passes, channels_last input"] * 1e3, 3)
    info["ours_over_channels_last_floor"] = round(
        times["ebm_fast.sample"] / times["floor: per-leaf passes, channels_last input"], 3)
    record(benchmark, variants["ebm_fast.sample"], times, "ebm_fast.sample", floor, workload=name,
           model="small32 (no spectral norm), 3 one-hot concepts, a & b & ~c", dtype="float32",
           shape=[batch, 3, res, res], steps=steps, workers=ef.sample(expr, x0, return_info=True, **{**kw, "steps": 0})[1].workers)


# ---- small energies ----------------------------------------------------------------------------------
class GMM(nn.Module):
    """2-D Gaussian mixture: 8 unit-weight components on a circle of radius 3, std 0.5."""

    def __init__(self):
        super().__init__()
        ang = torch.arange(8) * (2 * math.pi / 8)
        self.register_buffer("mu", 3.0 * torch.stack([ang.cos(), ang.sin()], 1))

    def forward(self, x):
        d2 = (x[:, None, :] - self.mu[None]).square().sum(-1)
        return -torch.logsumexp(-d2 / (2 * 0.25), dim=1)


def mlp():
    return nn.Sequential(nn.Linear(2, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 1))


def autograd_loop(f, x0, steps, eta, sigma):
    """The hand-written loop: x <- x - eta grad E + sigma xi."""
    x = x0.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(f(x).sum(), x)
        x = (x - eta * g + sigma * torch.randn_like(x)).detach()
    return x


def torchebm_sampler(f, eta, sigma):
    """TorchEBM's ``LangevinDynamics`` running the chain ``x <- x - eta grad f + sigma xi``, or None.

    Its update adds ``noise_scale * sqrt(2 eta) * randn``: ``noise_scale = sigma / sqrt(2 eta)`` gives
    ebm_fast's ``noise=sigma`` (passing ``sigma`` itself would run a chain with noise
    ``sigma * sqrt(2 eta)``, 0.02 instead of 0.141 here).
    """
    try:
        from torchebm.core import BaseModel
        from torchebm.samplers import LangevinDynamics
    except Exception:  # optional benchmark dependency (pip install --no-deps torchebm)
        return None

    class Wrapped(BaseModel):
        def __init__(self):
            super().__init__()
            self.f = f

        def forward(self, x):
            return self.f(x).reshape(x.shape[0])

    return LangevinDynamics(Wrapped(), step_size=eta, noise_scale=sigma / math.sqrt(2 * eta), device=DEVICE)


def assert_same_chain(sampler, f, x0, steps, eta, sigma) -> float:
    """Run TorchEBM's chain fed ebm_fast's noise ``xi(seed, k)`` at update k, and ``ef.langevin`` with that
    seed: the two must agree (same update, same noise units) before either is timed. Returns the
    largest difference."""
    seed, k = 1234, [0]
    integrator_step = sampler.integrator.step

    def fed(state, step_size, **kw):
        k[0] += 1
        x = state["x"]
        return integrator_step(state, step_size, noise=normal_noise(seed, k[0], x.numel(), device=x.device).view_as(x),
                               **kw)

    sampler.integrator.step = fed
    try:
        theirs = sampler.sample(x=x0.clone(), n_steps=steps)
    finally:
        sampler.integrator.step = integrator_step
    ours = ef.langevin(f, x0, steps=steps, step_size=eta, noise=sigma, order="ula", seed=seed)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    return float((ours - theirs).abs().max())


@pytest.mark.parametrize("name", ["gmm2d", "mlp"])
def test_small_energy(benchmark, name):
    torch.manual_seed(0)
    f = (GMM() if name == "gmm2d" else mlp()).to(DEVICE)
    batch, steps, eta = 1024, 100, 0.01
    sigma = math.sqrt(2 * eta)
    x0 = torch.randn(batch, 2, device=DEVICE)
    variants = {
        "ebm_fast.langevin": lambda: ef.langevin(f, x0, steps=steps, step_size=eta, noise=sigma, order="ula"),
        "autograd loop": lambda: autograd_loop(f, x0, steps, eta, sigma),
        "floor: one pass": lambda: floor_per_leaf(f, [None], x0, steps),
    }
    if COMPILE:
        variants["ebm_fast.langevin[compile]"] = lambda: ef.langevin(f, x0, steps=steps, step_size=eta, noise=sigma,
                                                                    order="ula", compile=True)
    sampler = torchebm_sampler(f, eta, sigma)
    if sampler is not None:
        benchmark.extra_info["torchebm_max_abs_diff_same_noise"] = assert_same_chain(sampler, f, x0, steps, eta, sigma)
        variants["torchebm LangevinDynamics"] = lambda: sampler.sample(x=x0.clone(), n_steps=steps)
    times = timed(variants, rounds=7)
    record(benchmark, variants["ebm_fast.langevin"], times, "ebm_fast.langevin", times["floor: one pass"],
           workload=name, dtype="float32", shape=[batch, 2], steps=steps, noise=sigma,
           torchebm=(f"imported: noise_scale={sigma / math.sqrt(2 * eta):g} (noise {sigma:.4g} per step)"
                     if sampler is not None else "not importable"))
