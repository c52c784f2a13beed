"""Judge every model a training run exported and pick the one that generates best.

A run started with ``--export-every N`` keeps its EMA model every N iterations as
``OUT/models/model_NNNNNN.pt``. Generation from noise is what the paper's tables score, and on the
scenes it peaks early in a run and then declines while the training log (energies, ``cond_acc``)
looks the same (docs/training.md, "Choosing the model to ship"); only judging samples tells the
models apart. :func:`judge_run` samples each exported model in the given composition rows
(:mod:`ebm_fast.paper.evaluate`: the run's model stands in for its attribute, the other attributes a
row needs come from a concepts folder), judges the samples, and keeps every result in
``OUT/models/judged.json`` keyed by the judging protocol, so that a second call, while the run goes
on or after a crash, judges only the models it has not judged yet. :func:`best` picks the model
with the highest score (the mean over the rows' metrics, a negated term counting ``1 - accuracy``).

CLI::

    ebm-fast eval models runs/concepts/position32 --rows position conj_pos_color --n 128 \\
        [--concepts DIR] [--every 2 | --every-steps 1000] [--best-to position.pt]
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from ..atomic_file import atomic_write
from ..progress import progress_bar
from ..compose import DEFAULT_NOT_ALPHA, DEFAULT_SAMPLE_TEMPERATURE
from .concepts import canonical_attribute, load_concepts
from .evaluate import Row, RowResult, Sampler, evaluate_row
from ..chains import ChainSettings

__all__ = ["exported_models", "run_attribute", "row_score", "judge_run", "best", "best_export", "format_judged"]

JUDGED_FILE = "judged.json"
_MODEL_NAME = re.compile(r"^model_(\d+)\.pt$")


def exported_models(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``model_NNNNNN.pt`` in ``run_dir/models``, by step."""
    models = Path(run_dir) / "models"
    found = [(int(m.group(1)), p) for p in models.glob("model_*.pt") if (m := _MODEL_NAME.match(p.name))]
    return sorted(found)


def run_attribute(run_dir: str | Path) -> str:
    """The attribute a run's models condition on (``cond`` of its ``config.json``)."""
    cfg = Path(run_dir) / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json (not an `ebm-fast train` run folder)")
    cond = json.loads(cfg.read_text()).get("cond", "none")
    if cond in (None, "none"):
        raise ValueError(f"{run_dir}: an unconditional run (cond 'none') has no attribute to judge")
    return canonical_attribute(cond)


def row_score(row: Row, metrics: Mapping[str, float]) -> float:
    """The mean over a row's metrics, a negated term counting ``1 - accuracy`` (low is good there)."""
    vals = [1.0 - metrics[t.metric] if t.negated else metrics[t.metric] for t in row.terms]
    return sum(vals) / len(vals)


