"""The public research codes' Langevin loops beside their one-call replacements (docs/conventions.md).

Each loop is written the way its code base writes it (a few lines, here in the project's words) on a
small random model, and fed the sampler's own noise -- ``xi(seed, s)`` of docs/contract.md §4 at the step index
the replacement uses (the ``sampler`` module docstring) -- so that the two chains are the same chain.
Each pair must agree with noise 0 and with that noise. The conventions they pin down: the sign of
the gradient step (descend an energy / climb a score), the update order (``noise_first`` / ``ula``),
the clamp, the noise's units (standard deviation / TorchEBM's ``noise_scale``), per-column
composition, a differentiable last step, gradient norms and schedules.
"""

from __future__ import annotations

import inspect
import math
import secrets

import pytest
import torch
from torch import nn

import ebm_fast as ef
from ebm_fast.compose import per_column
from ebm_fast.rng import normal_noise

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def fresh_seed():
    torch.manual_seed(secrets.randbits(62))


def xi(seed: int, s: int, like: torch.Tensor) -> torch.Tensor:
    """The sampler's noise for RNG step ``s``, shaped like ``like``."""
    return normal_noise(seed, s, like.numel(), device=like.device).view_as(like)


class SmallNet(nn.Module):
    """A tiny conv net with ``k`` outputs: logits for JEM, ``k`` energy scales for the CelebA code."""

    def __init__(self, k: int = 3, ch: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, ch, 3, padding=1)
        self.head = nn.Linear(ch, k)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).mean((2, 3)))


class ScalarNet(nn.Module):
    """short_run / ebm-anatomy style: the network's one output, ``.squeeze()``-d (shape () at B = 1)."""

    def __init__(self):
        super().__init__()
        self.net = SmallNet(k=1)

    def forward(self, x):
        return self.net(x).squeeze()


NOISES = [0.0, 0.01]


# ---- JEM (sample_q): climb f = logsumexp(logits), gradient and noise at the same point, no clamp ------
def jem_loop(f, x, *, steps, lr, std, seed):
    x = x.clone().requires_grad_(True)
    for k in range(steps):
        f_prime = torch.autograd.grad(f(x).sum(), [x])[0]
        x.data += lr * f_prime + std * xi(seed, k + 1, x)
    return x.detach()


@pytest.mark.parametrize("std", NOISES)
def test_jem_sample_q(std):
    net = SmallNet()
    f = lambda x: net(x).logsumexp(1)  # noqa: E731
    x0 = torch.rand(4, 3, 6, 6) * 2 - 1  # JEM's images live in [-1, 1]
    seed, kw = secrets.randbits(40), dict(steps=6)
    want = jem_loop(f, x0, lr=1.0, std=std, seed=seed, **kw)
    got = ef.langevin(f, x0, step_size=1.0, noise=std, order="ula", ascent=True, seed=seed, **kw)
    torch.testing.assert_close(got, want, **TOL)
    assert not torch.allclose(want, x0, atol=1e-3)
    # the trap this option closes: passing f itself descends it
    wrong = ef.langevin(f, x0, step_size=1.0, noise=std, order="ula", seed=seed, **kw)
    assert not torch.allclose(wrong, want, atol=1e-3)
    neg = ef.langevin(lambda x: -f(x), x0, step_size=1.0, noise=std, order="ula", seed=seed, **kw)
    torch.testing.assert_close(got, neg, rtol=0, atol=0)


def test_jem_conditional_sample_q():
    """JEM's class-conditional chains climb logits[y] with one label per chain."""
    net = SmallNet()
    x0, y = torch.rand(5, 3, 6, 6) * 2 - 1, torch.randint(0, 3, (5,))
    f = lambda x: net(x).gather(1, y[:, None])  # noqa: E731  (B, 1)
    seed = secrets.randbits(40)
    want = jem_loop(f, x0, steps=5, lr=1.0, std=0.01, seed=seed)
    got = ef.langevin(f, x0, steps=5, step_size=1.0, noise=0.01, order="ula", ascent=True, seed=seed)
    torch.testing.assert_close(got, want, **TOL)
    per_chain = ef.Concept(ef.compose.Negated(lambda x, c: net(x).gather(1, c[:, None])), y, per_sample=True)
    torch.testing.assert_close(ef.sample(per_chain, x0, steps=5, step_size=1.0, noise=0.01, order="ula", seed=seed),
                               want, **TOL)


