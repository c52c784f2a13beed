"""Table 3 / Fig. 11 machinery (ebm_fast.paper.eval_inference): splits, regressor, evaluation, CLIs.

Plumbing is proven with stand-in energies whose argmin is known: ``PixelCode`` reads the true position
written into pixel (0, 0) of each image, so the pipeline must return it up to the grid spacing.
"""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from ebm_fast.cli.eval_inference import main as eval_inference_cli
from ebm_fast.cli.infer import main as infer_cli
from ebm_fast.paper import eval_inference as ei
from ebm_fast.paper import scenes
from ebm_fast.infer import infer_grid, position_grid
from ebm_fast.models import build_model, save_model

torch.set_num_threads(1)


def _seed() -> int:
    return int(np.random.default_rng().integers(0, 2**31))


def _encode(pos: torch.Tensor, resolution: int = 8, gen=None) -> torch.Tensor:
    """Random images ``(N, 3, R, R)`` with ``(pos + 1) / 2`` written into channels 0, 1 of pixel (0, 0)."""
    x = torch.rand(pos.shape[0], 3, resolution, resolution, generator=gen)
    x[:, :2, 0, 0] = (pos + 1) / 2
    return x


class PixelCode(nn.Module):
    """Known energy: ``|cond - decoded position|^2``; as a regressor (cond None) it returns the decoded position."""

    def forward(self, x, cond=None):
        decoded = x[:, :2, 0, 0] * 2 - 1
        return decoded if cond is None else (cond - decoded).square().sum(1)


@pytest.mark.parametrize("size_range", [ei.TRAIN_SIZE_RANGE, (0.12, 0.24)])
def test_split_configs_have_the_documented_properties(size_range):
    seed = _seed() % 1000
    s = ei.table3_splits(n_train=96, n_test=96, resolution=32, seed=seed, size_range=size_range)
    lab = {k: ei.sample_split_labels(v) for k, v in s.items()}
    cidx = lambda names: {scenes.COLOR_NAMES.index(c) for c in names}  # noqa: E731
    sidx = lambda names: {scenes.SHAPES.index(c) for c in names}  # noqa: E731
    assert not cidx(ei.TRAIN_COLORS) & cidx(ei.HELDOUT_COLORS)
    for name in ("train", "Test", "Light", "Size", "Type"):
        assert set(lab[name]["color"].tolist()) <= cidx(ei.TRAIN_COLORS), name
    assert set(lab["Color"]["color"].tolist()) <= cidx(ei.HELDOUT_COLORS)
    for name in ("train", "Test", "Color", "Light", "Size"):
        assert set(lab[name]["shape"].tolist()) == sidx(("sphere", "box")), name
    assert set(lab["Type"]["shape"].tolist()) == sidx(("cylinder",))
    # sizes: training range, doubled in "Size" (the same draws as its config, times two)
    for name in ("train", "Test", "Color", "Light", "Type"):
        assert size_range[0] <= lab[name]["size"].min() and lab[name]["size"].max() <= size_range[1]
    plain = scenes.sample_scene_params(s["Size"].config)
    np.testing.assert_allclose(lab["Size"]["size"], 2 * plain["size"], rtol=1e-6)
    assert lab["Size"]["size"].min() >= 2 * size_range[0]
    assert ei.multiview_split(4, 2, 32, seed, size_range=size_range).config.size_range == tuple(size_range)
    np.testing.assert_array_equal(lab["Size"]["pos"], plain["pos"])
    # lights: training within scenes' ranges, "Light" entirely outside them
    def elevation(d):
        return np.rad2deg(np.arcsin(-d[:, 2]))

    for name in ("train", "Test"):
        el, it = elevation(lab[name]["light_dir"]), lab[name]["light_intensity"]
        assert scenes.LIGHT_ELEVATION_RANGE[0] - 1e-3 <= el.min() and el.max() <= scenes.LIGHT_ELEVATION_RANGE[1] + 1e-3
        assert scenes.LIGHT_INTENSITY_RANGE[0] <= it.min() and it.max() <= scenes.LIGHT_INTENSITY_RANGE[1]
    el, it = elevation(lab["Light"]["light_dir"]), lab["Light"]["light_intensity"]
    assert el.max() < scenes.LIGHT_ELEVATION_RANGE[0] and it.max() < scenes.LIGHT_INTENSITY_RANGE[0]
    assert ei.UNSEEN_LIGHT_ELEVATION[0] - 1e-3 <= el.min() and ei.UNSEEN_LIGHT_INTENSITY[0] <= it.min()
    np.testing.assert_allclose(np.linalg.norm(lab["Light"]["light_dir"], axis=1), 1.0, atol=1e-5)
    # the test sets are new draws, not the training images
    assert not np.isin(lab["Test"]["pos"][:, 0], lab["train"]["pos"][:, 0]).any()


