"""CUDA-graph capture of Langevin chains (GPU only: every test skips without CUDA).

What the CPU tests cannot show: the real ``torch.cuda.CUDAGraph`` capture of forward + input-gradient
backward + fused step, replays that draw fresh noise from the device-side step counter, the cache
across calls, and the eager fallback when an op cannot be captured.
"""

from __future__ import annotations

import secrets
import warnings

import pytest
import torch
from torch import nn

import ebm_fast as ef
from ebm_fast import graphs
from ebm_fast.rng import normal_noise

from test_sampler import CondConvEBM, onehot, released_loop

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEV = "cuda"


@pytest.fixture(autouse=True)
def fresh_cache():
    torch.manual_seed(secrets.randbits(62))
    graphs.clear_cache()
    yield
    graphs.clear_cache()


def conv_expr(model=None):
    model = model or CondConvEBM().to(DEV)
    a, b, c = (ef.Concept(model, onehot(i).to(DEV)) for i in range(3))
    return model, ef.Or(a & ~c, 2.0 * b, log_weights=[0.3, -0.2]) & ef.Not(c, alpha=0.1)


@pytest.mark.parametrize("steps", [20, 25, 60])
@pytest.mark.parametrize("backend", ["auto", "torch", "triton", "cuda"])
def test_graph_and_eager_give_the_same_samples(steps, backend):
    if backend not in ("auto", *ef.ops.available_backends(DEV)):
        pytest.skip(f"backend {backend} not available")
    _, expr = conv_expr()
    x0 = torch.rand(16, 3, 16, 16, device=DEV)
    kw = dict(steps=steps, step_size=0.02, noise=[0.02 / (1 + i) for i in range(steps)], seed=secrets.randbits(62),
              backend=backend)
    got, info = ef.sample(expr, x0, graph=True, return_info=True, **kw)
    assert info.graph == "captured", info.graph
    want = ef.sample(expr, x0, graph=False, **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_graph_matches_released_loop():
    _, expr = conv_expr()
    x0 = torch.rand(8, 3, 16, 16, device=DEV)
    kw = dict(steps=30, step_size=0.02, noise=0.01, seed=secrets.randbits(62))
    got = ef.sample(expr, x0, graph=True, **kw)
    torch.testing.assert_close(got, released_loop(expr, x0, **kw), rtol=1e-4, atol=1e-4)


def test_replays_draw_fresh_noise():
    """A flat energy: x_K = x_0 + sigma sum_k xi(seed, k) exactly (ULA, no clamp). Replays that reused
    their first noise would give sum = (K/S) * sum of S draws."""
    flat = ef.Concept(lambda x: 0.0 * x.sum(1))
    x0 = torch.randn(64, 33, device=DEV)
    steps, sigma, seed = 45, 0.1, secrets.randbits(62)
    got, info = ef.sample(flat, x0, steps=steps, step_size=0.1, noise=sigma, seed=seed, clamp=None, order="ula",
                          graph=True, return_info=True)
    assert info.graph == "captured"
    total = sum(normal_noise(seed, k, x0.numel(), device=DEV) for k in range(1, steps + 1)).view_as(x0)
    torch.testing.assert_close(got, x0 + sigma * total, rtol=1e-5, atol=1e-5)


def test_cache_hit_reuse_after_in_place_update_and_invalidation():
    model, expr = conv_expr()
    x0 = torch.rand(8, 3, 16, 16, device=DEV)
    kw = dict(steps=40, step_size=0.02, noise=0.01, seed=5)
    _, info = ef.sample(expr, x0, graph=True, return_info=True, **kw)
    assert info.graph == "captured" and graphs.cache_info()["captures"] == 1
    _, info = ef.sample(expr, x0, graph=True, return_info=True, **kw)
    assert info.graph == "replayed" and graphs.cache_info()["hits"] == 1
    # an optimizer step updates weights in place: same graph, new numbers
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x0, torch.zeros(8, 4, device=DEV)).sum().backward()
    opt.step()
    got, info = ef.sample(expr, x0, graph=True, return_info=True, **kw)
    assert info.graph == "replayed"
    torch.testing.assert_close(got, ef.sample(expr, x0, graph=False, **kw), rtol=1e-5, atol=1e-5)
    # re-allocated parameters: captured again
    model.c1.weight = nn.Parameter(model.c1.weight.detach().clone())
    _, info = ef.sample(expr, x0, graph=True, return_info=True, **kw)
    assert info.graph == "captured" and graphs.cache_info()["captures"] == 2