def _load_judged(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["records"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a judged-models file ({exc}); move it away to judge again") from None


def _save_judged(path: Path, records: list[dict]) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    atomic_write(path, lambda f: f.write(json.dumps({"records": records}, indent=1).encode()))


def judge_run(run_dir: str | Path, rows: Sequence[Row], judges, n: int, *,
              others: Mapping[str, tuple] | None = None, settings: ChainSettings | None = None, seed: int = 0,
              alpha: float = DEFAULT_NOT_ALPHA, temperature: float = DEFAULT_SAMPLE_TEMPERATURE, every: int = 1,
              every_steps: int | None = None,
              map_location: str | torch.device = "cpu", judges_id: str = "default",
              sampler: Sampler | None = None, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Judge every ``every``-th exported model of ``run_dir`` in ``rows`` and return all records.

    Args:
        rows: composition rows; each must name the run's attribute (:func:`run_attribute`).
        others: the concept set (``{attribute: (model, meta)}``, :func:`ebm_fast.paper.concepts.load_concepts`)
            for the attributes the rows need besides the run's own.
        settings, seed, alpha, temperature: as :func:`ebm_fast.paper.evaluate.evaluate_row`; the same seed
            gives every model the same targets and starting noise.
        every: judge models at every ``every``-th export, counted back from the newest (which is
            always judged).
        every_steps: instead of ``every``, judge the exports whose training step is a multiple of
            ``every_steps``, and the newest; the same models as the run grows, so earlier records are reused.
        judges_id: names the judges in the protocol key (a path, or ``"default"``).
        sampler: replaces the Langevin chains (:func:`ebm_fast.paper.evaluate.evaluate_row`; for tests).
        progress: called with each new record.

    Returns:
        one record per judged (model, protocol): ``{"model", "step", "protocol", "rows": {key:
        metrics}, "score", "seconds"}``, by step; records already in ``models/judged.json`` under the
        same protocol are reused, new ones are added to it after each model.
    """
    attribute = run_attribute(run_dir)
    if not rows:
        raise ValueError("rows: expected at least one composition row")
    for row in rows:
        if attribute not in {t.attribute for t in row.terms}:
            raise ValueError(f"row {row.key!r} does not use the run's attribute {attribute!r} "
                             f"(its terms: {[t.attribute for t in row.terms]})")
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every: expected an integer >= 1, got {every!r}")
    if every_steps is not None:
        if not isinstance(every_steps, int) or every_steps < 1:
            raise ValueError(f"every_steps: expected an integer >= 1, got {every_steps!r}")
        if every != 1:
            raise ValueError(f"every and every_steps: expected one of them, got every={every}, "
                             f"every_steps={every_steps}")
    models = exported_models(run_dir)
    if not models:
        raise FileNotFoundError(f"{run_dir}/models: no exported models (train with --export-every N)")
    settings = settings or ChainSettings()
    protocol = {"rows": [r.key for r in rows], "n": n, "seed": seed, "alpha": alpha, "temperature": temperature,
                "judges": judges_id, "settings": settings.to_dict(),
                "others": {a: str(m.get("path", "?")) for a, (_, m) in sorted((others or {}).items())}}
    path = Path(run_dir) / "models" / JUDGED_FILE
    records = _load_judged(path)
    done = {r["model"] for r in records if r["protocol"] == protocol}
    if every_steps is None:
        chosen = models[::-1][::every][::-1]  # counted back from the newest, which is always judged
    else:
        chosen = [m for m in models[:-1] if m[0] % every_steps == 0] + models[-1:]
    todo = [(step, model_path) for step, model_path in chosen if model_path.name not in done]
    bar = progress_bar(total=len(todo) * len(rows) * n, desc="judge models", unit="sample")
    for step, model_path in todo:
        concepts = dict(others or {})
        concepts.update(load_concepts({attribute: model_path}, map_location=map_location))
        t0 = time.perf_counter()
        results: list[RowResult] = [evaluate_row(row, concepts, judges, n, sampler=sampler, settings=settings,
                                                 seed=seed, alpha=alpha, temperature=temperature, keep_images=0,
                                                 on_batch=bar.update)
                                    for row in rows]
        rec = {"model": model_path.name, "step": step, "protocol": protocol,
               "rows": {r.row.key: r.metrics for r in results},
               "score": sum(row_score(r.row, r.metrics) for r in results) / len(results),
               "seconds": round(time.perf_counter() - t0, 1)}
        records = [r for r in _load_judged(path) if not (r["model"] == rec["model"] and r["protocol"] == protocol)]
        records.append(rec)
        _save_judged(path, records)
        if progress:
            progress(rec)
    bar.close()
    names = {p.name for _, p in chosen}
    return sorted((r for r in records if r["protocol"] == protocol and r["model"] in names), key=lambda r: r["step"])


def best(records: Sequence[Mapping]) -> Mapping:
    """The record with the highest score (the earliest step among equals)."""
    if not records:
        raise ValueError("best: no judged models")
    return max(records, key=lambda r: (r["score"], -r["step"]))


def best_export(run_dir: str | Path) -> Path | None:
    """The best judged model of ``run_dir`` whose file is still there (any protocol), or None."""
    models = Path(run_dir) / "models"
    records = [r for r in _load_judged(models / JUDGED_FILE) if (models / r["model"]).is_file()]
    return models / best(records)["model"] if records else None


def format_judged(records: Sequence[Mapping], rows: Sequence[Row]) -> str:
    """A table: step, each row's metrics, the score; the best model marked ``*``."""
    top = best(records)
    cols = [(row.key, t.metric) for row in rows for t in row.terms]
    head = ["step"] + [f"{k}:{m}" for k, m in cols] + ["score"]
    lines = [head]
    for r in records:
        mark = " *" if r is top else ""
        lines.append([str(r["step"])] + [f"{r['rows'][k][m]:.3f}" for k, m in cols] + [f"{r['score']:.3f}{mark}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)
