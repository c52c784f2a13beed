"""Concept inference against brute-force loops and closed-form argmins."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ebm_fast import infer


class Spot(torch.nn.Module):
    """A toy position EBM on 'images' that are observed 2-D points: E(x | c) = |x - c|^2 / 2 + 0.1 * sum(c)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x, c):
        return 0.5 * self.w * ((x.flatten(1)[:, :2] - c) ** 2).sum(1, keepdim=True) + 0.1 * c.sum(1, keepdim=True)


def _gen():
    return torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))


def test_grid_energies_equal_a_brute_force_loop_for_any_chunking():
    gen = _gen()
    model = Spot()
    images = torch.rand(5, 3, 4, generator=gen) * 2 - 1  # (B, *image_shape)
    cands = infer.position_grid(7)
    brute = torch.tensor([[model(images[i:i + 1], cands[j:j + 1]).item() for j in range(len(cands))]
                          for i in range(len(images))])
    for budget in (1, 1000, 2**30):  # one row per pass, a few, everything at once
        torch.testing.assert_close(infer.grid_energies(model, images, cands, budget_bytes=budget), brute)


@pytest.mark.parametrize("cond_type", ["continuous", "onehot"])
def test_grid_energies_of_a_resnet_share_its_condition_free_head(cond_type):
    """EnergyResNet takes the shared-head path (spectral norm, NHWC on the CPU): it equals model(x, c)
    pair by pair in float64, with views, for chunkings that split an image's candidates and that don't."""
    from ebm_fast.models import build_model

    gen = _gen()
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    model = build_model("tiny", cond_dim=2 if cond_type == "continuous" else 3, cond_type=cond_type)
    for film in (m for m in model.modules() if m.__class__.__name__ == "FiLM"):  # make the condition matter
        torch.nn.init.normal_(film.linear.weight, std=0.5)
    assert infer._shared_split(model) is not None
    images = torch.rand(3, 2, 3, 16, 16, generator=gen)  # (B, V, C, H, W)
    cands = infer.position_grid(3) if cond_type == "continuous" else torch.eye(3)
    m64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        brute = torch.tensor([[sum(m64(images[i, v:v + 1].double(), cands[j:j + 1].double()).item() for v in range(2))
                               for j in range(len(cands))] for i in range(3)], dtype=torch.float64)
    for budget in (1, 16 * 16 * 3 * 4 * 64 * 2, 2**30):  # one pair per pass, 2 pairs (splits an image), all
        got = infer.grid_energies(model.eval(), images, cands, views=True, budget_bytes=budget)
        torch.testing.assert_close(got.double(), brute, rtol=1e-4, atol=1e-5)


def test_grid_argmin_and_views_sum():
    gen = _gen()
    model = Spot()
    truth = torch.rand(4, 2, generator=gen) * 1.6 - 0.8
    views = truth[:, None, :] + 0.05 * torch.randn(4, 6, 2, generator=gen)  # (B, V, 2)
    cands = infer.position_grid(41)
    res = infer.infer_grid(model, views, cands, views=True)
    # closed form of argmin_c sum_v E, per axis: sum_v (c - x_v) + 0.1 V = 0, so c = mean - 0.1
    expect = views.mean(1) - 0.1
    assert (res.cond - expect).abs().max() <= 1.0 / 40 + 1e-6  # within half a grid cell per axis (+ rounding)
    torch.testing.assert_close(res.energy, res.energies.min(1).values)
    single = infer.infer_grid(model, views[:, 0], cands)
    assert single.energies.shape == (4, len(cands))


def test_refine_reaches_the_continuous_argmin_and_respects_bounds():
    gen = _gen()
    model = Spot()
    truth = torch.rand(6, 2, generator=gen) * 1.2 - 0.6
    start = infer.infer_grid(model, truth, infer.position_grid(5))
    res = infer.refine(model, truth, start.cond, lo=-1.0, hi=1.0, steps=200, step_size=0.1)
    torch.testing.assert_close(res.cond, truth - 0.1, rtol=0, atol=1e-3)
    assert (res.energy <= start.energy + 1e-6).all()
    # an argmin outside the box ends on the box
    far = torch.full((2, 2), 3.0)
    res = infer.refine(model, far, torch.zeros(2, 2), lo=-1.0, hi=1.0, steps=100, step_size=0.2)
    torch.testing.assert_close(res.cond, torch.ones(2, 2))
    assert model.w.requires_grad  # the caller's flags are restored


