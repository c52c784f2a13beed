"""``ebm-fast infer``: the position ``c* = argmin_c sum_i E(x_i | c)`` behind images, with a trained
position EBM (:func:`ebm_fast.paper.eval_inference.ebm_positions`). Images must have the size the model
was trained at, and true positions given with them must lie in ``[-1, 1]^2``."""

from __future__ import annotations

import numpy as np
import torch

from ._common import Parser, at_least, command, writable_file
from .eval_inference import add_autocast_arg, load_position_model


@command("infer")
def main(argv: list[str] | None = None) -> int:
    from ..infer import energy_map, energy_map_image
    from ..paper import eval_inference as ei

    p = Parser(prog="ebm-fast infer", description=(
        "Infer the position condition c* = argmin_c sum_i E(x_i | c) of images with a trained position EBM."))
    p.add_argument("--model", required=True, help="position EBM (model.pt)")
    p.add_argument("--images", nargs="+", required=True, help="one .npz with 'images' (and label_pos) or PNG files")
    p.add_argument("--views", action="store_true", help="all images are observations of one concept (energies add)")
    p.add_argument("--grid", type=int, default=32, help="candidate positions per axis (default 32)")
    p.add_argument("--refine", type=int, nargs="?", const=50, default=0,
                   help="gradient-descent steps after the grid (default 0; bare --refine = 50)")
    p.add_argument("--energy-map", metavar="PNG", help="write the energy map over positions (first image or the views)")
    p.add_argument("--map-style", choices=("contrast", "density"), default="contrast",
                   help="contrast: white at the minimum, black from the median energy up (default); "
                        "density: exp(-(E - min))")
    p.add_argument("--compile", action="store_true",
                   help="grid passes under torch.compile (pays off for many images: ~30 s to compile)")
    add_autocast_arg(p)
    a = p.parse_args(argv)
    at_least(a.grid, 2, "--grid")
    at_least(a.refine, 0, "--refine")
    if a.energy_map:
        writable_file(a.energy_map, "--energy-map", suffixes=(".png",))
    model, meta = load_position_model(a.model, "--model")
    x, pos = ei.load_images(a.images, meta)
    if a.views:
        x = x.unsqueeze(0)
    autocast = ei.AUTOCAST_CHOICES[a.autocast]
    pred = ei.ebm_positions(model, x, grid=a.grid, refine_steps=a.refine, views=a.views, compile=a.compile,
                            autocast=autocast)
    for i, (px, py) in enumerate(pred.tolist()):
        line = f"{'views' if a.views else 'image'} {i}: x={px:+.4f} y={py:+.4f}"
        if pos is not None and not a.views:
            line += f"  (true x={pos[i][0]:+.4f} y={pos[i][1]:+.4f})"
        print(line)
    if pos is not None and not a.views:
        print(f"mean |error| (normalised units): {ei.position_error(pred, torch.from_numpy(np.asarray(pos)).float()):.4f}")
    if a.energy_map:
        emap = energy_map(model, x[:1], resolution=a.grid, views=a.views, compile=a.compile, autocast=autocast)[0]
        energy_map_image(emap, a.energy_map, style=a.map_style)
        print(f"wrote {a.energy_map}")
    return 0
