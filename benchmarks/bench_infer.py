"""Grid inference as one batched pass against the per-candidate loop (issue: concept inference).

Run: ``pytest benchmarks/bench_infer.py --benchmark-only``. The baseline evaluates one candidate
condition at a time for all images (the obvious loop, what a user writes without ebm_fast);
ebm_fast evaluates every (image, candidate) pair in chunked batched passes, runs the model's
condition-free head once per image, computes spectral-norm weights once, and feeds the CPU NHWC
inputs; ``compile=True`` also runs the per-pair part under ``torch.compile`` (compiled once, outside
the timing). Workloads: the paper's inference, one scene (or a few) against an 8 x 8 grid of positions.
The ratio is ``extra_info['speedup_vs_loop']``; both sides are timed round-robin in one process.

``test_grid_inference_autocast_vs_loop`` times the shipped position concept on rendered scenes:
the grid screened under bfloat16 autocast and its 4 lowest candidates re-scored in float32
(``infer_grid(..., autocast=torch.bfloat16)``), against the same float32 loop; it records how often
its argmin is the float32 table's. Low precision pays only where the hardware has bf16 units
(``extra_info['bf16_units']``: AMX or AVX-512 BF16 on the CPU).
"""

from __future__ import annotations

import pytest
import torch

from ebm_fast import infer
from ebm_fast.compose import leaf_energy_from_output
from ebm_fast.paper.concepts import concept_paths
from ebm_fast.paper import scenes
from ebm_fast.models import build_model, load_model
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


RESCORE = 4  # candidates per image re-scored in float32 after the bf16 screen (infer_grid's default)


def _scenes(n: int, resolution: int, seed: int) -> torch.Tensor:
    config = scenes.SceneConfig(n=n, resolution=resolution, seed=seed)
    images = scenes.render_scenes(scenes.sample_scene_params(config), resolution, renderer="numpy", workers=1,
                                  progress=False)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(DEVICE)


@pytest.mark.benchmark(group="infer-grid-autocast")
@pytest.mark.parametrize("images,grid", [(1, 8), (4, 8), (16, 8), (16, 24)])
def test_grid_inference_autocast_vs_loop(benchmark, machine, images, grid):
    model, _ = load_model(concept_paths(attributes=("position",))["position"])
    model = model.to(DEVICE).eval()
    x = _scenes(images, model.config["resolution"], seed=images)
    cands = infer.position_grid(grid).to(DEVICE)
    ref = per_candidate_loop(model, x, cands)
    bf16 = {"compile": True, "autocast": torch.bfloat16, "rescore": RESCORE}
    screened = infer.infer_grid(model, x, cands, **bf16)
    times = timed({"loop": lambda: per_candidate_loop(model, x, cands),
                   "batched_compiled": lambda: infer.grid_energies(model, x, cands, compile=True),
                   "bf16_compiled": lambda: infer.infer_grid(model, x, cands, **bf16)}, rounds=5)
    benchmark.pedantic(infer.infer_grid, args=(model, x, cands), kwargs=bf16, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(machine(DEVICE))
    benchmark.extra_info.update({"model": "shipped position concept", "images": images, "candidates": grid * grid,
                                 "loop_s": times["loop"], "batched_compiled_s": times["batched_compiled"],
                                 "bf16_compiled_s": times["bf16_compiled"],
                                 "speedup_compiled_vs_loop": times["loop"] / times["batched_compiled"],
                                 "speedup_bf16_compiled_vs_loop": times["loop"] / times["bf16_compiled"],
                                 "argmin_agreement": float((screened.index == ref.argmin(1)).float().mean()),
                                 "rescore": RESCORE})
