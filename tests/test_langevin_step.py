"""The fused Langevin step of every CPU-capable backend against the float64 oracle of SPEC §3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebm_fast as ef

from support import TOL, backend_or_skip, expressions, leaf, oracle_step

# Triton runs through its interpreter here (~30 ms a program): fewer, smaller cases.
CASES = {"torch": (40, 6, 70), "cpu": (60, 6, 300), "triton": (12, 3, 40)}  # examples, max B, max D


def _inputs(gen, n, b, d, dtype, energy_scale=2.0):
    x = torch.rand(b, d, generator=gen).to(dtype)
    grads = (torch.randn(n, b, d, generator=gen) * 3).to(dtype)
    energies = torch.randn(n, b, generator=gen) * energy_scale
    return x, grads, energies


def _check(backend, expr, x, grads, energies, **kw):
    x_new, energy = ef.ops.langevin_step(x, grads, energies, expr, backend=backend, **kw)
    ref, e_ref = oracle_step(x, grads, energies, expr, **kw)
    assert x_new.dtype == x.dtype and x_new.shape == x.shape
    rtol, atol = TOL[x.dtype]
    torch.testing.assert_close(x_new.double(), ref.to(x.dtype).double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(energy.double(), e_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_step_matches_oracle_on_random_trees(backend):
    backend_or_skip(backend)
    examples, max_b, max_d = CASES[backend]

    @settings(max_examples=examples, deadline=None, derandomize=False)
    @given(expr=expressions(max_leaves=8), b=st.integers(1, max_b), d=st.integers(1, max_d),
           order=st.sampled_from(["ula", "noise_first"]), clip=st.sampled_from([None, 0.7]),
           clamp=st.sampled_from([None, (0.0, 1.0), (-0.5, 0.8)]),
           dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
           seed=st.integers(0, 2**63 - 1), step=st.integers(0, 2**40))
    def run(expr, b, d, order, clip, clamp, dtype, seed, step):
        gen = torch.Generator().manual_seed(seed % 2**31)
        x, grads, energies = _inputs(gen, len(expr.leaves()), b, d, dtype)
        _check(backend, expr, x, grads, energies, step_size=0.05, noise=0.1, seed=seed, step=step, order=order,
               grad_clip=clip, clamp=clamp)

    run()


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("b,d", [(37, 2), (21, 5)])
def test_short_rows_across_program_lane_groups(backend, b, d):
    """More samples than one group of the C++ kernel's program lanes (16, the last one partial), and
    rows short enough to share a work item: stored back to back, and strided (rows of a wider tensor)."""
    backend_or_skip(backend)
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    expr = ef.Or(leaf(0) & ~leaf(1), leaf(2), temperature=0.5) | 0.5 * leaf(3)
    x, grads, energies = _inputs(gen, 4, b, d, torch.float32)
    kw = dict(step_size=0.05, noise=0.1, seed=int(torch.randint(0, 2**62, (1,), generator=gen)), step=3,
              order="ula", grad_clip=0.7, clamp=(0.0, 1.0))
    _check(backend, expr, x, grads, energies, **kw)
    wide = torch.rand(b, d + 3, generator=gen)
    _check(backend, expr, wide[:, 1:1 + d], grads, energies, **kw)


def test_cpu_program_evaluation_in_parallel():
    """Enough samples (B * M >= 2^17) for the C++ kernel to evaluate programs on several threads."""
    backend_or_skip("cpu")
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    expr = ef.Or(leaf(0) & ~leaf(1), leaf(2), temperature=0.5) | 0.5 * leaf(3)
    assert 40000 * expr.program.table.shape[0] >= 2**17
    x, grads, energies = _inputs(gen, 4, 40000, 1, torch.float32)
    _check("cpu", expr, x, grads, energies, step_size=0.05, noise=0.1, seed=5, step=1, order="noise_first")


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_released_code_temperature_and_alpha(backend):
    backend_or_skip(backend)
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    a, b, c = leaf(0), leaf(1), leaf(2)
    expr = ef.Or(a & ef.Not(b, alpha=0.001), c, temperature=0.01)
    # energies of order 0.1 keep -e/T within fp32's exact range for the 1e-5 comparison
    x, grads, energies = _inputs(gen, 3, 3, 17, torch.float32, energy_scale=0.05)
    _check(backend, expr, x, grads, energies, step_size=0.5, noise=0.005, seed=11, step=3, order="noise_first",
           clamp=(0.0, 1.0))


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_image_shaped_strided_inputs_and_in_place_update(backend):
    backend_or_skip(backend)
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    expr = leaf(0) & 0.5 * leaf(1)
    big = torch.rand(3, 2, 5, 9, generator=gen)
    x = big[:, :, :, 2:7]  # non-contiguous [B, C, H, W]
    grads = torch.randn(2, 3, 2, 5, 7, generator=gen)[..., 1:6]
    energies = torch.randn(2, 3, generator=gen)
    kw = dict(step_size=0.1, noise=0.2, seed=5, step=9, clamp=(0.1, 0.9))
    ref, _ = oracle_step(x, grads, energies, expr, **kw)
    x_new, _ = ef.ops.langevin_step(x, grads, energies, expr, backend=backend, **kw)
    torch.testing.assert_close(x_new.double(), ref, rtol=1e-5, atol=1e-5)
    # grads and energies as lists, output written in place into a strided view
    x_new2, _ = ef.ops.langevin_step(x, list(grads), list(energies), expr, backend=backend, out=x, **kw)
    assert x_new2 is x
    torch.testing.assert_close(big[:, :, :, 2:7].double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_float64_state_runs_in_fp32_and_keeps_its_dtype(backend):
    backend_or_skip(backend)
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    x, grads, energies = _inputs(gen, 2, 2, 11, torch.float64)
    _check(backend, leaf(0) | leaf(1), x, grads, energies, step_size=0.1, noise=0.3, seed=1, step=2)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_device_scalars_equal_python_numbers(backend):
    backend_or_skip(backend)
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    expr = leaf(0) & ~leaf(1)
    x, grads, energies = _inputs(gen, 2, 2, 13, torch.float32)
    a, _ = ef.ops.langevin_step(x, grads, energies, expr, step_size=0.1, noise=0.3, seed=77, step=4, backend=backend)
    b, _ = ef.ops.langevin_step(x, grads, energies, expr, step_size=torch.tensor(0.1), noise=torch.tensor([0.3]),
                                seed=torch.tensor(77), step=torch.tensor(4), backend=backend)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_non_finite_values_set_the_flag(backend):
    backend_or_skip(backend)
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    expr = leaf(0) & leaf(1) & leaf(2)
    x, grads, energies = _inputs(gen, 3, 3, 8, torch.float32)
    flag = ef.ops.new_flag("cpu")
    ef.ops.langevin_step(x, grads, energies, expr, step_size=0.1, noise=0.1, seed=1, step=1, backend=backend,
                         flag=flag)
    assert flag.tolist() == [0, 0]
    energies[2, 1] = float("nan")
    grads[0, 2, 5] = float("inf")
    ef.ops.langevin_step(x, grads, energies, expr, step_size=0.1, noise=0.1, seed=1, step=1, backend=backend,
                         flag=flag)
    assert flag[0].item() == 0b101 and flag[1].item() == 1
    # a non-finite state alone sets flag[1] only
    flag.zero_()
    x2 = x.clone()
    x2[0, 0] = float("inf")
    _, grads, energies = _inputs(gen, 3, 3, 8, torch.float32)
    ef.ops.langevin_step(x2, grads, energies, expr, step_size=0.1, noise=0.1, seed=1, step=1, backend=backend,
                         flag=flag)
    assert flag.tolist() == [0, 1]


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_empty_batch(backend):
    backend_or_skip(backend)
    expr = leaf(0) & leaf(1)
    x_new, energy = ef.ops.langevin_step(torch.rand(0, 4), torch.randn(2, 0, 4), torch.randn(2, 0), expr,
                                         step_size=0.1, noise=0.1, seed=0, step=0, backend=backend)
    assert x_new.shape == (0, 4) and energy.shape == (0,)


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
    with pytest.raises(ValueError, match=r"step must be >= 0"):
        step(x, g, e, expr, step_size=0.1, noise=0.1, seed=0, step=-1)
    with pytest.raises(ValueError, match=r"step_size must be finite"):
        step(x, g, e, expr, step_size=float("nan"), noise=0.1, seed=0, step=0)
    with pytest.raises(ValueError, match=r"out must match x"):
        step(x, g, e, expr, out=torch.empty(3, 5), **kw)


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
