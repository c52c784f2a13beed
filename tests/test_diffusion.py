"""Energy-parameterized diffusion: schedule, conditions, DSM loss, training, annealed composed sampling.

Oracles: a slow per-sample float64 loop for the DSM loss; closed-form Gaussian noised densities
(:class:`ebm_fast.diffusion.GaussianEnergy` and a mixture defined here) for training and sampling.
Statistical checks compare sample moments with their closed forms within a stated number of
standard errors (plus the known stationary bias of ULA where it applies).
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebm_fast as ef
from ebm_fast.diffusion import (CalibratedDisjunction, CondSpec, DSMTrainer, EnergyMLP, EnergyUNet, GaussianEnergy,
                                VPSchedule, concept, conjunction, disjunction, dsm_loss, export_model, load_model,
                                sample_annealed, spatial_maps, unconditional)

SCHED = VPSchedule(1000)


def _seed() -> int:
    return int(torch.randint(0, 2 ** 31 - 1, (1,)))


# ---- schedule ------------------------------------------------------------------------------------
def test_schedule_is_variance_preserving_and_monotone():
    for kind in VPSchedule.KINDS:
        s = VPSchedule(1000, kind)
        assert torch.allclose(s.alphas ** 2 + s.sigmas ** 2, torch.ones(1001, dtype=torch.float64))
        assert bool((s.sigmas[1:] > s.sigmas[:-1]).all())
        assert s.sigmas[0] == 0 and s.alphas[0] == 1
    s = VPSchedule(1000, "cosine")
    assert abs(float(s.sigmas[1]) - 0.0064) < 1e-3 and float(s.alphas[-1]) < 1e-3
    lv = s.levels(7)
    assert lv[0] == 1000 and lv[-1] == 1 and all(a > b for a, b in zip(lv, lv[1:]))


@pytest.mark.parametrize("bad, match", [
    (dict(T=1), "T must be"), (dict(kind="quadratic"), "kind must be")])
def test_schedule_bad_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        VPSchedule(**bad)


def test_schedule_levels_bad_inputs():
    with pytest.raises(ValueError, match="exceeds"):
        SCHED.levels(2000)
    with pytest.raises(ValueError, match=r"levels must lie in \[0, 1000\]"):
        SCHED.sigma(torch.tensor([1001]))
    with pytest.raises(TypeError, match="integers"):
        SCHED.sigma(torch.tensor([0.5]))


# ---- conditions ------------------------------------------------------------------------------------
SPEC = CondSpec((("pos", "vector", 2), ("color", "class", 7), ("size", "vector", 1)))


def test_condspec_pack_and_drop():
    c = SPEC.pack({"color": 3})
    assert c.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 3.0, 0.0]
    pos = torch.rand(5, 2)
    b = SPEC.pack({"pos": pos, "color": torch.arange(5)}, batch=5)
    assert b.shape == (5, SPEC.width) and torch.equal(b[:, 3:5], pos) and b[:, :3].tolist() == [[1, 1, 0]] * 5
    g = torch.Generator().manual_seed(_seed())
    many = SPEC.pack({"pos": pos[0], "color": 1, "size": [0.2]}).expand(4000, -1)
    dropped = SPEC.drop(many, [0.1, 0.5, 0.0], generator=g)
    frac = 1 - dropped[:, :3].mean(0)
    assert abs(float(frac[0]) - 0.1) < 0.03 and abs(float(frac[1]) - 0.5) < 0.04 and float(frac[2]) == 0.0
    assert torch.equal(dropped[:, 3:], many[:, 3:])  # values kept, only flags change


@st.composite
def _spec_and_values(draw):
    n = draw(st.integers(1, 4))
    attrs, values = [], {}
    for i in range(n):
        kind = draw(st.sampled_from(["class", "vector"]))
        size = draw(st.integers(1, 5))
        attrs.append((f"a{i}", kind, size))
        if draw(st.booleans()):
            values[f"a{i}"] = (draw(st.integers(0, size - 1)) if kind == "class" else
                               draw(st.lists(st.floats(-10, 10, width=32), min_size=size, max_size=size)))
    return CondSpec(tuple(attrs)), values


@given(_spec_and_values())
@settings(max_examples=50, deadline=None)
def test_condspec_pack_places_each_value_and_flag(spec_values):
    spec, values = spec_values
    c = spec.pack(values)
    assert c.shape == (spec.width,)
    for i, (name, kind, size) in enumerate(spec.attributes):
        assert float(c[i]) == (1.0 if name in values else 0.0)
        got = c[spec.slices()[name]]
        want = torch.as_tensor(values.get(name, [0.0] * (1 if kind == "class" else size)), dtype=torch.float32)
        assert torch.equal(got, want.reshape(got.shape))


@pytest.mark.parametrize("values, match", [
    ({"shape": 1}, "unknown attribute"), ({"color": 7}, r"class indices in \[0, 6\]"),
    ({"color": 1.5}, "class indices"), ({"pos": [0.1]}, r"expected shape \(2,\)")])
def test_condspec_bad_inputs(values, match):
    with pytest.raises(ValueError, match=match):
        SPEC.pack(values)


def test_condspec_bad_spec():
    with pytest.raises(ValueError, match="size >= 1"):
        CondSpec((("color", "class", 0),))
    with pytest.raises(ValueError, match="given twice"):
        CondSpec((("a", "class", 2), ("a", "vector", 1)))


# ---- the energy network and Concept ------------------------------------------------------------
def _tiny_unet(spec=SPEC, dtype=torch.float32, sigma_data=0.0):
    torch.manual_seed(_seed())
    m = EnergyUNet(SCHED, spec, base=8, mults=(1, 2), emb=16, sigma_data=sigma_data)
    with torch.no_grad():  # zero-initialised output layers would make every test trivial
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.to(dtype)


@pytest.mark.parametrize("sigma_data", [0.0, 0.5])
def test_unet_energy_formula_and_level_buffer(sigma_data):
    m = _tiny_unet(sigma_data=sigma_data)
    x = torch.randn(3, 3, 8, 8)
    c = SPEC.pack({"color": torch.tensor([0, 2, 5])}, batch=3)
    t = torch.tensor([5, 300, 999])
    e = m(x, c, t)
    a = SCHED.alpha(t).view(3, 1, 1, 1)
    s = SCHED.sigma(t).view(3, 1, 1, 1)
    if sigma_data:
        v = a * a * sigma_data ** 2 + s * s
        d = (a * sigma_data ** 2 / v) * x + (s * sigma_data / v.sqrt()) * m.denoise(x / v.sqrt(), c, t)
    else:
        d = m.denoise(x, c, t)
    ref = (x - a * d).pow(2).flatten(1).sum(1) / (2 * s.flatten() ** 2)
    torch.testing.assert_close(e, ref)
    m.set_level(300)
    torch.testing.assert_close(m(x, c), m(x, c, torch.full((3,), 300)))
    with pytest.raises(ValueError, match="level 0 is the data"):
        m.set_level(0)
    with pytest.raises(ValueError, match=r"level must lie in \[0, 1000\]"):
        m.set_level(1001)
    with pytest.raises(ValueError, match=r"cond: expected shape \(3, 7\)"):
        m(x, c[:, :5])


def test_time_conditioned_model_plugs_into_concept_and_fused_sampler():
    m = _tiny_unet().requires_grad_(False)
    m.set_level(200)
    x = torch.randn(4, 3, 8, 8)
    red, blue = concept(m, {"color": 0}), concept(m, {"color": 2})
    e = conjunction(m, [{"color": 0}, {"pos": [0.3, -0.2]}], weights=[2.0, 1.5])
    # the composed energy is E_u + sum w_i (E_i - E_u)
    u = m(x, SPEC.pack({}, batch=4))
    ref = u + 2.0 * (red.energy(x) - u) + 1.5 * (m(x, SPEC.pack({"pos": torch.tensor([0.3, -0.2]).expand(4, 2)},
                                                              batch=4)) - u)
    torch.testing.assert_close(e.energy(x), ref, rtol=1e-5, atol=1e-3)
    # batched and per-leaf evaluation of leaves that share the model agree (one level buffer)
    seed = _seed()
    kw = dict(steps=3, step_size=1e-4, noise=0.01, clamp=None, order="ula", seed=seed, graph=False)
    xa = ef.sample(red & blue, x, grouping="batched", **kw)
    xb = ef.sample(red & blue, x, grouping="per_leaf", workers=2, **kw)
    torch.testing.assert_close(xa, xb, rtol=1e-4, atol=1e-5)
    m.set_level(900)  # the same expression at another level is another energy
    assert not torch.allclose(red.energy(x), m(x, SPEC.pack({"color": torch.zeros(4)}, batch=4), torch.full((4,), 200)))


# ---- DSM loss against a slow float64 reference -----------------------------------------------------
def _dsm_reference(model, x0, cond, t, eps):
    """Per-sample loop in float64 with the schedule's float64 alphas."""
    total = 0.0
    for b in range(x0.shape[0]):
        a, s = SCHED.alphas[t[b]], SCHED.sigmas[t[b]]
        xt = (a * x0[b:b + 1] + s * eps[b:b + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(model(xt, cond[b:b + 1], t[b:b + 1]).sum(), xt, create_graph=True)
        total = total + (s * g - eps[b:b + 1]).pow(2).sum()
    return total / x0.numel()


def test_dsm_loss_matches_slow_reference_value_and_gradients():
    m = _tiny_unet(dtype=torch.float64)
    B = 5
    x0 = torch.rand(B, 3, 8, 8, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.randint(1, 1001, (B,))
    cond = SPEC.drop(SPEC.pack({"pos": torch.rand(B, 2) * 2 - 1, "color": torch.randint(0, 7, (B,)),
                                "size": torch.rand(B, 1)}, batch=B), 0.3).double()
    fast = dsm_loss(m, x0, cond, t, eps)
    g_fast = torch.autograd.grad(fast, list(m.parameters()))
    slow = _dsm_reference(m, x0, cond, t, eps)
    g_slow = torch.autograd.grad(slow, list(m.parameters()))
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=0)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_dsm_loss_bad_inputs():
    m = _tiny_unet()
    x0 = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="eps: expected x0's shape"):
        dsm_loss(m, x0, None, torch.tensor([1, 2]), torch.randn(2, 3, 8, 7))
    with pytest.raises(ValueError, match=r"t: expected shape \(2,\)"):
        dsm_loss(m, x0, None, torch.tensor([1]), torch.randn_like(x0))


# ---- training: the analytic Gaussian case, resume, export ---------------------------------------
def _gaussian_trainer(out, seed, trainer_seed=None):
    g = torch.Generator().manual_seed(seed)
    mu, sd = torch.tensor([0.5, -0.3]), torch.tensor([0.2, 0.4])
    data = mu + sd * torch.randn(20000, 2, generator=g)
    trainer_seed = seed if trainer_seed is None else trainer_seed
    torch.manual_seed(trainer_seed)
    m = EnergyMLP(SCHED, dim=2, hidden=64, depth=2)
    tr = DSMTrainer(m, data, None, out, batch_size=256, lr=3e-3, ema=0.99, seed=trainer_seed, log_every=0,
                    checkpoint_seconds=1e9, log=io.StringIO())
    return tr, mu, sd


@pytest.mark.slow
def test_trained_energy_score_matches_noised_gaussian_score(tmp_path):
    """DSM on N(mu, diag sd^2): -grad E(x, t) should be -(x - alpha mu) / (alpha^2 sd^2 + sigma^2).
    1500 iterations (~20 s on a 2-core CPU); EMA model's median relative error at levels 100..900."""
    tr, mu, sd = _gaussian_trainer(tmp_path, _seed())
    tr.train(1500)
    m = tr.ema
    for t, tol in [(100, 0.15), (300, 0.08), (600, 0.05), (900, 0.05)]:
        a, s = float(SCHED.alphas[t]), float(SCHED.sigmas[t])
        v = a * a * sd ** 2 + s * s
        x = (a * mu + v.sqrt() * torch.randn(1000, 2)).requires_grad_(True)
        m.set_level(t)
        (g,) = torch.autograd.grad(m(x).sum(), x)
        x = x.detach()
        true = (x - a * mu) / v
        rel = float(((g - true).norm(dim=1) / true.norm(dim=1)).median())
        assert rel < tol, f"level {t}: median relative score error {rel:.3f} >= {tol}"


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    seed = _seed()
    straight, _, _ = _gaussian_trainer(tmp_path / "a", seed)
    straight.train(6)
    first, _, _ = _gaussian_trainer(tmp_path / "b", seed)
    first.train(3)  # writes ckpt/last.pt at the end
    resumed, _, _ = _gaussian_trainer(tmp_path / "b", seed, trainer_seed=seed + 1)  # the checkpoint must win
    assert resumed.resume() and resumed.step == 3
    resumed.train(6)
    for name, p in straight.model.state_dict().items():
        assert torch.equal(p, resumed.model.state_dict()[name]), name
    for name, p in straight.ema.state_dict().items():
        assert torch.equal(p, resumed.ema.state_dict()[name]), name
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())


