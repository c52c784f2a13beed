"""LeafEvaluator (energies and input-gradients of all leaves), model inspection and parameter freezing.

Oracle: float64 autograd of each leaf's own ``Concept.energy`` on a float64 copy of its model.
"""

from __future__ import annotations

import copy
import functools
import secrets
import threading
import warnings

import pytest
import torch
from torch import nn

import ebm_fast as ef
from ebm_fast.leaf_eval import LeafEvaluator, energy_terms
from ebm_fast.model_state import couples_samples, frozen_parameters, inspect_model, stateful_parts
from ebm_fast.models import EnergyEnsemble

from support import TOL


@pytest.fixture(autouse=True)
def fresh_seed():
    torch.manual_seed(secrets.randbits(62))


class CondMLP(nn.Module):
    """``E(x, c)`` from an MLP of ``[x, c]``; returns ``(B, k)`` (``k = 0``: ``(B,)``)."""

    def __init__(self, d: int, c: int, k: int):
        super().__init__()
        self.k = k
        self.net = nn.Sequential(nn.Linear(d + c, 16), nn.SiLU(), nn.Linear(16, max(k, 1)))

    def forward(self, x, c):
        out = self.net(torch.cat([x, c.to(x.dtype)], dim=1))
        return out[:, 0] if self.k == 0 else out


def oracle(leaves, x: torch.Tensor):
    """``E`` [N, B], ``G`` [N, B, ...] in float64, one leaf at a time."""
    es, gs = [], []
    for leaf in leaves:
        m64 = copy.deepcopy(leaf.model).double()
        c = None if leaf.cond is None else leaf.cond.double()
        twin = ef.Concept(m64, c, per_sample=leaf.per_sample)
        x64 = x.detach().double().requires_grad_(True)
        e = twin.energy(x64)
        (g,) = torch.autograd.grad(e.sum(), x64)
        es.append(e.detach())
        gs.append(g)
    return torch.stack(es), torch.stack(gs)


@pytest.mark.parametrize("grouping", ["batched", "per_leaf", "auto"])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_energies_and_gradients_match_float64_oracle(grouping, k):
    b, d, c = 5, 7, 3
    m1, m2 = CondMLP(d, c, k), CondMLP(d, c, k)
    leaves = [ef.Concept(m1, torch.rand(c)), ef.Concept(m2, torch.rand(c)),
              ef.Concept(m1, torch.rand(b, c), per_sample=True), ef.Concept(m1, torch.rand(c))]
    x = torch.randn(b, d)
    ev = LeafEvaluator(leaves, b, (d,), x.device, model_dtype=torch.float32, grad_dtype=torch.float32,
                       grouping=grouping)
    e, g = ev(x)
    assert e.dtype == torch.float32 and e.shape == (4, b) and g.shape == (4, b, d)
    assert not e.requires_grad and not g.requires_grad
    e64, g64 = oracle(leaves, x)
    rtol, atol = TOL[torch.float32]
    torch.testing.assert_close(e.double(), e64, rtol=rtol, atol=atol)
    torch.testing.assert_close(g.double(), g64, rtol=rtol, atol=atol)
    mode = "per_leaf" if grouping in ("per_leaf", "auto") else "batched"  # auto on CPU: per leaf
    assert ev.modes == [([0, 2, 3], mode), ([1], "per_leaf")]


def ensemble_leaves(b: int, d: int, c: int):
    """Five leaves over three MLPs, two of them on a nested ensemble: 9 model passes (tasks) in all."""
    m1, m2, m3 = CondMLP(d, c, 0), CondMLP(d, c, 0), CondMLP(d, c, 3)
    ens = EnergyEnsemble([m1, EnergyEnsemble([m2, CondMLP(d, c, 0)], weights=[0.25, 1.5])], weights=[0.7, 0.3])
    return [ef.Concept(m1, torch.rand(c)), ef.Concept(ens, torch.rand(b, c), per_sample=True),
            ef.Concept(m3, torch.rand(c)), ef.Concept(ens, torch.rand(c)), ef.Concept(m1, torch.rand(c))]


