"""Tests for the MuJoCo Scenes dataset (ebm_fast.paper.scenes / numpy_render).

Everything except ``test_mujoco_*`` uses the NumPy renderer, so no GL is needed;
the MuJoCo tests skip cleanly when no offscreen renderer can be created.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from ebm_fast.cli.data_scenes import main as data_scenes
from ebm_fast.paper import scenes as S

RNG = np.random.default_rng()


def fresh_seed() -> int:
    return int(RNG.integers(0, 2**31))


def small(n=12, res=32, **kw) -> S.SceneConfig:
    return S.SceneConfig(n=n, resolution=res, seed=kw.pop("seed", fresh_seed()), **kw)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(resolution=48), "resolution"),
        (dict(colors=("red", "pink")), "'pink'"),
        (dict(shapes=("torus",)), "'torus'"),
        (dict(colors=()), "colors"),
        (dict(size_range=(0.2, 0.1)), "size_range"),
        (dict(size_range=(0.05, 0.2)), "size_range"),
        (dict(size_range=(0.11, 0.2)), "size_range"),  # below SIZE_LIMITS
        (dict(size_range=(0.2, 0.33)), "size_range"),
        (dict(x_range=(-2.0, 1.0)), "x_range"),
        (dict(distractors=99), "distractors"),
        (dict(n=0), "n:"),
        (dict(seed=-1), "seed"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, needle):
    args = dict(n=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        S.SceneConfig(**args)


def test_config_normalises_names_and_roundtrips():
    cfg = S.SceneConfig(n=3, shapes=["Cube", "sphere", "box"], colors="purple")
    assert cfg.shapes == ("box", "sphere")
    assert cfg.colors == ("purple",)
    assert S.SceneConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        S.SceneConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def test_palette_has_purple_and_well_separated_colours():
    assert "purple" in S.COLOR_NAMES and len(S.COLOR_NAMES) >= 6
    rgb = np.array([S.PALETTE[c] for c in S.COLOR_NAMES])
    dists = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert dists[~np.eye(len(rgb), dtype=bool)].min() > 0.3


# --------------------------------------------------------------------------- sampling


def test_labels_depend_only_on_seed_and_index():
    cfg = small(n=40, distractors=2, light_variation=True)
    full = S.sample_scene_params(cfg)
    prefix = S.sample_scene_params(cfg.replace(n=15))
    picked = S.sample_scene_params(cfg, indices=[31, 4])
    for k, v in full.items():
        np.testing.assert_array_equal(prefix[k], v[:15], err_msg=k)
        np.testing.assert_array_equal(picked[k], v[[31, 4]], err_msg=k)
    other = S.sample_scene_params(cfg.replace(seed=cfg.seed + 1))
    assert not np.array_equal(other["pos"], full["pos"])


def test_light_and_distractor_settings_keep_the_central_objects():
    cfg = small(n=30)
    a = S.sample_scene_params(cfg)
    b = S.sample_scene_params(cfg.replace(light_variation=True, distractors=3))
    for k in ("shape", "color", "size", "pos", "yaw"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.allclose(a["light_dir"], b["light_dir"])


def test_label_shapes_dtypes_and_ranges():
    n, k = 200, 3
    labels = S.sample_scene_params(small(n=n, distractors=k, light_variation=True))
    expect = {
        "shape": ((n,), np.int64), "color": ((n,), np.int64), "size": ((n,), np.float32),
        "pos": ((n, 2), np.float32), "yaw": ((n,), np.float32), "light_dir": ((n, 3), np.float32),
        "light_intensity": ((n,), np.float32), "distractor_shape": ((n, k), np.int64),
        "distractor_color": ((n, k), np.int64), "distractor_size": ((n, k), np.float32),
        "distractor_pos": ((n, k, 2), np.float32),
    }
    assert set(labels) == set(expect)
    for key, (shape, dtype) in expect.items():
        assert labels[key].shape == shape and labels[key].dtype == dtype, key
    assert set(np.unique(labels["shape"])) == {0, 1, 2}
    assert set(np.unique(labels["color"])) == set(range(len(S.COLOR_NAMES)))
    assert np.all(np.abs(labels["pos"]) <= 1.0)
    lo, hi = S.SIZE_RANGE
    assert labels["size"].min() >= lo and labels["size"].max() <= hi
    np.testing.assert_allclose(np.linalg.norm(labels["light_dir"], axis=1), 1.0, atol=1e-5)
    assert np.all(labels["light_dir"][:, 2] < 0)  # the light shines downwards
    assert labels["light_intensity"].min() >= S.LIGHT_INTENSITY_RANGE[0]
    # distractors stand behind every possible central object and do not overlap each other
    dpos = labels["distractor_pos"]
    dsize = labels["distractor_size"]
    furthest_central = S.POSITION_EXTENT + S.SIZE_LIMITS[1] * np.sqrt(2)
    assert np.all(dpos[..., 1] * S.POSITION_EXTENT - dsize * np.sqrt(2) >= furthest_central - 1e-6)
    for i in range(n):
        for a in range(k):
            for b in range(a + 1, k):
                gap = np.linalg.norm(dpos[i, a] - dpos[i, b]) * S.POSITION_EXTENT
                assert gap > dsize[i, a] + dsize[i, b]


def test_fixed_light_without_variation():
    labels = S.sample_scene_params(small(n=20))
    assert np.ptp(labels["light_dir"], axis=0).max() == 0
    assert np.ptp(labels["light_intensity"]) == 0


def test_subset_restrictions_are_honoured():
    cfg = small(n=60, shapes=("cube",), colors=("purple", "cyan"), size_range=(0.2, 0.22),
                x_range=(0.0, 0.5), y_range=(-1.0, -0.5))
    labels = S.sample_scene_params(cfg)
    assert np.all(labels["shape"] == S.SHAPES.index("box"))
    assert set(np.unique(labels["color"])) == {S.COLOR_NAMES.index("purple"), S.COLOR_NAMES.index("cyan")}
    assert labels["size"].min() >= 0.2 and labels["size"].max() <= 0.22
    assert np.all((labels["pos"][:, 0] >= 0) & (labels["pos"][:, 0] <= 0.5))
    assert np.all((labels["pos"][:, 1] >= -1) & (labels["pos"][:, 1] <= -0.5))


# --------------------------------------------------------------------------- rendering


def test_numpy_render_independent_of_workers_and_chunking():
    cfg = small(n=20, distractors=1, light_variation=True)
    labels = S.sample_scene_params(cfg)
    one = S.render_scenes(labels, 32, "numpy", workers=1, chunk_size=3, progress=False)
    two = S.render_scenes(labels, 32, "numpy", workers=2, chunk_size=7, progress=False)
    part = S.render_scenes({k: v[5:9] for k, v in labels.items()}, 32, "numpy", workers=1, progress=False)
    assert one.shape == (20, 32, 32, 3) and one.dtype == np.uint8
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one[5:9], part)


def test_rendered_object_sits_where_the_labels_say():
    """The pixel at the projected object centre shows the object's palette colour."""
    cfg = small(n=40, res=64, shapes=("box", "cylinder"), size_range=(0.2, 0.26))
    images, labels = S.generate_scenes(cfg, renderer="numpy", workers=1, progress=False)
    centre = np.concatenate([labels["pos"] * S.POSITION_EXTENT, labels["size"][:, None]], axis=1)
    col, row = S.world_to_pixel(centre, 64).round().astype(int).T
    assert np.all((col >= 0) & (col < 64) & (row >= 0) & (row < 64))
    pix = images[np.arange(40), row, col].astype(float)
    palette = np.array([S.PALETTE[c] for c in S.COLOR_NAMES])
    # compare chromaticity (colour direction), which lighting scales but does not rotate
    cos = (pix / np.linalg.norm(pix, axis=1, keepdims=True)) @ (palette / np.linalg.norm(palette, axis=1)[:, None]).T
    assert np.mean(cos.argmax(1) == labels["color"]) >= 0.95


