"""``ebm-fast judges train``: render scenes and train the attribute judges (:mod:`ebm_fast.paper.judges`);
prints per-epoch validation metrics and a final JSON line."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..progress import say
from ._common import Parser, at_least, command, set_threads, writable_file


def _parser() -> Parser:
    from ..paper.scenes import RENDERERS, RESOLUTIONS

    p = Parser(prog="ebm-fast judges train", description="Train the attribute judges on rendered MuJoCo Scenes.")
    p.add_argument("--n", type=int, default=20000, help="training scenes (default 20000)")
    p.add_argument("--val-n", type=int, default=2000, help="held-out validation scenes (default 2000)")
    p.add_argument("--res", type=int, default=64, choices=RESOLUTIONS)
    p.add_argument("--out", type=Path, required=True, help="where to save the judges (.pt)")
    p.add_argument("--seed", type=int, default=1000, help="training-data seed; validation uses seed + 1")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--renderer", default="auto", choices=RENDERERS)
    p.add_argument("--workers", type=int, default=None, help="render processes")
    p.add_argument("--cache-dir", type=Path, default=None, help="scene cache (default ~/.cache/ebm_fast/scenes)")
    p.add_argument("--no-light-variation", action="store_true", help="train on the fixed light only")
    p.add_argument("--distractors", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@command("judges train")
def main(argv: list[str] | None = None) -> int:
    from ..paper.judges import train_judges

    args = _parser().parse_args(argv)
    for flag, value, low in (("--n", args.n, 1), ("--val-n", args.val_n, 1), ("--epochs", args.epochs, 1),
                             ("--batch-size", args.batch_size, 1), ("--workers", args.workers, 1),
                             ("--distractors", args.distractors, 0)):
        at_least(value, low, flag)
    set_threads(args.threads)
    writable_file(args.out, "--out")
    t0 = time.perf_counter()
    _, metrics = train_judges(
        n=args.n, resolution=args.res, val_n=args.val_n, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, renderer=args.renderer, workers=args.workers,
        cache_dir=args.cache_dir, light_variation=not args.no_light_variation,
        distractors=args.distractors, out=args.out, progress=not args.no_progress, log=say)
    print(json.dumps({"out": str(args.out), "wall_seconds": round(time.perf_counter() - t0, 1), **metrics}))
    return 0
