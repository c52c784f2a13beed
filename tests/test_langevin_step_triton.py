"""Triton-specific checks of the fused step (``kernels/langevin_step.py``) against the torch backend.

The oracle test over every backend is ``test_langevin_step.py``; this file covers what only the Triton
launcher has: block sizes, the two noise paths (``D % 4 == 0`` or not), device scalars read in the
kernel, strided rows, the per-leaf flag bits up to leaf 31, and no launch for an empty batch. The tests
run on the GPU when there is one; without, on the CPU under Triton's interpreter (tests/conftest.py
sets TRITON_INTERPRET=1), about 0.15 s a program, so grids stay tiny. The ``cuda`` tests (image-sized
batch, CUDA-graph replay) need a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import ebm_fast as ef
from ebm_fast.ops import ORDERS, new_flag
from ebm_fast.rng import normal_noise

from support import TOL, backend_or_skip, expressions, leaf

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernel():
    backend_or_skip("triton", DEVICE)
    from ebm_fast.kernels import langevin_step as k

    return k


def _gen():
    return torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))


def _inputs(gen, n, b, d, dtype=torch.float32):
    x = torch.rand(b, d, generator=gen).to(DEVICE, dtype)
    grads = (torch.randn(n, b, d, generator=gen) * 3).to(DEVICE, dtype)
    energies = (torch.randn(n, b, generator=gen) * 2).to(DEVICE)
    return x, grads, energies


def _tensor(v):
    return torch.tensor(v, device=DEVICE)


def _both(expr, x, grads, energies, **kw):
    """``(x_new, energy, flag)`` from the triton and the torch backend on the same inputs."""
    out = []
    for backend in ("triton", "torch"):
        flag = new_flag(x.device)
        x_new, energy = ef.ops.langevin_step(x, grads, energies, expr, backend=backend, flag=flag, **kw)
        out.append((x_new, energy, flag))
    return out


def _assert_same_step(tri, ref, dtype):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(tri[0].double(), ref[0].double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(tri[1], ref[1], rtol=1e-5, atol=1e-5)
    assert tri[2].tolist() == ref[2].tolist()


def _launch(k, expr, x, grads, energies, *, out=None, order="ula", grad_clip=None, clamp=None, **kw):
    """Call the launcher directly (block-size overrides); returns ``(out, energy, flag)``."""
    out = torch.empty_like(x) if out is None else out
    energy = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    flag = new_flag(x.device)
    k.langevin_step_triton(x, grads, energies, expr.program.on(x.device), order=ORDERS[order],
                           grad_clip=grad_clip, clamp=clamp, out=out, energy_out=energy, flag=flag, **kw)
    return out, energy, flag


# No shrinking: an example costs ~0.2 s under the interpreter and shrinking a failure took 5 minutes;
# the failing example is printed as drawn. On a GPU most examples compile a new variant (seconds).
@settings(max_examples=60 if DEVICE == "cpu" else 15, deadline=None,
          phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(expr=expressions(max_leaves=8), b=st.integers(1, 4), d=st.integers(1, 64),
       order=st.sampled_from(["ula", "noise_first"]), clip=st.sampled_from([None, 0.7]),
       clamp=st.sampled_from([None, (0.0, 1.0)]), dtype=st.sampled_from(DTYPES),
       on_device=st.booleans(), seed=st.integers(0, 2**64 - 1), step=st.integers(0, 2**40))
def test_matches_torch_backend_on_random_programs(kernel, expr, b, d, order, clip, clamp, dtype, on_device,
                                                  seed, step):
    gen = torch.Generator().manual_seed(seed % 2**31)
    x, grads, energies = _inputs(gen, len(expr.leaves()), b, d, dtype)
    if on_device:  # schedule entries held in (device) memory, read by the kernel
        scalars = dict(step_size=_tensor(0.05), noise=_tensor(0.1),
                       seed=_tensor(seed - 2**64 if seed >= 2**63 else seed), step=_tensor(step))
    else:
        scalars = dict(step_size=0.05, noise=0.1, seed=seed, step=step)
    tri, ref = _both(expr, x, grads, energies, order=order, grad_clip=clip, clamp=clamp, **scalars)
    _assert_same_step(tri, ref, dtype)


# d: the one-Philox-per-4-elements path (48) and the per-element one (37); seed and step: both 32-bit
# halves of key and counter in use, and ints just past the int32 range
@pytest.mark.parametrize("d, seed, step", [(48, 2**63 + 12345, 2**33 + 7), (37, 2**32 - 3, 2**31 + 5)])
def test_noise_is_xi_of_the_flat_index_whatever_the_blocks(kernel, d, seed, step):
    gen = _gen()
    expr = leaf(0) & leaf(1)
    x, grads, energies = _inputs(gen, 2, 3, d)
    kw = dict(step_size=0.0, noise=1.0, seed=seed, step=step)
    expected = normal_noise(seed, step, x.numel(), device=DEVICE).view_as(x)
    results = [_launch(kernel, expr, x, grads, energies, block_b=bb, block_d=bd, **kw)
               for bb, bd in ((1, 16), (4, 64), (2, 8))]
    for out, energy, _ in results:
        torch.testing.assert_close(out - x, expected, rtol=0, atol=2e-6)
        assert torch.equal(out, results[0][0]) and torch.equal(energy, results[0][1])


def test_block_sizes_do_not_change_the_step(kernel):
    gen = _gen()
    expr = ef.Or(leaf(0) & ef.Not(leaf(1), alpha=0.5), 2.0 * leaf(2), temperature=0.5, log_weights=[0.3, -0.2])
    x, grads, energies = _inputs(gen, 3, 3, 40)
    kw = dict(step_size=0.1, noise=0.2, seed=9, step=4, order="noise_first", grad_clip=1.5, clamp=(0.1, 0.9))
    a = _launch(kernel, expr, x, grads, energies, block_b=1, block_d=16, **kw)
    b = _launch(kernel, expr, x, grads, energies, block_b=4, block_d=64, **kw)
    assert torch.equal(a[2], b[2])
    if x.is_cuda:  # compiled tiles of another shape may contract other multiply-adds (FMA): rounding only
        torch.testing.assert_close(b[0], a[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b[1], a[1], rtol=1e-6, atol=1e-6)
    else:  # the interpreter evaluates the same NumPy operations whatever the blocks
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_device_scalars_are_read_in_the_kernel(kernel):
    gen = _gen()
    expr = leaf(0) & ~leaf(1)
    x, grads, energies = _inputs(gen, 2, 2, 12)
    numbers = dict(step_size=0.2, noise=0.3, seed=77, step=5)
    tensors = dict(step_size=_tensor(0.2), noise=_tensor(0.3), seed=_tensor(77), step=_tensor(5))
    want = _launch(kernel, expr, x, grads, energies, **numbers)
    for name in numbers:  # each scalar alone from memory, then all of them
        mixed = dict(numbers, **{name: tensors[name]})
        got = _launch(kernel, expr, x, grads, energies, **mixed)
        assert torch.equal(got[0], want[0]), name
    got = _launch(kernel, expr, x, grads, energies, **tensors)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # the value in memory, not the one seen at the first launch, is what counts
    tensors["step"].fill_(6)
    moved = _launch(kernel, expr, x, grads, energies, **tensors)
    assert torch.equal(moved[0], _launch(kernel, expr, x, grads, energies, **dict(numbers, step=6))[0])
    assert not torch.equal(moved[0], want[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_rows_and_in_place_update(kernel, dtype):
    gen = _gen()
    expr = ef.Or(leaf(0), leaf(1) & 0.5 * leaf(2), temperature=2.0)
    big_x = torch.rand(3, 50, generator=gen).to(DEVICE, dtype)
    x = big_x[:, 5:41]  # rows 50 apart
    grads = (torch.randn(4, 3, 2, 60, generator=gen) * 3).to(DEVICE, dtype)[1:, :, 1, 7:43]  # strided n, b
    energies = torch.randn(3, 3, generator=gen).to(DEVICE)
    kw = dict(step_size=0.1, noise=0.2, seed=3, step=8, order="ula", clamp=(0.0, 1.0))
    tri, ref = _both(expr, x, grads, energies, **kw)
    _assert_same_step(tri, ref, dtype)
    before = big_x.clone()
    x_new, _ = ef.ops.langevin_step(x, grads, energies, expr, backend="triton", out=x, **kw)
    assert x_new is x
    assert torch.equal(big_x[:, 5:41], tri[0])
    assert torch.equal(big_x[:, :5], before[:, :5]) and torch.equal(big_x[:, 41:], before[:, 41:])


def test_empty_batch_does_not_launch(kernel, monkeypatch):
    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError(f"launched a grid {grid} for an empty batch")

    monkeypatch.setattr(kernel, "_langevin_step_kernel", NoLaunch())
    x_new, energy = ef.ops.langevin_step(torch.rand(0, 8, device=DEVICE), torch.randn(2, 0, 8, device=DEVICE),
                                         torch.randn(2, 0, device=DEVICE),
                                         leaf(0) & leaf(1), step_size=0.1, noise=0.1, seed=0, step=0,
                                         backend="triton")
    assert x_new.shape == (0, 8) and energy.shape == (0,)


def test_python_zero_noise_skips_the_rng(kernel):
    gen = _gen()
    expr = leaf(0) & leaf(1)
    x, grads, energies = _inputs(gen, 2, 2, 20)
    for order in ORDERS:
        for noise in (0.0, _tensor(0.0)):
            tri, ref = _both(expr, x, grads, energies, step_size=0.1, noise=noise, seed=1, step=2, order=order)
            _assert_same_step(tri, ref, torch.float32)
            torch.testing.assert_close(tri[0], x - 0.1 * (grads[0] + grads[1]), rtol=1e-6, atol=1e-6)


def test_flag_bits_for_every_leaf_up_to_31(kernel):
    gen = _gen()
    n = 32
    expr = ef.And(*[leaf(i) for i in range(n)])
    x, grads, energies = _inputs(gen, n, 2, 8)
    energies[31, 1] = float("nan")
    energies[3, 0] = float("-inf")
    grads[17, 1, 5] = float("inf")
    grads[0, 0, 7] = float("nan")
    tri, ref = _both(expr, x, grads, energies, step_size=0.1, noise=0.1, seed=5, step=0)
    bits = (1 << 31) | (1 << 3) | (1 << 17) | 1
    assert tri[2].tolist() == [bits - 2**32, 1] == ref[2].tolist()
    # flags are OR-ed into what is there
    flag = torch.tensor([1 << 4, 0], dtype=torch.int32, device=DEVICE)
    x2, grads2, energies2 = _inputs(gen, n, 2, 8)
    grads2[9, 0, 0] = float("nan")
    ef.ops.langevin_step(x2, grads2, energies2, expr, step_size=0.1, noise=0.1, seed=5, step=0,
                         backend="triton", flag=flag)
    assert flag.tolist() == [(1 << 4) | (1 << 9), 1]


# the interpreter casts with numpy, which warns when a value overflows fp16 (the overflow is the point)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_flag_sees_the_stored_state_overflow(kernel):
    # finite fp32 arithmetic whose fp16 result overflows: only flag[1] is set
    expr = leaf(0)
    x = torch.full((2, 8), 65000.0, dtype=torch.float16, device=DEVICE)
    grads = torch.full((1, 2, 8), -1.0, dtype=torch.float16, device=DEVICE)
    grads[0, 1] = 1.0
    energies = torch.zeros(1, 2, device=DEVICE)
    tri, ref = _both(expr, x, grads, energies, step_size=2000.0, noise=0.0, seed=0, step=0)
    assert tri[2].tolist() == [0, 1] == ref[2].tolist()
    assert torch.isinf(tri[0][0]).all() and torch.isfinite(tri[0][1]).all()


def test_compile_ahead_reads_and_writes_nothing(kernel):
    gen = _gen()
    expr = leaf(0) & leaf(1)
    x, grads, energies = _inputs(gen, 2, 2, 16)
    out, energy, flag = torch.full_like(x, 7.0), torch.full((2,), 7.0, device=DEVICE), new_flag(DEVICE)
    kernel.compile_ahead(x, grads, energies, expr.program.on(DEVICE), step_size=0.1, noise=0.1, seed=1, step=1,
                         order=0, grad_clip=None, clamp=None, out=out, energy_out=energy, flag=flag)
    assert (out == 7.0).all() and (energy == 7.0).all() and flag.tolist() == [0, 0]


def test_launcher_rejects_more_leaves_than_flag_bits(kernel):
    # ebm_fast.program already refuses such expressions; the launcher checks its own invariant too
    x, grads, energies = _inputs(_gen(), 33, 1, 4)
    with pytest.raises(ValueError, match=r"1\.\.32 leaves and 1\.\.64 program nodes, got 33 leaves"):
        _launch(kernel, leaf(0) & leaf(1), x, grads, energies, step_size=0.1, noise=0.1, seed=0, step=0)


# ---- on a GPU only -------------------------------------------------------------------------------
def cuda(test):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_image_batch_matches_torch_backend(kernel, dtype):
    gen = torch.Generator(device="cuda").manual_seed(int(np.random.default_rng().integers(2**31)))
    n, b, d = 3, 128, 3 * 64 * 64
    expr = ef.Or(leaf(0) & ef.Not(leaf(1), alpha=0.001), leaf(2), temperature=0.5)
    x = torch.rand(b, d, generator=gen, device="cuda").to(dtype)
    grads = (torch.randn(n, b, d, generator=gen, device="cuda") * 3).to(dtype)
    energies = torch.randn(n, b, generator=gen, device="cuda")
    for order in ORDERS:
        tri, ref = _both(expr, x, grads, energies, step_size=0.01, noise=0.005, seed=123, step=77, order=order,
                         clamp=(0.0, 1.0), grad_clip=0.03)
        _assert_same_step(tri, ref, dtype)


@cuda
def test_cuda_graph_replay_draws_fresh_noise_from_device_scalars(kernel):
    gen = torch.Generator(device="cuda").manual_seed(int(np.random.default_rng().integers(2**31)))
    expr = leaf(0) & leaf(1)
    x0 = torch.rand(4, 1000, generator=gen, device="cuda")
    grads = torch.randn(2, 4, 1000, generator=gen, device="cuda")
    energies = torch.randn(2, 4, generator=gen, device="cuda")
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
