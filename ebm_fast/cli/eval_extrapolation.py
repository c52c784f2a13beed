"""``ebm-fast eval extrapolation``: the paper's section 3.4 / Fig. 9, size and position combinations
never seen in training, composed concepts against a jointly conditioned model, measured by a regressor
(:mod:`ebm_fast.paper.eval_extrapolation`); ``--export-train`` renders each split fraction's training
scenes and prints the commands that train its three models."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from ..chains import resolve_device
from ._common import Parser, UsageError, at_least, command, existing_file, set_threads, writable_dir


def _parser() -> Parser:
    from ..paper.chain_options import add_chain_args
    from ..paper.eval_extrapolation import FRACTIONS

    p = Parser(prog="ebm-fast eval extrapolation",
               description="Fig. 9: position & size concepts vs a joint model at unseen size x position combinations.")
    p.add_argument("--models", metavar="DIR",
                   help="folder with one subfolder per fraction (f0.01, f0.05, ...) holding position.pt, size.pt, "
                        "joint.pt")
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS),
                   help=f"split fractions (default {' '.join(f'{f:g}' for f in FRACTIONS)})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--regressor", help="size and position regressor from an earlier --train-regressor run")
    g.add_argument("--train-regressor", action="store_true",
                   help="train the regressor on spheres of every size at every position (saved to OUT/regressor.pt)")
    p.add_argument("--regressor-steps", type=int, default=2000, help="regressor training steps (default 2000)")
    p.add_argument("--regressor-model", default="small32", help="registered architecture (default small32)")
    p.add_argument("--n", type=int, default=1000, help="test combinations (default 1000)")
    p.add_argument("--n-train", type=int, default=10000, help="training images per fraction and of the regressor")
    p.add_argument("--export-train", metavar="DIR",
                   help="render each fraction's training scenes to DIR/<f>/train.npz and print the training commands")
    p.add_argument("--renderer", default="auto", choices=("auto", "mujoco", "numpy"))
    p.add_argument("--out", default="reports/extrapolation", help="report folder (default reports/extrapolation)")
    add_chain_args(p)
    return p


def _check_fractions(fractions: list[float]) -> None:
    for f in fractions:
        if not 0 < f <= 1:
            raise UsageError(f"--fractions: expected numbers in (0, 1], got {f:g}")


def _load_models(root: Path, fraction: float, device) -> dict:
    from ..models import load_model
    from ..paper.eval_extrapolation import MODEL_FILES, fraction_tag

    dims = {"position": 2, "size": 1, "joint": 3}
    models = {}
    for key, name in MODEL_FILES.items():
        path = existing_file(root / fraction_tag(fraction) / name, "--models")
        model, _ = load_model(path, map_location=device)
        if getattr(model, "cond_type", None) != "continuous" or getattr(model, "cond_dim", None) != dims[key]:
            raise UsageError(f"--models {path}: expected a continuous model with cond_dim {dims[key]} ({key}), got "
                             f"{getattr(model, 'cond_type', '?')}, cond_dim {getattr(model, 'cond_dim', '?')}")
        for q in model.parameters():
            q.requires_grad_(False)
        models[key] = model.eval()
    return models


@command("eval extrapolation")
def main(argv: list[str] | None = None) -> int:
    from ..paper import eval_extrapolation as ex
    from ..paper import scenes
    from ..paper.chain_options import settings_from_args
    from ..paper.evaluate import _short

    a = _parser().parse_args(argv)
    set_threads(a.threads)
    _check_fractions(a.fractions)
    for flag, value in (("--n", a.n), ("--n-train", a.n_train), ("--regressor-steps", a.regressor_steps)):
        at_least(value, 1, flag)
    if a.models is None and a.export_train is None:
        raise UsageError("expected --models (the trained models to evaluate) or --export-train (their training data)")
    resolution = a.res or 32
    if resolution not in scenes.RESOLUTIONS:
        raise UsageError(f"--res: expected one of {scenes.RESOLUTIONS}, got {resolution}")
    if a.export_train:
        root = writable_dir(a.export_train, "--export-train")
        print("train each fraction's models with:")
        for f in a.fractions:
            folder = writable_dir(root / ex.fraction_tag(f), "--export-train")
            ex.export_training_set(ex.training_config(f, a.n_train, resolution, a.seed), folder / "train.npz", a.renderer)
            for line in ex.train_commands(folder / "train.npz", folder, Path("runs/fig9") / ex.fraction_tag(f),
                                          resolution):
                print(f"  {line}")
        if a.models is None:
            return 0
    if a.regressor is None and not a.train_regressor:
        raise UsageError("expected --regressor or --train-regressor")
    if not any(f < 1 for f in a.fractions):
        raise UsageError("--fractions: expected at least one below 1 (the test combinations are those it hides)")
    device = resolve_device(a.device)
    root = Path(a.models)
    models = {f: _load_models(root, f, device) for f in a.fractions}
    if a.res is None:  # the models' training size where it is a scenes size (the `tiny` test models: 16)
        trained = (getattr(models[a.fractions[0]]["position"], "config", None) or {}).get("resolution")
        resolution = trained if trained in scenes.RESOLUTIONS else 32
    out = writable_dir(a.out, "--out")
    t0 = time.perf_counter()
    if a.regressor:
        regressor, _ = ex.SizePositionRegressor.load(existing_file(a.regressor, "--regressor"))
    else:
        cfg = ex.all_combinations_config(a.n_train, resolution, a.seed + 1)
        images, labels = scenes.generate_scenes(cfg, a.renderer, progress=False)
        regressor = ex.SizePositionRegressor.build(a.regressor_model, cfg.size_range)
        torch.manual_seed(a.seed)
        regressor.fit(images, torch.from_numpy(labels["pos"]), torch.from_numpy(labels["size"]),
                      steps=a.regressor_steps, seed=a.seed, log_every=max(1, a.regressor_steps // 10))
        regressor.save(out / "regressor.pt", {"scenes": cfg.to_dict(), "steps": a.regressor_steps})
    # the test combinations: hidden by the largest split below 1, so by every smaller one too
    reference = ex.training_config(max(f for f in a.fractions if f < 1), 1, resolution)
    pos, size = ex.unseen_targets(a.n, a.seed, reference)
    # the regressor's floor: its error on renders of the test targets themselves
    labels = scenes.sample_scene_params(reference.replace(n=a.n, seed=a.seed + 2, split_fraction=None))
    labels["pos"], labels["size"] = pos.numpy().astype("float32"), size.numpy().astype("float32")
    floor = ex.measure(regressor, scenes.render_scenes(labels, resolution, a.renderer, progress=False), pos, size)
    settings = settings_from_args(a)
    results = {}
    for f in a.fractions:
        results[f] = ex.evaluate_fraction(models[f], regressor, pos, size, settings=settings, resolution=resolution,
                                          seed=a.seed)
        r = results[f]
        print(f"f={f:g}: composed position error {r['composed']['position_error']:.3f}, size error "
              f"{r['composed']['size_error']:.4f}; joint {r['joint']['position_error']:.3f}, "
              f"{r['joint']['size_error']:.4f} ({r['seconds']:.1f} s)", flush=True)
    print(f"regressor on renders of the test targets: position error {floor['position_error']:.3f}, size error "
          f"{floor['size_error']:.4f}")
    k = min(16, a.n)
    captions = [f"{_short(float(x))},{_short(float(y))}\ns{_short(float(s))[1:]}" for (x, y), s in zip(pos[:k].tolist(), size[:k])]
    info = {"n": a.n, **settings.to_dict(), "resolution": resolution, "seed": a.seed, "device": str(device),
            "regressor": a.regressor or "trained", "test_split": reference.to_dict(),
            "seconds": round(time.perf_counter() - t0, 1),
            "command": "ebm-fast eval extrapolation " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"wrote {ex.write_extrapolation_report(results, floor, out, info, captions)}")
    return 0