def test_unsupported_op_falls_back_to_eager_with_one_warning():
    def syncing(x):  # .item() synchronises: not capturable
        return x.square().sum(1) * (1.0 + 0.0 * float(x.abs().max().item()))

    expr = ef.Concept(syncing)
    x0 = torch.rand(4, 8, device=DEV)
    kw = dict(steps=10, step_size=0.1, noise=0.1, seed=3, clamp=None)
    with pytest.warns(RuntimeWarning, match="capture of the Langevin chain failed"):
        got, info = ef.sample(expr, x0, graph=True, return_info=True, **kw)
    assert "failed" in info.graph
    torch.rand(3, device=DEV)  # the failed capture left torch's CUDA generator usable
    torch.testing.assert_close(got, ef.sample(expr, x0, graph=False, **kw), rtol=1e-6, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ef.sample(expr, x0, graph=True, **kw)


def test_graph_auto_is_the_default_on_cuda_and_memory_is_flat():
    _, expr = conv_expr()
    x0 = torch.rand(8, 3, 16, 16, device=DEV)
    _, info = ef.sample(expr, x0, steps=20, step_size=0.02, noise=0.01, return_info=True)
    assert info.graph == "captured"
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    ef.sample(expr, x0, steps=200, step_size=0.02, noise=0.01)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < 4 * x0.numel() * 4  # the result and its temporaries


def test_autocast_bf16_in_a_graph_keeps_fp32_state():
    _, expr = conv_expr()
    x0 = torch.rand(8, 3, 16, 16, device=DEV)
    kw = dict(steps=20, step_size=0.02, noise=0.01, seed=9)
    got, info = ef.sample(expr, x0, autocast=torch.bfloat16, graph=True, return_info=True, **kw)
    assert got.dtype == torch.float32 and info.graph == "captured"
    torch.testing.assert_close(got, ef.sample(expr, x0, graph=False, **kw), rtol=0, atol=2e-2)


def test_nonfinite_in_a_graph_raises_with_the_chunk():
    class NaNEnergy(nn.Module):
        def forward(self, x):  # log of a negative number: NaN energies, finite gradients
            return 0.5 * x.square().sum(1) + torch.log(x[:, 0] - 10.0) * 0

    expr = ef.Concept(NaNEnergy(), name="nan-leaf")
    with pytest.raises(FloatingPointError, match=r"nan-leaf \(leaf 0\) during steps 1-20 of 40"):
        ef.sample(expr, torch.rand(4, 3, device=DEV), steps=40, step_size=0.1, noise=0.1, clamp=None, graph=True)


def test_replay_buffer_draws_without_host_sync():
    buf = ef.ReplayBuffer(256, (3, 8, 8), dtype=torch.uint8, device=DEV, label_shape=(4,))
    buf.add(torch.rand(100, 3, 8, 8, device=DEV), torch.rand(100, 4, device=DEV))
    labels = torch.rand(64, 4, device=DEV)
    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings():  # torch warns that the debug mode is a prototype
            warnings.filterwarnings("ignore", "Synchronization debug mode", UserWarning)
            torch.cuda.set_sync_debug_mode("error")
        out = buf.sample(64, p=0.95, labels=labels)
        buf.write(out.index, out.x)
        buf.add(out.x, out.labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")  # every later test would fail on its first sync
    assert out.x.shape == (64, 3, 8, 8) and out.x.device.type == "cuda"
