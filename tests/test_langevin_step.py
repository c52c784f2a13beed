"""The fused Langevin step (``ebm_fast.ops.langevin_step``) on every backend against the float64 oracle
of docs/contract.md §3 (``support.oracle_step``).

Most tests take a ``target``, a (backend, device) pair: ``torch`` on the CPU, the C++ kernel
(``cpu``), ``triton`` (on the GPU when there is one, else on the CPU through Triton's interpreter,
which tests/conftest.py switches on: ~0.15 s a program, so its shapes stay tiny), the CUDA C++ kernel
(``cuda``) and ``torch`` on the GPU; the GPU targets skip without a CUDA device. What only one
backend has is tested apart, under names that say so: the Triton launcher's block sizes, empty-grid
and compile-ahead behaviour, and, on a GPU, streams, other devices and CUDA-graph replay.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import ebm_fast as ef
from ebm_fast.ops import ORDERS, new_flag
from ebm_fast.rng import normal_noise, seed_to_int64

from support import TOL, backend_or_skip, expressions, leaf, oracle_step

GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
needs_gpu = [pytest.mark.cuda, pytest.mark.skipif(not GPU, reason="needs a CUDA device")]


class Target(NamedTuple):
    backend: str
    device: str

    @property
    def interpreted(self) -> bool:
        """Triton through its interpreter: every program costs ~0.15 s, so shapes stay tiny."""
        return self.backend == "triton" and self.device == "cpu"

    @property
    def native(self) -> bool:
        """A compiled kernel (C++, CUDA, or Triton on a GPU): large shapes are cheap."""
        return not self.interpreted and self.backend != "torch"


TARGETS = [
    pytest.param(Target("torch", "cpu"), id="torch-cpu"),
    pytest.param(Target("cpu", "cpu"), id="cpu"),
    pytest.param(Target("triton", "cuda" if GPU else "cpu"), id="triton"),
    pytest.param(Target("cuda", "cuda"), id="cuda", marks=needs_gpu),
    pytest.param(Target("torch", "cuda"), id="torch-cuda", marks=needs_gpu),
]
GPU_TARGETS = [pytest.param(Target("cuda", "cuda"), id="cuda", marks=needs_gpu),
               pytest.param(Target("triton", "cuda"), id="triton", marks=needs_gpu)]


@pytest.fixture(params=TARGETS)
def target(request) -> Target:
    t = request.param
    backend_or_skip(t.backend, t.device)
    return t


@pytest.fixture(params=GPU_TARGETS)
def gpu_target(request) -> Target:
    t = request.param
    backend_or_skip(t.backend, t.device)
    return t


def _gen(seed: int | None = None) -> torch.Generator:
    seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
    return torch.Generator().manual_seed(seed)


def _inputs(gen, n, b, d, dtype=torch.float32, device="cpu", energy_scale=2.0):
    """Fresh ``x`` [B, D] in [0, 1), ``grads`` [N, B, D] and ``energies`` [N, B] on ``device``."""
    x = torch.rand(b, d, generator=gen).to(device, dtype)
    grads = (torch.randn(n, b, d, generator=gen) * 3).to(device, dtype)
    energies = (torch.randn(n, b, generator=gen) * energy_scale).to(device)
    return x, grads, energies


def _step(backend, expr, x, grads, energies, *, out=None, **kw):
    """``(x_new, energy, flag)`` of one step on ``backend``."""
    flag = new_flag(x.device)
    x_new, energy = ef.ops.langevin_step(x, grads, energies, expr, backend=backend, flag=flag, out=out, **kw)
    return x_new, energy, flag


def _numbers(kw: dict) -> dict:
    """``kw`` with its tensor scalars as Python numbers (seeds as their unsigned 64 bits)."""
    out = dict(kw)
    for name in ("step_size", "noise", "seed", "step"):
        if isinstance(out.get(name), torch.Tensor):
            v = out[name].item()
            out[name] = v % 2**64 if name == "seed" else v
    return out


def _check(target, expr, x, grads, energies, *, in_place=False, **kw):
    """One step on ``target`` against the float64 oracle; returns ``(x_new, energy, flag)``."""
    ref, e_ref = oracle_step(x, grads, energies, expr, **_numbers(kw))
    xb = x.clone() if in_place else x
    got = _step(target.backend, expr, xb, grads, energies, out=xb if in_place else None, **kw)
    if in_place:
        assert got[0] is xb
    assert got[0].dtype == x.dtype and got[0].shape == x.shape
    rtol, atol = TOL[x.dtype]
    torch.testing.assert_close(got[0].double(), ref.to(x.dtype).double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(got[1].double(), e_ref, rtol=1e-5, atol=1e-5)
    return got


# ---- every backend ----------------------------------------------------------------------------------
# examples, max B, max D per kind of target; on a GPU, D also from sizes that exercise its launch
# geometries (one sample per block, many samples per block, D % 4 != 0, several chunks of a row)
GPU_DIMS = [1, 2, 3, 4, 5, 7, 31, 64, 255, 1024, 1025, 3 * 32 * 32, 4099]


def _random_case_budget(t: Target) -> tuple[int, int, int]:
    if t.interpreted:
        return 40, 4, 64
    if t.device == "cuda":
        return 80, 40, 0
    return (60, 6, 300) if t.backend == "cpu" else (40, 6, 70)


def test_step_matches_oracle_on_random_programs(target):
    examples, max_b, max_d = _random_case_budget(target)
    dims = st.sampled_from(GPU_DIMS) if target.device == "cuda" else st.integers(1, max_d)

    # No shrinking: an interpreted example costs ~0.2 s and shrinking a failure took minutes; the
    # failing example is printed as drawn.
    @settings(max_examples=examples, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
    @given(expr=expressions(max_leaves=8), b=st.integers(1, max_b), d=dims,
           order=st.sampled_from(["ula", "noise_first"]), clip=st.sampled_from([None, 0.7]),
           clamp=st.sampled_from([None, (0.0, 1.0), (-0.5, 0.8)]), dtype=st.sampled_from(DTYPES),
           device_scalars=st.booleans(), in_place=st.booleans(), seed=st.integers(0, 2**64 - 1),
           step=st.integers(0, 2**40), noise=st.sampled_from([0.0, 0.005, 0.1, 1.0]))
    def run(expr, b, d, order, clip, clamp, dtype, device_scalars, in_place, seed, step, noise):
        x, grads, energies = _inputs(_gen(seed % 2**31), len(expr.leaves()), b, d, dtype, target.device)
        kw = dict(step_size=0.05, noise=noise, seed=seed, step=step, order=order, grad_clip=clip, clamp=clamp)
        if device_scalars:  # schedule entries and RNG state held in (device) memory, read by the kernel
            kw.update(step_size=torch.tensor(0.05, device=target.device),
                      noise=torch.tensor(noise, device=target.device),
                      seed=torch.tensor(seed_to_int64(seed), device=target.device),
                      step=torch.tensor(step, device=target.device))
        got = _check(target, expr, x, grads, energies, in_place=in_place, **kw)
        assert got[2].tolist() == [0, 0]

    run()


def test_large_programs_up_to_32_leaves(target):
    d_values = [3, 300] if not target.interpreted else [3, 20]

    @settings(max_examples=5 if target.interpreted else 20, deadline=None,
              phases=(Phase.explicit, Phase.reuse, Phase.generate))
    @given(expr=expressions(max_leaves=32, max_depth=6), b=st.integers(1, 6), d=st.sampled_from(d_values))
    def run(expr, b, d):
        x, grads, energies = _inputs(_gen(), len(expr.leaves()), b, d, device=target.device)
        _check(target, expr, x, grads, energies, step_size=0.1, noise=0.3, seed=3, step=5)

    run()


@pytest.mark.parametrize("b,d", [(37, 2), (21, 5)])
def test_short_rows_across_program_lane_groups(target, b, d):
    """More samples than one group of the C++ kernel's program lanes (16, the last one partial), and
    rows short enough to share a work item: stored back to back, and strided (rows of a wider tensor)."""
    gen = _gen()
    expr = ef.Or(leaf(0) & ~leaf(1), leaf(2), temperature=0.5) | 0.5 * leaf(3)
    x, grads, energies = _inputs(gen, 4, b, d, device=target.device)
    kw = dict(step_size=0.05, noise=0.1, seed=int(torch.randint(0, 2**62, (1,), generator=gen)), step=3,
              order="ula", grad_clip=0.7, clamp=(0.0, 1.0))
    _check(target, expr, x, grads, energies, **kw)
    wide = torch.rand(b, d + 3, generator=gen).to(target.device)
    _check(target, expr, wide[:, 1:1 + d], grads, energies, **kw)


def test_released_code_temperature_and_alpha(target):
    a, b, c = leaf(0), leaf(1), leaf(2)
    expr = ef.Or(a & ef.Not(b, alpha=0.001), c, temperature=0.01)
    # energies of order 0.1 keep -e/T within fp32's exact range for the 1e-5 comparison
    x, grads, energies = _inputs(_gen(), 3, 3, 17, device=target.device, energy_scale=0.05)
    _check(target, expr, x, grads, energies, step_size=0.5, noise=0.005, seed=11, step=3, order="noise_first",
           clamp=(0.0, 1.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_inputs_and_in_place_update(target, dtype):
    """Image-shaped x sliced out of a larger tensor, grads strided along N and B, grads and energies
    as lists, and the update written in place into the strided view (its neighbours untouched)."""
    gen = _gen()
    dev = target.device
    expr = ef.Or(leaf(0), leaf(1) & 0.5 * leaf(2), temperature=2.0)
    big = torch.rand(3, 2, 5, 9, generator=gen).to(dev, dtype)
    x = big[:, :, :, 2:7]  # non-contiguous [B, C, H, W]
    grads = (torch.randn(4, 3, 2, 2, 5, 8, generator=gen) * 3).to(dev, dtype)[1:, :, 1, :, :, 1:6]
    energies = torch.randn(3, 3, generator=gen).to(dev)
    kw = dict(step_size=0.1, noise=0.2, seed=5, step=9, clamp=(0.1, 0.9))
    x_new, _, _ = _check(target, expr, x, grads, energies, **kw)
    before = big.clone()
    x_new2, _ = ef.ops.langevin_step(x, list(grads), list(energies), expr, backend=target.backend, out=x, **kw)
    assert x_new2 is x
    assert torch.equal(big[:, :, :, 2:7], x_new)
    assert torch.equal(big[:, :, :, :2], before[:, :, :, :2]) and torch.equal(big[:, :, :, 7:], before[:, :, :, 7:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_images_strided_and_unaligned_rows(target, dtype):
    """Contiguous images (on a GPU 3x64x64: one sample per CUDA block, vector loads), then rows
    strided by D + 7 starting one element in (not vector-aligned: scalar loads and stores), updated
    in place without touching the rest of each row."""
    gen = _gen()
    dev = target.device
    side = 64 if target.native else 8
    d = 3 * side * side
    expr = leaf(0) & (leaf(1) | leaf(2))
    kw = dict(step_size=0.01, noise=0.005, seed=123, step=7, clamp=(0.0, 1.0), order="noise_first")
    x = torch.rand(5, 3, side, side, generator=gen).to(dev, dtype)
    grads = torch.randn(3, 5, 3, side, side, generator=gen).to(dev, dtype)
    energies = torch.randn(3, 5, generator=gen).to(dev)
    _check(target, expr, x, grads, energies, **kw)
    big = torch.rand(5, d + 7, generator=gen).to(dev, dtype)
    x = big[:, 1:1 + d]
    grads = torch.randn(3, 5, d + 2, generator=gen).to(dev, dtype)[..., 2:]
    untouched = big[:, 1 + d:].clone()
    ref, _ = oracle_step(x, grads, energies, expr, **kw)
    x_new, _ = ef.ops.langevin_step(x, grads, energies, expr, backend=target.backend, out=x, **kw)
    assert x_new is x
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(big[:, 1:1 + d].double(), ref.to(dtype).double(), rtol=rtol, atol=atol)
    assert torch.equal(big[:, 1 + d:], untouched)


def test_float64_state_runs_in_fp32_and_keeps_its_dtype(target):
    x, grads, energies = _inputs(_gen(), 2, 2, 11, torch.float64, target.device)
    _check(target, leaf(0) | leaf(1), x, grads, energies, step_size=0.1, noise=0.3, seed=1, step=2)


def test_device_scalars_are_read_by_the_kernel(target):
    """Each scalar alone from memory, then all four, equal Python numbers; and the value in memory at
    the call counts, not one seen at an earlier call (what a CUDA-graph replay relies on)."""
    x, grads, energies = _inputs(_gen(), 2, 2, 12, device=target.device)
    expr = leaf(0) & ~leaf(1)
    numbers = dict(step_size=0.2, noise=0.3, seed=77, step=5)
    tensors = {k: torch.tensor(v, device=target.device) for k, v in numbers.items()}
    want = _step(target.backend, expr, x, grads, energies, **numbers)
    for name in numbers:
        got = _step(target.backend, expr, x, grads, energies, **dict(numbers, **{name: tensors[name]}))
        assert torch.equal(got[0], want[0]), name
    got = _step(target.backend, expr, x, grads, energies, **dict(tensors, noise=torch.tensor([0.3],
                                                                                              device=target.device)))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    tensors["step"].fill_(6)
    moved = _step(target.backend, expr, x, grads, energies, **tensors)
    assert torch.equal(moved[0], _step(target.backend, expr, x, grads, energies, **dict(numbers, step=6))[0])
    assert not torch.equal(moved[0], want[0])


def test_non_finite_values_set_the_flag(target):
    gen = _gen()
    expr = leaf(0) & leaf(1) & leaf(2)
    x, grads, energies = _inputs(gen, 3, 3, 8, device=target.device)
    kw = dict(step_size=0.1, noise=0.1, seed=1, step=1, backend=target.backend)
    flag = new_flag(target.device)
    ef.ops.langevin_step(x, grads, energies, expr, flag=flag, **kw)
    assert flag.tolist() == [0, 0]
    energies[2, 1] = float("nan")
    grads[0, 2, 5] = float("inf")
    ef.ops.langevin_step(x, grads, energies, expr, flag=flag, **kw)
    assert flag[0].item() == 0b101 and flag[1].item() == 1
    # a non-finite state alone sets flag[1] only
    flag.zero_()
    x2 = x.clone()
    x2[0, 0] = float("inf")
    _, grads, energies = _inputs(gen, 3, 3, 8, device=target.device)
    ef.ops.langevin_step(x2, grads, energies, expr, flag=flag, **kw)
    assert flag.tolist() == [0, 1]


def test_flag_bits_for_every_leaf_up_to_31(target):
    n = 32
    gen = _gen()
    expr = ef.And(*[leaf(i) for i in range(n)])
    x, grads, energies = _inputs(gen, n, 4, 37, device=target.device)
    energies[31, 1] = float("nan")
    energies[30, 0] = float("-inf")
    energies[3, 0] = float("-inf")
    grads[17, 1, 5] = float("inf")
    grads[0, 0, 36] = float("nan")
    got = _step(target.backend, expr, x, grads, energies, step_size=0.1, noise=0.1, seed=5, step=0)
    bits = (1 << 31) | (1 << 30) | (1 << 17) | (1 << 3) | 1
    assert got[2].tolist() == [bits - 2**32, 1]
    # flags are OR-ed into what is there
    flag = torch.tensor([1 << 4, 0], dtype=torch.int32, device=target.device)
    x2, grads2, energies2 = _inputs(gen, n, 2, 8, device=target.device)
    grads2[9, 0, 0] = float("nan")
    ef.ops.langevin_step(x2, grads2, energies2, expr, step_size=0.1, noise=0.1, seed=5, step=0,
                         backend=target.backend, flag=flag)
    assert flag.tolist() == [(1 << 4) | (1 << 9), 1]


# the interpreter casts with numpy, which warns when a value overflows fp16 (the overflow is the point)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_flag_sees_the_stored_state_overflow(target):
    """Finite fp32 arithmetic whose fp16 result overflows sets flag[1] only."""
    x = torch.full((2, 8), 65000.0, dtype=torch.float16, device=target.device)
    grads = torch.full((1, 2, 8), -1.0, dtype=torch.float16, device=target.device)
    grads[0, 1] = 1.0
    energies = torch.zeros(1, 2, device=target.device)
    got = _step(target.backend, leaf(0), x, grads, energies, step_size=2000.0, noise=0.0, seed=0, step=0)
    assert got[2].tolist() == [0, 1]
    assert torch.isinf(got[0][0]).all() and torch.isfinite(got[0][1]).all()


def test_empty_batch(target):
    dev = target.device
    x_new, energy = ef.ops.langevin_step(torch.rand(0, 4, device=dev), torch.randn(2, 0, 4, device=dev),
                                         torch.randn(2, 0, device=dev), leaf(0) & leaf(1), step_size=0.1,
                                         noise=0.1, seed=0, step=0, backend=target.backend)
    assert x_new.shape == (0, 4) and energy.shape == (0,)


@pytest.mark.parametrize("d", [1, 2, 3, 6])
def test_many_samples_of_small_dimension(target, d):
    """Many samples per CUDA block / Triton program / C++ work item."""
    expr = ef.Or(leaf(0), leaf(1), temperature=0.5) & ~leaf(2)
    b = 101 if target.interpreted else 3001
    x, grads, energies = _inputs(_gen(), 3, b, d, device=target.device)
    _check(target, expr, x, grads, energies, step_size=0.1, noise=1.0, seed=9, step=2**33 + 5)


@pytest.mark.parametrize("d", [5, 8, 1027])
def test_noise_alone_is_the_reference_rng(target, d):
    """x = 0, G = 0, step_size = 0, noise = 1: x' is xi(seed, step, j) itself, j = b * D + d."""
    d = 67 if target.interpreted and d > 100 else d
    b, seed, step = 7, 2**64 - 12345, 2**32 + 3
    dev = target.device
    x_new, _, _ = _step(target.backend, leaf(0), torch.zeros(b, d, device=dev), torch.zeros(1, b, d, device=dev),
                        torch.zeros(1, b, device=dev), step_size=0.0, noise=1.0, seed=seed, step=step)
    ref = normal_noise(seed, step, b * d, device="cpu").view(b, d)
    torch.testing.assert_close(x_new.cpu(), ref, rtol=1e-5, atol=1e-5)


