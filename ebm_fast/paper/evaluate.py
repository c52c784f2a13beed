"""The paper's composition tables (Du, Li & Mordatch 2020, Tables 1 and 2), judged on generated scenes.

Each row is a declarative :class:`Row`: a list of :class:`Term` s (a concept attribute, negated or
not, and the box its random targets are drawn from) combined by conjunction (``And``, negated terms
as ``Not(alpha)``) or disjunction (``Or(temperature)``). For ``n`` samples a row

1. draws one random target per sample and term (:func:`draw_targets`: positions uniform in the
   term's box, classes uniform over the concept's classes),
2. builds the expression with per-sample conditions, ``Concept(model, conds, per_sample=True)``
   (:func:`build_expr`),
3. samples it (:func:`ebm_fast.chains.sample_images`, or any injected ``sampler``),
4. scores the samples with the judges (:func:`score`): a position is correct within
   ``POSITION_THRESHOLD = 0.4`` of its target (the paper's criterion), a colour/shape when the
   predicted class equals the target. A negated term is scored against its *negated* target (the
   composition should make that accuracy LOW); a disjunction reports, per term, the fraction of
   samples at that term's target.

Table 1 (concepts trained independently on all scenes): Color, Position, Conj(Position, Color),
Conj(Position, Not Color), Conj(Not Position, Color), Disj(Position 1, Position 2) with position 1
in the lower-left and position 2 in the upper-right quarter of ``[-1, 1]^2``. Table 2 (continual
learning): a position concept trained on purple cubes, then shape trained with it frozen, then
colour trained with both frozen; rows Position, Position & Shape, Position & Shape & Color.

Every row starts from the same seed (the same target draws where rows share a term, the same chain
starts and Langevin noise): common random numbers, so differences between rows come from the
compositions, not from the draws.

``ebm-fast eval composition`` prints our numbers beside the paper's and writes ``report.md``,
``results.json`` and one PNG grid per row to ``--out``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..compose import DEFAULT_NOT_ALPHA, DEFAULT_SAMPLE_TEMPERATURE, And, Expr, Not, Or
from .concepts import CLASS_ATTRIBUTES, class_names, make_concept
from .judges import POSITION_THRESHOLD
from ..progress import progress_bar
from ..chains import ChainSettings, concepts_resolution, sample_images, to_uint8

__all__ = ["Term", "Row", "TABLE1", "TABLE2", "EXTRA", "ROWS", "RowResult", "draw_targets", "build_expr", "score",
           "confusion_counts", "evaluate_row", "evaluate", "format_table", "write_report", "continual_commands", "tile_labels",
           "report_start", "report_finish"]

FULL = (-1.0, 1.0, -1.0, 1.0)          # (x_lo, x_hi, y_lo, y_hi)
LOWER_LEFT = (-1.0, 0.0, -1.0, 0.0)
UPPER_RIGHT = (0.0, 1.0, 0.0, 1.0)


@dataclass(frozen=True)
class Term:
    """One concept of a row: ``attribute``, ``negated`` (a ``Not`` inside the conjunction), the
    ``box`` position targets are drawn from, the metric ``label`` (default: the attribute), and
    ``either``: the terms of an ``"and"`` row marked so form one ``Or`` inside the conjunction (a
    nested expression such as ``(position 1 | position 2) & color``)."""

    attribute: str
    negated: bool = False
    box: tuple[float, float, float, float] = FULL
    label: str | None = None
    either: bool = False

    @property
    def metric(self) -> str:
        return self.label or self.attribute


@dataclass(frozen=True)
class Row:
    """A table row: ``terms`` combined by ``combine`` (``"and"`` or ``"or"``); ``paper`` maps a
    metric label to the paper's value (missing = not known here, printed ``n/a``)."""

    key: str
    label: str
    table: int
    terms: tuple[Term, ...]
    combine: str = "and"
    paper: Mapping[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        return [t.metric for t in self.terms]

    def describe(self, metric: str) -> str:
        t = next(t for t in self.terms if t.metric == metric)
        if t.negated:
            return f"{metric} acc vs negated target (low is good)"
        if self.combine == "or":
            return f"fraction at {metric}"
        return f"{metric} acc"


# Paper values: Table 1 of Du, Li & Mordatch (2020) for Conj(Position, Color) and Disj, Table 2's
# last row; the other cells were not available to us (printed n/a).
TABLE1 = (
    Row("color", "Color", 1, (Term("color"),)),
    Row("position", "Position", 1, (Term("position"),)),
    Row("conj_pos_color", "Conj(Position, Color)", 1, (Term("position"), Term("color")),
        paper={"position": 0.801, "color": 0.8125}),
    Row("conj_pos_not_color", "Conj(Position, Not Color)", 1, (Term("position"), Term("color", negated=True))),
    Row("conj_not_pos_color", "Conj(Not Position, Color)", 1, (Term("position", negated=True), Term("color"))),
    Row("disj_pos", "Disj(Position 1, Position 2)", 1,
        (Term("position", box=LOWER_LEFT, label="position 1"), Term("position", box=UPPER_RIGHT, label="position 2")),
        combine="or", paper={"position 1": 0.432, "position 2": 0.413}),
)
TABLE2 = (
    Row("continual_pos", "Position (purple cubes)", 2, (Term("position"),)),
    Row("continual_pos_shape", "+ Shape", 2, (Term("position"), Term("shape"))),
    Row("continual_pos_shape_color", "+ Color", 2, (Term("position"), Term("shape"), Term("color")),
        paper={"position": 0.781, "shape": 0.703, "color": 0.521}),
)
# Single concepts the paper's tables do not list, judged only when asked for by ``--rows``; they use
# the Table 1 concepts folder.
EXTRA = (
    Row("shape", "Shape", 1, (Term("shape"),)),
    Row("size", "Size", 1, (Term("size"),)),
    Row("conj_pos_size", "Conj(Position, Size)", 1, (Term("position"), Term("size"))),
)
ROWS = {r.key: r for r in TABLE1 + TABLE2 + EXTRA}


# ---- the three parts of a row ------------------------------------------------------------------
def draw_targets(row: Row, n: int, gen: torch.Generator, concepts: Mapping | None = None) -> list[Tensor]:
    """One target per sample and term: ``(n, 2)`` float positions in the term's box, ``(n,)`` int64
    class indices (into the concept's class names), ``(n,)`` float sizes (the dataset's range)."""
    from .scenes import SIZE_RANGE

    out = []
    for t in row.terms:
        if t.attribute == "position":
            x0, x1, y0, y1 = t.box
            u = torch.rand(n, 2, generator=gen)
            out.append(torch.stack([x0 + (x1 - x0) * u[:, 0], y0 + (y1 - y0) * u[:, 1]], dim=1))
        elif t.attribute in CLASS_ATTRIBUTES:
            meta = concepts[t.attribute][1] if concepts and t.attribute in concepts else None
            out.append(torch.randint(len(class_names(t.attribute, meta)), (n,), generator=gen))
        else:
            lo, hi = SIZE_RANGE
            out.append(lo + (hi - lo) * torch.rand(n, generator=gen))
    return out


def build_expr(row: Row, concepts: Mapping, targets: Sequence[Tensor], *, alpha: float = DEFAULT_NOT_ALPHA,
               temperature: float = DEFAULT_SAMPLE_TEMPERATURE) -> Expr:
    """The row's expression with per-sample conditions ``targets`` (as :func:`draw_targets` gives)."""
    leaves = []
    for t, tgt in zip(row.terms, targets, strict=True):
        c = make_concept(concepts, t.attribute, tgt, per_sample=True)
        leaves.append(Not(c, alpha=alpha) if t.negated else c)
    if row.combine == "or":
        return Or(*leaves, temperature=temperature)
    either = [leaf for leaf, t in zip(leaves, row.terms) if t.either]
    if either:
        rest = [leaf for leaf, t in zip(leaves, row.terms) if not t.either]
        leaves = [Or(*either, temperature=temperature) if len(either) > 1 else either[0], *rest]
    return And(*leaves) if len(leaves) > 1 else leaves[0]


def _short(v: float) -> str:
    """``+0.50`` -> ``+.50``: a coordinate in 4 characters, so a position fits a 64-pixel tile."""
    return f"{v:+.2f}".replace("0.", ".", 1)


def tile_labels(row: Row, targets: Sequence[Tensor], concepts: Mapping | None = None) -> list[str]:
    """One caption per sample: its target per term, a line each (``+.50,-.25`` for a position,
    the class name, ``s.21`` for a size), ``~`` before a negated term, ``|`` before each term of a
    disjunction, so a grid tile can be checked by eye against what it was drawn for."""
    lines = []
    for t, tgt in zip(row.terms, targets, strict=True):
        prefix = ("~" if t.negated else "") + ("|" if row.combine == "or" or t.either else "")
        if t.attribute == "position":
            lines.append([f"{prefix}{_short(x)},{_short(y)}" for x, y in tgt.tolist()])
        elif t.attribute in CLASS_ATTRIBUTES:
            names = class_names(t.attribute, concepts[t.attribute][1] if concepts and t.attribute in concepts else None)
            lines.append([f"{prefix}{names[int(i)]}" for i in tgt.tolist()])
        else:
            lines.append([f"{prefix}s{_short(float(v))[1:]}" for v in tgt.tolist()])
    return ["\n".join(parts) for parts in zip(*lines)]


def _judge_index(attribute: str, idx: Tensor, names: Sequence[str], judge_names: Sequence[str]) -> Tensor:
    """Class indices into ``names`` -> indices into the judges' ``judge_names`` (-1: a class the
    judges do not know, never correct)."""
    lut = torch.tensor([list(judge_names).index(c) if c in judge_names else -1 for c in names], dtype=torch.long)
    return lut[idx.long()]


def score(row: Row, pred: Mapping[str, Tensor], targets: Sequence[Tensor], *,
          class_names_by_attr: Mapping[str, Sequence[str]] | None = None,
          judge_names: Mapping[str, Sequence[str]] | None = None,
          position_threshold: float = POSITION_THRESHOLD) -> dict[str, Tensor]:
    """Per-sample correctness ``{metric: bool (n,)}`` of judged predictions against the targets.

    Args:
        pred: the judges' predictions (:meth:`ebm_fast.paper.judges.Judges.predict`): ``pos`` ``(n, 2)``,
            ``color``/``shape`` ``(n,)`` class indices into ``judge_names``, ``size`` ``(n,)``.
        targets: one tensor per term (as :func:`draw_targets` gives).
        class_names_by_attr: class names the targets index (default: the dataset's).
        judge_names: class names the predictions index (default: the dataset's).
    """
    from .judges import SIZE_TOLERANCE

    out = {}
    for t, tgt in zip(row.terms, targets, strict=True):
        if t.attribute == "position":
            ok = (pred["pos"].float() - tgt.float()).norm(dim=1) <= position_threshold
        elif t.attribute in CLASS_ATTRIBUTES:
            names = (class_names_by_attr or {}).get(t.attribute) or class_names(t.attribute)
            jn = (judge_names or {}).get(t.attribute) or class_names(t.attribute)
            ok = pred[t.attribute].long() == _judge_index(t.attribute, tgt, names, jn)
        else:
            ok = (pred["size"].float() - tgt.float()).abs() <= SIZE_TOLERANCE
        out[t.metric] = ok
    return out


def confusion_counts(row: Row, pred: Mapping[str, Tensor], targets: Sequence[Tensor],
                     class_names_by_attr: Mapping[str, Sequence[str]],
                     judge_names: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """Per class-valued term (colour, shape), the counts ``(len(target classes), len(judged
    classes))`` of samples drawn for each target class (rows, the concept's class names) that the
    judges called each class (columns, the judges' class names)."""
    out = {}
    for t, tgt in zip(row.terms, targets, strict=True):
        if t.attribute not in CLASS_ATTRIBUTES:
            continue
        counts = np.zeros((len(class_names_by_attr[t.attribute]), len(judge_names[t.attribute])), np.int64)
        np.add.at(counts, (tgt.long().cpu().numpy(), pred[t.attribute].long().cpu().numpy()), 1)
        out[t.metric] = counts
    return out


def _merge_counts(total: dict[str, np.ndarray], more: Mapping[str, np.ndarray]) -> None:
    for m, c in more.items():
        total[m] = total[m] + c if m in total else c.copy()


# ---- running rows --------------------------------------------------------------------------------
Sampler = Callable[[Expr, int, int], Tensor]  # (expr, n, seed) -> images (n, 3, R, R) in [0, 1]


@dataclass
class RowResult:
    """A judged row: ``metrics`` (label -> accuracy or fraction), ``n`` samples, the first samples as
    uint8 ``(k, H, W, 3)`` ``images`` with their targets as captions ``labels``, the wall time ``seconds``,
    and per class-valued term its
    ``confusion``: ``{metric: {"targets": names, "judged": names, "counts": [[int]]}}`` (rows: the
    class each sample was drawn for; columns: the class the judges called it)."""

    row: Row
    metrics: dict[str, float]
    n: int
    images: np.ndarray
    seconds: float
    confusion: dict[str, dict] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # one caption per kept image: its targets (tile_labels)
    realism: dict | None = None  # ebm_fast.paper.realism.realism of the kept images, when measured

    def per_class(self, metric: str) -> dict[str, tuple[float, int]]:
        """``{target class: (fraction judged as that class, samples drawn for it)}`` of a class term."""
        c = self.confusion[metric]
        out = {}
        for name, counts in zip(c["targets"], c["counts"]):
            hit = counts[c["judged"].index(name)] if name in c["judged"] else 0
            out[name] = (hit / sum(counts) if sum(counts) else float("nan"), int(sum(counts)))
        return out

    def to_dict(self) -> dict:
        return {"key": self.row.key, "label": self.row.label, "table": self.row.table, "n": self.n,
                "metrics": self.metrics, "paper": dict(self.row.paper), "seconds": round(self.seconds, 3),
                "confusion": self.confusion, **({"realism": self.realism} if self.realism is not None else {})}


GRID_IMAGES = 64  # samples shown in a row's grid


def evaluate_row(row: Row, concepts: Mapping, judges, n: int, *, sampler: Sampler | None = None,
                 settings: ChainSettings | None = None, seed: int = 0, alpha: float = DEFAULT_NOT_ALPHA,
                 temperature: float = DEFAULT_SAMPLE_TEMPERATURE, targets: Sequence[Tensor] | None = None,
                 keep_images: int = 64, on_batch: Callable[[int], None] | None = None) -> RowResult:
    """Draw targets (unless given), sample in batches of ``settings.batch_size`` (``sampler``
    default: :func:`sample_images` with ``settings``), judge, and average. ``on_batch(k)`` is called
    after each batch of ``k`` samples (a progress bar's update).

    ``sampler(expr, n, seed)`` must return ``n`` images ``(n, 3, R, R)`` float in [0, 1] for ``expr``
    (whose leaves hold ``n`` per-sample conditions); batches are requested in order.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    settings = settings or ChainSettings()
    if targets is None:
        targets = draw_targets(row, n, torch.Generator().manual_seed(seed), concepts)
    elif len(targets) != len(row.terms) or any(len(t) != n for t in targets):
        raise ValueError(f"targets: expected {len(row.terms)} tensors of {n} rows, got "
                         f"{[tuple(t.shape) for t in targets]}")
    if sampler is None:
        res = settings.resolution or concepts_resolution(concepts)
        sampler = lambda expr, m, s: sample_images(expr, m, settings, res, s)  # noqa: E731
    t0 = time.perf_counter()
    names = {a: class_names(a, concepts[a][1] if a in concepts else None) for a in CLASS_ATTRIBUTES}
    jnames = {"color": judges.colors, "shape": judges.shapes}
    hits = {m: [] for m in row.metrics}
    counts: dict[str, np.ndarray] = {}
    kept, labels = [], []
    for start in range(0, n, settings.batch_size):
        stop = min(n, start + settings.batch_size)
        tg = [t[start:stop] for t in targets]
        images = sampler(build_expr(row, concepts, tg, alpha=alpha, temperature=temperature), stop - start,
                         seed * 1_000_003 + start)
        if tuple(images.shape[:2]) != (stop - start, 3):
            raise ValueError(f"sampler: expected images ({stop - start}, 3, R, R), got {tuple(images.shape)}")
        pred = judges.predict(images)
        ok = score(row, pred, tg, class_names_by_attr=names, judge_names=jnames)
        _merge_counts(counts, confusion_counts(row, pred, tg, names, jnames))
        for m, v in ok.items():
            hits[m].append(v)
        if sum(len(k) for k in kept) < keep_images:
            kept.append(to_uint8(images[: keep_images - sum(len(k) for k in kept)]))
            labels += tile_labels(row, [t[: len(kept[-1])] for t in tg], concepts)
        if on_batch is not None:
            on_batch(stop - start)
    metrics = {m: float(torch.cat(v).float().mean()) for m, v in hits.items()}
    kept = np.concatenate(kept) if kept else np.zeros((0, images.shape[2], images.shape[3], 3), np.uint8)
    confusion = {}
    for t in row.terms:
        if t.metric in counts:
            confusion[t.metric] = {"targets": list(names[t.attribute]), "judged": list(jnames[t.attribute]),
                                   "counts": counts[t.metric].tolist()}
    return RowResult(row, metrics, n, kept, time.perf_counter() - t0, confusion, labels)


def evaluate(rows: Sequence[Row], concepts: Mapping, judges, n: int, *, continual: Mapping | None = None,
             progress: Callable[[RowResult], None] | None = None, **kw) -> list[RowResult]:
    """:func:`evaluate_row` for each row (Table 2 rows use the ``continual`` concept set), with a progress
    bar over all samples on a terminal; ``progress(result)`` after each row (print with
    :func:`ebm_fast.progress.say` to keep the bar below the lines)."""
    for row in rows:
        if row.table != 1 and continual is None:
            raise ValueError(f"row {row.label!r} (Table 2) needs the continual concept set, got None")
    out = []
    with progress_bar(total=n * len(rows), desc="sample + judge", unit="sample") as bar:
        for row in rows:
            r = evaluate_row(row, concepts if row.table == 1 else continual, judges, n, on_batch=bar.update, **kw)
            out.append(r)
            if progress:
                progress(r)
    return out


# ---- reporting -----------------------------------------------------------------------------------
def _cell(v: float | None, paper: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:g}" if paper else f"{v:.3f}"  # the paper's values as printed there (0.8125)


def table_lines(results: Sequence[RowResult]) -> list[tuple[str, str, str, str, str]]:
    """``(table, row, metric, ours, paper)`` per metric, in order."""
    lines = []
    for r in results:
        for m in r.row.metrics:
            lines.append((f"Table {r.row.table}", r.row.label, r.row.describe(m), _cell(r.metrics[m]),
                          _cell(r.row.paper.get(m), paper=True)))
    return lines


def format_table(results: Sequence[RowResult]) -> str:
    """The printed table: one line per (row, metric) with ours beside the paper's."""
    head = ("table", "row", "metric", "ours", "paper")
    lines = [head] + table_lines(results)
    w = [max(len(l[i]) for l in lines) for i in range(5)]
    fmt = lambda l: "  ".join(s.ljust(w[i]) if i < 3 else s.rjust(w[i]) for i, s in enumerate(l))  # noqa: E731
    return "\n".join([fmt(head), "  ".join("-" * x for x in w)] + [fmt(l) for l in lines[1:]])


def confusion_markdown(r: RowResult) -> list[str]:
    """Markdown lines: per class-valued term of ``r``, the judges' verdicts by target class."""
    md = []
    negated = {t.metric for t in r.row.terms if t.negated}
    for m, c in r.confusion.items():
        judged = c["judged"]
        drawn = "the negated class, drawn away from" if m in negated else "the class drawn for"
        md += [f"Judges' {m} by target {m} (rows: {drawn}; columns: the judges' verdict):", "",
               "| target | n | " + " | ".join(judged) + " | fraction as target |",
               "| --- | ---: | " + " | ".join("---:" for _ in judged) + " | ---: |"]
        for name, (frac, count) in r.per_class(m).items():
            cells = " | ".join(str(v) for v in c["counts"][c["targets"].index(name)])
            md.append(f"| {name} | {count} | {cells} | {_cell(frac)} |")
        md.append("")
    return md


def write_report(results: Sequence[RowResult], out: str | Path, info: Mapping | None = None) -> Path:
    """Write ``out/report.md`` (the table with the paper's numbers, settings, grids), ``out/results.json``
    and ``out/<row key>.png`` (the first samples of each row); returns the report's path."""
    from ..atomic_file import atomic_write
    from ..image_grid import save_image_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(info or {})
    md = ["# Composition evaluation (Du, Li & Mordatch 2020, Tables 1 and 2)", "",
          "Samples judged by `ebm_fast.paper.judges` (position correct within 0.4 of its target in [-1, 1]^2; "
          "colour and shape correct when equal). A negated attribute is scored against its negated target "
          "(lower is better); a disjunction reports the fraction of samples at each position. "
          "Paper values we could not source are `n/a`.", ""]
    if info:
        md += ["Settings: " + ", ".join(f"`{k}={v}`" for k, v in info.items()), ""]
    md += ["| table | row | metric | ours | paper | n |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in results:
        for m in r.row.metrics:
            md.append(f"| {r.row.table} | {r.row.label} | {r.row.describe(m)} | {_cell(r.metrics[m])} | "
                      f"{_cell(r.row.paper.get(m), paper=True)} | {r.n} |")
    md.append("")
    for r in results:
        if len(r.images):
            vals = ", ".join(f"{m} {v:.2f}" for m, v in r.metrics.items())
            shown = r.images[:GRID_IMAGES]
            save_image_grid(out / f"{r.row.key}.png", shown, ncols=8, title=f"{r.row.label}: {vals}",
                            labels=r.labels[:len(shown)] if len(r.labels) == len(r.images) else None)
            md += [f"## {r.row.label} (Table {r.row.table})", "",
                   f"![{r.row.label}]({r.row.key}.png)", "",
                   f"{r.n} samples in {r.seconds:.1f} s; first {len(shown)} shown, each captioned with its "
                   "target(s) (`~`: negated, `|`: a term of a disjunction).", ""]
            if r.realism is not None:
                md += [f"Realism of {len(r.images)} samples: {r.realism['scaled']:.3f} (Fréchet distance of judge "
                       f"features to fresh renders {r.realism['fd']:.2f}; renders {r.realism['floor']:.2f}, uniform "
                       f"noise {r.realism['noise']:.2f}).", ""]
        md += confusion_markdown(r)
    payload = json.dumps({"info": info, "rows": [r.to_dict() for r in results]}, indent=2).encode()
    atomic_write(out / "results.json", lambda f: f.write(payload))
    text = "\n".join(md).encode()
    return atomic_write(out / "report.md", lambda f: f.write(text))


def report_start(out: str | Path, title: str, intro: str, info: Mapping | None) -> tuple[Path, list[str]]:
    """The report folder ``out`` (created) and the first markdown lines of a report: ``title``, the
    ``intro`` paragraph and a settings line from ``info``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", "", intro, ""]
    if info:
        md += ["Settings: " + ", ".join(f"`{k}={v}`" for k, v in info.items()), ""]
    return out, md


def report_finish(out: Path, payload: Mapping, md: Sequence[str]) -> Path:
    """Write ``out/results.json`` (``payload``) and ``out/report.md`` (``md`` lines) atomically; returns the
    report's path."""
    from ..atomic_file import atomic_write

    blob = json.dumps(payload, indent=2).encode()
    atomic_write(out / "results.json", lambda f: f.write(blob))
    text = "\n".join(md).encode()
    return atomic_write(out / "report.md", lambda f: f.write(text))


def continual_commands(directory: str | Path) -> list[str]:
    """The training commands of the Table 2 concept set (position on purple cubes, then shape with
    position frozen, then colour with both frozen), copying each ``model.pt`` into ``directory``.
    Each uses the shipped concepts' recipe (:func:`ebm_fast.paper.concepts.recipe_flags`)."""
    from .concepts import recipe_flags

    d = Path(directory)
    run = "runs/continual"
    return [
        f"ebm-fast train --data scenes --cond position --shapes box --colors purple {recipe_flags('position')}"
        f" --out {run}/position && cp {run}/position/model.pt {d / 'position.pt'}",
        f"ebm-fast train --data scenes --cond shape --colors purple --frozen {d / 'position.pt'}=position"
        f" {recipe_flags('shape')} --out {run}/shape && cp {run}/shape/model.pt {d / 'shape.pt'}",
        f"ebm-fast train --data scenes --cond color --frozen {d / 'position.pt'}=position {d / 'shape.pt'}=shape"
        f" {recipe_flags('color')} --out {run}/color && cp {run}/color/model.pt {d / 'color.pt'}",
    ]
