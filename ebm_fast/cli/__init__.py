"""The ``ebm-fast`` command: argparse subcommands, one module per command, each with ``main(argv)``.

    ebm-fast demo [...]                 sample composed concepts and check them         (cli/demo.py)
    ebm-fast train [...]                train a conditional EBM                          (cli/train.py)
    ebm-fast export RUN OUT             write a run's model from its newest checkpoint  (cli/export.py)
    ebm-fast data scenes [...]          render the MuJoCo Scenes dataset                 (cli/data_scenes.py)
    ebm-fast judges train [...]         train the attribute judges                       (cli/judges_train.py)
    ebm-fast sample "EXPR" [...]        sample an expression of concepts to a grid/.npz  (cli/sample.py)
    ebm-fast eval composition [...]     the paper's Tables 1 and 2, judged               (cli/eval_composition.py)
    ebm-fast eval inference [...]       the paper's Table 3 and Fig. 11                  (cli/eval_inference.py)
    ebm-fast eval models RUN [...]      judge a run's exported models, pick the best     (cli/eval_models.py)
    ebm-fast eval diffusion [...]       judge a diffusion-trained energy's concepts      (cli/eval_diffusion.py)
    ebm-fast eval four-way [...]        the paper's Fig. 4, judged                       (cli/eval_four_way.py)
    ebm-fast eval multi-object [...]    the paper's Fig. 6, green objects detected       (cli/eval_multi_object.py)
    ebm-fast eval extrapolation [...]   the paper's Fig. 9 (section 3.4), regressed      (cli/eval_extrapolation.py)
    ebm-fast infer [...]                infer positions from images with a position EBM  (cli/infer.py)
    ebm-fast models combine A B --out C save several models of one concept as one        (cli/models_combine.py)

``ebm-fast COMMAND --help`` shows a command's options. A command module is imported only when it runs,
so ``ebm-fast --help`` and each command start without loading the others. ``python -m ebm_fast.cli``
(also under ``torchrun -m ebm_fast.cli train ...``) is the same command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "COMMANDS"]

# command words -> (module under ebm_fast.cli, one line of help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("demo",): ("demo", "sample composed concepts and check the samples"),
    ("train",): ("train", "train a conditional EBM"),
    ("export",): ("export", "write the model of a training run's newest checkpoint"),
    ("data", "scenes"): ("data_scenes", "render the MuJoCo Scenes dataset"),
    ("judges", "train"): ("judges_train", "train the attribute judges"),
    ("sample",): ("sample", "sample a concept expression to a PNG grid or an .npz"),
    ("eval", "composition"): ("eval_composition", "judge the paper's composition tables (1 and 2)"),
    ("eval", "inference"): ("eval_inference", "Table 3 / Fig. 11: position inference vs a ResNet regressor"),
    ("eval", "diffusion"): ("eval_diffusion", "sample and judge the concepts of a diffusion-trained energy"),
    ("eval", "models"): ("eval_models", "judge every model a training run exported and pick the best"),
    ("eval", "four-way"): ("eval_four_way", "Fig. 4: conjunctions adding one concept per row, judged"),
    ("eval", "multi-object"): ("eval_multi_object", "Fig. 6: two positions of one concept, green objects detected"),
    ("eval", "extrapolation"): ("eval_extrapolation", "Fig. 9: size x position combinations never seen in training"),
    ("infer",): ("infer", "infer the position behind images with a position EBM"),
    ("models", "combine"): ("models_combine", "save several models of one concept as one concept file"),
}

_GROUPS = {"data": "datasets", "judges": "the attribute judges", "eval": "the paper's evaluations",
           "models": "model files"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and status 2, like every command's mistakes
        print(f"{self.prog}: error: {message} (see ebm-fast --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    """The command tree, for ``--help`` and for finding which command the words name; each command parses
    its own options (``add_help=False`` here, so ``ebm-fast train --help`` reaches the train parser)."""
    top = _Parser(prog="ebm-fast", description="Fast sampling, composition, training and inference for "
                                               "energy-based models.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, (module, text) in COMMANDS.items():
        if len(words) == 1:
            sp = sub.add_parser(words[0], help=text, add_help=False)
        else:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=_GROUPS[words[0]])
                groups[words[0]] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
            sp = groups[words[0]].add_parser(words[1], help=text, add_help=False)
        sp.set_defaults(module=module, words=words)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run ``ebm-fast ARGV``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _parser()
    if not argv:
        top.print_help()
        return 0
    try:
        args, rest = top.parse_known_args(argv)
    except SystemExit as exc:  # --help (0) or an unknown command (2, one line printed)
        return int(exc.code or 0)
    if getattr(args, "module", None) is None:  # a group without its subcommand: "ebm-fast eval"
        subs = ", ".join(w[1] for w in COMMANDS if w[0] == argv[0])
        print(f"ebm-fast {argv[0]}: error: expected a subcommand: {subs} (see ebm-fast {argv[0]} --help)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{args.module}")
    return int(module.main(argv[len(args.words):]) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