# ---- igebm-pytorch: noise first, gradient clipped, step, clamp to [0, 1] --------------------------
def igebm_loop(model, x, *, steps, step_size, noise, clip, seed):
    x = x.clone().requires_grad_(True)
    for i in range(steps):
        x.data.add_(noise * xi(seed, i, x))
        out = model(x)
        (g,) = torch.autograd.grad(out.sum(), x)
        x.data.add_(-step_size * g.clamp(-clip, clip))
        x.data.clamp_(0, 1)
    return x.detach()


@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_igebm(noise):
    net = SmallNet(k=1)
    x0 = torch.rand(3, 3, 6, 6)
    seed = secrets.randbits(40)
    want = igebm_loop(net, x0, steps=6, step_size=10.0, noise=noise, clip=0.01, seed=seed)
    got = ef.langevin(net, x0, steps=6, step_size=10.0, noise=noise, grad_clip=0.01, clamp=(0.0, 1.0), seed=seed)
    torch.testing.assert_close(got, want, **TOL)
    assert not torch.allclose(want, x0, atol=1e-3)


# ---- improved contrastive divergence (gen_image): annealed noise first, step, clamp; KL through the last step
def icd_loop(model, x, *, steps, lr, noise, seed):
    """Returns (x_K detached, x_K with the last step's graph), as gen_image returns im_neg and im_neg_kl."""
    for i in range(steps):
        x = x + noise(i) * xi(seed, i, x)
        x = x.detach().requires_grad_(True)
        energy = model(x)
        last = i == steps - 1
        (g,) = torch.autograd.grad(energy.sum(), x, create_graph=last)
        x_kl = (x - lr * g).clamp(0, 1) if last else None
        x = (x - lr * g).detach().clamp(0, 1)
    return x, x_kl


@pytest.mark.parametrize("scale", NOISES)
def test_improved_cd_gen_image_with_a_differentiable_last_step(scale):
    net = SmallNet(k=1)
    x0 = torch.rand(3, 3, 6, 6)
    steps, seed = 5, secrets.randbits(40)
    anneal = lambda i: scale * (steps - i - 1) / steps  # noqa: E731  (FLAGS.anneal)
    want, want_kl = icd_loop(net, x0, steps=steps, lr=2.0, noise=anneal, seed=seed)
    kw = dict(steps=steps, step_size=2.0, noise=anneal, clamp=(0.0, 1.0), seed=seed)
    torch.testing.assert_close(ef.langevin(net, x0, **kw), want, **TOL)
    got_kl = ef.langevin(net, x0, differentiable=1, **kw)
    assert got_kl.requires_grad and all(p.requires_grad and p.grad is None for p in net.parameters())
    torch.testing.assert_close(got_kl.detach(), want, **TOL)
    # the KL term: the energy of the last step's output, differentiated through that step
    params = list(net.parameters())
    g_want = torch.autograd.grad(net(want_kl).sum(), params)
    g_got = torch.autograd.grad(net(got_kl).sum(), params)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the chain's graph reaches through the last step only: without it the gradient differs
    g_frozen = torch.autograd.grad(net(got_kl.detach()).sum(), params)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_frozen, g_want))


def test_differentiable_tail_equals_the_fused_chain_for_every_order():
    net = SmallNet(k=1)
    x0 = torch.rand(2, 3, 5, 5)
    for order in ("ula", "noise_first"):
        kw = dict(steps=4, step_size=[0.5, 0.4, 0.3, 0.2], noise=0.02, order=order, seed=secrets.randbits(40),
                  grad_clip=0.05, clamp=(0.0, 1.0))
        want = ef.langevin(net, x0, **kw)
        for n in (1, 2, 4):
            got = ef.langevin(net, x0, differentiable=n, **kw)
            torch.testing.assert_close(got.detach(), want, **TOL)
    with pytest.raises(ValueError, match="differentiable must be <= steps"):
        ef.langevin(net, x0, steps=2, step_size=0.1, noise=0.0, differentiable=3)
    with pytest.raises(ValueError, match="records no energies"):
        ef.langevin(net, x0, steps=2, step_size=0.1, noise=0.0, differentiable=1, return_energies=True)


