"""The scenes diffusion concepts: condition packing of the scenes' labels, targets, and a judged draw."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ebm_fast.diffusion import EnergyUNet, VPSchedule
from ebm_fast.paper import diffusion_concepts as dc


def test_scene_conditions_pack_every_attribute():
    n = 6
    rng = np.random.default_rng(int(torch.randint(0, 2 ** 31, (1,))))
    labels = {"pos": rng.uniform(-1, 1, (n, 2)).astype(np.float32), "color": rng.integers(0, 7, n),
              "shape": rng.integers(0, 3, n), "size": rng.uniform(0.18, 0.32, n).astype(np.float32)}
    c = dc.scene_conditions(labels)
    sl = dc.SCENE_ATTRIBUTES.slices()
    assert c.shape == (n, dc.SCENE_ATTRIBUTES.width) and bool((c[:, :4] == 1).all())
    assert torch.equal(c[:, sl["pos"]], torch.as_tensor(labels["pos"]))
    assert c[:, sl["color"]].flatten().tolist() == labels["color"].tolist()
    assert c[:, sl["shape"]].flatten().tolist() == labels["shape"].tolist()
    np.testing.assert_allclose(c[:, sl["size"]].flatten().numpy(), (labels["size"] - 0.25) / 0.07, rtol=1e-6)
    assert dc.size_to_model(0.18) == pytest.approx(-1.0) and dc.size_to_model(0.32) == pytest.approx(1.0)


def test_eval_targets_are_seeded_and_in_range():
    a, b = dc.eval_targets(20, 5), dc.eval_targets(20, 5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["pos"], dc.eval_targets(20, 6)["pos"])
    assert float(a["pos"].abs().max()) <= 1 and a["color"].max() == 6 and a["shape"].max() == 2
    assert 0.18 <= float(a["size"].min()) and float(a["size"].max()) <= 0.32


class _Judges:
    """Stands in for the judges: records the targets and calls every sample correct (and blue)."""

    colors = ("red", "green", "blue")

    def predict(self, images):
        return {"color": torch.full((images.shape[0],), 2)}

    def correct(self, images, targets):
        self.seen = (images, targets)
        out = {k: torch.ones(images.shape[0], dtype=torch.bool) for k in targets}
        out["all"] = torch.ones(images.shape[0], dtype=torch.bool)
        return out


def test_judged_samples_runs_the_conjunction_and_judges_the_conditioned_attributes():
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,))))
    model = EnergyUNet(VPSchedule(100), dc.SCENE_ATTRIBUTES, base=8, mults=(1, 2), emb=16).requires_grad_(False)
    judges = _Judges()
    targets = dc.eval_targets(3, 1)
    images, acc = dc.judged_samples(model, "position&color", targets, guidance=2.0, levels=3, correctors=1,
                                    step_scale=0.1, seed=4, judges=judges, resolution=32)
    assert images.shape == (3, 3, 32, 32) and float(images.min()) >= 0 and float(images.max()) <= 1
    assert set(judges.seen[1]) == {"pos", "color"} and acc == {"pos": 1.0, "color": 1.0, "all": 1.0}


def test_parse_setting_reads_wanted_and_avoided_concepts():
    assert dc.parse_setting("position") == (("pos",), ())
    assert dc.parse_setting("shape&position&size&color") == (("shape", "pos", "size", "color"), ())
    assert dc.parse_setting("~position&color") == (("color",), ("pos",))
    for s in dc.SETTINGS:
        assert dc.parse_setting(s)[0]
    with pytest.raises(ValueError, match="unknown concept 'hue'"):
        dc.parse_setting("position&hue")
    with pytest.raises(ValueError, match="at least one concept that is not negated"):
        dc.parse_setting("~color")


def test_judged_samples_of_a_negation_counts_the_avoided_attribute_shown():
    """A judge that calls everything right: the wanted attribute scores 1, the avoided one is shown by
    every sample (not_color 1), so no sample satisfies the whole setting."""
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,))))
    model = EnergyUNet(VPSchedule(100), dc.SCENE_ATTRIBUTES, base=8, mults=(1, 2), emb=16).requires_grad_(False)
    judges = _Judges()
    _, acc = dc.judged_samples(model, "position&~color", dc.eval_targets(2, 3), guidance=2.0, levels=2,
                               correctors=0, step_scale=0.1, seed=1, judges=judges, negation_weight=0.5)
    assert set(judges.seen[1]) == {"pos", "color"} and acc == {"pos": 1.0, "not_color": 1.0, "all": 0.0}


@pytest.mark.parametrize("setting", dc.DISJUNCTIONS)
def test_judged_disjunction_runs_and_counts_the_judged_colours(setting):
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,))))
    model = EnergyUNet(VPSchedule(100), dc.SCENE_ATTRIBUTES, base=8, mults=(1, 2), emb=16).requires_grad_(False)
    data = torch.rand(6, 3, 32, 32) * 2 - 1
    images, acc = dc.judged_disjunction(model, setting, 3, data=data, guidance=2.0, levels=3, correctors=0,
                                        step_scale=0.1, seed=2, judges=_Judges(), calibration_levels=2)
    if setting == "position|position":  # the stand-in judge calls every sample right at either position
        assert acc == {"position_1": 1.0, "position_2": 1.0, "either": 2.0}
    else:
        assert acc == {"red": 0.0, "blue": 1.0, "red_or_blue": 1.0}
    assert images.shape == (3, 3, 32, 32)


def test_position_homography_matches_the_camera_projection():
    from ebm_fast.paper import scenes

    rng = np.random.default_rng(int(torch.randint(0, 2 ** 31, (1,))))
    pos, height = rng.uniform(-1, 1, (20, 2)), float(rng.uniform(0.1, 0.4))
    H = np.array(dc.position_homography(height))
    world = np.concatenate([pos * scenes.POSITION_EXTENT, np.full((20, 1), height)], axis=1)
    pix = scenes.world_to_pixel(world, 32) / 32 * 2 - 1  # (column, row) -> image coordinates in [-1, 1]
    h = np.concatenate([pos, np.ones((20, 1))], axis=1) @ H.T
    np.testing.assert_allclose(h[:, :2] / h[:, 2:], pix, atol=1e-10)


def test_dsm_training_through_the_cli_warm_starts_a_position_map_run(tmp_path, capsys):
    """A tiny run without the position map, then a fresh run with it that starts from the first's EMA:
    the input convolution is widened, the rest carried over; resuming it under other options is a
    one-line error naming what differs."""
    from ebm_fast.cli import main as cli_main
    from ebm_fast.diffusion import load_model

    common = ["train", "--objective", "dsm", "--n-images", "8", "--resolution", "32", "--renderer", "numpy",
              "--base", "8", "--batch-size", "2", "--iterations", "2", "--log-every", "1", "--T", "50"]
    assert cli_main(common + ["--out", str(tmp_path / "a"), "--position-map", "off"]) == 0
    assert "started; " in capsys.readouterr().out
    assert cli_main(common + ["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a" / "ema.pt")]) == 0
    assert "widened: ['inp.weight']" in capsys.readouterr().out
    a, _ = load_model(tmp_path / "a" / "ema.pt")
    b, meta = load_model(tmp_path / "b" / "ema.pt")
    assert "spatial" not in a.spec() and b.spec()["spatial"] == {"pos": dc.position_homography()}
    assert b.inp.in_channels == a.inp.in_channels + 1 and meta["init_from"]["step"] == 2
    assert cli_main(common + ["--out", str(tmp_path / "b"), "--position-map", "off"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its model differs from this run's in ['spatial', 'spatial_sigma']" in err[0]
    assert cli_main(common + ["--out", str(tmp_path / "c"), "--init-from", str(tmp_path / "nope.pt")]) == 2
    assert "--init-from" in capsys.readouterr().err


def test_eval_diffusion_command_writes_grids_accuracy_realism_and_cost(tmp_path, capsys):
    """The whole command on a tiny untrained model: one Fig. 4 row, a grid, results.json with the judged
    accuracy, the realism distance (renders from a held-out seed) and seconds per image."""
    import json

    from ebm_fast.cli import main as cli_main
    from ebm_fast.diffusion import export_model

    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,))))
    model = EnergyUNet(VPSchedule(50), dc.SCENE_ATTRIBUTES, base=8, mults=(1, 2), emb=16)
    path = export_model(model, tmp_path / "m.pt", {"scene_config": {"resolution": 32}, "step": 0})
    out = tmp_path / "eval"
    assert cli_main(["eval", "diffusion", "--model", str(path), "--settings", "shape", "shape&position&size&color",
                     "--n", "3", "--levels", "2", "--realism", "6", "--grid", "2", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "shape&position&size&color: shape" in line and "realism" in line and "s/image" in line
    res = json.loads((out / "results.json").read_text())
    acc = res["accuracy"]["shape&position&size&color"]
    assert set(acc) == {"pos", "color", "shape", "size", "all"} and all(0 <= v <= 1 for v in acc.values())
    r = res["realism"]["shape&position&size&color"]
    assert min(r["floor"], r["noise"], r["fd"]) > 0 and math.isfinite(r["scaled"]) and res["seconds_per_image"]["shape&position&size&color"] > 0
    assert (out / "shape_and_position_and_size_and_color.png").is_file()
    from PIL import Image

    fig4 = np.asarray(Image.open(out / "fig4.png"))  # two rows (shape; the four-way) of the 3 samples
    assert fig4.shape[1] > fig4.shape[0] > 2 * 32 * 3


def test_concept_guidance_gives_a_weight_per_concept():
    assert dc.parse_concept_guidance(["position=12", "color=4"]) == {"pos": 12.0, "color": 4.0}
    assert dc.parse_concept_guidance([]) == {}
    for bad, match in (("hue=3", "CONCEPT=W with CONCEPT in"), ("position", "CONCEPT=W"),
                       ("position=x", "the weight is not a number")):
        with pytest.raises(ValueError, match=match):
            dc.parse_concept_guidance([bad])
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,))))
    model = EnergyUNet(VPSchedule(100), dc.SCENE_ATTRIBUTES, base=8, mults=(1, 2), emb=16).requires_grad_(False)
    import ebm_fast.diffusion as dfn
    from unittest import mock

    seen, original = {}, dfn.conjunction

    def spy(model, conds, **kw):
        seen.update(kw)
        return original(model, conds, **kw)

    with mock.patch.object(dfn, "conjunction", spy):
        dc.judged_samples(model, "position&color", dc.eval_targets(2, 3), guidance=6.0, levels=2, correctors=0,
                          step_scale=0.1, seed=1, judges=_Judges(), concept_guidance={"pos": 12.0})
    assert seen["weights"] == [12.0, 6.0]
