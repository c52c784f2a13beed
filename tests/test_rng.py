"""docs/contract.md §4 noise: the torch reference against Triton's own Philox, every backend alike, and N(0, 1)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

import ebm_fast as ef
from ebm_fast.rng import normal_noise, philox4x32

from support import backend_or_skip, leaf


def _fresh_seed() -> int:
    return int(np.random.default_rng().integers(0, 2**63 - 1))


def test_philox_matches_the_published_known_answer():
    # Random123's kat_vectors for philox4x32_10: counter = key = 0 and counter = key = all ones.
    zeros = [torch.zeros(1, dtype=torch.int64) for _ in range(4)]
    out = [int(t) for t in philox4x32(0, *zeros)]
    assert out == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = [torch.full((1,), 0xFFFFFFFF, dtype=torch.int64) for _ in range(4)]
    out = [int(t) for t in philox4x32(2**64 - 1, *ones)]
    assert out == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


def test_torch_reference_matches_triton_random_functions():
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def noise_kernel(out, seed, step_lo, step_hi, n, BLOCK: tl.constexpr):
        j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        q = j // 4
        r = j % 4
        zero = (q * 0).to(tl.uint32)
        r0, r1, r2, r3 = tl.philox(seed, q.to(tl.uint32), zero, zero + step_lo, zero + step_hi)
        n0, n1 = tl.random.pair_uniform_to_normal(tl.random.uint_to_uniform_float(r0),
                                                  tl.random.uint_to_uniform_float(r1))
        n2, n3 = tl.random.pair_uniform_to_normal(tl.random.uint_to_uniform_float(r2),
                                                  tl.random.uint_to_uniform_float(r3))
        v = tl.where(r == 0, n0, tl.where(r == 1, n1, tl.where(r == 2, n2, n3)))
        tl.store(out + j, v, mask=j < n)

    n = 1000
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter (conftest) runs it on the CPU
    for seed, step in [(_fresh_seed(), 7), (_fresh_seed() + 2**63, 2**33 + 5)]:
        out = torch.empty(n, device=device)
        noise_kernel[(triton.cdiv(n, 256),)](out, seed, step & 0xFFFFFFFF, step >> 32, n, BLOCK=256)
        torch.testing.assert_close(normal_noise(seed, step, n), out.cpu(), rtol=1e-5, atol=1e-5)


def test_noise_depends_only_on_seed_step_and_index():
    seed = _fresh_seed()
    full = normal_noise(seed, 3, 4099)
    # any window gives the same values as the full draw: no dependence on how work is split
    for offset, count in [(0, 1), (1, 6), (5, 4000), (4098, 1)]:
        torch.testing.assert_close(normal_noise(seed, 3, count, offset=offset), full[offset:offset + count],
                                   rtol=0, atol=0)
    assert not torch.equal(normal_noise(seed + 1, 3, 64), full[:64])
    assert not torch.equal(normal_noise(seed, 4, 64), full[:64])
    # device-scalar seed/step give the same values as Python ints
    torch.testing.assert_close(normal_noise(torch.tensor(seed), torch.tensor(3), 64), full[:64], rtol=0, atol=0)


def test_noise_is_standard_normal_on_a_million_draws():
    n = 1 << 20
    xi = normal_noise(_fresh_seed(), int(np.random.default_rng().integers(0, 1000)), n).double().numpy()
    # 5-sigma bands on the moments: a false alarm has probability < 1e-6 per moment.
    assert abs(xi.mean()) < 5 / math.sqrt(n)
    assert abs(xi.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(xi)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(xi)) < 5 * math.sqrt(24 / n)
    # Kolmogorov-Smirnov: rejects at level 1e-4; at n = 2**20 it detects a CDF error of ~0.002.
    assert stats.kstest(xi, "norm").pvalue > 1e-4


def _noise_through_step(backend: str, seed: int, step: int, b: int, d: int) -> torch.Tensor:
    """xi recovered from one fused step with step_size 0: x' - x = sigma * xi."""
    e = leaf(0) & leaf(1)
    x = torch.rand(b, d)
    grads = torch.randn(2, b, d)
    energies = torch.randn(2, b)
    x_new, _ = ef.ops.langevin_step(x, grads, energies, e, step_size=0.0, noise=1.0, seed=seed, step=step,
                                    backend=backend)
    return x_new - x


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_every_backend_draws_the_reference_noise(backend):
    backend_or_skip(backend)
    seed, b, d = _fresh_seed(), 3, 37
    for step in (0, 5, 2**32 + 1):
        ref = normal_noise(seed, step, b * d).view(b, d)
        torch.testing.assert_close(_noise_through_step(backend, seed, step, b, d), ref, rtol=1e-5, atol=1e-5)


def test_cpu_backend_noise_does_not_depend_on_thread_count():
    backend_or_skip("cpu")
    seed = _fresh_seed()
    code = (
        "import torch, ebm_fast as ef, sys; sys.path.insert(0, 'tests'); from support import leaf;"
        "torch.manual_seed(0); x = torch.rand(5, 3001); g = torch.randn(1, 5, 3001);"
        f"y, _ = ef.ops.langevin_step(x, g, torch.randn(1, 5), leaf(0), step_size=0.1, noise=1.0, seed={seed},"
        " step=2, backend='cpu'); sys.stdout.write(repr(y.sum().item()) + ' ' + repr(y.pow(2).sum().item()))"
    )
    outs = set()
    for threads in ("1", "2", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True, cwd=os.path.dirname(os.path.dirname(__file__))).stdout)
    assert len(outs) == 1, outs


def test_a_seed_is_an_int_in_0_to_2_64_everywhere():
    """One rule for a seed (ebm_fast.ops.check_seed): -1 is refused by the fused step, the chains and the
    reference noise instead of silently naming the key 2**64 - 1; 2**64 - 1 itself is a valid key."""
    message = r"^seed must be in \[0, 2\*\*64\) \(64 bits\), got -1$"
    x = torch.rand(3, 4)
    expr = leaf(0)
    with pytest.raises(ValueError, match=message):
        ef.ops.langevin_step(x, torch.randn(1, 3, 4), torch.randn(1, 3), expr, step_size=0.1, noise=0.1, seed=-1,
                             step=0)
    with pytest.raises(ValueError, match=message):
        ef.sample(ef.Concept(lambda t: (t**2).sum(1)), x, steps=1, step_size=0.1, noise=0.1, seed=-1)
    with pytest.raises(ValueError, match=message):
        normal_noise(-1, 0, 8)
    top = 2**64 - 1
    x_new, _ = ef.ops.langevin_step(torch.zeros(1, 8), torch.zeros(1, 1, 8), torch.zeros(1, 1), expr, step_size=0.0,
                                    noise=1.0, seed=top, step=3, backend="torch")
    torch.testing.assert_close(x_new[0], normal_noise(top, 3, 8), rtol=0, atol=0)
    # as an int64 tensor (how chains keep the seed on the device) the same key reads -1
    x_t, _ = ef.ops.langevin_step(torch.zeros(1, 8), torch.zeros(1, 1, 8), torch.zeros(1, 1), expr, step_size=0.0,
                                  noise=1.0, seed=torch.tensor(-1), step=3, backend="torch")
    torch.testing.assert_close(x_t, x_new, rtol=0, atol=0)
