"""MALA/HMC chains against their baselines, timed in the same process.

    pytest benchmarks/bench_mcmc.py --benchmark-only [--benchmark-json=benchmarks/results/mcmc_cpu_2threads.json]

Workloads: ``mlp``, an MLP 2-128-128-1 energy (tanh), and ``gmm2d``, bench_sampler's 2-D Gaussian
mixture of 8 components, both with B = 1024 chains. Per method (MALA; HMC with L = 5) the variants are:

* ``ebm_fast``: ``ef.langevin(..., method=...)`` (the fused move/accept operations, auto backend);
* ``autograd``: a hand-written loop, the way one writes MALA/HMC with autograd (``torch.where`` accept);
* ``torchebm``: TorchEBM's ``HamiltonianMonteCarlo`` (same step size, L, chains; its default unit
  mass and target ``exp(-E)``), when ``torchebm`` imports; HMC only.

Variants are timed round-robin (``timing.timed``: the fastest of ``ROUNDS`` rounds per variant is
kept); every time and ratio goes to ``extra_info`` with the device, thread count and shapes (the
benchmark's own timing reruns the ebm_fast variant). Chains are K = 20 updates.
"""

from __future__ import annotations

import math

import pytest
import torch
from bench_sampler import GMM
from timing import timed

import ebm_fast as ef

STEPS, BATCH, LEAPFROG, ROUNDS = 20, 1024, 5, 3
STEP_SIZE = {"mala": 0.05, "hmc": 0.05}


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128), torch.nn.Tanh(),
                              torch.nn.Linear(128, 1))
    return net.eval()


class _MLPEnergy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _mlp()

    def forward(self, x):
        return self.net(x).squeeze(-1) + 0.5 * (x * x).sum(-1)  # confining term: a proper density


WORKLOADS = {"mlp": _MLPEnergy, "gmm2d": GMM}


def _grad(energy, x):
    x = x.detach().requires_grad_(True)
    e = energy(x)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), g


def autograd_mala(energy, x, steps, eps):
    e, g = _grad(energy, x)
    for _ in range(steps):
        prop = x - eps * g + math.sqrt(2 * eps) * torch.randn_like(x)
        e1, g1 = _grad(energy, prop)
        fwd = ((prop - x + eps * g) ** 2).sum(1) / (4 * eps)
        rev = ((x - prop + eps * g1) ** 2).sum(1) / (4 * eps)
        acc = torch.rand_like(e).log() < (e - e1) + fwd - rev
        x = torch.where(acc[:, None], prop, x)
        e, g = torch.where(acc, e1, e), torch.where(acc[:, None], g1, g)
    return x


def autograd_hmc(energy, x, steps, eps, leapfrog):
    e, g = _grad(energy, x)
    for _ in range(steps):
        p = torch.randn_like(x)
        h0 = e + 0.5 * (p * p).sum(1)
        q, gq = x, g
        for _ in range(leapfrog):
            p = p - 0.5 * eps * gq
            q = q + eps * p
            e1, gq = _grad(energy, q)
            p = p - 0.5 * eps * gq
        acc = torch.rand_like(e).log() < h0 - (e1 + 0.5 * (p * p).sum(1))
        x = torch.where(acc[:, None], q, x)
        e, g = torch.where(acc, e1, e), torch.where(acc[:, None], gq, g)
    return x


def _torchebm_hmc(model):
    try:
        from torchebm.core import BaseModel
        from torchebm.samplers import HamiltonianMonteCarlo
    except Exception:  # noqa: BLE001 - any import failure means "not installed here"
        return None

    class Wrapped(BaseModel):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x)

    sampler = HamiltonianMonteCarlo(Wrapped(), step_size=STEP_SIZE["hmc"], n_leapfrog_steps=LEAPFROG)
    return lambda x0: sampler.sample(x=x0.clone(), n_steps=STEPS)


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_mcmc_chain(benchmark, machine, workload, method):
    model = WORKLOADS[workload]()
    for p in model.parameters():
        p.requires_grad_(False)
    x0 = torch.randn(BATCH, 2)
    eps = STEP_SIZE[method]
    kw = dict(method=method, steps=STEPS, step_size=eps, seed=1, leapfrog_steps=LEAPFROG if method == "hmc" else None)

    def ours():
        return ef.langevin(model, x0, **kw)

    baselines = {"autograd": (lambda: autograd_mala(model, x0, STEPS, eps)) if method == "mala"
                 else (lambda: autograd_hmc(model, x0, STEPS, eps, LEAPFROG))}
    if method == "hmc" and (tebm := _torchebm_hmc(model)) is not None:
        baselines["torchebm"] = lambda: tebm(x0)
    times = timed({"ebm_fast": ours, **baselines}, rounds=ROUNDS)
    _, info = ef.langevin(model, x0, return_info=True, **kw)
    benchmark.pedantic(ours, rounds=ROUNDS, iterations=1)
    mine = times.pop("ebm_fast")
    benchmark.extra_info.update(
        machine=machine(), workload=workload, method=method, batch=BATCH, dim=2, steps=STEPS, step_size=eps,
        leapfrog_steps=LEAPFROG if method == "hmc" else 1, backend=info.backend, threads=torch.get_num_threads(),
        accept_rate=float(info.accept_rate.mean()), ebm_fast_s=mine,
        **{f"{name}_s": t for name, t in times.items()},
        **{f"speedup_vs_{name}": t / mine for name, t in times.items()})
