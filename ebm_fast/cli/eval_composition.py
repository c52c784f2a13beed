"""``ebm-fast eval composition``: judge the paper's composition tables (1 and 2) on generated scenes
(:mod:`ebm_fast.paper.evaluate`); prints ours beside the paper's and writes ``report.md``,
``results.json`` and a captioned PNG grid per row to ``--out``."""

from __future__ import annotations

from pathlib import Path

import torch

from ..chains import concepts_resolution, resolve_device
from ..progress import say
from ._common import Parser, at_least, check_realism, command, set_threads, writable_dir


def _parser() -> Parser:
    from ..paper.chain_options import add_chain_args
    from ..paper.concepts import default_concepts_dir
    from ..paper.evaluate import ROWS

    p = Parser(prog="ebm-fast eval composition",
               description="Judge the paper's composition tables (1 and 2) on generated scenes.")
    p.add_argument("--n", type=int, default=1000, help="samples per row (default 1000, the paper's)")
    p.add_argument("--out", default="reports/composition", help="report folder (default reports/composition)")
    p.add_argument("--concepts", default=None, help=f"Table 1 concepts folder (default {default_concepts_dir()})")
    p.add_argument("--continual", default=None,
                   help=f"Table 2 concepts folder (default {default_concepts_dir() / 'continual'})")
    p.add_argument("--tables", type=int, nargs="+", default=[1, 2], choices=(1, 2), help="tables (default 1 2)")
    p.add_argument("--rows", nargs="+", default=None, choices=sorted(ROWS), help="only these rows")
    p.add_argument("--judges", default=None, help="judges file (default: the shipped 64x64 judges)")
    p.add_argument("--realism", type=int, default=0,
                   help="fresh renders for each row's realism distance (0: skip; e.g. 512; keeps every sample)")
    add_chain_args(p)
    return p


@command("eval composition")
def main(argv: list[str] | None = None) -> int:
    from ..paper.chain_options import settings_from_args
    from ..paper.concepts import default_concepts_dir, load_concepts
    from ..paper.evaluate import (ROWS, TABLE1, TABLE2, RowResult, continual_commands, evaluate, format_table,
                                  write_report)
    from ..paper.judges import Judges

    args = _parser().parse_args(argv)
    set_threads(args.threads)
    at_least(args.n, 1, "--n")
    check_realism(args.realism, args.n, "row")
    device = resolve_device(args.device)
    writable_dir(args.out, "--out")
    rows = [ROWS[k] for k in args.rows] if args.rows else [r for r in TABLE1 + TABLE2 if r.table in args.tables]
    need1 = sorted({t.attribute for r in rows if r.table == 1 for t in r.terms})
    need2 = sorted({t.attribute for r in rows if r.table == 2 for t in r.terms})
    cont_dir = Path(args.continual) if args.continual else default_concepts_dir() / "continual"
    concepts = load_concepts(args.concepts, attributes=need1, map_location=device) if need1 else {}
    try:
        continual = load_concepts(cont_dir, attributes=need2, map_location=device) if need2 else None
    except FileNotFoundError as exc:
        # the commands that make the Table 2 concepts, on stdout; the error itself is one line on stderr
        print("Table 2 needs the continually trained concepts, made in order by:\n  "
              + "\n  ".join(continual_commands(cont_dir)) + "\n(or evaluate Table 1 only: --tables 1)")
        raise FileNotFoundError(f"{exc} (the commands that make them are printed above; or evaluate Table 1 only: "
                                "--tables 1)") from None
    settings = settings_from_args(args, concepts or continual)
    judges = Judges.load(args.judges, map_location=device)
    # each concept set is sampled at its own training resolution unless --res is given
    res = settings.resolution or {f"table {t}": concepts_resolution(cs)
                                  for t, cs in ((1, concepts), (2, continual)) if cs}
    info = {"n": args.n, **settings.to_dict(), "resolution": res, "alpha": args.alpha, "temperature": args.temperature,
            "seed": args.seed, "device": str(device), "torch_threads": torch.get_num_threads()}

    def progress(r: RowResult) -> None:
        vals = ", ".join(f"{m} {v:.3f}" for m, v in r.metrics.items())
        say(f"  {r.row.label}: {vals} ({r.seconds:.1f} s)")
        negated = {t.metric for t in r.row.terms if t.negated}
        for m in r.confusion:
            by_class = ", ".join(f"{name} {frac:.2f}" for name, (frac, _) in r.per_class(m).items())
            low = " (negated: low is good)" if m in negated else ""
            say(f"    {m} by target{low}: {by_class}")

    print(f"evaluating {len(rows)} rows x {args.n} samples ({settings.steps} steps each)", flush=True)
    results = evaluate(rows, concepts, judges, args.n, continual=continual, progress=progress, settings=settings,
                       seed=args.seed, alpha=args.alpha, temperature=args.temperature,
                       **({"keep_images": args.n} if args.realism else {}))
    if args.realism:
        from ..paper.realism import realism, render_references

        renders, reference, info["realism_renders"] = render_references(args.realism, args.n,
                                                                        results[0].images.shape[1])
        for r in results:
            r.realism = realism(judges, torch.from_numpy(r.images).permute(0, 3, 1, 2).float() / 255, renders,
                                reference, seed=args.seed)
            say(f"  {r.row.label}: realism {r.realism['scaled']:.3f} (Frechet distance {r.realism['fd']:.2f}; "
                f"renders {r.realism['floor']:.2f}, noise {r.realism['noise']:.2f})")
    print(format_table(results))
    path = write_report(results, args.out, info)
    print(f"wrote {path}")
    return 0
