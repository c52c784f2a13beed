"""``ebm-fast export RUN PATH``: write the model of a training run's newest checkpoint (its EMA weights
when the run keeps them), loadable by ``load_model``, ``ebm-fast sample`` and the evaluations."""

from __future__ import annotations

from ..training.export import export_checkpoint
from ._common import Parser, command, writable_file


@command("export")
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="ebm-fast export", description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("run", help="an `ebm-fast train` run folder (its ckpt/ holds the checkpoints)")
    p.add_argument("out", help="the model file to write (.pt)")
    args = p.parse_args(argv)
    writable_file(args.out, "out")
    path, step = export_checkpoint(args.run, args.out)
    print(f"wrote {path} (step {step})")
    return 0