def test_scenes_vary_with_labels():
    images, _ = S.generate_scenes(small(n=8), renderer="numpy", workers=1, progress=False)
    flat = images.reshape(8, -1).astype(int)
    assert all(np.abs(flat[i] - flat[j]).sum() > 0 for i in range(8) for j in range(i + 1, 8))


def test_all_resolutions_render():
    labels = S.sample_scene_params(small(n=2))
    for res in S.RESOLUTIONS:
        assert S.render_scenes(labels, res, "numpy", workers=1, progress=False).shape == (2, res, res, 3)
    with pytest.raises(ValueError, match="resolution"):
        S.render_scenes(labels, 40, "numpy", progress=False)


def test_resolve_renderer():
    assert S.resolve_renderer("numpy") == "numpy"
    with pytest.raises(ValueError, match="renderer"):
        S.resolve_renderer("opengl")


def test_auto_falls_back_to_numpy_with_one_warning(monkeypatch):
    monkeypatch.setattr(S, "mujoco_available", lambda timeout=120.0: (False, "no EGL display"))
    monkeypatch.setattr(S, "_WARNED_FALLBACK", False)
    with pytest.warns(RuntimeWarning, match="no EGL display"):
        assert S.resolve_renderer("auto") == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert S.resolve_renderer("auto") == "numpy"