def test_export_and_load_roundtrip(tmp_path):
    m = _tiny_unet()
    path = export_model(m, tmp_path / "m.pt", {"note": "x"})
    loaded, meta = load_model(path)
    assert meta == {"note": "x"} and loaded.spec() == m.spec()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 700])
    torch.testing.assert_close(loaded(x, None, t), m(x, None, t))
    with pytest.raises(ValueError, match="expected an exported diffusion model .* or a DSMTrainer checkpoint"):
        ef_path = tmp_path / "other.pt"
        from ebm_fast.checkpoint import atomic_torch_save
        atomic_torch_save({"format": "something else"}, ef_path)
        load_model(ef_path)


def test_load_model_reads_a_trainer_checkpoints_ema_or_raw_weights(tmp_path):
    tr, _, _ = _gaussian_trainer(tmp_path, _seed())
    tr.train(2)
    x, t = torch.randn(4, 2), torch.tensor([3, 30, 300, 900])
    for weights, ref in (("ema", tr.ema), ("model", tr.model)):
        m, meta = load_model(tmp_path / "ckpt" / "last.pt", weights=weights)
        assert meta["step"] == 2 and meta["weights"] == weights
        torch.testing.assert_close(m(x, None, t), ref(x, None, t), rtol=0, atol=0)
    with pytest.raises(ValueError, match="weights: expected 'ema' or 'model'"):
        load_model(tmp_path / "ckpt" / "last.pt", weights="best")


