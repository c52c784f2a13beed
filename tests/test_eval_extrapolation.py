"""Tests for ``ebm-fast eval extrapolation`` (ebm_fast.paper.eval_extrapolation): the test
combinations are ones the split hides, the exported training set carries the joint label the trainer
reads, the size and position regressor round-trips and learns, and the command runs end to end on
tiny random models and tiny renders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ebm_fast.cli import main as cli
from ebm_fast.models import build_model, save_model
from ebm_fast.paper import eval_extrapolation as ex
from ebm_fast.paper import scenes as S
from ebm_fast.training.data import load_npz

RNG = np.random.default_rng()


def fresh_seed() -> int:
    return int(RNG.integers(0, 2**31))


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.5])
def test_unseen_targets_are_combinations_the_split_never_shows(fraction):
    cfg = ex.training_config(fraction, n=400, seed=fresh_seed())
    pos, size = ex.unseen_targets(300, fresh_seed(), cfg)
    assert pos.shape == (300, 2) and size.shape == (300,)
    assert S.unseen_combination(cfg, pos.numpy(), size.numpy()).all()
    labels = S.sample_scene_params(cfg)  # and the training scenes never hold one
    assert not S.unseen_combination(cfg, labels["pos"], labels["size"]).any()
    assert np.all(labels["shape"] == S.SHAPES.index("sphere"))
    # nested corners: a target hidden by a larger split is hidden by every smaller one
    smaller = ex.training_config(fraction / 2, n=1)
    assert S.unseen_combination(smaller, pos.numpy(), size.numpy()).all()
    with pytest.raises(ValueError, match="split_fraction"):
        ex.unseen_targets(3, 0, ex.training_config(1.0, n=1))


def test_exported_training_set_has_the_joint_label_the_trainer_reads(tmp_path):
    cfg = ex.training_config(0.1, n=6, seed=fresh_seed())
    path = ex.export_training_set(cfg, tmp_path / "train.npz", "numpy")
    data = load_npz(path)
    assert data.attribute(ex.JOINT_LABEL)[1:] == ("continuous", 3)
    assert data.attribute("position")[1:] == ("continuous", 2) and data.attribute("size")[1:] == ("continuous", 1)
    _, labels, _ = S.read_scenes(path)
    np.testing.assert_array_equal(labels[ex.JOINT_LABEL][:, :2], labels["pos"])
    np.testing.assert_array_equal(labels[ex.JOINT_LABEL][:, 2], labels["size"])
    cmds = ex.train_commands(path, tmp_path, "runs/x")
    assert [c.split("--cond ")[1].split()[0] for c in cmds] == ["position", "size", ex.JOINT_LABEL]
    assert all(f"cp runs/x/{k}/model.pt {tmp_path / name}" in c for c, (k, name) in zip(cmds, ex.MODEL_FILES.items()))


def test_regressor_learns_size_and_position_and_round_trips(tmp_path):
    torch.manual_seed(fresh_seed() % 2**31)
    n = 64
    pos = torch.rand(n, 2) * 2 - 1
    size = 0.18 + 0.14 * torch.rand(n)
    # an easy stand-in: each image's three channels hold its x, y and scaled size everywhere
    images = torch.stack([(pos[:, 0] + 1) / 2, (pos[:, 1] + 1) / 2, (size - 0.18) / 0.14], 1)[:, :, None, None]
    images = images.expand(n, 3, 8, 8).contiguous()
    reg = ex.SizePositionRegressor.build("tiny", (0.18, 0.32))
    before = ex.measure(reg, images, pos, size)
    reg.fit(images, pos, size, steps=120, seed=0)
    after = ex.measure(reg, images, pos, size)
    assert after["position_error"] < 0.5 * before["position_error"] and after["size_error"] < 0.5 * before["size_error"]
    reg.save(tmp_path / "r.pt", {"note": 1})
    loaded, meta = ex.SizePositionRegressor.load(tmp_path / "r.pt")
    assert meta["note"] == 1 and loaded.size_range == (0.18, 0.32)
    p0, s0 = reg.predict(images)
    p1, s1 = loaded.predict(images)
    torch.testing.assert_close(p0, p1)
    torch.testing.assert_close(s0, s1)


def _tiny_models(root, fractions):
    for f in fractions:
        d = root / ex.fraction_tag(f)
        d.mkdir(parents=True)
        for key, dim in (("position", 2), ("size", 1), ("joint", 3)):
            save_model(d / ex.MODEL_FILES[key], build_model("tiny", dim, "continuous"), {"cond": key})


def test_cli_end_to_end_on_tiny_models(tmp_path, capsys):
    _tiny_models(tmp_path / "models", (0.05, 1.0))
    out = tmp_path / "out"
    rc = cli(["eval", "extrapolation", "--models", str(tmp_path / "models"), "--fractions", "0.05", "1",
              "--train-regressor", "--regressor-steps", "2", "--regressor-model", "tiny", "--n", "4", "--n-train", "6",
              "--steps", "1", "--renderer", "numpy", "--threads", "1", "--seed", str(fresh_seed() % 1000),
              "--export-train", str(tmp_path / "data"), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.count("ebm-fast train --data") == 6 and "f=0.05:" in printed and "f=1:" in printed
    assert (tmp_path / "data" / "f0.05" / "train.npz").is_file()
    res = json.loads((out / "results.json").read_text())
    assert set(res["fractions"]) == {"0.05", "1"}
    for r in res["fractions"].values():
        for m in ("composed", "joint"):
            assert r[m]["position_error"] >= 0 and r[m]["size_error"] >= 0
    assert res["info"]["test_split"]["split_fraction"] == 0.05 and set(res["floor"]) == {"position_error", "size_error"}
    assert (out / "regressor.pt").is_file() and (out / "f0.05.png").is_file()
    # the saved regressor is reused
    rc = cli(["eval", "extrapolation", "--models", str(tmp_path / "models"), "--fractions", "0.05",
              "--regressor", str(out / "regressor.pt"), "--n", "2", "--steps", "1", "--renderer", "numpy",
              "--threads", "1", "--out", str(out)])
    assert rc == 0


@pytest.mark.parametrize("argv, needle", [
    ([], "expected --models"),
    (["--models", "M", "--fractions", "1", "--train-regressor"], "below 1"),
    (["--models", "M", "--fractions", "0"], "--fractions"),
    (["--models", "M", "--fractions", "0.1"], "expected --regressor"),
    (["--models", "M", "--fractions", "0.1", "--train-regressor"], "no such file"),
])
def test_cli_mistakes_are_one_line_and_status_2(tmp_path, capsys, argv, needle):
    argv = [str(tmp_path / "m") if a == "M" else a for a in argv]
    rc = cli(["eval", "extrapolation", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