def test_multiview_split_groups_share_a_position_and_differ_otherwise():
    v = 5
    lab = ei.sample_split_labels(ei.multiview_split(n_concepts=12, views=v, resolution=32, seed=_seed()))
    pos = lab["pos"].reshape(12, v, 2)
    assert (pos == pos[:, :1]).all()
    assert len(np.unique(pos[:, 0, 0])) == 12
    for key in ("size", "light_intensity"):
        assert (lab[key].reshape(12, v).std(1) > 0).all(), key
    with pytest.raises(ValueError, match="views"):
        ei.Split("bad", scenes.SceneConfig(n=10, resolution=32), views=3)
    with pytest.raises(ValueError, match="light_elevation"):
        ei.Split("bad", scenes.SceneConfig(n=10, resolution=32), light_elevation=(10.0, 20.0))


def test_render_split_caches_and_the_unseen_light_is_darker(tmp_path):
    s = ei.table3_splits(n_train=8, n_test=8, resolution=32, seed=_seed() % 1000)
    test, _ = ei.render_split(s["Test"], "numpy", tmp_path, progress=False)
    light, lab = ei.render_split(s["Light"], "numpy", tmp_path, progress=False)
    again, lab2 = ei.render_split(s["Light"], "numpy", tmp_path, progress=False)
    assert len(list(tmp_path.glob("infer_*.npz"))) == 2
    np.testing.assert_array_equal(light, again)
    np.testing.assert_array_equal(lab["light_intensity"], lab2["light_intensity"])
    assert light.shape == (8, 32, 32, 3) and light.mean() < test.mean()


def _blobs(n, resolution=16, gen=None):
    pos = torch.rand(n, 2, generator=gen) * 1.6 - 0.8
    t = torch.arange(resolution, dtype=torch.float32)
    cx = (pos[:, 0] + 1) / 2 * (resolution - 1)
    cy = (1 - pos[:, 1]) / 2 * (resolution - 1)
    blob = torch.exp(-((t.view(1, 1, -1) - cx.view(-1, 1, 1)) ** 2 + (t.view(1, -1, 1) - cy.view(-1, 1, 1)) ** 2) / 4.0)
    return blob.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(), pos


def test_regressor_learns_an_easy_problem_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(_seed())
    x, y = _blobs(512, gen=gen)
    xt, yt = _blobs(128, gen=gen)
    torch.manual_seed(_seed())
    model = ei.PositionRegressor("tiny")
    losses = ei.train_regressor(model, x, y, steps=200, batch_size=32, lr=3e-3, seed=_seed())
    assert len(losses) == 200 and all(math.isfinite(v) for v in losses)
    err = ei.position_error(ei.regressor_positions(model, xt), yt)
    trivial = ei.position_error(y.mean(0).expand_as(yt), yt)
    assert err < 0.35 * trivial, (err, trivial)
    ei.save_regressor(tmp_path / "r.pt", model, {"note": "test"})
    back, meta = ei.load_regressor(tmp_path / "r.pt")
    assert meta == {"note": "test"}
    torch.testing.assert_close(back(xt), model(xt), rtol=0, atol=0)
    # same architecture as the EBM it is built from: identical parameter shapes except the head
    ebm = build_model("tiny", 2, "continuous", spectral_norm=False)
    reg = ei.PositionRegressor.from_energy_config(ebm.config)
    shapes = lambda m: {k: v.shape for k, v in m.named_parameters() if "film" not in k and "head" not in k}  # noqa: E731
    assert {k.removeprefix("body."): v for k, v in shapes(reg).items()} == shapes(ebm)
    with pytest.raises(ValueError, match="targets"):
        ei.train_regressor(model, x, y[:, :1], steps=1)