def test_trainer_bad_inputs(tmp_path):
    m = _tiny_unet()
    imgs = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"conds: the model is conditioned on \['pos', 'color', 'size'\]"):
        DSMTrainer(m, imgs, None, tmp_path)
    with pytest.raises(ValueError, match=r"conds: expected shape \(10, 7\)"):
        DSMTrainer(m, imgs, torch.zeros(10, 3), tmp_path)
    with pytest.raises(ValueError, match="ema: expected a decay"):
        DSMTrainer(m, imgs, torch.zeros(10, 7), tmp_path, ema=1.0)
    other = EnergyMLP(SCHED, dim=2)
    tr = DSMTrainer(other, torch.zeros(10, 2), None, tmp_path)
    tr.save_checkpoint()
    tr2 = DSMTrainer(EnergyMLP(SCHED, dim=2, hidden=8), torch.zeros(10, 2), None, tmp_path)
    with pytest.raises(ValueError, match=r"its model differs from this run's in \['hidden'\] \(checkpoint, now: \{'hidden': \(64, 8\)\}\)"):
        tr2.resume()


# ---- annealed sampling: a known mixture ----------------------------------------------------------
class MixtureEnergy(torch.nn.Module):
    """Exact noised energy of a 1-D Gaussian mixture: ``-log sum_k pi_k N(x; alpha mu_k, alpha^2 s_k^2 + sigma^2)``."""

    def __init__(self, pi, mu, s):
        super().__init__()
        self.schedule = SCHED
        self.pi, self.mu, self.s = (torch.tensor(v, dtype=torch.float64) for v in (pi, mu, s))
        self.register_buffer("level", torch.tensor(1000))

    def set_level(self, t):
        self.level.fill_(int(t))

    def forward(self, x):
        t = int(self.level)
        a, sg = SCHED.alphas[t], SCHED.sigmas[t]
        v = a * a * self.s ** 2 + sg * sg
        z = -(x.double() - a * self.mu) ** 2 / (2 * v) - 0.5 * torch.log(2 * math.pi * v) + self.pi.log()
        return (-torch.logsumexp(z, dim=1)).to(x.dtype)


