"""``ebm-fast eval multi-object``: the paper's Fig. 6, the conjunction of two positions of one position
concept, judged by a training-free green-object detector (:mod:`ebm_fast.paper.eval_multi_object`);
``--export-train`` renders the paper's training scenes (one green cube among non-green clutter)."""

from __future__ import annotations

import sys

import torch

from ..chains import concepts_resolution, resolve_device
from ..progress import progress_bar
from ._common import Parser, UsageError, at_least, command, set_threads, writable_dir, writable_file


def _parser() -> Parser:
    from ..paper.chain_options import add_chain_args
    from ..paper.eval_multi_object import CLUTTER

    p = Parser(prog="ebm-fast eval multi-object",
               description="Fig. 6: position(p1) & position(p2) of one position concept; green objects detected.")
    p.add_argument("--concept", help="position concept file (model.pt of `ebm-fast train --cond position`)")
    p.add_argument("--n", type=int, default=1000, help="samples (default 1000)")
    p.add_argument("--out", default="reports/multi_object", help="report folder (default reports/multi_object)")
    p.add_argument("--colour", default="green", help="colour of the objects to detect (default green)")
    p.add_argument("--export-train", metavar="PATH",
                   help="render the training scenes (one green cube among non-green clutter) to PATH (.npz)")
    p.add_argument("--n-train", type=int, default=10000, help="training images (default 10000)")
    p.add_argument("--train-res", type=int, default=32, help="training image size (default 32)")
    p.add_argument("--clutter", type=int, default=CLUTTER, help=f"non-green objects per training image (default {CLUTTER})")
    p.add_argument("--renderer", default="auto", choices=("auto", "mujoco", "numpy"))
    p.add_argument("--grid-samples", type=int, default=32, help="samples in the grid (default 32)")
    add_chain_args(p)
    return p


def export_training_scenes(config, path, renderer: str, meta: dict) -> None:
    """Render ``config`` and write it to ``path`` as an .npz that ``ebm-fast train --data`` reads."""
    from ..paper import scenes

    images, labels = scenes.generate_scenes(config, renderer, progress=False)
    scenes.save_scenes(path, images, labels, {"config": config.to_dict(), **meta})


@command("eval multi-object")
def main(argv: list[str] | None = None) -> int:
    from ..paper.chain_options import settings_from_args
    from ..paper.concepts import load_concepts
    from ..paper.eval_multi_object import evaluate_multi_object, train_command, training_config, write_multi_object_report
    from ..paper.scenes import PALETTE
    from .eval_inference import load_position_model

    args = _parser().parse_args(argv)
    set_threads(args.threads)
    if args.concept is None and args.export_train is None:
        raise UsageError("expected --concept (a position concept to evaluate) or --export-train (its training data)")
    at_least(args.n, 1, "--n")
    at_least(args.n_train, 1, "--n-train")
    if args.colour not in PALETTE:
        raise UsageError(f"--colour: expected one of {tuple(PALETTE)}, got {args.colour!r}")
    if args.export_train:
        path = writable_file(args.export_train, "--export-train", (".npz",))
        config = training_config(args.n_train, args.train_res, args.seed, args.clutter)
        export_training_scenes(config, path, args.renderer, {"figure": "fig6"})
        print(f"wrote {path} ({config.n} images); train the position concept with:\n  "
              f"{train_command(path, resolution=args.train_res)}")
        if args.concept is None:
            return 0
    device = resolve_device(args.device)
    load_position_model(args.concept, "--concept")
    writable_dir(args.out, "--out")
    concepts = load_concepts({"position": args.concept}, map_location=device)
    settings = settings_from_args(args, concepts)
    info = {"n": args.n, **settings.to_dict(), "resolution": settings.resolution or concepts_resolution(concepts),
            "seed": args.seed, "colour": args.colour, "concept": args.concept, "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "command": "ebm-fast eval multi-object " + " ".join(argv if argv is not None else sys.argv[1:])}
    with progress_bar(total=args.n, desc="sample + detect", unit="sample") as bar:
        result = evaluate_multi_object(concepts, args.n, settings=settings, seed=args.seed, colour=args.colour,
                                       keep_images=args.grid_samples, on_batch=bar.update)
    s = result["overall"]
    print(f"near position 1 {s['near position 1']:.3f}, near position 2 {s['near position 2']:.3f}, near both "
          f"{s['near both']:.3f}; one object {s['one object']:.3f}, two or more {s['two or more objects']:.3f}")
    close = result["by_distance"][0]
    print(f"positions closer than {close['distance'][1]:g} ({close['n']} pairs): one object {close['one object']:.3f}")
    print(f"wrote {write_multi_object_report(result, args.out, info)}")
    return 0