def test_known_energy_gives_near_zero_error_through_the_pipeline():
    gen = torch.Generator().manual_seed(_seed())
    sets = {}
    for name in ei.SET_NAMES:
        pos = torch.rand(23, 2, generator=gen) * 2 - 1
        sets[name] = (_encode(pos, gen=gen), pos)
    grid = 21
    table = ei.evaluate_table3(sets, PixelCode(), PixelCode(), grid=grid)
    spacing = 2 / (grid - 1)
    for name in ei.SET_NAMES:
        assert table["EBM"][name] <= spacing / 2 + 1e-6
        assert table["EBM"][name] > 0  # grid quantisation is visible: the error is really measured
        assert table["ResNet"][name] < 1e-6
    assert table["EBM"]["shifted_mean"] == pytest.approx(np.mean([table["EBM"][n] for n in ei.SHIFTED]))
    refined = ei.evaluate_table3(sets, PixelCode(), grid=grid, refine_steps=40)
    # gradient of |c - p|^2 is 2 (c - p): step 0.2 contracts the error by 0.6 per step
    pred = ei.ebm_positions(PixelCode(), sets["Test"][0], grid=grid, refine_steps=60, step_size=0.2)
    assert ei.position_error(pred, sets["Test"][1]) < 1e-4
    assert refined["EBM"]["Test"] <= table["EBM"]["Test"] + 1e-7
    # a misplaced pairing of images and labels would be caught: shuffled labels give a large error
    shuffled = {"Test": (sets["Test"][0], sets["Test"][1].roll(1, 0))}
    assert ei.evaluate_table3(shuffled, PixelCode(), grid=grid)["EBM"]["Test"] > 0.2


def test_error_falls_with_views_for_a_noisy_stand_in():
    gen = torch.Generator().manual_seed(_seed())
    g, v, grid = 96, 8, 41
    pos = torch.rand(g, 2, generator=gen) * 1.2 - 0.6
    seen = pos.unsqueeze(1) + 0.2 * torch.randn(g, v, 2, generator=gen)  # each view a noisy observation
    images = _encode(seen.reshape(-1, 2), gen=gen).view(g, v, 3, 8, 8)
    curve = ei.error_vs_views(PixelCode(), images, pos, grid=grid, regressor=PixelCode())
    e = curve["EBM"]
    assert curve["views"] == list(range(1, v + 1))
    assert e[0] > e[1] > e[3] > e[7] and e[0] > 1.8 * e[7], e
    assert curve["ResNet"][0] > 1.8 * curve["ResNet"][7]
    # the running sum equals multi-view grid inference on the first n views
    for n in (1, 3):
        res = infer_grid(PixelCode(), images[:, :n].contiguous(), position_grid(grid), views=True)
        assert e[n - 1] == pytest.approx(ei.position_error(res.cond, pos), abs=1e-6)
    with pytest.raises(ValueError, match="G, V"):
        ei.error_vs_views(PixelCode(), images[:, 0], pos)


def test_refined_views_reach_the_mean_of_the_observations():
    """With refinement the estimate from n views is the argmin of their summed energies: for the
    quadratic stand-in, the mean of the n observed positions (the analytic answer), well below the
    error floor of a coarse grid."""
    gen = torch.Generator().manual_seed(_seed())
    g, v, grid = 64, 8, 5  # grid spacing 0.5: a grid point alone is off by ~0.125 per coordinate
    pos = torch.rand(g, 2, generator=gen) * 1.2 - 0.6
    seen = pos.unsqueeze(1) + 0.1 * torch.randn(g, v, 2, generator=gen)
    images = _encode(seen.reshape(-1, 2), gen=gen).view(g, v, 3, 8, 8)
    coarse = ei.error_vs_views(PixelCode(), images, pos, grid=grid)["EBM"]
    # the step is taken on the mean energy of the n views, gradient 2 (c - mean): step 0.3 contracts
    # by 0.4 per step for every n (on the summed energy, 2 n (c - mean), it would diverge from n = 4)
    refined = ei.error_vs_views(PixelCode(), images, pos, grid=grid, refine_steps=60, step_size=0.3)["EBM"]
    expect = [ei.position_error(seen[:, :n].mean(1).clamp(-1, 1), pos) for n in range(1, v + 1)]
    assert refined == pytest.approx(expect, abs=1e-4)
    assert refined[-1] < 0.5 * coarse[-1], (refined, coarse)


