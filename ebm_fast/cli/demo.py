"""``ebm-fast demo``: the trained-concept demo when concepts are present (:mod:`ebm_fast.paper.demo_concepts`),
else (or with ``--gaussian``) the analytic 2-D Gaussian one (:mod:`ebm_fast.paper.demo`)."""

from __future__ import annotations

from ._common import Parser, command, set_threads, writable_dir


def _parser() -> Parser:
    from ..paper.chain_options import add_chain_args

    p = Parser(prog="ebm-fast demo", description=(
        "Compose concepts, sample them with the fused sampler and check the samples: on the trained "
        "MuJoCo-Scenes concepts when present (shipped, or --concepts DIR), judged by the shipped judges; "
        "otherwise (or with --gaussian) on 2-D Gaussian concepts against their closed form."))
    p.add_argument("--gaussian", action="store_true", help="the analytic 2-D demo even when concepts are present")
    p.add_argument("--concepts", default=None, help="folder of position.pt and color.pt (default: the shipped ones)")
    p.add_argument("--n", type=int, default=32, help="concept demo: samples per expression (default 32)")
    p.add_argument("--batch", type=int, default=4096, help="Gaussian demo: chains per expression (default 4096)")
    p.add_argument("--gaussian-steps", type=int, default=1000, help="Gaussian demo: Langevin steps (default 1000)")
    p.add_argument("--eta", type=float, default=0.005, help="Gaussian demo: step size (default 0.005)")
    p.add_argument("--out", default="runs/demo", help="folder for the PNG grids/plots (default runs/demo)")
    # the concepts' conjunctions balanced by default: the colour concept's gradient outweighs the
    # position's in the plain sum (docs/sampling.md, "Which conjunction weights")
    add_chain_args(p, balance_and=True)
    return p


@command("demo")
def main(argv: list[str] | None = None) -> int:
    from ..chains import resolve_device
    from ..paper import demo, demo_concepts

    args = _parser().parse_args(argv)
    set_threads(args.threads)
    resolve_device(args.device)
    writable_dir(args.out, "--out")
    if not args.gaussian:
        if demo_concepts.concepts_present(args.concepts):
            from ..paper.chain_options import settings_from_args
            from ..paper.concepts import load_concepts

            if args.n < 1:
                raise ValueError(f"--n: expected an integer >= 1, got {args.n}")
            settings = settings_from_args(args, load_concepts(args.concepts, attributes=demo_concepts.ATTRIBUTES))
            demo_concepts.run(args.concepts, n=args.n, settings=settings, seed=args.seed, out=args.out,
                              alpha=args.alpha, temperature=args.temperature)
            return 0
        if args.concepts is not None:
            raise ValueError(f"--concepts {args.concepts}: expected position.pt and color.pt there")
        print("no trained concepts found in ebm_fast/paper/assets/concepts/: running the analytic "
              "2-D Gaussian demo (docs/training.md says how the concepts are trained)")
    return demo.run_gaussian(batch=args.batch, steps=args.gaussian_steps, eta=args.eta, seed=args.seed,
                             backend=args.backend, out=args.out)
