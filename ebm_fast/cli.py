"""The ``ebm-fast`` command: one entry point that forwards to each part's own ``cli_main``.

    ebm-fast demo [...]                 sample composed concepts and check them (the main job)
    ebm-fast train [...]                train a conditional EBM (ebm_fast.train)
    ebm-fast data scenes [...]          render the MuJoCo Scenes dataset (ebm_fast.data.scenes)
    ebm-fast judges train [...]         train the attribute judges (ebm_fast.judges)
    ebm-fast sample "EXPR" [...]        sample an expression of the shipped concepts to a PNG grid
    ebm-fast eval composition [...]     the paper's Tables 1 and 2, judged (ebm_fast.evaluate)
    ebm-fast eval inference [...]       the paper's Table 3 / Fig. 11 (ebm_fast.eval_inference)
    ebm-fast eval models RUN [...]      judge a run's exported models, pick the best (ebm_fast.eval_models)
    ebm-fast infer [...]                infer positions from images with a position EBM
    ebm-fast models combine A B --out C save several models of one concept as one (a product of experts)

``ebm-fast COMMAND --help`` shows each command's options.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["main", "COMMANDS"]

# command words -> (module, function taking argv); modules import only when their command runs
COMMANDS: dict[tuple[str, ...], tuple[str, str, str]] = {
    ("demo",): ("ebm_fast.demo", "cli_main", "sample composed concepts and check the samples"),
    ("train",): ("ebm_fast.train", "cli_main", "train a conditional EBM"),
    ("data", "scenes"): ("ebm_fast.data.scenes", "cli_main", "render the MuJoCo Scenes dataset"),
    ("judges", "train"): ("ebm_fast.judges", "judges_cli_main", "train the attribute judges"),
    ("sample",): ("ebm_fast.sample_cli", "sample_cli_main", "sample a concept expression to a PNG grid"),
    ("eval", "composition"): ("ebm_fast.evaluate", "cli_main", "judge the paper's composition tables (1 and 2)"),
    ("eval", "inference"): ("ebm_fast.eval_inference", "cli_main",
                            "Table 3 / Fig. 11: position inference vs a ResNet regressor"),
    ("eval", "models"): ("ebm_fast.eval_models", "cli_main",
                         "judge every model a training run exported and pick the best"),
    ("infer",): ("ebm_fast.eval_inference", "infer_cli_main", "infer the position behind images with a position EBM"),
    ("models", "combine"): ("ebm_fast.combine_models", "cli_main",
                            "save several models of one concept as one concept file (weighted energy sum)"),
}


def _usage() -> str:
    lines = ["usage: ebm-fast COMMAND [options]", "", "commands:"]
    for words, (_, _, text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {text}")
    lines.append("")
    lines.append("`ebm-fast COMMAND --help` lists a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, (module, func, _) in sorted(COMMANDS.items(), key=lambda kv: -len(kv[0])):
        if tuple(argv[: len(words)]) == words:
            fn = getattr(importlib.import_module(module), func)
            return int(fn(argv[len(words):]) or 0)
    if argv and argv[0] not in ("-h", "--help"):
        print(f"ebm-fast: unknown command {' '.join(argv[:2])!r}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    print(_usage())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