def test_langevin_refine_never_returns_worse_than_its_start():
    gen = _gen()
    model = Spot()
    x = torch.rand(8, 2, generator=gen) - 0.5
    init = torch.rand(8, 2, generator=gen) - 0.5
    e0 = infer.grid_energies(model, x, init).diagonal()
    res = infer.refine(model, x, init, lo=-1, hi=1, steps=30, step_size=0.05, noise=0.05, seed=3)
    assert (res.energy <= e0 + 1e-6).all()


def test_energy_map_layout_and_image(tmp_path):
    model = Spot()
    x = torch.tensor([[0.5, -0.25]])
    m = infer.energy_map(model, x, resolution=9)
    assert m.shape == (1, 9, 9)
    r, s = divmod(int(m[0].argmin()), 9)
    # rows are y, columns x: the minimum sits at (x, y) = (0.5 - 0.1, -0.25 - 0.1) rounded to the grid
    assert abs(-1 + s * 0.25 - 0.4) <= 0.125 and abs(-1 + r * 0.25 - (-0.35)) <= 0.125
    img = infer.energy_map_image(m[0], str(tmp_path / "map.png"))
    assert img.size == (36, 36) and (tmp_path / "map.png").exists()
    # both styles: white at the minimum (y drawn up: row r of the map is image row R-1-r), and the
    # contrast style black from the median energy up
    e = m[0].double()
    for style in ("density", "contrast"):
        pix = np.asarray(infer.energy_map_image(m[0], scale=1, style=style))
        assert pix[8 - r, s] == 255
        if style == "contrast":
            assert ((pix.astype(int)[::-1] == 0) == (e >= e.median()).numpy()).all()
        else:
            expect = torch.exp(-(e - e.min())).flip(0).mul(255).round().numpy()
            assert np.abs(pix.astype(float) - expect).max() <= 1
    with pytest.raises(ValueError, match="style"):
        infer.energy_map_image(m[0], style="log")


def test_bad_inputs():
    model = Spot()
    with pytest.raises(ValueError, match="candidates"):
        infer.grid_energies(model, torch.rand(2, 2), torch.empty(0, 2))
    with pytest.raises(TypeError, match="floating-point"):
        infer.grid_energies(model, torch.ones(2, 2, dtype=torch.long), torch.rand(3, 2))
    with pytest.raises(ValueError, match="views=True"):
        infer.grid_energies(model, torch.rand(2), torch.rand(3, 2), views=True)
    with pytest.raises(ValueError, match="init must have shape"):
        infer.refine(model, torch.rand(2, 2), torch.rand(3, 2), lo=-1, hi=1)


def _conditioned_tiny(gen):
    from ebm_fast.models import build_model

    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    model = build_model("tiny", cond_dim=2, cond_type="continuous").eval()
    for film in (m for m in model.modules() if m.__class__.__name__ == "FiLM"):  # make the condition matter
        torch.nn.init.normal_(film.linear.weight, std=0.5)
    return model


def test_compiled_grid_energies_equal_eager_with_padded_passes():
    """compile=True pads every pass to one size (whole images' grids, or fewer rows than one grid):
    the table equals the eager one, including the last, padded pass, and a second call reuses the code."""
    gen = _gen()
    model = _conditioned_tiny(gen)
    images = torch.rand(5, 3, 16, 16, generator=gen)
    cands = infer.position_grid(3)
    eager = infer.grid_energies(model, images, cands)
    pair_bytes = 16 * 16 * 3 * 4 * 64
    for budget in (4 * pair_bytes, 20 * pair_bytes):  # 4 pairs per pass (< one grid of 9); 2 whole grids
        for _ in range(2):
            got = infer.grid_energies(model, images, cands, budget_bytes=budget, compile=True)
            torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-5)
    assert set(infer._COMPILED_PASSES[model]) == {(4, None), (18, None)}
    # under bfloat16 autocast: its own compiled passes, within bfloat16's precision of the eager table
    got = infer.grid_energies(model, images, cands, budget_bytes=4 * pair_bytes, compile=True, autocast=torch.bfloat16)
    torch.testing.assert_close(got, eager, rtol=0, atol=0.03 * float(eager.abs().max()))
    assert (4, torch.bfloat16) in infer._COMPILED_PASSES[model]