def test_zero_noise_is_plain_gradient_descent(target):
    """noise 0 (a Python 0.0 skips the RNG; a tensor 0.0 is read by the kernel): x' = x - eta g."""
    x, grads, energies = _inputs(_gen(), 2, 2, 20, device=target.device)
    for order in ORDERS:
        for noise in (0.0, torch.tensor(0.0, device=target.device)):
            got = _check(target, leaf(0) & leaf(1), x, grads, energies, step_size=0.1, noise=noise, seed=1, step=2,
                         order=order)
            torch.testing.assert_close(got[0], x - 0.1 * (grads[0] + grads[1]), rtol=1e-6, atol=1e-6)


# ---- argument checks (ebm_fast.ops, before any backend) -----------------------------------------------
def test_bad_inputs_name_the_problem():
    expr = leaf(0) & leaf(1)
    x, g, e = torch.rand(3, 4), torch.randn(2, 3, 4), torch.randn(2, 3)
    kw = dict(step_size=0.1, noise=0.1, seed=0, step=0)
    step = ef.ops.langevin_step
    with pytest.raises(ValueError, match=r"leading size of 2"):
        step(x, torch.randn(3, 3, 4), e, expr, **kw)
    with pytest.raises(ValueError, match=r"grads must have shape"):
        step(x, torch.randn(2, 3, 5), e, expr, **kw)
    with pytest.raises(ValueError, match=r"energies must have shape"):
        step(x, g, torch.randn(2, 4), expr, **kw)
    with pytest.raises(TypeError, match=r"grads dtype torch.float16 does not match x dtype torch.float32"):
        step(x, g.half(), e, expr, **kw)
    with pytest.raises(TypeError, match=r"floating dtype"):
        step(x.long(), g, e, expr, **kw)
    with pytest.raises(ValueError, match=r"order"):
        step(x, g, e, expr, order="leapfrog", **kw)
    with pytest.raises(ValueError, match=r"clamp"):
        step(x, g, e, expr, clamp=(1.0, 0.0), **kw)
    with pytest.raises(ValueError, match=r"grad_clip"):
        step(x, g, e, expr, grad_clip=-1.0, **kw)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        step(x, g, e, expr, backend="metal", **kw)
    with pytest.raises(ValueError, match=r"backend='cuda' needs CUDA tensors"):
        step(x, g, e, expr, backend="cuda", **kw)
    with pytest.raises(ValueError, match=r"no normalisable distribution"):
        step(x, g[:1], e[:1], ~leaf(0), **kw)
    with pytest.raises(ValueError, match=r"out must match x"):
        step(x, g, e, expr, out=torch.empty(3, 5), **kw)


