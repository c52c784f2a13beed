"""Where training runs stand, read from their folders: ``python -m ebm_fast.run_status RUN_DIR...``.

For each run folder written by ``ebm-fast train`` (``log.jsonl``, ``ckpt/``, ``samples/``) it prints the
step reached out of the run's iterations, the speed, the energies, ``cond_acc`` (how well a conditional
model reads its condition; 0.5 = ignored) and the roughness of negatives and data (a noise meter),
the energy of data under a wrong condition (``E~``, with ``--cond-contrast``),
averaged over the last log lines, the newest checkpoint and
the newest grid of negatives.

It also prints ``E-*2a``: the negatives' energy over ``1 / (2 alpha)``. That is where the loss
``E+ - E- + alpha (E+^2 + E-^2)`` puts a negative that the chains can no longer bring down. Near
1.0, every negative sits at the regulariser's optimum: the model tells the chains' output from data
without effort. It is a warning sign, not a verdict. All but three of the concept runs of
docs/training.md after a first stage sat there. In every run judged at several steps, generation
from noise fell as it trained on. In one, generation still rose for 1750 iterations after the
negatives were pinned (docs/training.md, "The negatives' energy"). ``scripts/train_concepts.sh status`` runs it on every concept run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import fmean

__all__ = ["run_summary", "negatives_pinned", "format_summaries", "cli_main"]

PINNED = 0.9  # E- * 2 alpha above this: the negatives sit at the regulariser's optimum


def negatives_pinned(e_neg: float | None, alpha: float | None) -> float | None:
    """``e_neg * 2 alpha``: 1.0 when the negatives' energy is at the loss's optimum ``1 / (2 alpha)``
    (None without a regulariser or an energy)."""
    if e_neg is None or not alpha:
        return None
    return e_neg * 2.0 * alpha


def _log_records(path: Path) -> list[dict]:
    records = []
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return records


def run_summary(run: str | Path, window: int = 20) -> dict:
    """The state of one run folder; averages over the last ``window`` log lines (before ``final``)."""
    run = Path(run)
    config = {}
    if (run / "config.json").is_file():
        config = json.loads((run / "config.json").read_text())
    records = _log_records(run / "log.jsonl")
    final = any(r.get("final") for r in records)
    recent = [r for r in records if not r.get("final")][-window:]

    def mean(key):
        values = [r[key] for r in recent if isinstance(r.get(key), (int, float))]
        return fmean(values) if values else None

    samples = sorted((run / "samples").glob("neg_*.png")) if (run / "samples").is_dir() else []
    return {
        "run": str(run), "step": recent[-1]["step"] if recent else 0, "iterations": config.get("iterations"),
        "finished": final, "it_per_s": mean("it_per_s"), "e_pos": mean("e_pos"), "e_neg": mean("e_neg"),
        "e_wrong": mean("e_wrong"), "cond_acc": mean("cond_acc"), "cond_loss": mean("cond_loss"),
        "neg_pinned": negatives_pinned(mean("e_neg"), config.get("alpha", 1.0)),
        "neg_roughness": mean("neg_roughness"),
        "pos_roughness": mean("pos_roughness"), "checkpoint": (run / "ckpt" / "last.pt").is_file(),
        "model": (run / "model.pt").is_file(), "last_samples": str(samples[-1]) if samples else None,
    }


def format_summaries(summaries: list[dict]) -> str:
    """A plain-text table of :func:`run_summary` results."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    head = (f"{'run':<36} {'step':>12} {'it/s':>6} {'E+':>8} {'E-':>8} {'E~':>8} {'cond_acc':>8} {'c_loss':>6} "
            f"{'rough-':>7} {'rough+':>7} {'E-*2a':>6}  newest negatives")
    lines = [head, "-" * len(head)]
    for s in summaries:
        step = f"{s['step']}/{s['iterations'] or '?'}" + ("*" if s["finished"] else "")
        lines.append(f"{s['run']:<36} {step:>12} {num(s['it_per_s'], '.2f'):>6} {num(s['e_pos'], '+.4f'):>8} "
                     f"{num(s['e_neg'], '+.4f'):>8} {num(s['e_wrong'], '+.4f'):>8} {num(s['cond_acc'], '.3f'):>8} "
                     f"{num(s['cond_loss'], '.3f'):>6} {num(s['neg_roughness'], '.3f'):>7} "
                     f"{num(s['pos_roughness'], '.3f'):>7} {num(s['neg_pinned'], '.2f'):>6}"
                     f"{'!' if (s['neg_pinned'] or 0) > PINNED else ' '} {s['last_samples'] or '-'}")
    lines.append("(* finished: model.pt written; averages over the last log lines; cond_acc 0.5 = condition ignored; "
                 "c_loss: the --cond-contrast ranking loss, 0.693 = chance; E~: energy of data under wrong conditions; "
                 "rough-/rough+: roughness of negatives/data, noise ~0.23; E-*2a: the negatives' energy over the "
                 "loss's optimum for them, 1/(2 alpha); '!' above 0.9: the chains no longer bring negatives near "
                 "the data's energy, a warning sign for generation from noise)")
    return "\n".join(lines)


def cli_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ebm_fast.run_status", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (those without a log.jsonl are skipped)")
    p.add_argument("--window", type=int, default=20, help="log lines averaged (default 20)")
    a = p.parse_args(argv)
    runs = [r for r in a.runs if (Path(r) / "log.jsonl").is_file()]
    if not runs:
        print("no run folder with a log.jsonl among: " + " ".join(a.runs), file=sys.stderr)
        return 2
    print(format_summaries([run_summary(r, a.window) for r in runs]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
