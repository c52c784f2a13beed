"""``ebm-fast eval four-way``: the paper's Fig. 4, conjunctions that add one concept per row (shape;
& position; & size; & colour) beside each concept alone, judged (:mod:`ebm_fast.paper.eval_four_way`);
writes ``report.md``, ``results.json`` and captioned grids to ``--out``."""

from __future__ import annotations

import sys

import torch

from ..chains import concepts_resolution, resolve_device
from ..progress import progress_bar, say
from ._common import Parser, at_least, command, set_threads, writable_dir


def _parser() -> Parser:
    from ..paper.chain_options import add_chain_args
    from ..paper.concepts import default_concepts_dir

    p = Parser(prog="ebm-fast eval four-way",
               description="Fig. 4: shape; shape & position; & size; & colour, each judged, beside each concept alone.")
    p.add_argument("--n", type=int, default=1000, help="samples per row (default 1000)")
    p.add_argument("--out", default="reports/four_way", help="report folder (default reports/four_way)")
    p.add_argument("--concepts", default=None,
                   help=f"folder with position.pt, shape.pt, size.pt, color.pt (default {default_concepts_dir()})")
    p.add_argument("--judges", default=None, help="judges file (default: the shipped 64x64 judges)")
    p.add_argument("--no-alone", action="store_true", help="skip the rows of position, size and colour alone")
    p.add_argument("--grid-columns", type=int, default=8, help="samples per row in the grids (default 8)")
    add_chain_args(p)
    return p


@command("eval four-way")
def main(argv: list[str] | None = None) -> int:
    from ..paper.chain_options import settings_from_args
    from ..paper.concepts import load_concepts
    from ..paper.eval_four_way import ALONE, ATTRIBUTE_ORDER, FIG4, evaluate_four_way, write_four_way_report
    from ..paper.judges import Judges

    args = _parser().parse_args(argv)
    set_threads(args.threads)
    at_least(args.n, 1, "--n")
    at_least(args.grid_columns, 1, "--grid-columns")
    device = resolve_device(args.device)
    writable_dir(args.out, "--out")
    concepts = load_concepts(args.concepts, attributes=list(ATTRIBUTE_ORDER), map_location=device)
    settings = settings_from_args(args, concepts)
    judges = Judges.load(args.judges, map_location=device)
    rows = FIG4 + (() if args.no_alone else ALONE)
    info = {"n": args.n, **settings.to_dict(), "resolution": settings.resolution or concepts_resolution(concepts),
            "seed": args.seed, "device": str(device), "torch_threads": torch.get_num_threads(),
            "command": "ebm-fast eval four-way " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"evaluating {len(rows)} rows x {args.n} samples ({settings.describe()})", flush=True)
    with progress_bar(total=args.n * len(rows), desc="sample + judge", unit="sample") as bar:
        def on_row(r) -> None:
            say(f"  {r.row.label}: " + ", ".join(f"{m} {v:.3f}" for m, v in r.metrics.items()) + f" ({r.seconds:.1f} s)")

        results = evaluate_four_way(concepts, judges, args.n, seed=args.seed, rows=rows, settings=settings,
                                    keep_images=args.grid_columns, on_batch=bar.update, on_row=on_row)
    path = write_four_way_report(results, args.out, info, ncols=args.grid_columns)
    print(f"wrote {path}")
    return 0