@pytest.mark.parametrize("name, value, message", [
    ("step_size", -0.1, r"^step_size must be finite and >= 0, got -0\.1$"),
    ("step_size", float("nan"), r"^step_size must be finite and >= 0, got nan$"),
    ("step_size", float("inf"), r"^step_size must be finite and >= 0, got inf$"),
    ("noise", -0.01, r"^noise must be finite and >= 0, got -0\.01$"),
    ("step", -1, r"^step must be >= 0 and < 2\*\*63, got -1$"),
    ("seed", -1, r"^seed must be in \[0, 2\*\*64\) \(64 bits\), got -1$"),
    ("seed", 2**64, r"^seed must be in \[0, 2\*\*64\) \(64 bits\), got 18446744073709551616$"),
])
def test_step_scalars_follow_the_one_rule(name, value, message):
    """Negative step size, noise, step index or seed are refused with one line naming the argument,
    the same rule ef.sample applies (seed -1 is not the key 2**64 - 1)."""
    kw = dict(step_size=0.1, noise=0.1, seed=0, step=0)
    kw[name] = value
    with pytest.raises(ValueError, match=message):
        ef.ops.langevin_step(torch.rand(3, 4), torch.randn(2, 3, 4), torch.randn(2, 3), leaf(0) & leaf(1), **kw)
    with pytest.raises(TypeError, match=rf"^{name} must be (a number|an int)"):
        ef.ops.langevin_step(torch.rand(3, 4), torch.randn(2, 3, 4), torch.randn(2, 3), leaf(0) & leaf(1),
                             **dict(kw, **{name: "0.1"}))


