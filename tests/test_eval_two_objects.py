"""Fig. 12 (ebm_fast.paper.eval_two_objects): the two-object scenes, the minima finder and the measures.

The measures are checked against a stand-in energy whose answer is known: ``SpotDensity`` reads bright
spots in channel 0 and gives ``E(x | c) = -log sum_p x_p k(c - loc(p))``, so a two-spot image's map is
exactly ``-log(exp(-E_A) + exp(-E_B))`` of its one-spot images' maps, with a minimum at each spot.
"""

import numpy as np
import pytest
import torch
from torch import nn

from ebm_fast.paper import eval_two_objects as eto
from ebm_fast.infer import position_grid

torch.set_num_threads(1)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng().integers(0, 2**31)))


def _wells(centres: torch.Tensor, depths: torch.Tensor, r: int, width: float = 0.15) -> torch.Tensor:
    """An (R, R) map with a Gaussian well per centre, laid out as energy_map lays them (row y, column x)."""
    grid = position_grid(r).double()
    d2 = torch.cdist(grid, centres.double()).square()
    return -(depths.double() * torch.exp(-d2 / (2 * width ** 2))).sum(1).view(r, r)


def _apart(gen, k: int, min_gap: float) -> torch.Tensor:
    while True:
        c = torch.rand(k, 2, generator=gen) * 1.6 - 0.8
        if k < 2 or torch.pdist(c).min() >= min_gap:
            return c


def _distinct_depths(gen, k: int, min_gap: float = 0.15) -> torch.Tensor:
    """Depths in [0.5, 2.5] at least ``min_gap`` apart: the grid samples a well up to half a spacing
    off its centre, which makes it up to ~3% shallower, so nearly equal depths have no defined order."""
    while True:
        d = torch.rand(k, generator=gen) * 2 + 0.5
        if k < 2 or torch.pdist(d[:, None]).min() >= min_gap:
            return d


def test_local_minima_returns_the_wells_deepest_first():
    gen = _gen()
    r = 41
    for _ in range(5):
        centres = _apart(gen, 3, 0.7)
        depths = _distinct_depths(gen, 3)
        emap = _wells(centres, depths, r)
        found = eto.local_minima(emap, 3)
        order = torch.argsort(depths, descending=True)
        # the nearest grid point to each centre (spacing 0.05); a well's minimum moves a little
        # where a neighbour's tail tilts it
        assert torch.allclose(found.double(), centres[order].double(), atol=0.06), (found, centres[order])
    # wells closer than the separation count once
    emap = _wells(torch.tensor([[0.0, 0.0], [0.2, 0.0]]), torch.tensor([1.0, 0.9]), r)
    assert eto.local_minima(emap, 2, min_separation=0.4).shape[0] == 1
    with pytest.raises(ValueError, match="square"):
        eto.local_minima(torch.rand(4, 5))
    with pytest.raises(ValueError, match="non-finite"):
        eto.local_minima(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))


def test_two_object_labels_place_two_separated_objects_and_each_alone():
    n = 40
    seed = int(np.random.default_rng().integers(0, 10**6))
    pair, first, second = eto.two_object_labels(n, seed=seed, min_separation=1.2)
    assert np.all(np.linalg.norm(first["pos"] - second["pos"], axis=1) >= 1.2 - 1e-6)
    assert pair["distractor_shape"].shape == (n, 1) and first["distractor_shape"].shape == (n, 0)
    for key in ("shape", "color", "size", "pos"):
        assert np.array_equal(pair[key], first[key])
        assert np.array_equal(pair[f"distractor_{key}"][:, 0], second[key])
    for key in ("light_dir", "light_intensity"):
        assert np.array_equal(first[key], second[key]) and np.array_equal(pair[key], first[key])
    assert set(np.unique(first["shape"])) == {2}  # boxes, the paper's cubes
    again = eto.two_object_labels(n, seed=seed, min_separation=1.2)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip((pair, first, second), again) for k in a)
    with pytest.raises(ValueError, match="min_separation"):
        eto.two_object_labels(3, min_separation=0.0)


