"""``ebm-fast sample "EXPR"``: sample an expression of concepts; write a PNG grid, or the raw samples.

``--out FILE.png`` writes a grid titled with the expression; ``--out FILE.npz`` writes the samples
themselves for users who evaluate them: ``images`` uint8 ``(N, H, W, 3)`` (NHWC, 0..255), ``expr`` (the
expression text), ``targets`` (JSON: one ``{"attribute", "value", "negated"}`` per ``attribute=value``
of the expression, in the order written), ``layout`` (``"NHWC"``) and ``chain`` (JSON of the chain
settings and seed).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from ..atomic_file import atomic_write
from ..chains import concepts_resolution, resolve_device, sample_images, to_uint8
from ..image_grid import save_image_grid
from ..progress import progress_bar
from ._common import Parser, at_least, command, set_threads, writable_file


def _parser() -> Parser:
    from ..paper.chain_options import add_chain_args

    p = Parser(prog="ebm-fast sample", description="Sample a composed-concept expression and write a PNG grid "
                                                   "(--out FILE.png) or the raw samples (--out FILE.npz).")
    p.add_argument("expr", help='expression, e.g. "shape=sphere & color=red & ~position=(0.5,0.5)"')
    p.add_argument("--n", type=int, default=16, help="samples (default 16)")
    p.add_argument("--out", default="grid.png",
                   help="grid.png: a PNG grid; FILE.npz: uint8 NHWC samples with the expression and its targets "
                        "(default grid.png)")
    p.add_argument("--concepts", default=None, help="folder of <attribute>.pt models (default: the shipped ones)")
    p.add_argument("--ncols", type=int, default=8, help="grid columns (default 8)")
    add_chain_args(p)
    return p


@command("sample")
def main(argv: list[str] | None = None) -> int:
    from ..paper.chain_options import settings_from_args
    from ..paper.concepts import generation_caveat, load_concepts
    from ..paper.expr_parser import parse, parse_expr, tree_attributes, tree_targets

    args = _parser().parse_args(argv)
    at_least(args.n, 1, "--n")
    at_least(args.ncols, 1, "--ncols")
    out = writable_file(args.out, "--out", suffixes=(".png", ".npz"))
    set_threads(args.threads)
    tree = parse(args.expr)
    concepts = load_concepts(args.concepts, attributes=tree_attributes(tree), map_location=resolve_device(args.device))
    expr = parse_expr(args.expr, concepts, alpha=args.alpha, temperature=args.temperature)
    settings = settings_from_args(args, concepts)
    for attribute, (_, meta) in concepts.items():
        caveat = generation_caveat(meta)
        if caveat:
            print(f"note: the {attribute} concept {caveat}", file=sys.stderr)
    res = settings.resolution or concepts_resolution(concepts)
    t0 = time.perf_counter()
    chunks = []
    with progress_bar(total=args.n, desc="sample", unit="sample") as bar:
        for i in range(0, args.n, settings.batch_size):
            chunks.append(sample_images(expr, min(settings.batch_size, args.n - i), settings, res, args.seed + i))
            bar.update(chunks[-1].shape[0])
    dt = time.perf_counter() - t0
    images = to_uint8(torch.cat(chunks))
    if out.suffix.lower() == ".npz":
        arrays = {"images": images, "expr": np.array(args.expr), "targets": np.array(json.dumps(tree_targets(tree))),
                  "layout": np.array("NHWC"),
                  "chain": np.array(json.dumps({**settings.to_dict(), "resolution": res, "seed": args.seed}))}
        path = atomic_write(out, lambda f: np.savez_compressed(f, **arrays))
    else:
        path = save_image_grid(out, images, ncols=args.ncols, title=args.expr)
    print(f"{expr!r}: {args.n} samples at {res}x{res}, {settings.describe()} in {dt:.2f} s; wrote {path}")
    return 0