# ---- short_run: climb f with a .squeeze()-d output, works at a batch of one ------------------------
def short_run_loop(f, x, *, steps, step_size, sigma, seed):
    for k in range(steps):
        x = x.detach().requires_grad_(True)
        f_prime = torch.autograd.grad(f(x).sum(), [x])[0]
        x = x + step_size * f_prime + sigma * xi(seed, k + 1, x)
    return x.detach()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("sigma", NOISES)
def test_short_run(batch, sigma):
    f = ScalarNet()
    x0 = torch.randn(batch, 3, 6, 6)
    assert f(x0).shape == (() if batch == 1 else (batch,))
    seed = secrets.randbits(40)
    want = short_run_loop(f, x0, steps=5, step_size=1.0, sigma=sigma, seed=seed)
    got = ef.langevin(f, x0, steps=5, step_size=1.0, noise=sigma, order="ula", ascent=True, seed=seed)
    torch.testing.assert_close(got, want, **TOL)


# ---- ebm-anatomy: descend f with step 1 and noise epsilon, record the mean gradient norm r_s_t --------
def anatomy_loop(f, x, *, steps, epsilon, seed):
    x = x.clone().requires_grad_(True)
    r = torch.zeros(1)
    for k in range(steps):
        f_prime = torch.autograd.grad(f(x).sum(), [x])[0]
        x.data += -f_prime + epsilon * xi(seed, k + 1, x)
        r += f_prime.view(f_prime.shape[0], -1).norm(dim=1).mean()
    return x.detach(), r.squeeze() / steps


@pytest.mark.parametrize("epsilon", NOISES)
def test_ebm_anatomy_with_gradient_norms(epsilon):
    f = ScalarNet()
    x0 = torch.randn(4, 3, 6, 6)
    seed = secrets.randbits(40)
    want, r_want = anatomy_loop(f, x0, steps=6, epsilon=epsilon, seed=seed)
    got, info = ef.langevin(f, x0, steps=6, step_size=1.0, noise=epsilon, order="ula", seed=seed, grad_norms=True,
                            return_info=True)
    torch.testing.assert_close(got, want, **TOL)
    assert info.grad_norms.shape == (6, 4)
    torch.testing.assert_close(info.grad_norms.mean(), r_want, **TOL)
    with pytest.raises(ValueError, match="return_info=True"):
        ef.langevin(f, x0, steps=2, step_size=1.0, noise=0.0, grad_norms=True)


def test_gradient_norms_are_those_of_the_composed_clipped_gradient():
    model = SmallNet(k=1)
    scaled = lambda x, c: model(x * c[:, None, None, None])  # noqa: E731
    a, b = ef.Concept(scaled, torch.tensor(1.0)), ef.Concept(scaled, torch.tensor(2.0))
    expr = ef.Or(a, b, temperature=0.3)
    x0 = torch.rand(3, 3, 5, 5)
    _, info = ef.sample(expr, x0, steps=1, step_size=0.1, noise=0.0, grad_clip=0.02, grad_norms=True, return_info=True)
    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(expr.energy(x).sum(), x)
    torch.testing.assert_close(info.grad_norms[0], g.clamp(-0.02, 0.02).flatten(1).norm(dim=1), **TOL)


# ---- the released CelebA composition code: a disjunction per column of k scales ---------------------
def celeba_or_loop(models, x, *, steps, lr, noise, temperature, seed):
    for i in range(steps):
        x = x + noise * xi(seed, i, x)
        x = x.detach().requires_grad_(True)
        es = torch.stack([m(x) for m in models])  # [2, B, k]
        energy = -temperature * torch.logsumexp(-es / temperature, dim=0)  # soft-min per column
        (g,) = torch.autograd.grad(energy.sum(), x)
        x = (x - lr * g).clamp(0, 1).detach()
    return x


@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_celeba_per_column_disjunction(noise):
    k = 3
    m1, m2 = SmallNet(k=k), SmallNet(k=k)
    x0 = torch.rand(4, 3, 6, 6)
    seed = secrets.randbits(40)
    kw = dict(steps=5, noise=noise, seed=seed)
    want = celeba_or_loop([m1, m2], x0, lr=20.0, temperature=0.05, **kw)
    expr = per_column(ef.Or(ef.Concept(m1), ef.Concept(m2), temperature=0.05), k)
    assert len(expr.leaves()) == 2 * k
    got = ef.sample(expr, x0, step_size=20.0, clamp=(0.0, 1.0), **kw)
    torch.testing.assert_close(got, want, **TOL)
    # what a Concept does by default -- the soft-min of the column sums -- is another chain
    summed = ef.sample(ef.Or(ef.Concept(m1), ef.Concept(m2), temperature=0.05), x0, step_size=20.0,
                       clamp=(0.0, 1.0), **kw)
    assert not torch.allclose(summed, want, atol=1e-4)