def test_an_unusable_triton_backend_says_why(monkeypatch):
    """A source checkout imported without installing has no ebm_fast.kernels (setup.py maps kernels/
    there): Triton then drops out of the available backends and naming it explains the fix."""
    import sys

    from ebm_fast import ops

    expr = leaf(0) & leaf(1)
    args = (torch.rand(3, 4), torch.randn(2, 3, 4), torch.randn(2, 3), expr)
    kw = dict(step_size=0.1, noise=0.1, seed=0, step=0, backend="triton")
    try:
        ops.triton_unusable_reason.cache_clear()
        monkeypatch.setitem(sys.modules, "ebm_fast.kernels", None)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert "triton" not in ops.available_backends("cpu")
        with pytest.raises(RuntimeError, match=r"ebm_fast\.kernels does not import .*pip install -e \."):
            ef.ops.langevin_step(*args, **kw)
        ops.triton_unusable_reason.cache_clear()
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match=r"only through its interpreter: set TRITON_INTERPRET=1"):
            ef.ops.langevin_step(*args, **kw)
    finally:
        ops.triton_unusable_reason.cache_clear()


def test_cpu_program_evaluation_in_parallel():
    """C++ only: enough samples (B * M >= 2^17) for the kernel to evaluate programs on several threads."""
    backend_or_skip("cpu")
    expr = ef.Or(leaf(0) & ~leaf(1), leaf(2), temperature=0.5) | 0.5 * leaf(3)
    assert 40000 * expr.program.table.shape[0] >= 2**17
    x, grads, energies = _inputs(_gen(), 4, 40000, 1)
    _check(Target("cpu", "cpu"), expr, x, grads, energies, step_size=0.05, noise=0.1, seed=5, step=1,
           order="noise_first")


