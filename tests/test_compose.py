"""The composition algebra and its compiled program against float64 autograd of the composed energy."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebm_fast as ef
from ebm_fast.program import LEAF, LSE, MAX_LEAVES, SUM

from support import expressions, leaf, oracle_weights


class Quadratic(torch.nn.Module):
    """E(x | c) = 0.5 * |x - c|^2 * scale, returned with a trailing dim to exercise the reduction."""

    def __init__(self, shape_out: str = "b1"):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.rand(()) + 0.5)
        self.shape_out = shape_out

    def forward(self, x, c):
        e = 0.5 * self.scale * ((x - c) ** 2)  # (B, D)
        if self.shape_out == "b":
            return e.sum(1)
        if self.shape_out == "b1":
            return e.sum(1, keepdim=True)
        return e  # (B, k): the leaf energy sums it


def test_operators_build_the_documented_nodes():
    a, b, c = leaf(0), leaf(1), leaf(2)
    e = a & b | ~c
    assert isinstance(e, ef.Or) and isinstance(e.terms[0], ef.And) and isinstance(e.terms[1], ef.Not)
    assert e.terms[1].alpha == 0.01
    s = 2.0 * a
    assert isinstance(s, ef.Scale) and s.scale == 2.0 and (a * 3).scale == 3.0
    assert e.leaves() == [a, b, c]
    assert (a & a).leaves() == [a, a]  # one entry per occurrence


@settings(max_examples=60, deadline=None)
@given(expr=expressions(), batch=st.integers(1, 5), data=st.data())
def test_program_weights_and_energy_match_autograd(expr, batch, data):
    n = len(expr.leaves())
    seed = data.draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    energies = torch.randn(n, batch, generator=gen, dtype=torch.float64) * 2
    w, e = expr.program.weights_and_energy(energies)
    w_ref, e_ref = oracle_weights(expr, energies)
    # The table holds coefficients in fp32; 1e-6 relative covers that rounding.
    torch.testing.assert_close(e, e_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w, w_ref, rtol=1e-6, atol=1e-6)


def test_program_table_is_post_order_and_flattened():
    a, b, c, d = (leaf(i) for i in range(4))
    e = ef.And(ef.And(a, 2.0 * b), ~ef.Or(c, ef.Or(d, c, temperature=1.0)))
    table = e.program.table
    kinds = table[:, 0].tolist()
    parents = table[:, 2].long().tolist()
    assert parents[-1] == -1
    assert all(p > i for i, p in enumerate(parents[:-1]))  # every child before its parent
    # the nested Ands and the Not collapse into one SUM, the same-temperature Ors into one LSE
    assert kinds.count(SUM) == 1 and kinds.count(LSE) == 1 and kinds.count(LEAF) == 5
    assert e.program.leaf_signs == (1.0, 2.0, -0.01, -0.01, -0.01)


def test_nested_or_of_other_temperature_is_kept():
    a, b, c = leaf(0), leaf(1), leaf(2)
    e = ef.Or(ef.Or(a, b, temperature=0.5), c)
    assert e.program.table[:, 0].tolist().count(LSE) == 2


@pytest.mark.parametrize("shape_out", ["b", "b1", "bk"])
def test_energy_reduces_model_output_and_broadcasts_shared_condition(shape_out):
    model = Quadratic(shape_out)
    x = torch.randn(6, 3)
    c1, c2 = torch.randn(3), torch.randn(3)
    e = ef.Concept(model, c1) & ~ef.Concept(model, c2.tolist())
    expect = 0.5 * model.scale * (((x - c1) ** 2).sum(1) - 0.01 * ((x - c2) ** 2).sum(1))
    torch.testing.assert_close(e.energy(x), expect)


def test_per_sample_condition_is_passed_through():
    model = Quadratic()
    x = torch.randn(5, 2)
    conds = torch.randn(5, 2)
    e = ef.Concept(model, conds, per_sample=True)
    torch.testing.assert_close(e.energy(x), 0.5 * model.scale * ((x - conds) ** 2).sum(1))
    with pytest.raises(ValueError, match="batch size 4"):
        e.energy(torch.randn(4, 2))


def test_energy_is_differentiable_and_matches_disjunction_formula():
    model = Quadratic()
    x = torch.randn(4, 2, requires_grad=True)
    a, b = ef.Concept(model, torch.randn(2)), ef.Concept(model, torch.randn(2))
    e = ef.Or(a, b, temperature=0.3, log_weights=[0.2, -0.4])
    ea, eb = a.energy(x), b.energy(x)
    expect = -0.3 * torch.logsumexp(torch.stack([-ea / 0.3 + 0.2, -eb / 0.3 - 0.4]), 0)
    torch.testing.assert_close(e.energy(x), expect)
    (g,) = torch.autograd.grad(e.energy(x).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_non_integrable_expression_raises_on_sampling_check():
    a, b = leaf(0), leaf(1)
    with pytest.raises(ValueError, match="no normalisable distribution"):
        (~a).program.check_integrable()
    with pytest.raises(ValueError, match="no normalisable distribution"):
        (~a & -2.0 * b).program.check_integrable()
    (b & ~a).program.check_integrable()  # a positive term makes it integrable


def test_bad_construction_raises_clear_errors():
    a = leaf(0)
    with pytest.raises(ValueError, match="temperature"):
        ef.Or(a, a, temperature=0.0)
    with pytest.raises(ValueError, match="log_weights"):
        ef.Or(a, a, log_weights=[0.0])
    with pytest.raises(ValueError, match="alpha"):
        ef.Not(a, alpha=-1.0)
    with pytest.raises(ValueError, match="coefs"):
        ef.And(a, a, coefs=[1.0])
    with pytest.raises(TypeError, match="expression"):
        a & 3
    with pytest.raises(TypeError, match="callable"):
        ef.Concept(42)
    with pytest.raises(ValueError, match="too large"):
        ef.And(*[leaf(i) for i in range(MAX_LEAVES + 1)]).program
    with pytest.raises(ValueError, match="shape"):
        ef.Concept(lambda x: x.sum()).energy(torch.randn(3, 2))


def test_program_is_cached_on_the_expression():
    e = leaf(0) & leaf(1)
    assert e.program is e.program


class Shifted(torch.nn.Module):
    """E(x | c) = 0.5 * |x - c|^2 + offset: one Gaussian mode per condition, its level set by ``offset``."""

    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.offset = offset

    def forward(self, x, c):
        return 0.5 * ((x - c) ** 2).sum(1) + self.offset


def _mode_masses(e, a, b, half=8.0, n=801):
    """Brute force: the mass of exp(-e) nearer to a than to b, and nearer to b, on a fine 2-D grid (float64)."""
    t = torch.linspace(-half, half, n, dtype=torch.float64)
    x = torch.cartesian_prod(t, t)
    p = torch.exp(-(e.energy(x) - e.energy(x).min()))
    near_a = (x - a).norm(dim=1) < (x - b).norm(dim=1)
    return float(p[near_a].sum() / p.sum()), float(p[~near_a].sum() / p.sum())


def test_balanced_disjunction_cancels_a_constant_gap_between_its_terms():
    """Two modes at a and -a whose energies differ by a constant c: the plain Or puts mass
    exp(beta_1) : exp(beta_2 - c / T) on them; balanced on a mirror-symmetric batch (x and -x), the
    medians differ by exactly c, so c / T is added to beta_2 - beta_1 and only the caller's own log
    weights set the masses: equal ones without them (checked by brute-force integration)."""
    gap = float(torch.rand(()) * 2 + 1.0)  # 1..3
    temperature = float(torch.rand(()) * 0.5 + 0.75)
    a = torch.nn.functional.normalize(torch.randn(2, dtype=torch.float64), dim=0) * 3.5  # modes 7 apart, sd <= 1.2
    lo, hi = ef.Concept(Shifted(0.0), a), ef.Concept(Shifted(gap), -a)
    betas = torch.randn(2).tolist()
    plain = ef.Or(lo, hi, temperature=temperature, log_weights=betas)
    half = torch.randn(64, 2, dtype=torch.float64) * 3
    x = torch.cat([half, -half])
    balanced = ef.balance_disjunctions(plain, x)
    assert isinstance(balanced, ef.Or) and balanced is not plain and plain.log_weights == tuple(betas)
    assert balanced.log_weights[1] - balanced.log_weights[0] == pytest.approx(betas[1] - betas[0] + gap / temperature, rel=1e-9)
    assert sum(balanced.log_weights) == pytest.approx(sum(betas), rel=1e-9, abs=1e-12)
    # masses: the log weights enter at the energy's own temperature, so integrate exp(-e / T)
    scaled = lambda e: 1.0 / temperature * e  # noqa: E731
    m_lo, m_hi = _mode_masses(scaled(plain), a, -a)
    expect_lo = 1.0 / (1.0 + torch.exp(torch.tensor(betas[1] - betas[0] - gap / temperature)).item())
    assert m_lo == pytest.approx(expect_lo, abs=2e-3)
    # balanced, only the caller's own log weights are left to set the masses
    b_lo, b_hi = _mode_masses(scaled(balanced), a, -a)
    expect_lo = 1.0 / (1.0 + torch.exp(torch.tensor(betas[1] - betas[0])).item())
    assert b_lo == pytest.approx(expect_lo, abs=2e-3) and b_hi == pytest.approx(1.0 - expect_lo, abs=2e-3)
    even = ef.balance_disjunctions(ef.Or(lo, hi, temperature=temperature), x)
    assert _mode_masses(scaled(even), a, -a)[0] == pytest.approx(0.5, abs=2e-3)


def test_balancing_reaches_nested_disjunctions_and_leaves_the_rest_alone():
    model = Quadratic("b")
    c = [torch.randn(3) for _ in range(4)]
    inner = ef.Or(ef.Concept(model, c[0]), ef.Concept(model, c[1]), temperature=0.1)
    other = ~ef.Concept(model, c[2])
    plain_and = ef.Concept(model, c[3]) & other
    expr = ef.And(2.0 * inner, plain_and, coefs=[1.0, 0.5])
    x = torch.randn(16, 3)
    out = ef.balance_disjunctions(expr, x)
    assert isinstance(out, ef.And) and out.coefs == (1.0, 0.5) and out.terms[1] is plain_and
    scaled = out.terms[0]
    assert isinstance(scaled, ef.Scale) and scaled.scale == 2.0
    bal = scaled.term
    med = [float(t.energy(x).detach().double().median()) for t in inner.terms]
    expect = [(m - sum(med) / 2) / 0.1 for m in med]
    assert bal.log_weights == pytest.approx(expect, rel=1e-9) and bal.temperature == 0.1
    assert inner.log_weights == (0.0, 0.0)
    assert [leaf.cond for leaf in out.leaves()] == [leaf.cond for leaf in expr.leaves()]
    no_or = ef.Concept(model, c[0]) & other
    assert ef.balance_disjunctions(no_or, x) is no_or


def test_balancing_at_settled_points_uses_each_terms_own_modes():
    """With ``settle`` the medians are taken where each term's own chain got to: settled exactly onto
    each mode, the gap between the modes' energies is recovered whatever the starting batch."""
    gap, temperature = float(torch.rand(()) + 0.5), 0.05
    a = torch.randn(2, dtype=torch.float64)
    lo, hi = ef.Concept(Shifted(0.0), a), ef.Concept(Shifted(gap), -a)
    x = torch.randn(32, 2, dtype=torch.float64) + a  # a lopsided start: nearer a than -a
    calls = []

    def to_mode(term, at):
        calls.append((term, at))
        return term.cond.expand_as(at).clone()

    bal = ef.balance_disjunctions(ef.Or(lo, hi, temperature=temperature), x, settle=to_mode)
    assert [t for t, _ in calls] == [lo, hi] and all(at is x for _, at in calls)
    assert bal.log_weights[1] - bal.log_weights[0] == pytest.approx(gap / temperature, rel=1e-9)
    at_start = ef.balance_disjunctions(ef.Or(lo, hi, temperature=temperature), x)
    assert at_start.log_weights[1] - at_start.log_weights[0] > gap / temperature + 1.0  # the start is biased


