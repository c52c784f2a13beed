"""``ebm-fast data scenes``: render a MuJoCo Scenes dataset (:mod:`ebm_fast.paper.scenes`) to an .npz
(``images``, ``label_*`` and ``meta``) plus a PNG preview of the first 64 images
(``<out stem>_preview.png``); prints the throughput."""

from __future__ import annotations

import time
from pathlib import Path

from ._common import Parser, at_least, command, writable_file


def _parser() -> Parser:
    from ..paper.scenes import (COLOR_NAMES, DISTRACTOR_SIZE_RANGE, LIGHT_ELEVATION_RANGE, LIGHT_INTENSITY_RANGE,
                                RENDERERS, RESOLUTIONS, SHAPES, SIZE_RANGE, SPLIT_LARGE_RANGE)

    p = Parser(prog="ebm-fast data scenes", description="Render a MuJoCo Scenes dataset to .npz (+ PNG preview).")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--res", type=int, default=64, choices=RESOLUTIONS, help="resolution (default 64)")
    p.add_argument("--out", type=Path, required=True, help="output .npz path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distractors", type=int, default=0, help="background objects per image")
    p.add_argument("--light-variation", action="store_true", help="random light direction/intensity")
    p.add_argument("--renderer", default="auto", choices=RENDERERS)
    p.add_argument("--workers", type=int, default=None, help="render processes (default: cores)")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), help=f"subset of {SHAPES}")
    p.add_argument("--colors", nargs="+", default=list(COLOR_NAMES), help=f"subset of {COLOR_NAMES}")
    p.add_argument("--size-range", nargs=2, type=float, default=list(SIZE_RANGE), metavar=("LO", "HI"))
    p.add_argument("--x-range", nargs=2, type=float, default=[-1.0, 1.0], metavar=("LO", "HI"),
                   help="normalised x positions (default -1 1)")
    p.add_argument("--y-range", nargs=2, type=float, default=[-1.0, 1.0], metavar=("LO", "HI"),
                   help="normalised y positions (default -1 1)")
    p.add_argument("--clutter", type=int, default=0,
                   help="objects of other colours among the central one, 0..4 (the paper's Fig. 6 scenes)")
    p.add_argument("--clutter-size-range", nargs=2, type=float, default=list(DISTRACTOR_SIZE_RANGE),
                   metavar=("LO", "HI"))
    p.add_argument("--split-fraction", type=float, default=None,
                   help="the paper's section 3.4 split: all sizes only in this top-right fraction of the positions")
    p.add_argument("--split-large-range", nargs=2, type=float, default=list(SPLIT_LARGE_RANGE), metavar=("LO", "HI"),
                   help="the sizes drawn elsewhere under --split-fraction")
    p.add_argument("--light-elevation-range", nargs=2, type=float, default=list(LIGHT_ELEVATION_RANGE),
                   metavar=("LO", "HI"), help="degrees, with --light-variation")
    p.add_argument("--light-intensity-range", nargs=2, type=float, default=list(LIGHT_INTENSITY_RANGE),
                   metavar=("LO", "HI"), help="with --light-variation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@command("data scenes")
def main(argv: list[str] | None = None) -> int:
    from ..image_grid import save_image_grid
    from ..paper.scenes import (SceneConfig, _cache_key, render_scenes, resolve_renderer, sample_scene_params,
                                save_scenes)

    args = _parser().parse_args(argv)
    config = SceneConfig(n=args.n, resolution=args.res, seed=args.seed, distractors=args.distractors,
                         light_variation=args.light_variation, shapes=tuple(args.shapes),
                         colors=tuple(args.colors), size_range=tuple(args.size_range), x_range=tuple(args.x_range),
                         y_range=tuple(args.y_range), clutter=args.clutter,
                         clutter_size_range=tuple(args.clutter_size_range), split_fraction=args.split_fraction,
                         split_large_range=tuple(args.split_large_range),
                         light_elevation_range=tuple(args.light_elevation_range),
                         light_intensity_range=tuple(args.light_intensity_range))
    backend = resolve_renderer(args.renderer)
    at_least(args.workers, 1, "--workers")
    out = args.out if args.out.suffix == ".npz" else args.out.with_name(args.out.name + ".npz")
    writable_file(out, "--out")
    t0 = time.perf_counter()
    labels = sample_scene_params(config)
    t1 = time.perf_counter()
    images = render_scenes(labels, config.resolution, backend, args.workers, progress=not args.no_progress)
    t2 = time.perf_counter()
    save_scenes(out, images, labels, {"config": config.to_dict(), "renderer": backend,
                                      "key": _cache_key(config, backend)})
    preview = save_image_grid(out.with_name(out.stem + "_preview.png"), images[:64])
    print(f"rendered {config.n} images at {config.resolution}x{config.resolution} with {backend} "
          f"in {t2 - t1:.2f} s ({config.n / (t2 - t1):.1f} images/s; sampling {t1 - t0:.2f} s)")
    print(f"wrote {out} and {preview}")
    return 0