def _check_mixture(x, pi, mu, s, n_se=4.5, stray_max=0.005):
    """Mode weights, means and variances of two well separated modes, each within ``n_se`` standard errors.

    Each mode's moments are taken over the samples within 4 of its standard deviations (the exact mixture
    puts ~1e-4 of its mass outside both windows; truncating there changes a variance by 0.1%); the samples
    outside both -- stragglers the annealed chain leaves between the modes, 1-2 of 3000 typically -- are
    counted apart and must stay under ``stray_max`` of the total, so a single straggler cannot swing a
    variance."""
    x = x.double().flatten()
    inside = [(x - mu[k]).abs() <= 4 * s[k] for k in range(2)]
    kept = inside[0] | inside[1]
    stray = 1.0 - float(kept.double().mean())
    assert stray < stray_max, f"{stray:.4f} of the samples are in neither mode"
    n = int(kept.sum())
    w = float(inside[0].sum()) / n
    assert abs(w - pi[0]) < n_se * math.sqrt(pi[0] * (1 - pi[0]) / n), f"mode weight {w:.3f} vs {pi[0]}"
    for k, sel in enumerate(inside):
        xs = x[sel]
        m, v = float(xs.mean()), float(xs.var())
        assert abs(m - mu[k]) < n_se * s[k] / math.sqrt(xs.numel()), f"mode {k} mean {m:.4f} vs {mu[k]}"
        assert abs(v / s[k] ** 2 - 1) < n_se * math.sqrt(2 / xs.numel()) + 0.02, f"mode {k} var {v:.4f} vs {s[k] ** 2}"


