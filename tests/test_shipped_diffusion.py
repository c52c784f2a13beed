"""The shipped scenes diffusion model (ebm_fast/paper/assets/diffusion_scenes32.pt): present, small, recording
how it was made, and reading its conditions on fresh scenes (new labels, NumPy renderer): at noise level 200
the energy of the true condition is the lowest (colour among 7, shape among 3) or below that of the mirrored
position. Measured on the file: position 1.00, colour 1.00, shape 0.61-0.77 on 64 renders of other seeds."""

from __future__ import annotations

import numpy as np
import torch

from ebm_fast.diffusion import load_model
from ebm_fast.paper import diffusion_concepts as dc
from ebm_fast.paper import scenes as S


def test_shipped_diffusion_model_is_present_and_records_its_making():
    assert dc.SHIPPED_MODEL.is_file() and dc.SHIPPED_MODEL.stat().st_size < 6 * 2 ** 20
    assert dc.default_model_path() == str(dc.SHIPPED_MODEL)
    model, meta = load_model(dc.SHIPPED_MODEL)
    assert model.spec()["spatial"] == {"pos": dc.position_homography()}
    assert model.cond_spec == dc.SCENE_ATTRIBUTES and meta["step"] > 0
    assert [s["iterations"] for s in meta["training"]["stages"]] and meta["recommended"]["guidance"] > 0
    assert meta["scene_config"]["resolution"] == 32 and not any(p.requires_grad for p in model.parameters())


def test_shipped_diffusion_model_reads_its_conditions_on_fresh_scenes():
    model, _ = load_model(dc.SHIPPED_MODEL)
    seed = int(np.random.default_rng().integers(1000, 10 ** 6))
    n = 64
    images, labels = S.generate_scenes(S.SceneConfig(n=n, resolution=32, seed=seed), renderer="numpy",
                                       progress=False)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    t = torch.full((n,), 200)
    xt = model.schedule.add_noise(x, t, torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)))
    pack = dc.SCENE_ATTRIBUTES.pack
    pos = torch.as_tensor(labels["pos"], dtype=torch.float32)
    with torch.no_grad():
        energy = lambda values: model(xt, pack(values, batch=n), t)  # noqa: E731
        pos_ok = (energy({"pos": pos}) < energy({"pos": -pos})).float().mean()
        colors = torch.stack([energy({"color": torch.full((n,), k)}) for k in range(len(S.COLOR_NAMES))], 1)
        shapes = torch.stack([energy({"shape": torch.full((n,), k)}) for k in range(len(S.SHAPES))], 1)
    color_ok = (colors.argmin(1) == torch.as_tensor(labels["color"])).float().mean()
    shape_ok = (shapes.argmin(1) == torch.as_tensor(labels["shape"])).float().mean()
    assert float(pos_ok) >= 0.9 and float(color_ok) >= 0.9 and float(shape_ok) >= 0.5, (pos_ok, color_ok, shape_ok)