def test_energy_terms_flatten_nested_ensembles():
    d, c = 4, 2
    m1, m2, m3 = CondMLP(d, c, 0), CondMLP(d, c, 0), CondMLP(d, c, 0)
    ens = EnergyEnsemble([m1, EnergyEnsemble([m2, m3], weights=[0.25, 1.5])], weights=[0.7, 0.3])
    terms = energy_terms(ens)
    assert [id(m) for _, m in terms] == [id(m1), id(m2), id(m3)]
    assert [w for w, _ in terms] == pytest.approx([0.7, 0.3 * 0.25, 0.3 * 1.5])
    x, cond = torch.randn(6, d), torch.rand(6, c)
    torch.testing.assert_close(sum(w * m(x, cond) for w, m in terms), ens(x, cond))
    assert energy_terms(m1) == [(1.0, m1)]
    fn = lambda x: x.sum(1)  # noqa: E731  (a plain callable is one term)
    assert energy_terms(fn) == [(1.0, fn)]


@pytest.mark.parametrize("workers", [2, 3, 16])
def test_threaded_evaluation_matches_the_oracle_and_is_deterministic(workers):
    b, d, c = 5, 7, 3
    leaves = ensemble_leaves(b, d, c)
    x = torch.randn(b, d)
    kw = dict(model_dtype=torch.float32, grad_dtype=torch.float32)
    ev = LeafEvaluator(leaves, b, (d,), x.device, workers=workers, **kw)
    assert ev.workers == min(workers, 9)
    e, g = ev(x)
    assert e.shape == (5, b) and g.shape == (5, b, d) and g.is_contiguous() and not g.requires_grad
    e64, g64 = oracle(leaves, x)
    rtol, atol = TOL[torch.float32]
    torch.testing.assert_close(e.double(), e64, rtol=rtol, atol=atol)
    torch.testing.assert_close(g.double(), g64, rtol=rtol, atol=atol)
    # the results are combined in task order, whatever thread finishes first
    for _ in range(3):
        e2, g2 = ev(x)
        assert torch.equal(e2, e) and torch.equal(g2, g)
    # one thread: the same energies and gradients (ensembles' up to the order of their sums);
    # leaves on one plain model compute the very same numbers
    seq = LeafEvaluator(leaves, b, (d,), x.device, workers=1, **kw)
    assert seq.workers == 1
    e1, g1 = seq(x)
    torch.testing.assert_close(e1, e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g1, g, rtol=1e-6, atol=1e-6)
    plain = [0, 2, 4]
    assert torch.equal(e1[plain], e[plain]) and torch.equal(g1[plain], g[plain])


def test_threaded_batched_groups_and_model_dtype():
    b, d, c = 4, 6, 2
    leaves = ensemble_leaves(b, d, c)
    for leaf in leaves:
        leaf.model.double()
    x = torch.randn(b, d)
    ev = LeafEvaluator(leaves, b, (d,), x.device, model_dtype=torch.float64, grad_dtype=torch.float32,
                       grouping="batched", workers=2)
    assert [mode for _, mode in ev.modes] == ["batched", "batched", "per_leaf"] and ev.workers == 2
    e, g = ev(x)
    assert g.dtype == torch.float32
    e64, g64 = oracle(leaves, x)
    torch.testing.assert_close(e.double(), e64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.double(), g64, rtol=1e-6, atol=1e-6)


def test_workers_are_checked_and_one_pass_runs_on_the_calling_thread():
    m = CondMLP(3, 2, 1)
    kw = dict(model_dtype=torch.float32, grad_dtype=torch.float32)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be None"):
            LeafEvaluator([ef.Concept(m, torch.rand(2))], 2, (3,), torch.device("cpu"), workers=bad, **kw)
    assert LeafEvaluator([ef.Concept(m, torch.rand(2))], 2, (3,), torch.device("cpu"), workers=4, **kw).workers == 1