def test_annealed_sampling_of_a_known_mixture_reaches_its_weights_means_and_variances():
    pi, mu, s = (0.3, 0.7), (-2.0, 1.5), (0.3, 0.5)
    leaf = ef.Concept(MixtureEnergy(pi, mu, s))
    x = sample_annealed(leaf, torch.randn(3000, 1), levels=100, corrector_steps=1, step_scale=0.2, seed=_seed())
    _check_mixture(x, pi, mu, s)


def test_annealed_sampling_is_reproducible_by_seed():
    leaf = ef.Concept(MixtureEnergy((0.5, 0.5), (-1.0, 1.0), (0.3, 0.3)))
    x0 = torch.randn(64, 1)
    seed = _seed()
    a = sample_annealed(leaf, x0, levels=10, corrector_steps=2, seed=seed)
    b = sample_annealed(leaf, x0, levels=10, corrector_steps=2, seed=seed)
    c = sample_annealed(leaf, x0, levels=10, corrector_steps=2, seed=seed + 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(seed)
    d = sample_annealed(leaf, x0, levels=10, corrector_steps=2)
    torch.manual_seed(seed)
    e = sample_annealed(leaf, x0, levels=10, corrector_steps=2)
    assert torch.equal(d, e)
    x, traj = sample_annealed(leaf, x0, levels=10, corrector_steps=0, seed=seed, trajectory=True)
    assert traj.shape == (10, 64, 1) and torch.equal(traj[-1], x)


def test_sample_annealed_bad_inputs():
    plain = ef.Concept(lambda x: x.pow(2).sum(1))
    with pytest.raises(TypeError, match="has no set_level"):
        sample_annealed(plain, torch.randn(4, 2), SCHED)
    leaf = ef.Concept(MixtureEnergy((0.5, 0.5), (-1.0, 1.0), (0.3, 0.3)))
    x0 = torch.randn(4, 1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_annealed(leaf, x0, levels=[10, 20])
    with pytest.raises(ValueError, match="step_scale must be"):
        sample_annealed(leaf, x0, step_scale=2.5)
    with pytest.raises(ValueError, match="sets 'steps'"):
        sample_annealed(leaf, x0, steps=3)
    with pytest.raises(ValueError, match="predictor must be"):
        sample_annealed(leaf, x0, predictor="euler")
    with pytest.raises(TypeError, match="x0 must be a floating Tensor"):
        sample_annealed(leaf, torch.zeros(4, 1, dtype=torch.long))


# ---- composition against closed forms ---------------------------------------------------------------
def _gaussians(offsets=None):
    """Two 2-D class Gaussians and a broad unconditional one."""
    mu = torch.tensor([[1.0, 0.5], [-1.0, 0.0], [0.3, -0.8]])
    s = torch.tensor([0.3, 0.5, 0.9])
    return GaussianEnergy(SCHED, mu, s, offsets), mu.double(), s.double()


LOW_NOISE = [1000, 500, 250, 100, 50, 20, 10, 5, 1]


def _ula_var(precision, eta):
    """Stationary variance of ULA with step ``eta`` on a Gaussian of that precision."""
    return 1.0 / (precision * (1 - eta * precision / 2))


def _check_gaussian(x, mean, var, n_se=4.5):
    n = x.shape[0]
    for d in range(x.shape[1]):
        assert abs(float(x[:, d].mean()) - float(mean[d])) < n_se * math.sqrt(var / n), (d, float(x[:, d].mean()), mean)
        assert abs(float(x[:, d].var()) / var - 1) < n_se * math.sqrt(2 / n), (d, float(x[:, d].var()), var)


def test_conjunction_samples_the_product_over_the_unconditional():
    """E_u + (E_0 - E_u) + (E_1 - E_u): precision P_0 + P_1 - P_u (closed form at level 0)."""
    m, mu, s = _gaussians(offsets=torch.randn(3, 1001) * 5)
    P = 1 / s ** 2
    prec = P[0] + P[1] - P[2]
    mean = (P[0] * mu[0] + P[1] * mu[1] - P[2] * mu[2]) / prec
    eta = 0.002
    x = sample_annealed(conjunction(m, [{"c": 0}, {"c": 1}]), torch.randn(3000, 2), levels=LOW_NOISE,
                        corrector_steps=150, step_size=eta, seed=_seed())
    _check_gaussian(x, mean, _ula_var(float(prec), eta))


def test_negation_samples_the_closed_form():
    """E_u - w (E_1 - E_u) with w = 0.5 on top of condition 0: p_0 p_u^w / p_1^w."""
    m, mu, s = _gaussians()
    P = 1 / s ** 2
    w = 0.5
    prec = P[0] + w * P[2] - w * P[1]
    mean = (P[0] * mu[0] + w * P[2] * mu[2] - w * P[1] * mu[1]) / prec
    e = conjunction(m, [{"c": 0}], negated=[{"c": 1}], negated_weights=[w])
    eta = 0.002
    x = sample_annealed(e, torch.randn(3000, 2), levels=LOW_NOISE, corrector_steps=150, step_size=eta, seed=_seed())
    _check_gaussian(x, mean, _ula_var(float(prec), eta))


def test_calibrated_disjunction_recovers_mixture_weights_that_raw_energies_miss():
    """Terms whose DSM constants differ (offset 3 nats) are a 50/50 mixture only once calibrated."""
    offsets = torch.zeros(3, 1001)
    offsets[0] = 3.0  # condition 0's energy sits 3 higher at every level: raw weight e^-3 / (1 + e^-3)
    m, mu, s = _gaussians(offsets)
    g = torch.Generator().manual_seed(_seed())
    data_u = mu[2].float() + s[2].float() * torch.randn(4000, 2, generator=g)  # samples of what E_u models
    levels = SCHED.levels(20)
    mix = disjunction(m, [{"c": 0}, {"c": 1}], x0=data_u, levels=levels, log_weights=[math.log(0.4), math.log(0.6)],
                      generator=g)
    n = 3000
    half = float((mu[0] - mu[1]).norm()) / 2

    def nearer_to_0(w0):  # expected fraction nearer to mu_0 than mu_1 for mixture weight w0 (isotropic parts)
        phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
        return w0 * phi(half / float(s[0])) + (1 - w0) * (1 - phi(half / float(s[1])))

    for expr, w0 in ((mix, 0.4),
                     (ef.Or(concept(m, {"c": 0}), concept(m, {"c": 1}), log_weights=[math.log(0.4), math.log(0.6)]),
                      0.4 * math.exp(-3) / (0.4 * math.exp(-3) + 0.6))):
        x = sample_annealed(expr, torch.randn(n, 2), levels=100, corrector_steps=1, step_scale=0.2, seed=_seed())
        near0 = float(((x - mu[0].float()).norm(dim=1) < (x - mu[1].float()).norm(dim=1)).double().mean())
        p = nearer_to_0(w0)
        assert abs(near0 - p) < 4.5 * math.sqrt(p * (1 - p) / n), (near0, p)


def test_composition_helpers_bad_inputs():
    m, _, _ = _gaussians()
    with pytest.raises(ValueError, match="at least one condition"):
        conjunction(m, [])
    with pytest.raises(ValueError, match="expected 2 weights"):
        conjunction(m, [{"c": 0}, {"c": 1}], weights=[1.0])
    with pytest.raises(ValueError, match="at least two conditions"):
        disjunction(m, [{"c": 0}], x0=torch.zeros(4, 2), levels=[10])
    with pytest.raises(ValueError, match="packed tensor of width 2"):
        concept(m, torch.zeros(3))
    assert unconditional(m).cond.tolist() == [0.0, 0.0]


def test_mala_corrector_samples_the_product_without_the_ula_bias():
    """With method='mala' the correctors are Metropolis-adjusted: the closed form itself, no ULA factor."""
    m, mu, s = _gaussians()
    P = 1 / s ** 2
    prec = P[0] + P[1] - P[2]
    mean = (P[0] * mu[0] + P[1] * mu[1] - P[2] * mu[2]) / prec
    e = conjunction(m, [{"c": 0}, {"c": 1}])
    eta = 0.05  # ULA's stationary variance at this step is 1.55x the target's
    x = sample_annealed(e, torch.randn(3000, 2), levels=LOW_NOISE, corrector_steps=40, step_size=eta, method="mala",
                        seed=_seed())
    _check_gaussian(x, mean, 1 / float(prec))
    x = sample_annealed(e, torch.randn(3000, 2), levels=LOW_NOISE, corrector_steps=40, step_size=eta, seed=_seed())
    _check_gaussian(x, mean, _ula_var(float(prec), eta))


def test_calibrated_disjunction_interpolates_its_offsets_between_levels():
    m, _, _ = _gaussians()
    terms = [concept(m, {"c": 0}), concept(m, {"c": 1})]
    r = torch.randn(2, 3, dtype=torch.float64)
    mix = CalibratedDisjunction(terms, r, [100, 50, 10], SCHED, log_weights=[0.1, -0.2])
    assert mix.offsets(50) == pytest.approx(r[:, 1].tolist())
    assert mix.offsets(30) == pytest.approx((0.5 * r[:, 1] + 0.5 * r[:, 2]).tolist())
    assert mix.offsets(1) == pytest.approx(r[:, 2].tolist()) and mix.offsets(900) == pytest.approx(r[:, 0].tolist())
    assert list(mix(30).log_weights) == pytest.approx([0.1 - mix.offsets(30)[0], -0.2 - mix.offsets(30)[1]])
    with pytest.raises(ValueError, match="need ratios of shape"):
        CalibratedDisjunction(terms, r[:, :2], [100, 50, 10], SCHED)


# ---- spatial conditions and warm starts ----------------------------------------------------------
def _random_homography(g: torch.Generator) -> torch.Tensor:
    return torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(3, 3, generator=g, dtype=torch.float64)


def test_spatial_maps_put_a_bump_where_the_homography_maps_each_present_value():
    g = torch.Generator().manual_seed(_seed())
    H = _random_homography(g)
    spec = CondSpec((("color", "class", 3), ("pos", "vector", 2)))
    pos = torch.rand(5, 2, generator=g, dtype=torch.float64) * 1.2 - 0.6
    cond = spec.pack({"pos": pos}, batch=5).double()
    cond[4, 1] = 0.0  # sample 4: position absent
    maps = spatial_maps(cond, spec, {"pos": H.tolist()}, 12, 16, 0.15)
    assert maps.shape == (5, 1, 12, 16) and bool((maps[4] == 0).all())
    packed = cond[:, spec.slices()["pos"]]  # the values as packed (float32)
    assert torch.allclose(packed, pos, atol=1e-6)
    for b in range(4):  # the slow obvious way: each pixel centre's distance to the projected point
        p = H @ torch.tensor([float(packed[b, 0]), float(packed[b, 1]), 1.0], dtype=torch.float64)
        px, py = float(p[0] / p[2]), float(p[1] / p[2])
        for i in range(12):
            for j in range(16):
                x, y = (j + 0.5) / 16 * 2 - 1, (i + 0.5) / 12 * 2 - 1
                ref = math.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * 0.15 ** 2))
                assert abs(float(maps[b, 0, i, j]) - ref) < 1e-12