# ---- Triton only: the launcher's block sizes, grid and compile-ahead ----------------------------------
TRITON_DEVICE = "cuda" if GPU else "cpu"


@pytest.fixture(scope="module")
def kernel():
    backend_or_skip("triton", TRITON_DEVICE)
    from ebm_fast.kernels import langevin_step as k

    return k


def _launch(k, expr, x, grads, energies, *, out=None, order="ula", grad_clip=None, clamp=None, **kw):
    """Call the Triton launcher directly (block-size overrides); returns ``(out, energy, flag)``."""
    out = torch.empty_like(x) if out is None else out
    energy = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    flag = new_flag(x.device)
    k.langevin_step_triton(x, grads, energies, expr.program.on(x.device), order=ORDERS[order],
                           grad_clip=grad_clip, clamp=clamp, out=out, energy_out=energy, flag=flag, **kw)
    return out, energy, flag


# d: the one-Philox-per-4-elements path (48) and the per-element one (37); seed and step: both 32-bit
# halves of key and counter in use, and ints just past the int32 range
@pytest.mark.parametrize("d, seed, step", [(48, 2**63 + 12345, 2**33 + 7), (37, 2**32 - 3, 2**31 + 5)])
def test_triton_noise_is_xi_of_the_flat_index_whatever_the_blocks(kernel, d, seed, step):
    x, grads, energies = _inputs(_gen(), 2, 3, d, device=TRITON_DEVICE)
    kw = dict(step_size=0.0, noise=1.0, seed=seed, step=step)
    expected = normal_noise(seed, step, x.numel(), device=TRITON_DEVICE).view_as(x)
    results = [_launch(kernel, leaf(0) & leaf(1), x, grads, energies, block_b=bb, block_d=bd, **kw)
               for bb, bd in ((1, 16), (4, 64), (2, 8))]
    for out, energy, _ in results:
        torch.testing.assert_close(out - x, expected, rtol=0, atol=2e-6)
        assert torch.equal(out, results[0][0]) and torch.equal(energy, results[0][1])


