"""The conditional ResNet energies: shapes, per-sample energies, conditioning, spectral norm, reloading."""

from __future__ import annotations

import copy

import pytest
import torch

import ebm_fast as ef
from ebm_fast.models import (MODEL_CONFIGS, EnergyEnsemble, EnergyResNet, build_model, count_parameters,
                             load_model, model_from_config, save_model)


def _randomise_film(model: EnergyResNet, gen: torch.Generator) -> None:
    """FiLM layers start at the identity; give them weights so the condition matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "film" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.mark.parametrize("name", ["tiny", "small32", "scenes64"])
@pytest.mark.parametrize("cond", [("onehot", 3), ("continuous", 2), ("none", 0)])
def test_forward_shape_and_finite(name, cond):
    cond_type, cond_dim = cond
    torch.manual_seed(1)
    model = build_model(name, cond_dim, cond_type)
    r = MODEL_CONFIGS[name]["resolution"]
    x = torch.rand(3, 3, r, r)
    c = {"onehot": torch.tensor([0, 2, 1]), "continuous": torch.rand(3, 2) * 2 - 1, "none": None}[cond_type]
    e = model(x, c)
    assert e.shape == (3,)
    assert torch.isfinite(e).all()


def test_faces128_architecture():
    model = build_model("faces128", 0)
    assert model.config["widths"] == [64, 128, 256, 512, 1024] and model.pool == "sum"
    # 64x64 input: the same network (global sum pool) -- a 128x128 forward costs seconds on 2 cores
    e = model.eval()(torch.rand(1, 3, 64, 64))
    assert e.shape == (1,) and torch.isfinite(e).all()


def test_energies_are_per_sample():
    """No BatchNorm: a sample's energy does not depend on the rest of the batch."""
    gen = torch.Generator().manual_seed(2)
    model = build_model("tiny", 2, "continuous").eval()
    _randomise_film(model, gen)
    x = torch.rand(5, 3, 16, 16, generator=gen)
    c = torch.rand(5, 2, generator=gen)
    with torch.no_grad():
        together = model(x, c)
    alone = torch.cat([model(x[i:i + 1], c[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    x2 = x.clone()
    x2[1:] = torch.rand(4, 3, 16, 16, generator=gen)
    with torch.no_grad():
        assert model(x2, c)[0] == pytest.approx(float(together[0]), rel=1e-5, abs=1e-6)


def test_onehot_indices_equal_onehot_vectors_and_condition_matters():
    gen = torch.Generator().manual_seed(3)
    model = build_model("tiny", 4, "onehot").eval()
    x = torch.rand(4, 3, 16, 16, generator=gen)
    idx = torch.tensor([3, 0, 2, 1])
    # FiLM is the identity at initialisation: the condition has no effect yet
    torch.testing.assert_close(model(x, idx), model(x, torch.tensor([0, 0, 0, 0])))
    _randomise_film(model, gen)
    torch.testing.assert_close(model(x, idx), model(x, torch.eye(4)[idx]))
    assert not torch.allclose(model(x, idx), model(x, (idx + 1) % 4))


def test_usable_as_concept_with_shared_and_per_sample_conditions():
    gen = torch.Generator().manual_seed(4)
    model = build_model("tiny", 2, "continuous").eval()
    _randomise_film(model, gen)
    x = torch.rand(6, 3, 16, 16, generator=gen)
    pos = torch.tensor([0.3, -0.7])
    torch.testing.assert_close(ef.Concept(model, pos).energy(x), model(x, pos.expand(6, 2)))
    per = torch.rand(6, 2, generator=gen)
    torch.testing.assert_close(ef.Concept(model, per, per_sample=True).energy(x), model(x, per))
    cls = build_model("tiny", 3, "onehot").eval()
    _randomise_film(cls, gen)
    torch.testing.assert_close(ef.Concept(cls, 2).energy(x), cls(x, torch.full((6,), 2)))


def test_input_gradient_matches_finite_differences():
    torch.manual_seed(5)
    model = build_model("tiny", 2, "continuous").double().eval()
    _randomise_film(model, torch.Generator().manual_seed(5))
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    c = torch.rand(2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: model(v, c), (x,), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("head", [False, True])
def test_spectral_norm_bounds_every_layer(head):
    """After power iterations in train mode, each conv weight (and the dense head when asked) has
    spectral norm ~ 1; by default the head is free, as in the released code."""
    torch.manual_seed(6)
    model = build_model("tiny", 2, "continuous", head_spectral_norm=head).train()
    x, c = torch.rand(4, 3, 16, 16), torch.rand(4, 2)
    with torch.no_grad():
        for _ in range(30):
            model(x, c)
    model.eval()
    norms = []
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) and hasattr(mod, "parametrizations"):
            w = mod.weight.reshape(mod.weight.shape[0], -1)
            norms.append(float(torch.linalg.matrix_norm(w.detach(), 2)))
    assert len(norms) == 1 + 2 * 2 + 1 + int(head)  # stem, 2 convs per block, 1 skip (8 -> 16), head
    assert max(norms) == pytest.approx(1.0, abs=0.02) and min(norms) > 0.9
    assert hasattr(model.head, "parametrizations") == head
    plain = build_model("tiny", 2, "continuous", spectral_norm=False)
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())


def test_configs_without_head_spectral_norm_rebuild_the_old_architecture():
    """A config saved before ``head_spectral_norm`` existed normalised the head with the convs."""
    old = build_model("tiny", 2, "continuous", head_spectral_norm=True).config
    del old["head_spectral_norm"]
    assert hasattr(model_from_config(old).head, "parametrizations")
    assert not hasattr(model_from_config({**old, "spectral_norm": False}).head, "parametrizations")


def test_config_round_trip_and_save_load(tmp_path):
    gen = torch.Generator().manual_seed(7)
    model = build_model("tiny", 3, "onehot").eval()
    _randomise_film(model, gen)
    clone = model_from_config(model.config)
    assert clone.config == model.config and count_parameters(clone) == count_parameters(model)
    save_model(tmp_path / "m.pt", model, {"cond": "color", "classes": ["red", "green", "blue"]})
    loaded, meta = load_model(tmp_path / "m.pt")
    assert meta["classes"] == ["red", "green", "blue"] and not loaded.training
    x = torch.rand(3, 3, 16, 16, generator=gen)
    torch.testing.assert_close(loaded(x, torch.tensor([0, 1, 2])), model(x, torch.tensor([0, 1, 2])), rtol=0, atol=0)


@pytest.mark.parametrize("pool", ["max", "meanmax"])
def test_max_pools_against_the_feature_map(pool):
    """The head reads the final map's max (and, for meanmax, its mean first), checked by recomputing
    the map block by block; a mean model's weights widened into meanmax keep its energies."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    model = build_model("tiny", 3, "onehot", spectral_norm=False, pool=pool).eval()
    _randomise_film(model, gen)
    x, c = torch.rand(3, 3, 16, 16, generator=gen), torch.tensor([2, 0, 1])
    with torch.no_grad():
        onehot = torch.eye(3)[c]
        h = model.blocks[0](model.stem(x), onehot)
        h = torch.nn.functional.silu(model.blocks[1](h, onehot)).flatten(2)
        feats = h.max(2).values if pool == "max" else torch.cat([h.mean(2), h.max(2).values], 1)
        torch.testing.assert_close(model(x, c), model.head(feats)[:, 0])
    if pool == "meanmax":
        mean = build_model("tiny", 3, "onehot", spectral_norm=False).eval()
        _randomise_film(mean, gen)
        ef.models.load_weights_widening(model, mean.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(model(x, c), mean(x, c))


def test_coordinate_channels_follow_the_scenes_convention():
    """Pixel centres, x growing to the right and y growing upwards, brute-forced pixel by pixel."""
    h, w = int(torch.randint(2, 9, (1,))), int(torch.randint(2, 9, (1,)))
    grid = ef.models.coordinate_channels(torch.rand(2, 3, h, w, dtype=torch.float64))
    assert grid.shape == (2, 2, h, w) and grid.dtype == torch.float64
    for i in range(h):
        for j in range(w):
            assert float(grid[1, 0, i, j]) == pytest.approx(-1 + (2 * j + 1) / w)
            assert float(grid[1, 1, i, j]) == pytest.approx(1 - (2 * i + 1) / h)


def test_coords_model_sees_position_and_widening_keeps_the_function(tmp_path):
    """Without coordinates, a circularly shifted image of a translation-equivariant net under
    circular padding would score the same; a coords model's energy depends on where the object is.
    Widening a plain model's weights into a coords model (zero coordinate weights) keeps every energy,
    and a coords model survives save/load with its config."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    plain = build_model("tiny", 2, "continuous", spectral_norm=False).eval()
    _randomise_film(plain, gen)
    wide = build_model("tiny", 2, "continuous", spectral_norm=False, coords=True).eval()
    assert wide.stem.weight.shape[1] == 5 and wide.config["coords"]
    ef.models.load_weights_widening(wide, plain.state_dict())
    assert torch.equal(wide.stem.weight[:, 3:], torch.zeros_like(wide.stem.weight[:, 3:]))
    x, c = torch.rand(4, 3, 16, 16, generator=gen), torch.rand(4, 2, generator=gen) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(wide(x, c), plain(x, c), rtol=1e-5, atol=1e-6)
        wide.stem.weight[:, 3:].normal_(generator=gen)
        moved = wide(x, c)
    assert not torch.allclose(moved, plain(x, c), atol=1e-4)
    save_model(tmp_path / "w.pt", wide)
    loaded, _ = load_model(tmp_path / "w.pt")
    torch.testing.assert_close(loaded(x, c), moved, rtol=0, atol=0)
    with pytest.raises(ValueError, match="stem.weight"):  # channels may only grow
        ef.models.load_weights_widening(plain, wide.state_dict())
    with pytest.raises(ValueError, match="missing"):
        ef.models.load_weights_widening(build_model("tiny", 3, "onehot"), plain.state_dict())


@pytest.mark.parametrize("bad, match", [
    (lambda: build_model("nope", 2), "model: expected one of"),
    (lambda: build_model("tiny", 0, "onehot"), "cond_dim"),
    (lambda: EnergyResNet(2, "polar"), "cond_type"),
    (lambda: model_from_config({"name": "tiny", "depth": 3}), "unknown keys"),
])
def test_bad_construction_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_bad_inputs_are_named():
    model = build_model("tiny", 2, "continuous")
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"cond: expected shape \(2, 2\)"):
        model(x, torch.rand(2, 3))
    with pytest.raises(ValueError, match="needs a condition"):
        model(x)
    with pytest.raises(ValueError, match=r"x: expected \(B, 3, H, W\)"):
        model(torch.rand(2, 1, 16, 16), torch.rand(2, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.rand(2, 3, 10, 10), torch.rand(2, 2))
    onehot = build_model("tiny", 3, "onehot")
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        onehot(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        build_model("tiny", 0)(x, torch.rand(2, 2))


def _ensemble_members(gen: torch.Generator, n: int, cond_type: str = "onehot", cond_dim: int = 3) -> list:
    members = []
    for _ in range(n):
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        m = build_model("tiny", cond_dim, cond_type)
        _randomise_film(m, gen)
        members.append(m.eval())
    return members


@pytest.mark.parametrize("n", [2, 3])
def test_ensemble_is_the_weighted_sum_of_its_members_and_reloads(tmp_path, n):
    """Energy and input gradient equal float64 autograd of sum_i w_i E_i (random weights, fresh
    members); the file round trip rebuilds it; its condition-free head gives the same energies."""
    gen = torch.Generator().manual_seed(int(torch.seed() % 2**31))
    members = _ensemble_members(gen, n)
    weights = (torch.rand(n, generator=gen) * 2 + 0.1).tolist()
    ens = EnergyEnsemble(members, weights).eval()
    assert (ens.cond_type, ens.cond_dim, ens.config["weights"]) == ("onehot", 3, weights)
    x = torch.rand(4, 3, 16, 16, generator=gen, requires_grad=True)
    c = torch.randint(0, 3, (4,), generator=gen)
    x64 = x.detach().double().requires_grad_(True)
    ref = sum(w * m.double()(x64, c) for w, m in zip(weights, [copy.deepcopy(m) for m in members]))
    (g_ref,) = torch.autograd.grad(ref.sum(), x64)
    e = ens(x, c)
    (g,) = torch.autograd.grad(e.sum(), x)
    torch.testing.assert_close(e.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(ens.energy_from_features(ens.shared_features(x), c), e.detach())
    save_model(tmp_path / "ens.pt", ens, {"cond": "color"})
    back, meta = load_model(tmp_path / "ens.pt")
    assert isinstance(back, EnergyEnsemble) and meta == {"cond": "color"}
    with torch.no_grad():
        torch.testing.assert_close(back(x, c), e.detach())
    assert isinstance(model_from_config(ens.config), EnergyEnsemble)


@pytest.mark.parametrize("bad,match", [
    ("one", r"at least 2 energies"),
    ("weights", r"expected 2 \(one per member\)"),
    ("negative", r"finite positive"),
    ("cond_dim", r"one cond_dim"),
    ("resolution", r"one training resolution"),
])
def test_bad_ensembles_are_named(bad, match):
    gen = torch.Generator().manual_seed(int(torch.seed() % 2**31))
    a, b = _ensemble_members(gen, 2)
    kw = {}
    if bad == "one":
        members = [a]
    elif bad == "weights":
        members, kw = [a, b], {"weights": [1.0]}
    elif bad == "negative":
        members, kw = [a, b], {"weights": [1.0, -0.5]}
    elif bad == "cond_dim":
        members = [a, build_model("tiny", 4, "onehot")]
    else:
        members = [a, build_model("tiny", 3, "onehot", resolution=32)]
    with pytest.raises(ValueError, match=match):
        EnergyEnsemble(members, **kw)