def test_spatial_unet_reads_the_map_and_round_trips_through_its_spec(tmp_path):
    spec = CondSpec((("pos", "vector", 2), ("color", "class", 3)))
    torch.manual_seed(_seed())
    H = _random_homography(torch.Generator().manual_seed(_seed())).tolist()
    m = EnergyUNet(SCHED, spec, base=8, mults=(1, 2), emb=16, spatial={"pos": H}, spatial_sigma=0.2)
    assert m.inp.in_channels == 4 and m.spec()["spatial"] == {"pos": H}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([40, 400])
    a = spec.pack({"pos": torch.tensor([[0.5, -0.5], [0.5, -0.5]])}, batch=2)
    b = spec.pack({"pos": torch.tensor([[-0.5, 0.5], [-0.5, 0.5]])}, batch=2)
    with torch.no_grad():  # the position reaches the energy through the map as well as the embedding
        m.cond_embed.embed["pos"][-1].weight.zero_()
        m.cond_embed.embed["pos"][-1].bias.zero_()
    assert not torch.allclose(m(x, a, t), m(x, b, t))
    loaded, _ = load_model(export_model(m, tmp_path / "m.pt"))
    torch.testing.assert_close(loaded(x, a, t), m(x, a, t), rtol=0, atol=0)
    assert "spatial" not in EnergyUNet(SCHED, spec, base=8, mults=(1, 2), emb=16).spec()