_MUJOCO_OK, _MUJOCO_WHY = S.mujoco_available()
needs_mujoco = pytest.mark.skipif(not _MUJOCO_OK, reason=f"MuJoCo offscreen rendering unavailable: {_MUJOCO_WHY}")


@needs_mujoco
def test_mujoco_render_is_deterministic_and_matches_numpy_geometry():
    labels = S.sample_scene_params(small(n=10, distractors=1, light_variation=True))
    a = S.render_scenes(labels, 32, "mujoco", workers=1, chunk_size=3, progress=False)
    b = S.render_scenes({k: v[::-1] for k, v in labels.items()}, 32, "mujoco", workers=1, progress=False)[::-1]
    ref = S.render_scenes(labels, 32, "numpy", workers=1, progress=False)
    assert a.shape == (10, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # Same camera, light and palette: the two back ends agree closely (measured ~4/255).
    assert np.abs(a.astype(int) - ref).mean() < 10


# --------------------------------------------------------------------------- storage


def test_cache_hit_returns_identical_arrays(tmp_path, monkeypatch):
    cfg = small(n=6)
    images, labels = S.load_scenes(cfg, cache_dir=tmp_path, renderer="numpy", progress=False)
    path = S.cache_path(cfg, "numpy", tmp_path)
    assert path.is_file()

    def boom(*a, **k):
        raise AssertionError("cache miss: rendered again")

    monkeypatch.setattr(S, "render_scenes", boom)
    images2, labels2 = S.load_scenes(cfg, cache_dir=tmp_path, renderer="numpy", progress=False)
    np.testing.assert_array_equal(images, images2)
    assert labels.keys() == labels2.keys()
    for k in labels:
        np.testing.assert_array_equal(labels[k], labels2[k])
        assert labels[k].dtype == labels2[k].dtype
    # a different config has a different key
    assert S.cache_path(cfg.replace(seed=cfg.seed + 1), "numpy", tmp_path) != path
    assert S.cache_path(cfg, "mujoco", tmp_path) != path


def test_corrupt_cache_is_rerendered(tmp_path):
    cfg = small(n=4)
    images, _ = S.load_scenes(cfg, cache_dir=tmp_path, renderer="numpy", progress=False)
    path = S.cache_path(cfg, "numpy", tmp_path)
    path.write_bytes(b"not an npz")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again, _ = S.load_scenes(cfg, cache_dir=tmp_path, renderer="numpy", progress=False)
    np.testing.assert_array_equal(images, again)


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    S.atomic_write(path, lambda f: f.write(b"first"))
    assert path.read_bytes() == b"first"

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        S.atomic_write(path, fail)
    assert path.read_bytes() == b"first"
    assert os.listdir(path.parent) == ["f.bin"]  # no temporary file left behind


def test_save_read_roundtrip(tmp_path):
    cfg = small(n=3, distractors=2)
    images, labels = S.generate_scenes(cfg, renderer="numpy", progress=False)
    path = S.save_scenes(tmp_path / "s.npz", images, labels, {"config": cfg.to_dict()})
    im2, lab2, meta = S.read_scenes(path)
    np.testing.assert_array_equal(images, im2)
    assert all(np.array_equal(labels[k], lab2[k]) for k in labels)
    assert S.SceneConfig.from_dict(meta["config"]) == cfg
    assert meta["colors"] == list(S.COLOR_NAMES) and meta["version"] == S.DATASET_VERSION


def test_dataset_gives_nchw_floats_and_label_tensors():
    torch = pytest.importorskip("torch")
    images, labels = S.generate_scenes(small(n=5), renderer="numpy", progress=False)
    ds = S.SceneDataset(images, labels)
    img, lab = ds[2]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert torch.allclose(img, torch.from_numpy(images[2]).permute(2, 0, 1).float() / 255)
    assert lab["color"].dtype == torch.int64 and lab["pos"].shape == (2,)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch[0].shape == (5, 3, 32, 32) and batch[1]["pos"].shape == (5, 2)
    x, y = ds.tensors()
    assert x.shape == (5, 3, 32, 32) and y["shape"].shape == (5,)
    with pytest.raises(ValueError, match="labels"):
        S.SceneDataset(images, {"color": labels["color"][:3]})


def test_image_grid_layout():
    imgs = np.zeros((5, 4, 4, 3), np.uint8)
    assert S.image_grid(imgs, ncols=2, pad=1).shape == (3 * 5 + 1, 2 * 5 + 1, 3)


# --------------------------------------------------------------------------- CLI


def test_cli_writes_npz_and_preview(tmp_path, capsys):
    out = tmp_path / "scenes.npz"
    rc = data_scenes(["--n", "9", "--res", "32", "--out", str(out), "--renderer", "numpy", "--seed", "5",
                     "--colors", "purple", "--shapes", "box", "--distractors", "1", "--no-progress"])
    assert rc == 0
    assert "images/s" in capsys.readouterr().out
    images, labels, meta = S.read_scenes(out)
    assert images.shape == (9, 32, 32, 3)
    assert np.all(labels["color"] == S.COLOR_NAMES.index("purple"))
    assert meta["renderer"] == "numpy" and meta["config"]["seed"] == 5
    assert (tmp_path / "scenes_preview.png").is_file()


def test_cli_reports_bad_arguments(tmp_path, capsys):
    rc = data_scenes(["--n", "3", "--out", str(tmp_path / "x.npz"), "--colors", "magenta", "--renderer", "numpy"])
    assert rc == 2
    assert "magenta" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


# --------------------------------------------------------------------------- clutter, split, light ranges

# Cache keys, labels and NumPy renders of configs that do not use the fields added for the paper's
# section 3.4 / Fig. 6 experiments, recorded before those fields existed: the shipped judges and
# concepts were trained on these renders, so they must not change.
_UNCHANGED = {
    "plain": (dict(n=6, resolution=32, seed=3),
              "522b87dd740ada8dc22927ab4aba83e51ce0e6f6670b746117766813dcd7f9d9",
              "0e20ad41cc78c6b1e054afb52679d4f600937a9ff0c3dde2ec7c868897f0488f",
              "ec6c075e9fc3732d0bfddf7d613a0bf3cb5cb32f898415839e46feab37ba6833"),
    "distractors_light": (dict(n=6, resolution=32, seed=5, distractors=2, light_variation=True),
                          "5005dd3213e7ab77a3c27073eca1cdc94cf924e88caae124020d51338f36783c",
                          "9332c45cf0cd6a09395f9537c8240d31b75f1b66bc70bb6c8fc7f6f208e091e3",
                          "dbdfb43243154fe5f3ac8083e58e90fd0d5c7e6b066f70435a003d98b307a621"),
}


@pytest.mark.parametrize("name", sorted(_UNCHANGED))
def test_configs_without_the_new_fields_keep_their_cache_key_labels_and_renders(name):
    import hashlib

    kw, key, labels_sha, render_sha = _UNCHANGED[name]
    cfg = S.SceneConfig(**kw)
    assert S._cache_key(cfg, "numpy") == key
    assert not set(cfg.to_dict()) & set(S._LATER_FIELDS)
    labels = S.sample_scene_params(cfg)
    assert set(labels) == set(S._LABEL_DTYPES)  # no clutter_* keys without clutter
    assert hashlib.sha256(b"".join(labels[k].tobytes() for k in sorted(labels))).hexdigest() == labels_sha
    images = S.render_scenes(labels, 32, "numpy", progress=False)
    assert hashlib.sha256(images.tobytes()).hexdigest() == render_sha


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(clutter=5), "clutter"),
        (dict(clutter=-1), "clutter"),
        (dict(clutter_size_range=(0.1, 0.2)), "clutter_size_range"),
        (dict(split_fraction=0.0), "split_fraction"),
        (dict(split_fraction=1.5), "split_fraction"),
        (dict(split_fraction=0.1, split_large_range=(0.3, 0.33)), "split_large_range"),
        (dict(size_range=(0.12, 0.2), split_fraction=0.1), "split_large_range"),  # default large sizes outside
        (dict(light_elevation_range=(60.0, 30.0)), "light_elevation_range"),
        (dict(light_intensity_range=(0.5, 1.5)), "light_intensity_range"),
    ],
)
def test_new_fields_reject_bad_values_naming_the_field(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        S.SceneConfig(n=4, **kwargs)


def test_new_fields_roundtrip_and_change_the_cache_key():
    base = small(n=4)
    for change in (dict(clutter=2), dict(split_fraction=0.05), dict(light_intensity_range=(0.6, 0.9)),
                   dict(light_elevation_range=(40.0, 50.0)), dict(clutter_size_range=(0.13, 0.15))):
        cfg = base.replace(**change)
        assert S.SceneConfig.from_dict(cfg.to_dict()) == cfg
        assert S._cache_key(cfg, "numpy") != S._cache_key(base, "numpy"), change
    assert S.SceneConfig.from_dict(base.to_dict()) == base


def test_clutter_has_other_colours_stands_apart_and_keeps_the_central_object():
    n, c = 150, 4
    cfg = small(n=n, clutter=c, distractors=1)
    labels = S.sample_scene_params(cfg)
    plain = S.sample_scene_params(cfg.replace(clutter=0))
    for key in plain:  # clutter is drawn last: everything else is the same scene
        np.testing.assert_array_equal(labels[key], plain[key])
    assert labels["clutter_shape"].shape == (n, c) and labels["clutter_pos"].shape == (n, c, 2)
    assert np.all(labels["clutter_color"] != labels["color"][:, None])
    assert len(np.unique(labels["clutter_color"])) == len(S.COLOR_NAMES)
    assert np.all(np.abs(labels["clutter_pos"]) <= 1.0)
    lo, hi = S.DISTRACTOR_SIZE_RANGE
    assert labels["clutter_size"].min() >= lo and labels["clutter_size"].max() <= hi
    xy = np.concatenate([labels["pos"][:, None], labels["clutter_pos"]], axis=1) * S.POSITION_EXTENT
    r = np.concatenate([labels["size"][:, None], labels["clutter_size"]], axis=1) * np.sqrt(2)
    for i in range(n):
        d = np.linalg.norm(xy[i, :, None] - xy[i, None], axis=-1)
        np.fill_diagonal(d, np.inf)
        assert np.all(d > r[i, :, None] + r[i, None])


def test_clutter_is_rendered_where_its_labels_say():
    cfg = small(n=3, res=32, clutter=2, colors=("green",))
    labels = S.sample_scene_params(cfg)
    with_clutter = S.render_scenes(labels, 32, "numpy", progress=False)
    without = S.render_scenes({k: v for k, v in labels.items() if not k.startswith("clutter")}, 32, "numpy",
                              progress=False)
    np.testing.assert_array_equal(without, S.render_scenes(S.sample_scene_params(cfg.replace(clutter=0)), 32,
                                                           "numpy", progress=False))
    for i in range(3):
        for j in range(2):
            centre = np.array([*labels["clutter_pos"][i, j] * S.POSITION_EXTENT, labels["clutter_size"][i, j]])
            col, row = np.clip(S.world_to_pixel(centre, 32).round().astype(int), 0, 31)
            rgb = with_clutter[i, row, col].astype(float)
            # the pixel over the clutter object's centre carries its colour (or the central object's, in front)
            want = np.array(S.PALETTE[S.COLOR_NAMES[labels["clutter_color"][i, j]]])
            assert np.argmax(rgb) in (np.argmax(want), np.argmax(S.PALETTE["green"])) or not np.array_equal(
                with_clutter[i, row, col], without[i, row, col])
        assert not np.array_equal(with_clutter[i], without[i])


@pytest.mark.parametrize("fraction", [0.01, 0.1, 1.0])
def test_split_keeps_small_sizes_in_the_top_right_corner(fraction):
    cfg = small(n=600, split_fraction=fraction)
    labels = S.sample_scene_params(cfg)
    x_lo, y_lo = S.split_region(cfg)
    np.testing.assert_allclose((1 - x_lo) * (1 - y_lo) / 4, fraction)
    inside = (labels["pos"][:, 0] >= x_lo) & (labels["pos"][:, 1] >= y_lo)
    a, b = cfg.split_large_range
    assert np.all(labels["size"][~inside] >= a - 1e-6) and np.all(labels["size"][~inside] <= b + 1e-6)
    lo, hi = cfg.size_range
    assert np.all((labels["size"] >= lo - 1e-6) & (labels["size"] <= hi + 1e-6))
    assert not S.unseen_combination(cfg, labels["pos"], labels["size"]).any()
    assert abs(inside.mean() - fraction) < 4 * np.sqrt(fraction * (1 - fraction) / 600) + 1e-9
    if fraction == 1.0:
        assert labels["size"].min() < a  # no split: small sizes everywhere
    probe = np.array([[-0.9, -0.9], [0.999, 0.999]])
    assert S.unseen_combination(cfg, probe, [lo, lo]).tolist() == [fraction < 1.0, False]


def test_light_ranges_are_honoured():
    cfg = small(n=200, light_variation=True, light_elevation_range=(40.0, 45.0), light_intensity_range=(0.6, 0.65))
    labels = S.sample_scene_params(cfg)
    elevation = np.rad2deg(np.arcsin(-labels["light_dir"][:, 2]))
    assert elevation.min() >= 40.0 - 1e-3 and elevation.max() <= 45.0 + 1e-3
    assert labels["light_intensity"].min() >= 0.6 - 1e-6 and labels["light_intensity"].max() <= 0.65 + 1e-6


def test_data_scenes_command_writes_every_config_field(tmp_path, capsys):
    """`ebm-fast data scenes` with clutter, the section 3.4 split, ranges and light: the .npz holds the
    labels the same SceneConfig draws directly and the config it was made with."""
    from ebm_fast.cli import main as cli_main
    from ebm_fast.paper.scenes import SceneConfig, read_scenes, sample_scene_params

    seed = int(np.random.default_rng().integers(0, 10 ** 6))
    out = tmp_path / "s.npz"
    assert cli_main(["data", "scenes", "--n", "6", "--res", "32", "--seed", str(seed), "--renderer", "numpy",
                     "--clutter", "2", "--split-fraction", "0.25", "--x-range", "-0.8", "0.9",
                     "--light-variation", "--light-elevation-range", "30", "60", "--no-progress",
                     "--out", str(out)]) == 0
    images, labels, meta = read_scenes(out)
    config = SceneConfig(n=6, resolution=32, seed=seed, clutter=2, split_fraction=0.25, x_range=(-0.8, 0.9),
                         light_variation=True, light_elevation_range=(30.0, 60.0))
    assert meta["config"] == config.to_dict() and images.shape == (6, 32, 32, 3)
    ref = sample_scene_params(config)
    assert set(labels) == set(ref) and any(k.startswith("clutter") for k in labels)
    for k in ref:
        np.testing.assert_array_equal(labels[k], ref[k])
    assert "rendered 6 images" in capsys.readouterr().out
