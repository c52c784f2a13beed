"""Fig. 4 of Du, Li & Mordatch (2020): conjunctions that add one concept per row, judged.

The rows are shape; shape & position; shape & position & size; shape & position & size & colour
(:data:`FIG4`), each judged on ``n`` samples beside each concept alone (:data:`ALONE`: position, size,
colour; shape alone is the first row). The paper shows the figure as images without numbers; the bar
held here is every attribute of the four-way conjunction judged at >= 0.70 (:data:`TARGET`).

Every row reads its targets from one draw for the four-way row (:func:`shared_targets`) and starts its
chains from the same seed, so column ``j`` of the grid is the same sample asked for one more attribute
per row, as in the paper's figure, and differences between rows come from the composition, not from
the draws. Judging is :func:`ebm_fast.paper.evaluate.evaluate_row`'s (position within 0.4, size within
``SIZE_TOLERANCE``, shape and colour equal).

``ebm-fast eval four-way`` writes ``report.md``, ``results.json`` and ``fig4.png`` (the rows, each
tile captioned with its targets) plus ``alone.png`` to ``--out``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..image_grid import save_image_grid
from .evaluate import Row, RowResult, Term, draw_targets, evaluate_row, report_finish, report_start

__all__ = ["FIG4", "ALONE", "ATTRIBUTE_ORDER", "TARGET", "chance_levels", "shared_targets", "evaluate_four_way",
           "write_four_way_report"]

ATTRIBUTE_ORDER = ("shape", "position", "size", "color")  # the order the rows add them
TARGET = 0.70  # every attribute of the four-way row (the bar held to the paper's Fig. 4)


def _terms(*attributes: str) -> tuple[Term, ...]:
    return tuple(Term(a) for a in attributes)


FIG4 = tuple(
    Row(f"fig4_{'_'.join(ATTRIBUTE_ORDER[:k])}", " & ".join(a.capitalize() for a in ATTRIBUTE_ORDER[:k]), 1,
        _terms(*ATTRIBUTE_ORDER[:k]))
    for k in range(1, len(ATTRIBUTE_ORDER) + 1)
)
ALONE = tuple(Row(f"alone_{a}", f"{a.capitalize()} alone", 1, _terms(a)) for a in ATTRIBUTE_ORDER[1:])


def chance_levels(class_counts: Mapping[str, int] | None = None) -> dict[str, float]:
    """What a judge scores on samples that ignore their targets: 1 / classes for shape and colour; for
    position, the probability that two uniform points of ``[-1, 1]^2`` lie within 0.4
    (``POSITION_THRESHOLD``), 0.105; for size, that two uniform sizes of ``SIZE_RANGE`` lie within
    ``SIZE_TOLERANCE``, ``1 - (1 - t / L)^2`` = 0.325."""
    from .judges import POSITION_THRESHOLD, SIZE_TOLERANCE
    from .scenes import COLOR_NAMES, SHAPES, SIZE_RANGE

    counts = {"shape": len(SHAPES), "color": len(COLOR_NAMES), **(class_counts or {})}
    r = POSITION_THRESHOLD / 2.0  # the same question on the unit square
    # P(|X - Y| <= r) for X, Y uniform on the unit square: pi r^2 - 8/3 r^3 + r^4 / 2 (r <= 1)
    position = math.pi * r ** 2 - 8.0 / 3.0 * r ** 3 + r ** 4 / 2.0
    t = SIZE_TOLERANCE / (SIZE_RANGE[1] - SIZE_RANGE[0])
    return {"shape": 1.0 / counts["shape"], "position": position, "size": 1.0 - (1.0 - t) ** 2,
            "color": 1.0 / counts["color"]}


def shared_targets(n: int, seed: int, concepts: Mapping | None = None) -> dict[str, Tensor]:
    """One target per sample and attribute, drawn for the four-way row (:func:`draw_targets`); every
    row takes its attributes' targets from these."""
    four = FIG4[-1]
    drawn = draw_targets(four, n, torch.Generator().manual_seed(seed), concepts)
    return {t.attribute: tg for t, tg in zip(four.terms, drawn, strict=True)}


