"""Grid inference as one batched pass against the per-candidate loop (issue: concept inference).

Run: ``pytest benchmarks/bench_infer.py --benchmark-only``. The baseline evaluates one candidate
condition at a time for all images (the obvious loop, what a user writes without ebm_fast);
ebm_fast evaluates every (image, candidate) pair in chunked batched passes, runs the model's
condition-free head once per image, computes spectral-norm weights once, and feeds the CPU NHWC
inputs; ``compile=True`` also runs the per-pair part under ``torch.compile`` (compiled once, outside
the timing). Workloads: the paper's inference, one scene (or a few) against an 8 x 8 grid of positions.
The ratio is ``extra_info['speedup_vs_loop']``; both sides are timed round-robin in one process.
"""

from __future__ import annotations

import pytest
import torch

from ebm_fast import infer
from ebm_fast.compose import leaf_energy_from_output
from ebm_fast.models import build_model
from timing import timed


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def per_candidate_loop(model, images, candidates):
    """The baseline: for each candidate, one forward of all images with that condition."""
    out = torch.empty(images.shape[0], candidates.shape[0], device=images.device)
    with torch.no_grad():
        for j in range(candidates.shape[0]):
            c = candidates[j].expand(images.shape[0], -1)
            out[:, j] = leaf_energy_from_output(model(images, c), images.shape[0])
    return out


@pytest.mark.benchmark(group="infer-grid")
@pytest.mark.parametrize("images,grid", [(1, 8), (4, 8), (16, 8)])
def test_grid_inference_batched_vs_loop(benchmark, machine, images, grid):
    torch.manual_seed(0)
    model = build_model("small32", cond_dim=2, cond_type="continuous").to(DEVICE).eval()
    x = torch.rand(images, 3, 32, 32, device=DEVICE)
    cands = infer.position_grid(grid).to(DEVICE)
    ref = per_candidate_loop(model, x, cands)
    torch.testing.assert_close(infer.grid_energies(model, x, cands), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(infer.grid_energies(model, x, cands, compile=True), ref, rtol=1e-4, atol=1e-4)
    times = timed({"loop": lambda: per_candidate_loop(model, x, cands),
                   "batched": lambda: infer.grid_energies(model, x, cands),
                   "batched_compiled": lambda: infer.grid_energies(model, x, cands, compile=True)}, rounds=5)
    benchmark.pedantic(infer.grid_energies, args=(model, x, cands), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(machine(DEVICE))
    benchmark.extra_info.update({"model": "small32", "images": images, "candidates": grid * grid,
                                 "loop_s": times["loop"], "batched_s": times["batched"],
                                 "batched_compiled_s": times["batched_compiled"],
                                 "speedup_vs_loop": times["loop"] / times["batched"],
                                 "speedup_compiled_vs_loop": times["loop"] / times["batched_compiled"]})
