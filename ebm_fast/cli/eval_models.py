"""``ebm-fast eval models RUN --rows KEY ...``: judge every model a training run exported (``OUT/models``)
in composition rows and pick the one that generates best (:mod:`ebm_fast.paper.eval_models`)."""

from __future__ import annotations

from pathlib import Path

from ..atomic_file import atomic_write
from ..chains import resolve_device
from ..progress import say
from ._common import Parser, at_least, command, set_threads, writable_file


def _parser() -> Parser:
    from ..paper.chain_options import add_chain_args
    from ..paper.concepts import default_concepts_dir
    from ..paper.evaluate import ROWS

    p = Parser(prog="ebm-fast eval models",
               description="Judge every model a training run exported (OUT/models) and pick the one that "
                           "generates best.")
    p.add_argument("run", help="an `ebm-fast train` run folder trained with --export-every")
    p.add_argument("--rows", nargs="+", required=True, choices=sorted(ROWS),
                   help="composition rows to judge each model in (each must use the run's attribute)")
    p.add_argument("--n", type=int, default=128, help="samples per row and model (default 128)")
    p.add_argument("--concepts", default=None,
                   help=f"where the rows' other attributes come from (default {default_concepts_dir()})")
    p.add_argument("--every", type=int, default=1, help="judge every K-th export, counted back from the newest")
    p.add_argument("--every-steps", type=int, default=None, metavar="N",
                   help="judge the exports at multiples of N training steps, and the newest (instead of --every)")
    p.add_argument("--best-to", default=None, metavar="PATH", help="copy the best model here")
    p.add_argument("--judges", default=None, help="judges file (default: the shipped 64x64 judges)")
    add_chain_args(p)
    return p


@command("eval models")
def main(argv: list[str] | None = None) -> int:
    from ..paper.chain_options import settings_from_args
    from ..paper.concepts import load_concepts
    from ..paper.eval_models import best, exported_models, format_judged, judge_run, run_attribute
    from ..paper.evaluate import ROWS
    from ..paper.judges import Judges

    args = _parser().parse_args(argv)
    set_threads(args.threads)
    at_least(args.n, 1, "--n")
    if args.best_to:
        writable_file(args.best_to, "--best-to")
    rows = [ROWS[k] for k in args.rows]
    device = resolve_device(args.device)
    attribute = run_attribute(args.run)
    need = sorted({t.attribute for r in rows for t in r.terms} - {attribute})
    others = load_concepts(args.concepts, attributes=need, map_location=device) if need else {}
    models = exported_models(args.run)
    newest = load_concepts({attribute: models[-1][1]}, map_location=device) if models else {}
    # unset chain options follow the training chains of the run's models and the others
    settings = settings_from_args(args, {**others, **newest})
    judges = Judges.load(args.judges, map_location=device)

    def progress(rec: dict) -> None:
        vals = "; ".join(f"{k}: " + ", ".join(f"{m} {v:.3f}" for m, v in ms.items()) for k, ms in rec["rows"].items())
        say(f"  step {rec['step']}: {vals} (score {rec['score']:.3f}, {rec['seconds']:.0f} s)")

    print(f"judging {args.run}/models ({attribute}) in {', '.join(args.rows)}, {args.n} samples per row", flush=True)
    records = judge_run(args.run, rows, judges, args.n, others=others, settings=settings, seed=args.seed,
                        alpha=args.alpha, temperature=args.temperature, every=args.every,
                        every_steps=args.every_steps, map_location=device,
                        judges_id=str(args.judges or "default"), progress=progress)
    print(format_judged(records, rows))
    top = best(records)
    src = Path(args.run) / "models" / top["model"]
    print(f"best: step {top['step']} ({src}), score {top['score']:.3f}")
    if args.best_to:
        dst = atomic_write(args.best_to, lambda f: f.write(src.read_bytes()))
        print(f"copied to {dst}")
    return 0