def evaluate_four_way(concepts: Mapping, judges, n: int, *, seed: int = 0, rows: Sequence[Row] = FIG4 + ALONE,
                      on_row: Callable[[RowResult], None] | None = None, **kw) -> list[RowResult]:
    """:func:`evaluate_row` of each row on the shared targets and chain seed ``seed``; ``kw`` goes to
    :func:`evaluate_row` (``settings``, ``sampler``, ``keep_images``, ``on_batch``)."""
    targets = shared_targets(n, seed, concepts)
    out = []
    for row in rows:
        r = evaluate_row(row, concepts, judges, n, seed=seed, targets=[targets[t.attribute] for t in row.terms], **kw)
        out.append(r)
        if on_row is not None:
            on_row(r)
    return out


def _cell(r: RowResult, attribute: str) -> str:
    return f"{r.metrics[attribute]:.3f}" if attribute in r.metrics else ""


def _grid(path: Path, results: Sequence[RowResult], title: str, ncols: int) -> Path | None:
    """One grid row per result (its first ``ncols`` samples, captioned with their targets); the first
    caption of a row names it by the attribute it adds (``+size``)."""
    images, labels = [], []
    for r in results:
        k = min(ncols, len(r.images))
        images.append(r.images[:k])
        tag = ("+" if len(r.row.terms) > 1 else "") + r.row.terms[-1].attribute
        labels += [f"{tag if j == 0 else ''}\n{c}" for j, c in enumerate(r.labels[:k])]
    if not images or not sum(len(i) for i in images):
        return None
    return save_image_grid(path, np.concatenate(images), ncols=ncols, title=title, labels=labels)


def write_four_way_report(results: Sequence[RowResult], out: str | Path, info: Mapping | None = None,
                          ncols: int = 8) -> Path:
    """``out/report.md`` (rows x attributes, chance and the target), ``out/results.json`` and the grids
    ``out/fig4.png`` (the Fig. 4 rows) and ``out/alone.png`` (each concept alone); returns the report."""
    chance = chance_levels()
    four = next((r for r in results if r.row.key == FIG4[-1].key), None)
    met = None if four is None else all(v >= TARGET for v in four.metrics.values())
    out, md = report_start(
        out, "Four-way conjunction (Du, Li & Mordatch 2020, Fig. 4)",
        "Each row adds one concept to the conjunction; every row reads the same targets and starts from the "
        "same chain seed, so a column of the grid is one sample asked for one more attribute per row. Judged "
        "by `ebm_fast.paper.judges`: position within 0.4 of its target in [-1, 1]^2, size within the judges' "
        "size tolerance, shape and colour equal.", info)
    md += ["| row | n | " + " | ".join(ATTRIBUTE_ORDER) + " |", "| --- | ---: |" + " ---: |" * len(ATTRIBUTE_ORDER)]
    for r in results:
        md.append(f"| {r.row.label} | {r.n} | " + " | ".join(_cell(r, a) for a in ATTRIBUTE_ORDER)
                  + " |")
    md.append("| chance | | " + " | ".join(f"{chance[a]:.3f}" for a in ATTRIBUTE_ORDER) + " |")
    md.append("| target (four-way) | | " + " | ".join(f"{TARGET:.2f}" for _ in ATTRIBUTE_ORDER) + " |")
    md += ["", "Four-way target (every attribute >= 0.70): " + {None: "not evaluated", True: "met",
                                                               False: "not met"}[met] + ".", ""]
    grids = [("fig4.png", [r for r in results if r.row.key.startswith("fig4_")], "Fig. 4 rows"),
             ("alone.png", [r for r in results if r.row.key.startswith("alone_")], "each concept alone")]
    for name, rs, what in grids:
        if rs and _grid(out / name, rs, f"{what}: first {ncols} samples, captioned with their targets", ncols):
            md += [f"## {what.capitalize()}", "", f"![{what}]({name})", ""]
    return report_finish(out, {"info": dict(info or {}), "chance": chance, "target": TARGET, "four_way_target_met": met,
                               "rows": [r.to_dict() for r in results]}, md)