class ThreadCountProbe(nn.Module):
    """A linear energy that records the intra-op thread count of the thread that runs it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(torch.get_num_threads())
        return self.lin(x)


def test_tasks_run_with_the_callers_thread_count():
    """A thread keeps the OpenMP thread count it first ran with; kernels may split sums by it, so every
    task must follow the caller's current count (else the same chain gives other bits)."""
    probe = ThreadCountProbe()
    ev = LeafEvaluator([ef.Concept(probe), ef.Concept(probe)], 2, (3,), torch.device("cpu"),
                       model_dtype=torch.float32, grad_dtype=torch.float32, workers=2)
    before = torch.get_num_threads()
    try:
        for n in (2, 1, 2):  # whatever count the pool's threads started with, one of these differs
            torch.set_num_threads(n)
            probe.seen.clear()
            ev(torch.randn(2, 3))
            assert probe.seen == [n, n]
    finally:
        torch.set_num_threads(before)


def test_threaded_errors_name_the_leaf():
    m = CondMLP(3, 2, 0)
    leaves = [ef.Concept(m, torch.rand(2)), ef.Concept(lambda x: x.detach().sum(1), name="detached-leaf")]
    ev = LeafEvaluator(leaves, 2, (3,), torch.device("cpu"), model_dtype=torch.float32, grad_dtype=torch.float32,
                       workers=2)
    assert ev.workers == 2
    with pytest.raises(ValueError, match="detached-leaf: the energy model returned energies that do not depend"):
        ev(torch.randn(2, 3))


def test_groups_split_by_model_and_condition_signature():
    m = CondMLP(4, 2, 1)
    leaves = [ef.Concept(m, torch.rand(2)), ef.Concept(m, torch.rand(3, 2), per_sample=True),
              ef.Concept(m, torch.rand(2).double()), ef.Concept(lambda x: x.sum(1)), ef.Concept(m, torch.rand(2))]
    ev = LeafEvaluator(leaves, 3, (4,), torch.device("cpu"), model_dtype=torch.float32, grad_dtype=torch.float32,
                       grouping="batched")
    # shared (2,) and per-sample (3, 2) conditions reach the model as the same (B, 2): one group;
    # a float64 condition cannot be concatenated with float32 ones: its own group
    assert ev.modes == [([0, 1, 4], "batched"), ([2], "per_leaf"), ([3], "per_leaf")]


def test_gradient_dtype_and_model_dtype_conversion():
    m = CondMLP(3, 2, 1).double()
    leaves = [ef.Concept(m, torch.rand(2).double()), ef.Concept(m, torch.rand(2).double())]
    x = torch.randn(4, 3)
    ev = LeafEvaluator(leaves, 4, (3,), x.device, model_dtype=torch.float64, grad_dtype=torch.float32,
                       grouping="batched")
    e, g = ev(x)
    assert e.dtype == torch.float32 and g.dtype == torch.float32
    e64, g64 = oracle(leaves, x)
    torch.testing.assert_close(g.double(), g64, rtol=1e-6, atol=1e-6)


