"""Grid inference as one batched pass against the per-candidate loop (issue: concept inference).

Run: ``pytest benchmarks/bench_infer.py --benchmark-only``. The baseline evaluates one candidate
condition at a time for all images (the obvious loop); ebm_fast evaluates every (image, candidate)
pair in chunked batched passes. The ratio is recorded in ``extra_info['speedup_vs_loop']``.
"""

from __future__ import annotations

import time

import pytest
import torch

from ebm_fast import infer
from ebm_fast.compose import leaf_energy_from_output
from ebm_fast.models import build_model


def per_candidate_loop(model, images, candidates):
    """The baseline: for each candidate, one forward of all images with that condition."""
    out = torch.empty(images.shape[0], candidates.shape[0])
    with torch.no_grad():
        for j in range(candidates.shape[0]):
            c = candidates[j].expand(images.shape[0], -1)
            out[:, j] = leaf_energy_from_output(model(images, c), images.shape[0])
    return out


def _median_time(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@pytest.mark.benchmark(group="infer-grid")
@pytest.mark.parametrize("images,grid", [(1, 8), (4, 8), (16, 8)])
def test_grid_inference_batched_vs_loop(benchmark, machine, images, grid):
    torch.manual_seed(0)
    model = build_model("small32", cond_dim=2, cond_type="continuous").eval()
    x = torch.rand(images, 3, 32, 32)
    cands = infer.position_grid(grid)
    ref = per_candidate_loop(model, x, cands)
    torch.testing.assert_close(infer.grid_energies(model, x, cands), ref, rtol=1e-4, atol=1e-4)
    loop_s = _median_time(lambda: per_candidate_loop(model, x, cands))
    benchmark.pedantic(infer.grid_energies, args=(model, x, cands), rounds=3, iterations=1, warmup_rounds=1)
    batched_s = benchmark.stats.stats.median
    benchmark.extra_info.update(machine("cpu"))
    benchmark.extra_info.update({"model": "small32", "images": images, "candidates": grid * grid,
                                 "loop_s": loop_s, "speedup_vs_loop": loop_s / batched_s})