def test_triton_block_sizes_do_not_change_the_step(kernel):
    expr = ef.Or(leaf(0) & ef.Not(leaf(1), alpha=0.5), 2.0 * leaf(2), temperature=0.5, log_weights=[0.3, -0.2])
    x, grads, energies = _inputs(_gen(), 3, 3, 40, device=TRITON_DEVICE)
    kw = dict(step_size=0.1, noise=0.2, seed=9, step=4, order="noise_first", grad_clip=1.5, clamp=(0.1, 0.9))
    a = _launch(kernel, expr, x, grads, energies, block_b=1, block_d=16, **kw)
    b = _launch(kernel, expr, x, grads, energies, block_b=4, block_d=64, **kw)
    assert torch.equal(a[2], b[2])
    if x.is_cuda:  # compiled tiles of another shape may contract other multiply-adds (FMA): rounding only
        torch.testing.assert_close(b[0], a[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b[1], a[1], rtol=1e-6, atol=1e-6)
    else:  # the interpreter evaluates the same NumPy operations whatever the blocks
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_triton_empty_batch_does_not_launch(kernel, monkeypatch):
    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError(f"launched a grid {grid} for an empty batch")

    monkeypatch.setattr(kernel, "_langevin_step_kernel", NoLaunch())
    dev = TRITON_DEVICE
    x_new, energy = ef.ops.langevin_step(torch.rand(0, 8, device=dev), torch.randn(2, 0, 8, device=dev),
                                         torch.randn(2, 0, device=dev), leaf(0) & leaf(1), step_size=0.1,
                                         noise=0.1, seed=0, step=0, backend="triton")
    assert x_new.shape == (0, 8) and energy.shape == (0,)


def test_triton_compile_ahead_reads_and_writes_nothing(kernel):
    x, grads, energies = _inputs(_gen(), 2, 2, 16, device=TRITON_DEVICE)
    out, energy = torch.full_like(x, 7.0), torch.full((2,), 7.0, device=TRITON_DEVICE)
    flag = new_flag(TRITON_DEVICE)
    kernel.compile_ahead(x, grads, energies, (leaf(0) & leaf(1)).program.on(TRITON_DEVICE), step_size=0.1,
                         noise=0.1, seed=1, step=1, order=0, grad_clip=None, clamp=None, out=out, energy_out=energy,
                         flag=flag)
    assert (out == 7.0).all() and (energy == 7.0).all() and flag.tolist() == [0, 0]


def test_triton_launcher_rejects_more_leaves_than_flag_bits(kernel):
    # ebm_fast.program already refuses such expressions; the launcher checks its own invariant too
    x, grads, energies = _inputs(_gen(), 33, 1, 4, device=TRITON_DEVICE)
    with pytest.raises(ValueError, match=r"1\.\.32 leaves and 1\.\.64 program nodes, got 33 leaves"):
        _launch(kernel, leaf(0) & leaf(1), x, grads, energies, step_size=0.1, noise=0.1, seed=0, step=0)


# ---- GPU only: paper-sized batches, streams, devices, CUDA graphs ------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_image_batch_both_orders(gpu_target, dtype):
    """The paper's shape (B = 128 images of 3x64x64, three leaves) in both update orders."""
    gen = torch.Generator(device="cuda").manual_seed(int(np.random.default_rng().integers(2**31)))
    n, b, d = 3, 128, 3 * 64 * 64
    expr = ef.Or(leaf(0) & ef.Not(leaf(1), alpha=0.001), leaf(2), temperature=0.5)
    x = torch.rand(b, d, generator=gen, device="cuda").to(dtype)
    grads = (torch.randn(n, b, d, generator=gen, device="cuda") * 3).to(dtype)
    energies = torch.randn(n, b, generator=gen, device="cuda")
    for order in ORDERS:
        _check(gpu_target, expr, x, grads, energies, step_size=0.01, noise=0.005, seed=123, step=77, order=order,
               clamp=(0.0, 1.0), grad_clip=0.03)


def test_gpu_runs_on_the_current_stream(gpu_target):
    expr = leaf(0) | leaf(1)
    x, grads, energies = _inputs(_gen(), 2, 16, 3000, device="cuda")
    kw = dict(step_size=0.1, noise=0.2, seed=4, step=1)
    ref, e_ref = oracle_step(x, grads, energies, expr, **kw)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = _step(gpu_target.backend, expr, x, grads, energies, **kw)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(got[0].double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1].double(), e_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_tensors_on_a_device_other_than_the_current_one(gpu_target):
    expr = leaf(0) & leaf(1)
    x, grads, energies = _inputs(_gen(), 2, 4, 100, device="cuda:1")
    kw = dict(step_size=0.1, noise=0.2, seed=4, step=1)
    with torch.cuda.device(0):
        got = _step(gpu_target.backend, expr, x, grads, energies, **kw)
    ref, e_ref = oracle_step(x, grads, energies, expr, **kw)
    assert got[0].device == x.device
    torch.testing.assert_close(got[0].double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1].double(), e_ref, rtol=1e-5, atol=1e-5)


