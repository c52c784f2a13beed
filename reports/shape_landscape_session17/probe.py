"""Session 17: why the 32x32 shape concepts draw no shape (docs/training.md, "Session 17").

Run from the repository root: ``python reports/shape_landscape_session17/probe.py MODEL [MODEL ...]``.
For each shape model it prints
  1. its energy on 48 real 32x32 MuJoCo spheres under each shape condition, and on uniform noise;
  2. chains of that model alone (400 x 7.5, noise 0.005, grad clip 0.01: the shipped chain) started
     from those real spheres and conditioned on cylinder / box: what the judges and the model itself
     call the results, and how far the pixels moved;
  3. Conj(shipped position, model) from uniform noise, 96 chains, targets cycling through the three
     shapes at random positions: the judges' shape confusion, position accuracy (within 0.4), and the
     model's own reading of its samples (argmin over the three shape conditions).
Grids (first 8 spheres and their edited versions; the first 24 conjunction samples, rows = targets
sphere, cylinder, box in turn) are written beside this file.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import ebm_fast as ef
from ebm_fast.concepts import concept_paths
from ebm_fast.data.scenes import SceneConfig, render_scenes, sample_scene_params, save_image_grid
from ebm_fast.judges import SHAPES, Judges
from ebm_fast.models import load_model

HERE = Path(__file__).parent
CHAIN = dict(steps=400, step_size=7.5, noise=0.005, grad_clip=0.01)


def onehot(k: int, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.full((n,), k), 3).float()


def grid(x: torch.Tensor, rows: int, path: Path) -> None:
    images = (x[: rows * 8].clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    save_image_grid(path, images, ncols=8, scale=3)


def own_reading(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model(x, onehot(k, len(x))).reshape(-1) for k in range(3)], 1).argmin(1)


def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    judges = Judges.load()
    params = sample_scene_params(SceneConfig(n=48, resolution=32, seed=17, shapes=("sphere",)))
    spheres = torch.from_numpy(render_scenes(params, 32, renderer="mujoco", workers=1, progress=False))
    spheres = spheres.permute(0, 3, 1, 2).float() / 255
    position, _ = load_model(concept_paths(attributes=("position",))["position"])
    position.eval()
    print("judges on the real spheres:", np.bincount(judges.predict(spheres)["shape"].numpy(), minlength=3).tolist())
    for path in paths:
        model, _ = load_model(path)
        model.eval()
        tag = Path(path).stem  # a run's export: <run>_model_<step>
        if Path(path).parent.name == "models":
            tag = f"{Path(path).parent.parent.name}_{tag}"
        print(f"\n== {path}")
        with torch.no_grad():
            for k in range(3):
                print(f"  E(real spheres | {SHAPES[k]}) = {float(model(spheres, onehot(k, 48)).mean()):+.3f}")
            noise = torch.rand(48, 3, 32, 32, generator=torch.Generator().manual_seed(1))
            print(f"  E(uniform noise | box) = {float(model(noise, onehot(2, 48)).mean()):+.3f}")
        for target in (1, 2):
            x = ef.sample(ef.Concept(model, onehot(target, 48), per_sample=True), spheres.clone(), seed=target,
                          **CHAIN).clamp(0, 1)
            with torch.no_grad():
                e = float(model(x, onehot(target, 48)).mean())
            judged = np.bincount(judges.predict(x)["shape"].numpy(), minlength=3).tolist()
            own = np.bincount(own_reading(model, x).numpy(), minlength=3).tolist()
            print(f"  spheres edited towards {SHAPES[target]}: judges {judged}, model {own} "
                  f"(sphere, cylinder, box); E {e:+.3f}; mean |dx| {float((x - spheres).abs().mean()):.3f}")
            if target == 2:
                grid(torch.cat([spheres[:8], x[:8]]), 2, HERE / f"edit_to_box_{tag}.png")
        n = 96
        gen = torch.Generator().manual_seed(0)
        targets = torch.arange(n) % 3
        pos = torch.rand(n, 2, generator=gen) * 1.6 - 0.8
        x0 = torch.rand(n, 3, 32, 32, generator=gen)
        wanted = torch.nn.functional.one_hot(targets, 3).float()
        expr = ef.Concept(position, pos, per_sample=True) & ef.Concept(model, wanted, per_sample=True)
        x = ef.sample(expr, x0, seed=0, **CHAIN).clamp(0, 1)
        pred = judges.predict(x)
        confusion = torch.zeros(3, 3, dtype=torch.long)
        for t, q in zip(targets, pred["shape"]):
            confusion[t, q] += 1
        print(f"  Conj(position, shape) from noise, {n} chains: shape {float((pred['shape'] == targets).float().mean()):.3f}, "
              f"position {float(((pred['pos'] - pos).norm(dim=1) < 0.4).float().mean()):.3f}, "
              f"model's own reading {float((own_reading(model, x) == targets).float().mean()):.3f}")
        print("  judges' confusion (rows: target sphere, cylinder, box; columns: judged):", confusion.tolist())
        grid(x, 3, HERE / f"conj_{tag}.png")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
