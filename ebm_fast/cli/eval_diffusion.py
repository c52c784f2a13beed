"""``ebm-fast eval diffusion``: sample and judge the scene concepts of a diffusion-trained energy
(:mod:`ebm_fast.paper.diffusion_concepts`): each attribute alone, a conjunction, a disjunction."""

from __future__ import annotations

from ._common import Parser, at_least, check_realism, command, existing_file, writable_dir


def _parser() -> Parser:
    from ..paper.diffusion_concepts import add_grid_arguments

    p = Parser(prog="ebm-fast eval diffusion", description=(
        "Sample each scene attribute (and conjunctions/disjunctions) from a diffusion-trained energy by annealed "
        "Langevin dynamics and judge the samples with the shipped judges; with --realism, also the Frechet "
        "distance of judge features to fresh renders; writes PNG grids and results.json (updated after each "
        "setting) to --out."))
    add_grid_arguments(p)
    return p


@command("eval diffusion")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ..paper.diffusion_concepts import cmd_grid, parse_concept_guidance

    existing_file(args.model, "--model")
    at_least(args.n, 1, "--n")
    at_least(args.grid, 1, "--grid")
    check_realism(args.realism, args.n, "setting")
    parse_concept_guidance(args.concept_guidance)  # a mistake in it ends here, before the model loads
    if args.judges is not None:
        existing_file(args.judges, "--judges")
    writable_dir(args.out, "--out")
    return cmd_grid(args)