class FlattensInput(nn.Module):
    """A conv model that views its input (cannot take channels_last)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.lin = nn.Linear(2 * 5 * 5, 1)

    def forward(self, x):
        return self.lin(x.view(x.shape[0], -1)) + self.conv(x).square().mean((1, 2, 3))[:, None]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("grouping", ["batched", "per_leaf"])
def test_channels_last_inputs_and_the_fallback_for_models_that_view(grouping, workers):
    m = FlattensInput()
    leaves = [ef.Concept(m), ef.Concept(m), ef.Concept(nn.Conv2d(2, 1, 3))]
    x = torch.randn(4, 2, 5, 5)
    ev = LeafEvaluator(leaves, 4, (2, 5, 5), x.device, model_dtype=torch.float32, grad_dtype=torch.float32,
                       grouping=grouping, workers=workers)
    assert ev.groups[0].channels_last  # auto: a Conv2d on the CPU
    e, g = ev(x)
    assert not ev.groups[0].channels_last and g.is_contiguous()  # retried in the standard layout
    assert ev.groups[1].channels_last and ev.workers == workers  # the conv that can take NHWC keeps it
    e64, g64 = oracle(leaves, x)
    torch.testing.assert_close(g.double(), g64, rtol=1e-5, atol=1e-5)


def test_channels_last_gradients_come_back_contiguous():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(1), nn.LazyLinear(1))
    m(torch.rand(1, 3, 6, 6))
    leaves = [ef.Concept(m)]
    x = torch.randn(3, 3, 6, 6)
    ev = LeafEvaluator(leaves, 3, (3, 6, 6), x.device, model_dtype=torch.float32, grad_dtype=torch.float32,
                       memory_format="channels_last")
    e, g = ev(x)
    assert ev.groups[0].channels_last and g.is_contiguous() and g.shape == (1, 3, 3, 6, 6)
    torch.testing.assert_close(g.double(), oracle(leaves, x)[1], rtol=1e-5, atol=1e-5)


def test_load_conditions_copies_into_the_same_buffers():
    m = CondMLP(3, 2, 1)
    leaves = [ef.Concept(m, torch.rand(2)), ef.Concept(m, torch.rand(2))]
    ev = LeafEvaluator(leaves, 4, (3,), torch.device("cpu"), model_dtype=torch.float32, grad_dtype=torch.float32,
                       grouping="batched")
    buf = ev.groups[0].conds[0]
    new = [ef.Concept(m, torch.rand(2)), ef.Concept(m, torch.rand(2))]
    ev.load_conditions(new)
    assert ev.groups[0].conds[0] is buf
    x = torch.randn(4, 3)
    torch.testing.assert_close(ev(x)[1].double(), oracle(new, x)[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="condition changed shape"):
        ev.load_conditions([ef.Concept(m, torch.rand(3)), ef.Concept(m, torch.rand(3))])


def test_energy_without_autograd_graph_names_the_leaf():
    leaf = ef.Concept(lambda x: x.detach().sum(1), name="detached-leaf")
    ev = LeafEvaluator([leaf], 2, (3,), torch.device("cpu"), model_dtype=torch.float32, grad_dtype=torch.float32)
    with pytest.raises(ValueError, match="detached-leaf: the energy model returned energies that do not depend"):
        ev(torch.randn(2, 3))


def test_batchnorm_train_mode_detected_and_warned_once():
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    assert couples_samples(bn)
    bn.eval()
    assert not couples_samples(bn)
    assert couples_samples(nn.BatchNorm1d(4, track_running_stats=False).eval())  # batch statistics always
    assert not couples_samples(nn.Sequential(nn.LayerNorm(4), nn.GroupNorm(2, 4)))
    bn.train()
    leaves = [ef.Concept(bn), ef.Concept(bn)]
    with pytest.warns(RuntimeWarning, match="couples the samples") as rec:
        ev = LeafEvaluator(leaves, 4, (3,), torch.device("cpu"), model_dtype=torch.float32,
                           grad_dtype=torch.float32, grouping="auto")
    assert len(rec) == 1 and ev.modes == [([0, 1], "per_leaf")] and len(ev.warnings) == 1


# ---- inspect_model ----------------------------------------------------------------------------------
class Holder:
    def __init__(self, net):
        self.net = net
        self.scale = 2.0

    def energy(self, x):
        return self.scale * self.net(x).sum(1)


GLOBAL_NET = nn.Linear(3, 1)


def uses_global(x):
    return GLOBAL_NET(x).sum(1)


def make_energy(net, scale):
    return lambda x: scale * net(x).sum(1)


def test_inspect_model_finds_modules_through_wrappers():
    net = nn.Linear(3, 1)
    for fn in (net, Holder(net).energy, functools.partial(lambda x, n: n(x), n=net), make_energy(net, 1.0),
               Holder(net)):
        parts = inspect_model(fn)
        assert [id(m) for m in parts.modules] == [id(net)] and parts.complete, fn
    assert [id(m) for m in inspect_model(uses_global).modules] == [id(GLOBAL_NET)]


def test_fingerprint_identifies_what_a_graph_depends_on():
    net, other = nn.Linear(3, 1), nn.Linear(3, 1)
    fp = lambda f: inspect_model(f).fingerprint  # noqa: E731
    # two lambdas from one line over the same module and value: the same fingerprint
    assert fp(make_energy(net, 1.0)) == fp(make_energy(net, 1.0))
    assert fp(make_energy(net, 1.0)) != fp(make_energy(other, 1.0))
    assert fp(make_energy(net, 1.0)) != fp(make_energy(net, 2.0))
    t = torch.randn(3)
    f = lambda x: (x * t).sum(1)  # noqa: E731
    before = fp(f)
    t.mul_(2)  # in place: same storage, same fingerprint (a graph reads the new values)
    assert fp(f) == before
    t = torch.randn(3)  # rebinding the closed-over name: new storage
    assert fp(f) != before


def test_opaque_objects_make_a_callable_incomplete():
    class Slots:
        __slots__ = ("v",)

    s = Slots()
    assert not inspect_model(lambda x: x * s.v).complete
    assert inspect_model(lambda x: torch.sigmoid(x).sum(1)).complete
    a = {"self": None}
    a["self"] = a  # cycles terminate
    assert inspect_model(lambda x: a and x).complete


def test_frozen_parameters_restore_flags_and_modes_on_exception():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Linear(2, 1))
    net[0].bias.requires_grad_(False)
    net[1].eval()
    shared = nn.ModuleList([net, net[2]])  # a parameter reachable twice
    flags = [p.requires_grad for p in net.parameters()]
    modes = [m.training for m in net.modules()]
    with pytest.raises(KeyError):
        with frozen_parameters([shared, net]):
            assert not any(p.requires_grad for p in net.parameters())
            net.eval()  # the model changes modes inside: restored afterwards
            raise KeyError("x")
    assert [p.requires_grad for p in net.parameters()] == flags
    assert [m.training for m in net.modules()] == modes


# ---- several chains at once, stateful models ---------------------------------------------------------
def test_overlapping_chains_in_threads_restore_the_callers_flags():
    """Chain A enters, chain B enters, A leaves, B leaves: the order in which restoring what each chain
    found at its entry (B found A's frozen flags) left the parameters frozen for good."""
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    net[0].bias.requires_grad_(False)
    net[1].eval()
    flags = [p.requires_grad for p in net.parameters()]
    modes = [m.training for m in net.modules()]
    b_inside, a_done = threading.Event(), threading.Event()
    seen, errors = {}, []

    def energy(x):
        name = threading.current_thread().name
        seen.setdefault(name, [p.requires_grad for p in net.parameters()])
        if name == "A":
            assert b_inside.wait(10)
        elif name == "B":
            b_inside.set()
            assert a_done.wait(10)
        return net(x).squeeze(1)

    def run(name):
        try:
            ef.langevin(energy, torch.randn(4, 3), steps=2, step_size=0.1, noise=0.1)
        except BaseException as exc:  # reported below
            errors.append(exc)
        if name == "A":
            a_done.set()

    threads = [threading.Thread(target=run, args=(n,), name=n) for n in "AB"]
    threads[0].start()
    while "A" not in seen and threads[0].is_alive():
        threads[0].join(0.001)
    threads[1].start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert seen["A"] == seen["B"] == [False] * len(flags)  # frozen while the chains ran
    assert [p.requires_grad for p in net.parameters()] == flags
    assert [m.training for m in net.modules()] == modes


def test_frozen_parameters_nest_and_count_holders():
    net = nn.Linear(2, 1)
    with frozen_parameters([net]):
        with frozen_parameters([net]):
            assert not net.weight.requires_grad
        assert not net.weight.requires_grad  # the outer holder still runs
    assert net.weight.requires_grad and net.bias.requires_grad


def test_stateful_parts_named():
    assert stateful_parts(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))) == ["BatchNorm in training mode"]
    for sn in (nn.utils.parametrizations.spectral_norm, nn.utils.spectral_norm):
        assert stateful_parts(sn(nn.Linear(2, 2))) == ["spectral norm in training mode"]
    assert stateful_parts(nn.Dropout(0.1)) == ["dropout in training mode"]
    quiet = nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(2, 2)), nn.BatchNorm1d(2),
                          nn.Dropout(0.1), nn.Dropout(0.0).train())
    assert stateful_parts(quiet.eval()) == [] and stateful_parts(nn.Dropout(0.0)) == []
    assert stateful_parts(nn.BatchNorm1d(2, track_running_stats=False)) == []  # couples, but keeps no state


class SNConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 4, 3))
        self.out = nn.Linear(4, 1)

    def forward(self, x, c):
        return self.out(torch.tanh(self.c(x * c[:, None, None, None])).mean((2, 3)))


def test_stateful_model_runs_its_passes_serially_and_repeatably():
    """Spectral norm in training mode: every forward runs a power iteration on the shared ``u``; in
    worker threads the passes' order (and so u and the chain) varied run to run."""
    base = SNConv()
    runs = []
    for _ in range(3):
        model = copy.deepcopy(base)
        expr = ef.Concept(model, torch.tensor(1.0)) & ef.Concept(model, torch.tensor(0.7))
        x, info = ef.sample(expr, torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(1)), steps=4,
                            step_size=0.1, noise=0.01, seed=5, workers=2, grouping="per_leaf", return_info=True)
        assert info.workers == 1
        runs.append((x, model.c.parametrizations.weight[0]._u.clone()))
    for x, u in runs[1:]:
        assert torch.equal(x, runs[0][0]) and torch.equal(u, runs[0][1])
    assert not torch.equal(runs[0][1], base.c.parametrizations.weight[0]._u)  # it did iterate
    plain = nn.Linear(3 * 36, 1)
    ev = LeafEvaluator([ef.Concept(lambda x, c: plain(x.flatten(1) * c[:, :1]), torch.tensor(float(i)))
                        for i in range(2)], 2, (3, 6, 6), torch.device("cpu"), model_dtype=torch.float32,
                       grad_dtype=torch.float32, grouping="per_leaf", workers=2)
    assert ev.workers == 2 and ev.stateful == []


