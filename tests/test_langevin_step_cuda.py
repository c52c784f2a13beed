"""The CUDA C++ kernel (``csrc/langevin_step_cuda.cu``) -- and Triton on a GPU -- against the torch backend.

GPU only: every test skips without a CUDA device. What these cover beyond the CPU oracle tests of
``test_langevin_step.py``: random programs in all three state dtypes on the device, the launch
geometries of the CUDA kernel (one sample per block for images, many samples per block for small D,
D % 4 != 0 where a thread needs two Philox calls, unaligned and strided rows that take the scalar
path), device-scalar schedule entries and RNG state, in-place updates, flag bits up to leaf 31,
another stream and another device, and CUDA-graph replay drawing fresh noise each step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebm_fast as ef
from ebm_fast.ops import new_flag
from ebm_fast.rng import normal_noise, seed_to_int64

from support import TOL, backend_or_skip, expressions, leaf

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GPU_BACKENDS = ["cuda", "triton"]


def _gen(seed: int | None = None) -> torch.Generator:
    seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
    return torch.Generator(device="cuda").manual_seed(seed)


def _inputs(gen, n, b, d, dtype=torch.float32):
    x = torch.rand(b, d, generator=gen, device="cuda").to(dtype)
    grads = (torch.randn(n, b, d, generator=gen, device="cuda") * 3).to(dtype)
    energies = torch.randn(n, b, generator=gen, device="cuda") * 2
    return x, grads, energies


def _step(backend, expr, x, grads, energies, *, out=None, **kw):
    flag = new_flag(x.device)
    x_new, energy = ef.ops.langevin_step(x, grads, energies, expr, backend=backend, flag=flag, out=out, **kw)
    return x_new, energy, flag


def _assert_same(got, ref, dtype):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got[0].double(), ref[0].double(), rtol=rtol, atol=atol, equal_nan=True)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-5, equal_nan=True)
    assert got[2].tolist() == ref[2].tolist()


def _compare(backend, expr, x, grads, energies, *, in_place=False, **kw):
    ref = _step("torch", expr, x, grads, energies, **kw)
    xb = x.clone()
    got = _step(backend, expr, xb, grads, energies, out=xb if in_place else None, **kw)
    if in_place:
        assert got[0] is xb
    _assert_same(got, ref, x.dtype)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_matches_torch_backend_on_random_programs(backend):
    backend_or_skip(backend, "cuda")

    @settings(max_examples=80, deadline=None)
    @given(expr=expressions(max_leaves=8), b=st.integers(1, 40),
           d=st.sampled_from([1, 2, 3, 4, 5, 7, 31, 64, 255, 1024, 1025, 3 * 32 * 32, 4099]),
           order=st.sampled_from(["ula", "noise_first"]), clip=st.sampled_from([None, 0.7]),
           clamp=st.sampled_from([None, (0.0, 1.0), (-0.5, 0.8)]), dtype=st.sampled_from(DTYPES),
           device_scalars=st.booleans(), in_place=st.booleans(), seed=st.integers(0, 2**64 - 1),
           step=st.integers(0, 2**40), noise=st.sampled_from([0.0, 0.005, 1.0]))
    def run(expr, b, d, order, clip, clamp, dtype, device_scalars, in_place, seed, step, noise):
        x, grads, energies = _inputs(_gen(seed % 2**31), len(expr.leaves()), b, d, dtype)
        kw = dict(step_size=0.05, noise=noise, seed=seed, step=step, order=order, grad_clip=clip, clamp=clamp)
        if device_scalars:
            kw.update(step_size=torch.tensor(0.05, device="cuda"), noise=torch.tensor(noise, device="cuda"),
                      seed=torch.tensor(seed_to_int64(seed), device="cuda"),
                      step=torch.tensor(step, device="cuda"))
        _compare(backend, expr, x, grads, energies, in_place=in_place, **kw)

    run()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_large_programs_up_to_32_leaves(backend):
    backend_or_skip(backend, "cuda")

    @settings(max_examples=20, deadline=None)
    @given(expr=expressions(max_leaves=32, max_depth=6), b=st.integers(1, 6), d=st.sampled_from([3, 300]))
    def run(expr, b, d):
        x, grads, energies = _inputs(_gen(), len(expr.leaves()), b, d)
        _compare(backend, expr, x, grads, energies, step_size=0.1, noise=0.3, seed=3, step=5)

    run()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_images_strided_and_unaligned_rows(backend, dtype):
    backend_or_skip(backend, "cuda")
    gen = _gen()
    expr = leaf(0) & (leaf(1) | leaf(2))
    kw = dict(step_size=0.01, noise=0.005, seed=123, step=7, clamp=(0.0, 1.0), order="noise_first")
    # contiguous images [B, 3, 64, 64]: one sample per block, vector loads
    x = torch.rand(5, 3, 64, 64, generator=gen, device="cuda").to(dtype)
    grads = torch.randn(3, 5, 3, 64, 64, generator=gen, device="cuda").to(dtype)
    energies = torch.randn(3, 5, generator=gen, device="cuda")
    _compare(backend, expr, x, grads, energies, **kw)
    # rows strided by D + 7 and starting one element in: not vector-aligned (scalar loads and stores);
    # the update is written in place into that strided view
    big = torch.rand(5, 3 * 64 * 64 + 7, generator=gen, device="cuda").to(dtype)
    x = big[:, 1:1 + 3 * 64 * 64]
    grads = torch.randn(3, 5, 3 * 64 * 64 + 2, generator=gen, device="cuda").to(dtype)[..., 2:]
    ref = _step("torch", expr, x, grads, energies, **kw)
    untouched = big[:, 1 + 3 * 64 * 64:].clone()
    got = _step(backend, expr, x, grads, energies, out=x, **kw)
    assert got[0] is x
    _assert_same((big[:, 1:1 + 3 * 64 * 64], got[1], got[2]), ref, dtype)
    assert torch.equal(big[:, 1 + 3 * 64 * 64:], untouched)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("d", [1, 2, 3, 6])
def test_many_samples_of_small_dimension(backend, d):
    backend_or_skip(backend, "cuda")
    expr = ef.Or(leaf(0), leaf(1), temperature=0.5) & ~leaf(2)
    x, grads, energies = _inputs(_gen(), 3, 3001, d)
    _compare(backend, expr, x, grads, energies, step_size=0.1, noise=1.0, seed=9, step=2**33 + 5)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("d", [5, 8, 1027])
def test_noise_alone_is_the_reference_rng(backend, d):
    """x = 0, G = 0, step_size = 0, noise = 1: x' is xi(seed, step, j) itself, j = b * D + d."""
    backend_or_skip(backend, "cuda")
    b, seed, step = 7, 2**64 - 12345, 2**32 + 3
    x = torch.zeros(b, d, device="cuda")
    x_new, _, _ = _step(backend, leaf(0), x, torch.zeros(1, b, d, device="cuda"), torch.zeros(1, b, device="cuda"),
                        step_size=0.0, noise=1.0, seed=seed, step=step)
    ref = normal_noise(seed, step, b * d, device="cpu").view(b, d)
    torch.testing.assert_close(x_new.cpu(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_non_finite_values_set_the_flag_bits(backend):
    backend_or_skip(backend, "cuda")
    leaves = [leaf(i) for i in range(32)]
    expr = ef.And(*leaves)
    x, grads, energies = _inputs(_gen(), 32, 4, 37)
    energies[3, 1] = float("nan")
    energies[30, 0] = float("-inf")
    grads[31, 2, 36] = float("inf")
    grads[0, 0, 0] = float("nan")
    ref = _step("torch", expr, x, grads, energies, step_size=0.1, noise=0.1, seed=1, step=1)
    got = _step(backend, expr, x, grads, energies, step_size=0.1, noise=0.1, seed=1, step=1)
    assert got[2].tolist() == ref[2].tolist()
    assert got[2][0].item() == (1 | 1 << 3 | 1 << 30 | -(2**31)) and got[2][1].item() == 1
    # fp16 overflow of the stored state sets flag[1] without any bad input
    x = torch.full((2, 8), 60000.0, device="cuda", dtype=torch.float16)
    grads = torch.full((1, 2, 8), -1000.0, device="cuda", dtype=torch.float16)
    got = _step(backend, leaf(0), x, grads, torch.zeros(1, 2, device="cuda"), step_size=10.0, noise=0.0, seed=1,
                step=0)
    assert got[2].tolist() == [0, 1]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_empty_batch_launches_nothing(backend):
    backend_or_skip(backend, "cuda")
    x_new, energy = ef.ops.langevin_step(torch.rand(0, 4, device="cuda"), torch.randn(2, 0, 4, device="cuda"),
                                         torch.randn(2, 0, device="cuda"), leaf(0) & leaf(1), step_size=0.1,
                                         noise=0.1, seed=0, step=0, backend=backend)
    assert x_new.shape == (0, 4) and energy.shape == (0,)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_runs_on_the_current_stream(backend):
    backend_or_skip(backend, "cuda")
    expr = leaf(0) | leaf(1)
    x, grads, energies = _inputs(_gen(), 2, 16, 3000)
    kw = dict(step_size=0.1, noise=0.2, seed=4, step=1)
    ref = _step("torch", expr, x, grads, energies, **kw)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = _step(backend, expr, x, grads, energies, **kw)
    torch.cuda.current_stream().wait_stream(side)
    _assert_same(got, ref, torch.float32)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_tensors_on_a_device_other_than_the_current_one(backend):
    backend_or_skip(backend, "cuda")
    expr = leaf(0) & leaf(1)
    gen = torch.Generator(device="cuda:1").manual_seed(0)
    x = torch.rand(4, 100, generator=gen, device="cuda:1")
    grads = torch.randn(2, 4, 100, generator=gen, device="cuda:1")
    energies = torch.randn(2, 4, generator=gen, device="cuda:1")
    kw = dict(step_size=0.1, noise=0.2, seed=4, step=1)
    with torch.cuda.device(0):
        got = _step(backend, expr, x, grads, energies, **kw)
    ref = _step("torch", expr, x, grads, energies, **kw)
    _assert_same(got, ref, torch.float32)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_graph_replay_draws_fresh_noise_each_step(backend):
    """Capture one step with the RNG state and the schedule in device memory; advance them on the device
    between replays; every replay must equal the torch reference at that step."""
    backend_or_skip(backend, "cuda")
    gen = _gen()
    expr = leaf(0) & ~leaf(1)
    b, d = 8, 3 * 16 * 16
    x = torch.rand(b, d, generator=gen, device="cuda")
    grads = torch.randn(2, b, d, generator=gen, device="cuda")
    energies = torch.randn(2, b, generator=gen, device="cuda")
    seed = torch.tensor(2**40 + 17, device="cuda")
    step = torch.zeros((), dtype=torch.int64, device="cuda")
    step_size = torch.tensor(0.1, device="cuda")
    noise = torch.tensor(0.3, device="cuda")
    out = torch.empty_like(x)
    flag = new_flag("cuda")
    kw = dict(order="noise_first", clamp=(0.0, 1.0))

    def one_step():
        return ef.ops.langevin_step(x, grads, energies, expr, step_size=step_size, noise=noise, seed=seed,
                                    step=step, backend=backend, out=out, flag=flag, **kw)

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
        ref, e_ref, _ = _step("torch", expr, x, grads, energies, step_size=0.1 / (k + 1), noise=0.3 * 0.5**k,
                              seed=2**40 + 17, step=k, **kw)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(energy, e_ref, rtol=1e-5, atol=1e-5)
        seen.append(out.clone())
        step.add_(1)  # on the device, as a chain driver advances it
    assert all(not torch.equal(seen[i], seen[i + 1]) for i in range(3))
    assert flag.tolist() == [0, 0]