def test_eval_cli_end_to_end_with_tiny_models(tmp_path, capsys):
    torch.manual_seed(_seed())
    save_model(tmp_path / "ebm.pt", build_model("tiny", 2, "continuous"), {"cond": "position"})
    argv = ["--ebm", str(tmp_path / "ebm.pt"), "--train-regressor", "--regressor-steps", "5", "--n", "4",
            "--n-train", "12", "--concepts", "2", "--views", "3", "--grid", "5", "--refine-steps", "2",
            "--renderer", "numpy",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--export-train", str(tmp_path / "train.npz"), "--seed", str(_seed() % 1000), "--two-objects", "3"]
    assert eval_inference_cli(argv) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    for model in ("EBM", "ResNet"):
        assert set(res["table3"][model]) == {*ei.SET_NAMES, "shifted_mean"}
        assert all(math.isfinite(x) and 0 <= x <= 2 for x in res["table3"][model].values())
    assert len(res["fig11"]["EBM"]) == 3 and all(math.isfinite(x) for x in res["fig11"]["EBM"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "normalised" in report and "2.917" in report and "10.643" in report and "Fig. 12" in report
    assert res["fig12"]["n"] == 3 and 0 <= res["fig12"]["both_found"] <= 1 and "maps" not in res["fig12"]
    from PIL import Image

    with Image.open(tmp_path / "out" / "fig11_views.png") as im:
        assert im.size == (480, 320)
    with Image.open(tmp_path / "out" / "fig12_two_objects.png") as im:
        assert im.size[1] > 3 * 5 * 3  # three scenes, one row each
    # the exported training split loads as training data with a 2-d position label
    from ebm_fast.training import TrainConfig, load_data

    data = load_data(TrainConfig(data=str(tmp_path / "train.npz"), cond="position", out=str(tmp_path / "run")))
    assert data.attribute("position")[1:] == ("continuous", 2) and len(data) == 12
    # and the regressor it saved is reusable
    assert eval_inference_cli(argv[:2] + ["--regressor", str(tmp_path / "out" / "regressor.pt")] + argv[5:]) == 0
    assert "warning" not in capsys.readouterr().err
    # another training size range: every set follows it, and the old regressor is named as mismatched
    assert eval_inference_cli(argv[:2] + ["--regressor", str(tmp_path / "out" / "regressor.pt")] + argv[5:]
                       + ["--train-size-range", "0.12", "0.2", "--out", str(tmp_path / "small")]) == 0
    assert "was trained on another training split" in capsys.readouterr().err
    meta = json.loads((tmp_path / "small" / "results.json").read_text())["meta"]
    assert meta["splits"]["Test"]["config"]["size_range"] == [0.12, 0.2]
    assert meta["splits"]["Size"]["size_scale"] == 2.0
    assert json.loads((tmp_path / "small" / "results.json").read_text())["fig12"]["size_range"] == [0.12, 0.2]
    assert "(half-extents 0.12-0.2 m)" in (tmp_path / "small" / "report.md").read_text()
    assert eval_inference_cli(argv[:2] + ["--train-size-range", "0.05", "0.2", "--out", str(tmp_path / "bad")]) == 2
    assert "--train-size-range: size_range" in capsys.readouterr().err
    # Fig. 12 alone: --n 0 and --concepts 0 skip Table 3 and Fig. 11
    assert eval_inference_cli(["--ebm", str(tmp_path / "ebm.pt"), "--n", "0", "--concepts", "0", "--two-objects", "2",
                        "--grid", "5", "--renderer", "numpy", "--out", str(tmp_path / "fig12")]) == 0
    res = json.loads((tmp_path / "fig12" / "results.json").read_text())
    assert res["table3"] == {"EBM": {}} and res["fig11"] is None and res["fig12"]["n"] == 2
    assert "Fig. 12" in (tmp_path / "fig12" / "report.md").read_text()
    assert eval_inference_cli(["--ebm", str(tmp_path / "ebm.pt"), "--two-objects", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--two-objects" in capsys.readouterr().err


def test_infer_cli_prints_the_grid_argmin(tmp_path, capsys):
    torch.manual_seed(_seed())
    model = build_model("tiny", 2, "continuous")
    with torch.no_grad():  # FiLM starts at zero (condition ignored): give it a condition dependence
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_model(tmp_path / "m.pt", model)
    images = (torch.rand(5, 16, 16, 3) * 255).to(torch.uint8).numpy()
    pos = np.random.default_rng().uniform(-1, 1, (5, 2)).astype(np.float32)
    np.savez(tmp_path / "x.npz", images=images, label_pos=pos)
    from ebm_fast.models import load_model

    loaded, _ = load_model(tmp_path / "m.pt")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    want = ei.ebm_positions(loaded, x, grid=7)
    assert infer_cli(["--model", str(tmp_path / "m.pt"), "--images", str(tmp_path / "x.npz"),
                              "--grid", "7", "--energy-map", str(tmp_path / "e.png")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("image")]
    got = torch.tensor([[float(t.split("=")[1]) for t in ln.split(":")[1].split()[:2]] for ln in lines])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert (tmp_path / "e.png").exists()
    # the default map style is "contrast": black from the median energy up, so about half the map is black
    from PIL import Image

    with Image.open(tmp_path / "e.png") as im:
        assert 0.3 <= float((np.asarray(im) == 0).mean()) <= 0.7
    # --autocast bf16: the grid screened in bfloat16, its lowest candidates re-scored in float32
    assert infer_cli(["--model", str(tmp_path / "m.pt"), "--images", str(tmp_path / "x.npz"),
                              "--grid", "7", "--autocast", "bf16", "--energy-map", str(tmp_path / "e16.png"), "--map-style", "density"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("image")]
    got = torch.tensor([[float(t.split("=")[1]) for t in ln.split(":")[1].split()[:2]] for ln in lines])
    torch.testing.assert_close(got, ei.ebm_positions(loaded, x, grid=7, autocast=torch.bfloat16), atol=1e-4, rtol=0)
    # and the map is the bfloat16 one (in the density style, whose grey levels show the difference)
    maps = {dt: np.asarray(ei.energy_map_image(ei.energy_map(loaded, x[:1], resolution=7, autocast=dt)[0],
                                               style="density")) for dt in (None, torch.bfloat16)}
    with Image.open(tmp_path / "e16.png") as im:
        assert np.array_equal(np.asarray(im), maps[torch.bfloat16])
    assert not np.array_equal(maps[None], maps[torch.bfloat16])  # (20 of 20 random models differ)
    assert infer_cli(["--model", str(tmp_path / "m.pt"), "--images", str(tmp_path / "x.npz"),
                              "--grid", "7", "--views"]) == 0
    assert capsys.readouterr().out.count("views 0:") == 1


def test_infer_refuses_images_off_the_training_size_and_positions_outside_the_square(tmp_path, capsys):
    """A convolutional energy runs at any size, but its positions are only right at the size it was trained
    at; true positions outside [-1, 1]^2 cannot be the model's. Both end in one line and status 2."""
    torch.manual_seed(_seed())
    meta = {"cond": "position", "data": {"source": "x.npz", "image_size": [16, 16]}}
    save_model(tmp_path / "m.pt", build_model("tiny", 2, "continuous"), meta)
    rng = np.random.default_rng(_seed())
    pos = rng.uniform(-1, 1, (3, 2)).astype(np.float32)
    for res, name in ((16, "ok.npz"), (32, "big.npz")):
        np.savez(tmp_path / name, images=rng.integers(0, 256, (3, res, res, 3), dtype=np.uint8), label_pos=pos)
    args = ["--model", str(tmp_path / "m.pt"), "--grid", "3", "--images"]
    assert infer_cli(args + [str(tmp_path / "ok.npz")]) == 0
    capsys.readouterr()
    assert infer_cli(args + [str(tmp_path / "big.npz")]) == 2
    err = capsys.readouterr().err
    assert "32x32 images, but the model was trained at 16x16" in err and len(err.strip().splitlines()) == 1
    # a scenes-trained model records its size in the scene config
    assert ei.trained_image_size({"data": {"scene_config": {"resolution": 32}}}) == (32, 32)
    assert ei.trained_image_size({"data": {"source": "x.npz"}}) is None
    bad = pos.copy()
    bad[1, 0] = 1.5
    np.savez(tmp_path / "out.npz", images=rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8), label_pos=bad)
    assert infer_cli(args + [str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err
    assert "outside [-1, 1]^2 (first: image 1" in err and "Traceback" not in err