def test_two_object_labels_draw_both_objects_from_the_size_range():
    from ebm_fast.paper.eval_inference import TRAIN_SIZE_RANGE

    seed = int(np.random.default_rng().integers(0, 10**6))
    lo, hi = 0.12, 0.16  # below the default range (0.18-0.24): none of its objects fits here
    _, first, second = eto.two_object_labels(60, seed=seed, size_range=(lo, hi))
    for labels in (first, second):
        assert np.all((labels["size"] >= lo - 1e-6) & (labels["size"] <= hi + 1e-6))
        assert np.ptp(labels["size"]) > 0.5 * (hi - lo)  # drawn across the range, not pinned to one end
    _, first, _ = eto.two_object_labels(60, seed=seed)
    assert np.all((first["size"] >= TRAIN_SIZE_RANGE[0] - 1e-6) & (first["size"] <= TRAIN_SIZE_RANGE[1] + 1e-6))


class SpotDensity(nn.Module):
    """``E(x | c) = -log sum_p x[0, p] exp(-|c - loc(p)|^2 / (2 s^2))`` over an image's pixels (no underflow in
    float64 on [-1, 1]^2 for s = 0.25)."""

    def __init__(self, resolution: int, s: float = 0.25):
        super().__init__()
        r = resolution
        xs = (torch.arange(r) + 0.5) * (2.0 / r) - 1.0
        ys = 1.0 - (torch.arange(r) + 0.5) * (2.0 / r)  # row 0 is the top (y = 1)
        self.register_buffer("loc", torch.stack([xs.view(1, r).expand(r, r), ys.view(r, 1).expand(r, r)], -1).reshape(-1, 2))
        self.s = s

    def forward(self, x, cond):
        k = torch.exp(-torch.cdist(cond.double(), self.loc.double()).square() / (2 * self.s ** 2))
        return -torch.log((x[:, 0].flatten(1).double() * k).sum(1)).float()


def _spot_images(pa: torch.Tensor, pb: torch.Tensor, r: int) -> torch.Tensor:
    """(n, 3, 3, R, R): per scene the two-spot image, spot A alone, spot B alone."""
    n = pa.shape[0]
    x = torch.zeros(n, 3, 3, r, r)
    for k in range(n):
        for slot, spots in ((0, (pa[k], pb[k])), (1, (pa[k],)), (2, (pb[k],))):
            for p in spots:
                col = int(((p[0] + 1) / 2 * r).clamp(0, r - 1))
                row = int(((1 - p[1]) / 2 * r).clamp(0, r - 1))
                x[k, slot, 0, row, col] = 1.0
    return x


def _spot_scenes(gen, n: int, r: int, grid: int):
    """``n`` random spot scenes (objects >= 1.0 apart) and their measures under SpotDensity."""
    pa, pb = torch.empty(n, 2), torch.empty(n, 2)
    for k in range(n):
        pa[k], pb[k] = _apart(gen, 2, 1.0)
    images = _spot_images(pa, pb, r)
    return pa, pb, images, eto.evaluate_two_objects(SpotDensity(r), images, pa, pb, grid=grid)


def test_measures_on_a_known_energy():
    gen = _gen()
    n, r, grid = 6, 32, 21
    pa, pb, images, out = _spot_scenes(gen, n, r, grid)
    assert out["maps"].shape == (n, 3, grid, grid)
    assert out["both_found"] == 1.0 and out["one_found"] == 1.0 and out["single_found"] == 1.0
    assert out["corr_lse"] == pytest.approx(1.0, abs=1e-5)  # the two-spot map is exactly that
    assert out["corr_sum"] < 0.999 and out["corr_single"] < out["corr_lse"]
    # a second object's label at a place with no spot (>= 0.8 from both) is never found
    wrong = torch.empty(n, 2)
    for k in range(n):
        while True:
            wrong[k] = torch.rand(2, generator=gen) * 2 - 1
            if min(float((wrong[k] - pa[k]).norm()), float((wrong[k] - pb[k]).norm())) >= 0.8:
                break
    out_wrong = eto.evaluate_two_objects(SpotDensity(r), images, pa, wrong, grid=grid)
    assert out_wrong["both_found"] == 0.0 and out_wrong["single_found"] == 0.5
    with pytest.raises(ValueError, match="pair, first, second"):
        eto.evaluate_two_objects(SpotDensity(r), images[:, :2], pa, pb)


def test_figure_and_report(tmp_path):
    n, r, grid = 3, 32, 11
    pa, pb, images, out = _spot_scenes(_gen(), n, r, grid)
    img = eto.two_object_figure(tmp_path / "f.png", images, out["maps"], pa, pb, rows=2, scale=3)
    assert (tmp_path / "f.png").is_file() and img.size == (7 * r * 3, 14 + 2 * r * 3)
    text = "\n".join(eto.summary_markdown(out, "f.png"))
    assert "Fig. 12" in text and f"{out['corr_sum']:.3f}" in text and "](f.png)" in text