def test_balancing_rejects_non_finite_energies():
    bad = ef.Concept(lambda x: torch.where(x[:, 0] > 0, torch.inf, 0.0) + x.sum(1))
    expr = bad | ef.Concept(lambda x: x.sum(1))
    with pytest.raises(ValueError, match="non-finite"):
        ef.balance_disjunctions(expr, torch.randn(8, 2).abs())


class Stiff(torch.nn.Module):
    """E(x | c) = 0.5 * k * |x - c|^2: a Gaussian concept of precision k."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, x, c):
        return 0.5 * self.k * ((x - c) ** 2).sum(1)


def test_balanced_conjunction_scales_terms_to_the_weakest_gradient():
    """Gaussian concepts of precisions k_j: the gradient norm of term j at x is k_j |x - c_j|
    (computed here without autograd), each coefficient shrinks by min_k g_k / g_j, and the balanced
    product is the Gaussian of precision sum_j w_j k_j centred at sum_j w_j k_j c_j / sum_j w_j k_j
    (its minimiser, found by the energy itself, lands there)."""
    ks = (torch.rand(3, dtype=torch.float64) * 4 + 0.5).tolist()
    cs = [torch.randn(2, dtype=torch.float64) * 2 for _ in ks]
    user = (torch.rand(3, dtype=torch.float64) + 0.5).tolist()
    expr = ef.And(*(ef.Concept(Stiff(k), c) for k, c in zip(ks, cs)), coefs=user)
    x = torch.randn(65, 2, dtype=torch.float64) * 3
    out = ef.balance_conjunctions(expr, x)
    g = [k * float((x - c).norm(dim=1).median()) for k, c in zip(ks, cs)]
    want = [u * min(g) / gj for u, gj in zip(user, g)]
    assert isinstance(out, ef.And) and out is not expr and expr.coefs == tuple(user)
    assert out.coefs == pytest.approx(want, rel=1e-9)
    assert max(w / u for w, u in zip(out.coefs, user)) == pytest.approx(1.0, rel=1e-12)  # the weakest keeps its own
    prec = [w * k for w, k in zip(want, ks)]
    mean = sum(p * c for p, c in zip(prec, cs)) / sum(prec)
    xm = mean.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(out.energy(xm[None]).sum(), xm)
    assert grad.abs().max() < 1e-9  # the analytic mean is the balanced energy's stationary point


def test_conjunction_balancing_skips_negations_and_reaches_nested_conjunctions():
    model = Stiff(1.0)
    strong = ef.Concept(Stiff(5.0), torch.randn(2))
    weak = ef.Concept(model, torch.randn(2))
    neg = ef.Not(ef.Concept(Stiff(50.0), torch.randn(2)), alpha=0.1)
    inner = ef.And(strong, weak)
    untouched = ef.Or(ef.Concept(model, torch.randn(2)), ef.Concept(model, torch.randn(2)))
    expr = ef.And(inner, neg, -1.0 * weak, untouched, coefs=[1.0, 1.0, 0.5, 1.0])
    x = torch.randn(32, 2)
    out = ef.balance_conjunctions(expr, x)
    # outer And: the negation and the Scale by -1 keep their coefficients; only `inner` and
    # `untouched` pull, and they are scaled against each other
    assert isinstance(out.terms[0], ef.And) and out.terms[1] is neg and out.terms[3] is untouched
    assert out.coefs[1] == 1.0 and out.coefs[2] == 0.5 and min(out.coefs[0], out.coefs[3]) < 1.0
    assert max(out.coefs[0], out.coefs[3]) == 1.0
    bal_inner = out.terms[0]
    gs = []
    for t in (strong, weak):
        xx = x.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad(t.energy(xx).sum(), xx)
        gs.append(float(gr.norm(dim=1).median()))
    assert bal_inner.coefs == pytest.approx([min(gs) / gs[0], min(gs) / gs[1]], rel=1e-5)
    assert inner.coefs == (1.0, 1.0)
    alone = strong | weak
    assert ef.balance_conjunctions(alone, x) is alone
    single = ef.And(strong, neg)  # one pulling term: nothing to compare
    assert ef.balance_conjunctions(single, x) is single


def test_conjunction_balancing_rejects_bad_gradients():
    nan = ef.Concept(lambda x: torch.where(x[:, 0] > 0, torch.nan, 1.0) * x.sum(1))
    flat = ef.Concept(lambda x: 0.0 * x.sum(1) + 1.0)
    good = ef.Concept(lambda x: (x ** 2).sum(1))
    x = torch.randn(8, 2).abs() + 0.1
    with pytest.raises(ValueError, match="non-finite gradients"):
        ef.balance_conjunctions(nan & good, x)
    with pytest.raises(ValueError, match="zero gradient"):
        ef.balance_conjunctions(good & flat, x)


def test_disjunction_strength_scales_the_correction():
    gap, temperature = float(torch.rand(()) + 0.5), float(torch.rand(()) * 0.5 + 0.1)
    a = torch.randn(2, dtype=torch.float64)
    plain = ef.Or(ef.Concept(Shifted(0.0), a), ef.Concept(Shifted(gap), -a), temperature=temperature,
                  log_weights=[0.3, -0.1])
    x = torch.randn(32, 2, dtype=torch.float64)
    full = ef.balance_disjunctions(plain, x)
    for s in (0.0, 0.5, float(torch.rand(())) * 2):
        part = ef.balance_disjunctions(plain, x, strength=s)
        assert part.log_weights == pytest.approx([b + s * (f - b) for b, f in zip(plain.log_weights, full.log_weights)],
                                                 rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="strength"):
        ef.balance_disjunctions(plain, x, strength=float("nan"))