# ---- TorchEBM LangevinDynamics: noise_scale * sqrt(2 step) noise, scheduler objects ----------------
class DecayScheduler:
    """A scheduler with TorchEBM's interface: get_value(), step() (advance, return the new value), reset()."""

    def __init__(self, start_value: float, decay_rate: float):
        self.start_value, self.decay_rate = start_value, decay_rate
        self.reset()

    def reset(self):
        self.step_count, self.current_value = 0, self.start_value

    def step(self):
        self.step_count += 1
        self.current_value = self.start_value * self.decay_rate ** self.step_count
        return self.current_value

    def get_value(self):
        return self.current_value


def torchebm_loop(energy, x, *, steps, step_size, noise_scale, clamp, seed):
    """Euler-Maruyama on dx = -grad U dt + sqrt(2 D) dW with D = noise_scale**2, as LangevinDynamics."""
    for sched in (step_size, noise_scale):
        sched.reset()
    for k in range(steps):
        eta, s = step_size.get_value(), noise_scale.get_value()
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(energy(x).sum(), x)
        x = x - eta * g + math.sqrt(2.0 * s**2) * math.sqrt(eta) * xi(seed, k + 1, x)
        if clamp is not None:
            x = x.clamp(*clamp)
        step_size.step()
        noise_scale.step()
    return x.detach()


class Mixture(nn.Module):
    def __init__(self):
        super().__init__()
        self.mu = nn.Parameter(torch.randn(4, 2) * 2)

    def forward(self, x):
        return -torch.logsumexp(-0.5 * (x[:, None] - self.mu).square().sum(-1), dim=1)


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_torchebm_langevin_dynamics_with_schedulers(scale):
    energy = Mixture()
    x0 = torch.randn(64, 2)
    seed = secrets.randbits(40)
    eta, s = DecayScheduler(0.05, 0.95), DecayScheduler(scale, 0.99)
    want = torchebm_loop(energy, x0, steps=20, step_size=eta, noise_scale=s, clamp=(-4.0, 4.0), seed=seed)
    got = ef.langevin(energy, x0, steps=20, step_size=eta, noise_scale=s, clamp=(-4.0, 4.0), order="ula", seed=seed)
    torch.testing.assert_close(got, want, **TOL)
    assert eta.step_count == 20  # the caller's schedulers: read from copies, left where the loop left them
    if scale:
        # the trap: TorchEBM's noise_scale given as ebm_fast's noise is another chain (noise sqrt(2 eta)x smaller)
        wrong = ef.langevin(energy, x0, steps=20, step_size=eta, noise=s, clamp=(-4.0, 4.0), order="ula", seed=seed)
        assert not torch.allclose(wrong, want, atol=1e-3)
    with pytest.raises(ValueError, match="not both"):
        ef.langevin(energy, x0, steps=2, step_size=0.1, noise=0.1, noise_scale=1.0)


def test_schedules_as_callables_and_objects_equal_their_lists():
    energy = Mixture()
    x0 = torch.randn(8, 2)
    seed, steps = secrets.randbits(40), 7
    sched = DecayScheduler(0.1, 0.9)
    values = [0.1 * 0.9**i for i in range(steps)]
    sched.step()  # an advanced scheduler is reset first (TorchEBM's reset_schedulers=True)
    want = ef.langevin(energy, x0, steps=steps, step_size=values, noise=[0.01 * i for i in range(steps)], seed=seed)
    for step_size in (sched, lambda i: 0.1 * 0.9**i):
        got = ef.langevin(energy, x0, steps=steps, step_size=step_size, noise=lambda i: 0.01 * i, seed=seed)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert sched.step_count == 1  # not advanced by the call
    with pytest.raises(TypeError, match="schedule gave str for update 0"):
        ef.langevin(energy, x0, steps=2, step_size=lambda i: "x", noise=0.0)
    with pytest.raises(ValueError, match="step_size must be finite and >= 0"):
        ef.langevin(energy, x0, steps=2, step_size=lambda i: -0.1, noise=0.0)
    with pytest.raises(TypeError, match="scheduler object"):
        ef.langevin(energy, x0, steps=2, step_size=object(), noise=0.0)