def test_batchnorm_in_train_mode_warns_once_per_model_even_for_one_leaf():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    before = model[1].running_mean.clone()
    kw = dict(steps=3, step_size=0.1, noise=0.0, seed=1, return_info=True)
    with pytest.warns(RuntimeWarning, match="updates its running statistics on every step") as rec:
        _, info = ef.langevin(model, torch.randn(5, 3), **kw)
    assert len(rec) == 1 and any("running statistics" in w for w in info.warnings)
    assert not torch.equal(model[1].running_mean, before)  # what the warning says happened
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = ef.langevin(model, torch.randn(5, 3), **kw)  # once per model: no second warning
    assert any("running statistics" in w for w in info.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ef.langevin(model.eval(), torch.randn(5, 3), **kw)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile imports torch.jit internals
def test_compiled_evaluator_matches_eager():
    m = CondMLP(5, 2, 1)
    leaves = [ef.Concept(m, torch.rand(2)), ef.Concept(m, torch.rand(2))]
    x = torch.randn(4, 5)
    kw = dict(model_dtype=torch.float32, grad_dtype=torch.float32, grouping="batched")
    e0, g0 = LeafEvaluator(leaves, 4, (5,), x.device, **kw)(x)
    with frozen_parameters([m]):
        e1, g1 = LeafEvaluator(leaves, 4, (5,), x.device, compile=True, **kw)(x)
    torch.testing.assert_close(e1, e0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-5)
