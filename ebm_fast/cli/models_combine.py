"""``ebm-fast models combine A B ... --out C``: save several trained models of one concept as one concept
file whose energy is their weighted sum (:func:`ebm_fast.combine_models.combine_models`)."""

from __future__ import annotations

from pathlib import Path

from ..combine_models import combine_models
from ..models import save_model
from ._common import Parser, command, existing_file, writable_file


@command("models combine")
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="ebm-fast models combine",
               description="Save several trained models of one concept as one concept file whose energy is their "
                           "weighted sum (a product of experts).")
    p.add_argument("models", nargs="+", help="model files (ebm-fast train's model.pt / exports, or other ensembles)")
    p.add_argument("--out", required=True, help="the concept file to write (atomically)")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per model (default: equal weights summing to 1, the mean energy)")
    p.add_argument("--steps", type=int, default=None, help="recommended chain from noise: Langevin steps")
    p.add_argument("--step-size", type=float, default=None, help="recommended chain: step size")
    p.add_argument("--noise", type=float, default=None, help="recommended chain: noise scale")
    p.add_argument("--note", default=None, help="why this chain / these members (kept in the file)")
    args = p.parse_args(argv)
    for m in args.models:
        existing_file(m, "model")
    writable_file(args.out, "--out")
    chain = {"steps": args.steps, "step_size": args.step_size, "noise": args.noise}
    ensemble, meta = combine_models(args.models, args.weights, chain=chain, note=args.note)
    save_model(args.out, ensemble, meta)
    terms = " + ".join(f"{w:g} * {Path(f).name}" for w, f in zip(ensemble.weights, args.models))
    print(f"wrote {args.out}: E = {terms}; chain from noise {meta['generation']['chain']}")
    return 0