def test_real_torchebm_sampler_runs_the_same_chain():
    """Against the installed TorchEBM itself (optional): its integrator fed the sampler's noise."""
    samplers = pytest.importorskip("torchebm.samplers")
    core = pytest.importorskip("torchebm.core")
    energy = Mixture()

    class Wrapped(core.BaseModel):
        def __init__(self):
            super().__init__()
            self.f = energy

        def forward(self, x):
            return self.f(x)

    seed, eta, scale, steps = secrets.randbits(40), 0.05, 0.7, 15
    sampler = samplers.LangevinDynamics(Wrapped(), step_size=eta, noise_scale=scale)
    step, orig = [0], sampler.integrator.step

    def with_our_noise(state, step_size, **kw):
        step[0] += 1
        return orig(state, step_size, noise=xi(seed, step[0], state["x"]), **kw)

    sampler.integrator.step = with_our_noise
    x0 = torch.randn(32, 2)
    want = sampler.sample(x=x0.clone(), n_steps=steps)
    got = ef.langevin(energy, x0, steps=steps, step_size=eta, noise_scale=scale, order="ula", seed=seed)
    torch.testing.assert_close(got, want, **TOL)


# ---- one clamp default, stated in both docstrings --------------------------------------------------
def test_sample_and_langevin_share_the_clamp_default_no_clamp():
    for fn in (ef.sample, ef.langevin):
        assert inspect.signature(fn).parameters["clamp"].default is None
        assert "no clamp" in inspect.getdoc(fn)
    x0 = torch.rand(6, 2) * 4 - 2  # states outside [0, 1]: neither call pulls them into the box
    f = lambda x: 0.05 * x.square().sum(1)  # noqa: E731
    a = ef.sample(ef.Concept(f), x0, steps=2, step_size=0.1, noise=0.0)
    b = ef.langevin(f, x0, steps=2, step_size=0.1, noise=0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, x0 * (1 - 0.01) ** 2, **TOL)


def test_squeezed_energy_at_batch_one_and_clear_errors_otherwise():
    f = ScalarNet()
    x0 = torch.randn(1, 3, 5, 5)
    assert f(x0).dim() == 0
    e = ef.Concept(f).energy(x0)
    assert e.shape == (1,)
    with pytest.raises(ValueError, match="batch size 2"):
        ef.langevin(lambda x: f(x).sum(), torch.randn(2, 3, 5, 5), steps=1, step_size=0.1, noise=0.0)


def test_per_column_concepts_and_errors():
    m = SmallNet(k=2)
    x = torch.rand(3, 3, 5, 5)
    out = m(x)
    torch.testing.assert_close(ef.Concept(m, column=1).energy(x), out[:, 1])
    torch.testing.assert_close(per_column(ef.Concept(m) & ef.Concept(m), 2).energy(x), 2 * out.sum(1), **TOL)
    assert "[:, 1]" in repr(ef.Concept(m, column=1))
    with pytest.raises(ValueError, match="column 2 asked for, but the model returns 2"):
        ef.Concept(m, column=2).energy(x)
    with pytest.raises(ValueError, match="columns must be an int >= 1"):
        per_column(ef.Concept(m), 0)
    with pytest.raises(ValueError, match="already picks a column"):
        per_column(ef.Concept(m, column=0), 2)
    with pytest.raises(ValueError, match="column must be None or an int"):
        ef.Concept(m, column=-1)
    # the evaluator's batched and per-leaf passes agree on column leaves
    m2 = lambda x, c: m(x + c[:, None, None, None])  # noqa: E731
    expr = per_column(ef.Or(ef.Concept(m2, torch.tensor(0.0)), ef.Concept(m2, torch.tensor(0.5))), 2)
    kw = dict(steps=3, step_size=1.0, noise=0.01, seed=secrets.randbits(40))
    batched = ef.sample(expr, x, grouping="batched", **kw)
    torch.testing.assert_close(batched, ef.sample(expr, x, grouping="per_leaf", **kw), **TOL)
