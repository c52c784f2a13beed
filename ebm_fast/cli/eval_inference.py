"""``ebm-fast eval inference``: the paper's Table 3 (position error on Test/Color/Light/Size/Type, a
position EBM against a ResNet regressor), Fig. 11 (error against the number of observations) and
Fig. 12 (two-object energy maps); :mod:`ebm_fast.paper.eval_inference` holds the measurements."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from ..progress import progress_bar
from ._common import Parser, UsageError, at_least, command, existing_file, set_threads, writable_dir, writable_file


def add_autocast_arg(p: Parser) -> None:
    from ..paper.eval_inference import AUTOCAST_CHOICES

    p.add_argument("--autocast", choices=tuple(AUTOCAST_CHOICES), default="none",
                   help="screen the position grid under torch.autocast at this precision and re-score its "
                        "lowest candidates in float32 (default none; bf16 pays off on CPUs with AMX or "
                        "AVX-512 BF16 and on GPUs, and is slower elsewhere)")


def _parser() -> Parser:
    from ..paper import scenes
    from ..paper.inference_splits import TRAIN_SIZE_RANGE

    p = Parser(prog="ebm-fast eval inference", description=(
        "Table 3 (position error on Test/Color/Light/Size/Type, EBM vs ResNet regressor) and Fig. 11 "
        "(error vs number of observations). Errors in normalised [-1, 1] units."))
    p.add_argument("--ebm", help="position EBM (model.pt from `ebm-fast train --cond position`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--regressor", help="regressor file from an earlier --train-regressor run")
    g.add_argument("--train-regressor", action="store_true",
                   help="train the ResNet regressor on the training split (saved to OUT/regressor.pt)")
    p.add_argument("--regressor-steps", type=int, default=2000)
    p.add_argument("--regressor-model", default=None,
                   help="registered architecture for the regressor (default: the EBM's; small32 without --ebm)")
    p.add_argument("--export-train", metavar="PATH",
                   help="write the training split as an .npz for `ebm-fast train --data PATH --cond position`")
    p.add_argument("--n", type=int, default=500, help="images per test set (default 500; 0: skip Table 3)")
    p.add_argument("--n-train", type=int, default=10000, help="training images (default 10000)")
    p.add_argument("--train-size-range", nargs=2, type=float, default=list(TRAIN_SIZE_RANGE), metavar=("LO", "HI"),
                   help="half-extents (m) of the training, Test and other sets, of Fig. 11's views and of Fig. "
                        "12's objects; Size doubles them (default "
                        f"{TRAIN_SIZE_RANGE[0]} {TRAIN_SIZE_RANGE[1]}; inside {scenes.SIZE_LIMITS[0]} .. "
                        f"{scenes.SIZE_LIMITS[1]})")
    p.add_argument("--concepts", type=int, default=100, help="Fig. 11: position groups (default 100; 0: skip Fig. 11)")
    p.add_argument("--views", type=int, default=8, help="Fig. 11: observations per group (default 8)")
    p.add_argument("--two-objects", type=int, default=100, metavar="N",
                   help="Fig. 12: energy maps of N two-object scenes and of each object alone (default 100; 0: skip)")
    p.add_argument("--resolution", type=int, default=None, help="default: the EBM's, else 32")
    p.add_argument("--grid", type=int, default=32, help="position grid per axis (default 32)")
    p.add_argument("--refine-steps", type=int, default=0, help="gradient steps after the grid (default 0)")
    p.add_argument("--compile", action="store_true",
                   help="grid passes under torch.compile (~30 s to compile, then faster per pair)")
    add_autocast_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--renderer", default="auto", choices=("auto", "mujoco", "numpy"))
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="reports/inference")
    return p


def load_position_model(path: str, flag: str):
    """``(model, meta)`` of a position EBM file; a UsageError when it is another kind of model."""
    from ..models import load_model

    model, meta = load_model(existing_file(path, flag))
    if getattr(model, "cond_type", None) != "continuous" or getattr(model, "cond_dim", None) != 2:
        raise UsageError(f"{flag} {path}: expected a position model (continuous, cond_dim 2), got "
                         f"{getattr(model, 'cond_type', '?')}, cond_dim {getattr(model, 'cond_dim', '?')}")
    return model, meta


@command("eval inference")
def main(argv: list[str] | None = None) -> int:
    from ..paper import scenes
    from ..paper import eval_inference as ei
    from ..paper.eval_two_objects import two_object_maps

    a = _parser().parse_args(argv)
    set_threads(a.threads)
    if a.ebm is None and a.export_train is None and not a.train_regressor:
        raise UsageError("expected --ebm, --export-train or --train-regressor")
    for flag, value, low in (("--n", a.n, 0), ("--concepts", a.concepts, 0), ("--two-objects", a.two_objects, 0),
                             ("--views", a.views, 1), ("--grid", a.grid, 2), ("--refine-steps", a.refine_steps, 0),
                             ("--regressor-steps", a.regressor_steps, 1), ("--n-train", a.n_train, 1)):
        at_least(value, low, flag)
    if a.export_train:
        writable_file(a.export_train, "--export-train")
    if a.regressor:
        existing_file(a.regressor, "--regressor")
    if a.ebm is not None or a.train_regressor:
        writable_dir(a.out, "--out")
    t0 = time.perf_counter()
    ebm, ebm_meta = load_position_model(a.ebm, "--ebm") if a.ebm else (None, {})
    resolution = a.resolution or (ebm.config.get("resolution") if ebm is not None else None) or 32
    if a.resolution is None and resolution not in scenes.RESOLUTIONS:
        resolution = 32  # e.g. the 16x16 `tiny` model: the global pool makes it run on any size
    try:
        splits = ei.table3_splits(a.n_train, a.n or 1, resolution, a.seed, size_range=tuple(a.train_size_range))
    except ValueError as e:
        raise UsageError(f"--train-size-range: {e}") from None
    load = lambda s: ei.render_split(s, a.renderer, a.cache_dir, progress=False)  # noqa: E731
    if a.export_train:
        images, labels = load(splits["train"])
        scenes.save_scenes(a.export_train, images, labels, {"split": splits["train"].to_dict()})
        print(f"wrote {a.export_train} ({len(images)} images); train with: ebm-fast train --data "
              f"{a.export_train} --cond position --resolution {resolution}")
        if a.ebm is None and not a.train_regressor:
            return 0
    out = writable_dir(a.out, "--out")
    regressor = None
    if a.regressor:
        regressor, regressor_meta = ei.load_regressor(a.regressor)
        trained_on = regressor_meta.get("split")
        if trained_on is not None and trained_on != splits["train"].to_dict():
            print(f"warning: --regressor {a.regressor} was trained on another training split than this "
                  f"command's (its size_range {trained_on['config'].get('size_range')}, seed "
                  f"{trained_on['config'].get('seed')}, n {trained_on['config'].get('n')}); it is not the "
                  "matching baseline", file=sys.stderr)
    elif a.train_regressor:
        images, labels = load(splits["train"])
        if ebm is not None and a.regressor_model is None:
            regressor = ei.PositionRegressor.from_energy_config(ebm.config)
        else:
            regressor = ei.PositionRegressor(a.regressor_model or "small32")
        torch.manual_seed(a.seed)
        ei.train_regressor(regressor, ei.as_float_images(images), torch.from_numpy(labels["pos"]),
                           steps=a.regressor_steps, seed=a.seed, log_every=max(1, a.regressor_steps // 10))
        ei.save_regressor(out / "regressor.pt", regressor, {"split": splits["train"].to_dict(),
                                                            "steps": a.regressor_steps})
    # one tick per part: each Table 3 set, Fig. 11, Fig. 12
    parts = len(ei.SET_NAMES) * bool(a.n) + (ebm is not None and a.concepts > 0) + (ebm is not None and a.two_objects > 0)
    bar = progress_bar(total=parts, desc="eval inference", unit="part")
    autocast = ei.AUTOCAST_CHOICES[a.autocast]
    table: dict[str, dict[str, float]] = {k: {} for k, m in (("EBM", ebm), ("ResNet", regressor)) if m is not None}
    for name in ei.SET_NAMES if a.n else ():
        images, labels = load(splits[name])
        one = ei.evaluate_table3({name: (ei.as_float_images(images), torch.from_numpy(labels["pos"]))}, ebm,
                                 regressor, grid=a.grid, refine_steps=a.refine_steps, compile=a.compile,
                                 autocast=autocast)
        for model, row in one.items():
            table[model].update(row)
        bar.update(1)
    for row in table.values():  # the shifted sets' mean, as evaluate_table3 gives it for all sets at once
        shifted = [row[n] for n in ei.SHIFTED if n in row]
        if shifted:
            row["shifted_mean"] = float(np.mean(shifted))
    curve = None
    if ebm is not None and a.concepts:
        mv = ei.multiview_split(a.concepts, a.views, resolution, a.seed + 100, size_range=tuple(a.train_size_range))
        images, labels = load(mv)
        x = ei.as_float_images(images).view(a.concepts, a.views, 3, resolution, resolution)
        curve = ei.error_vs_views(ebm, x, torch.from_numpy(labels["pos"][::a.views]), grid=a.grid,
                                  refine_steps=a.refine_steps, regressor=regressor, compile=a.compile,
                                  autocast=autocast)
        bar.update(1)
    two = None
    if ebm is not None and a.two_objects > 0:
        two = two_object_maps(ebm, a.two_objects, resolution, grid=a.grid, renderer=a.renderer, seed=a.seed + 200,
                              size_range=tuple(a.train_size_range), figure=out / "fig12_two_objects.png")
        bar.update(1)
    bar.close()
    meta = {"command": "ebm-fast eval inference " + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": f"cpu x{torch.get_num_threads()} threads", "torch": torch.__version__,
            "ebm": a.ebm, "ebm_meta": ebm_meta, "regressor": a.regressor or ("trained" if regressor else None),
            "splits": {k: v.to_dict() for k, v in splits.items() if a.n or k == "train"}, "grid": a.grid,
            "refine_steps": a.refine_steps, "compile": a.compile, "autocast": a.autocast,
            "renderer": scenes.resolve_renderer(a.renderer), "seconds": round(time.perf_counter() - t0, 1)}
    path = ei.write_report(out, table, curve, meta, two)
    if any(table.values()):
        print(ei.table_markdown(table))
    if curve is not None:
        print("Fig. 11 (EBM):", " ".join(f"{n}:{e:.4f}" for n, e in zip(curve["views"], curve["EBM"])))
    if two is not None:
        print(f"Fig. 12 (EBM, {two['n']} two-object scenes): both objects at the two deepest minima "
              f"{two['both_found']:.3f}, the deepest at one {two['one_found']:.3f}; correlation with the sum of "
              f"the one-object maps {two['corr_sum']:.3f} (with one alone {two['corr_single']:.3f})")
    print(f"wrote {path}")
    return 0