@pytest.mark.parametrize("kwargs, match", [
    ({"spatial": {"color": torch.eye(3).tolist()}}, "'color' must be a 2-vector attribute"),
    ({"spatial": {"where": torch.eye(3).tolist()}}, "'where' must be a 2-vector attribute"),
    ({"spatial": {"pos": [[1.0, 0.0], [0.0, 1.0]]}}, "invertible 3x3 homography"),
    ({"spatial": {"pos": torch.zeros(3, 3).tolist()}}, "invertible 3x3 homography"),
    ({"spatial": {"pos": torch.eye(3).tolist()}, "spatial_sigma": 0.0}, "spatial_sigma: expected a width > 0"),
])
def test_spatial_bad_inputs(kwargs, match):
    spec = CondSpec((("pos", "vector", 2), ("color", "class", 3)))
    with pytest.raises(ValueError, match=match):
        EnergyUNet(SCHED, spec, base=8, mults=(1, 2), emb=16, **kwargs)


def test_warm_start_widens_the_input_and_computes_what_the_source_did(tmp_path):
    """A network given a new spatial channel, warm-started from one without: the same energies as the
    source (the new input weights start at zero), the trainer at step 0 with the EMA equal to the model."""
    spec = CondSpec((("pos", "vector", 2), ("color", "class", 3)))
    torch.manual_seed(_seed())
    src = EnergyUNet(SCHED, spec, base=8, mults=(1, 2), emb=16)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dst = EnergyUNet(SCHED, spec, base=8, mults=(1, 2), emb=16, spatial={"pos": torch.eye(3).tolist()})
    imgs = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    conds = spec.pack({"pos": torch.rand(6, 2) * 2 - 1, "color": torch.randint(0, 3, (6,))}, batch=6)
    tr = DSMTrainer(dst, imgs, conds, tmp_path, batch_size=2)
    assert tr.start_from(src.state_dict()) == ["inp.weight"]
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([2, 200, 900])
    c = conds[:3]
    torch.testing.assert_close(dst(x, c, t), src(x, c, t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tr.ema(x, c, t), src(x, c, t), rtol=1e-5, atol=1e-5)
    assert bool((dst.inp.weight[:, 3:] == 0).all()) and torch.equal(dst.inp.weight[:, :3], src.inp.weight)
    tr.train(1)
    assert bool((dst.inp.weight[:, 3:] != 0).any())  # the new channel's weights learn
    with pytest.raises(ValueError, match="a warm start begins a fresh run"):
        tr.start_from(src.state_dict())
    narrow = EnergyUNet(SCHED, spec, base=8, mults=(1, 2), emb=16)
    with pytest.raises(ValueError, match=r"inp.weight is \(8, 4, 3, 3\) in the source .* only widths that grow"):
        from ebm_fast.diffusion import warm_start
        warm_start(narrow, dst.state_dict())
    with pytest.raises(ValueError, match="the networks differ in tensors"):
        warm_start(narrow, EnergyUNet(SCHED, spec, base=8, mults=(1, 2, 2), emb=16).state_dict())