def test_gpu_graph_replay_draws_fresh_noise_each_step(gpu_target):
    """Capture one step with the RNG state and the schedule in device memory; advance them on the device
    between replays; every replay must equal the oracle at that step."""
    expr = leaf(0) & ~leaf(1)
    b, d = 8, 3 * 16 * 16
    x, grads, energies = _inputs(_gen(), 2, b, d, device="cuda")
    seed = torch.tensor(2**40 + 17, device="cuda")
    step = torch.zeros((), dtype=torch.int64, device="cuda")
    step_size = torch.tensor(0.1, device="cuda")
    noise = torch.tensor(0.3, device="cuda")
    out = torch.empty_like(x)
    flag = new_flag("cuda")
    kw = dict(order="noise_first", clamp=(0.0, 1.0))

    def one_step():
        return ef.ops.langevin_step(x, grads, energies, expr, step_size=step_size, noise=noise, seed=seed,
                                    step=step, backend=gpu_target.backend, out=out, flag=flag, **kw)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        one_step()  # warm-up outside capture: loads the kernel, caches the table on the device
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _, energy = one_step()
    seen = []
    for k in range(4):
        step_size.fill_(0.1 / (k + 1))
        noise.fill_(0.3 * 0.5**k)
        graph.replay()
        ref, e_ref = oracle_step(x, grads, energies, expr, step_size=0.1 / (k + 1), noise=0.3 * 0.5**k,
                                 seed=2**40 + 17, step=k, **kw)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(energy.double(), e_ref, rtol=1e-5, atol=1e-5)
        seen.append(out.clone())
        step.add_(1)  # on the device, as a chain driver advances it
    assert all(not torch.equal(seen[i], seen[i + 1]) for i in range(3))
    assert flag.tolist() == [0, 0]


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
def test_triton_graph_replay_after_compile_ahead(kernel):
    """Triton only: compile_ahead, then capture the launcher itself with the step counter advanced
    inside the graph; each replay draws the next step's noise."""
    x0, grads, energies = _inputs(_gen(), 2, 4, 1000, device="cuda")
    expr = leaf(0) & leaf(1)
    table = expr.program.on("cuda")
    step_size, noise = torch.tensor(0.1, device="cuda"), torch.tensor(0.2, device="cuda")
    seed, step = torch.tensor(42, device="cuda"), torch.zeros((), dtype=torch.int64, device="cuda")
    x, energy, flag = x0.clone(), torch.empty(4, device="cuda"), new_flag("cuda")
    args = dict(step_size=step_size, noise=noise, seed=seed, step=step, order=0, grad_clip=None, clamp=None,
                out=x, energy_out=energy, flag=flag)
    kernel.compile_ahead(x, grads, energies, table, **args)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernel.langevin_step_triton(x, grads, energies, table, **args)
        step.add_(1)
    want = x0.clone()
    for i in range(3):
        graph.replay()
        want, _ = ef.ops.langevin_step(want, grads, energies, expr, step_size=0.1, noise=0.2, seed=42, step=i,
                                       backend="torch")
        torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-5)
    assert step.item() == 3