def test_autocast_screen_is_rescored_in_float32():
    """autocast=bfloat16: the table is within bfloat16's precision of the float32 one (and not equal to
    it: the low precision was used); infer_grid re-scores the screen's lowest candidates in float32, so
    re-scoring all of them gives the float32 argmin and table, and re-scoring three returns one of the
    screen's three lowest with its float32 energy, the lowest of the three in float32."""
    gen = _gen()
    model = _conditioned_tiny(gen)
    images = torch.rand(6, 2, 3, 16, 16, generator=gen)  # (B, V, C, H, W)
    cands = infer.position_grid(4)
    exact = infer.infer_grid(model, images, cands, views=True)
    screen = infer.grid_energies(model, images, cands, views=True, autocast=torch.bfloat16)
    scale = float(exact.energies.abs().max())
    torch.testing.assert_close(screen, exact.energies, rtol=0, atol=0.03 * scale)
    assert not torch.equal(screen, exact.energies)
    full = infer.infer_grid(model, images, cands, views=True, autocast=torch.bfloat16, rescore=len(cands))
    torch.testing.assert_close(full.energies, exact.energies, rtol=1e-5, atol=1e-5 * scale)
    assert torch.equal(full.index, exact.index)
    torch.testing.assert_close(full.energy, exact.energy, rtol=1e-5, atol=1e-5 * scale)
    part = infer.infer_grid(model, images, cands, views=True, autocast=torch.bfloat16, rescore=3)
    top3 = screen.topk(3, dim=1, largest=False).indices
    assert all(int(part.index[b]) in top3[b].tolist() for b in range(len(images)))
    exact_top3 = exact.energies.gather(1, top3)
    torch.testing.assert_close(part.energy, exact_top3.min(1).values, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(part.energies.gather(1, top3), exact_top3, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(part.cond, cands[part.index])
    # energy_map takes the same options: under autocast it is the screen, laid out on the grid
    emap = infer.energy_map(model, images, resolution=4, views=True, autocast=torch.bfloat16)
    torch.testing.assert_close(emap.view(len(images), -1), screen, rtol=0, atol=0)
    # rescore=0: the screen's own argmin
    assert torch.equal(infer.infer_grid(model, images, cands, views=True, autocast=torch.bfloat16,
                                        rescore=0).index, screen.argmin(1))
    with pytest.raises(ValueError, match="autocast"):
        infer.grid_energies(model, images[:, 0], cands, autocast=torch.float64)
    with pytest.raises(ValueError, match="rescore"):
        infer.infer_grid(model, images[:, 0], cands, autocast=torch.bfloat16, rescore=-1)


def test_grid_energies_of_an_ensemble_share_every_members_head():
    """An EnergyEnsemble takes the shared-head path too and equals its weighted sum pair by pair."""
    from ebm_fast.models import EnergyEnsemble, build_model

    gen = _gen()
    members = []
    for _ in range(2):
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        m = build_model("tiny", cond_dim=2, cond_type="continuous")
        for film in (f for f in m.modules() if f.__class__.__name__ == "FiLM"):
            torch.nn.init.normal_(film.linear.weight, std=0.5)
        members.append(m.eval())
    w = (torch.rand(2, generator=gen) + 0.1).tolist()
    ens = EnergyEnsemble(members, w).eval()
    assert infer._shared_split(ens) is not None
    images, cands = torch.rand(3, 3, 16, 16, generator=gen), infer.position_grid(4)
    with torch.no_grad():
        brute = torch.stack([sum(wi * m(images, c.expand(3, 2)) for wi, m in zip(w, members)) for c in cands], dim=1)
    for budget in (1, 2**30):
        torch.testing.assert_close(infer.grid_energies(ens, images, cands, budget_bytes=budget), brute,
                                   rtol=1e-4, atol=1e-5)


def test_an_ensemble_with_a_member_without_a_shared_head_takes_the_plain_path():
    from ebm_fast.models import EnergyEnsemble

    gen = _gen()
    a, b = Spot(), Spot()
    with torch.no_grad():
        b.w.fill_(float(torch.rand((), generator=gen)) + 0.5)
    ens = EnergyEnsemble([a, b], [0.3, 0.7])
    assert not ens.shares_features and infer._shared_split(ens) is None
    images, cands = torch.rand(4, 3, 4, generator=gen) * 2 - 1, infer.position_grid(5)
    with torch.no_grad():
        brute = torch.tensor([[0.3 * a(images[i:i + 1], cands[j:j + 1]).item()
                               + 0.7 * b(images[i:i + 1], cands[j:j + 1]).item()
                               for j in range(len(cands))] for i in range(len(images))])
    torch.testing.assert_close(infer.grid_energies(ens, images, cands), brute)
