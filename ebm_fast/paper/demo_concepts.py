"""``ebm-fast demo`` on trained MuJoCo-Scenes concepts (position and colour).

Four expressions over the concepts: AND ``position & color``, OR ``position 1 | position 2``, NOT
``position & ~color``, and the nested ``(position 1 | position 2) & color``. The CLI balances their
conjunctions (:func:`ebm_fast.compose.balance_conjunctions`) unless given ``--no-balance-and``. Each is sampled
with the fused sampler from per-sample targets drawn as in the paper's Table 1. The judges score the
samples, and the demo writes a PNG grid per expression, each tile captioned with its targets, plus a
markdown report. It then times
``ebm_fast.sample`` against the released research code's loop on the AND chain.

``ebm-fast demo`` runs this when trained concepts are present (shipped in
``ebm_fast/paper/assets/concepts/`` or given with ``--concepts DIR``), and the analytic 2-D Gaussian demo
(:mod:`ebm_fast.paper.demo`) otherwise.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from .concepts import concept_paths, load_concepts
from ..compose import DEFAULT_NOT_ALPHA, DEFAULT_SAMPLE_TEMPERATURE
from .evaluate import LOWER_LEFT, ROWS, UPPER_RIGHT, Row, RowResult, Term, build_expr, draw_targets
from .evaluate import evaluate, format_table, write_report
from ..progress import say
from ..released_loop import released_code_chain
from ..chains import ChainSettings, concepts_resolution, sample_images

__all__ = ["ATTRIBUTES", "DEMO_ROWS", "concepts_present", "run"]

ATTRIBUTES = ("position", "color")  # the shipped shape concept does not draw shapes (docs/training.md, "What is shipped")
TIMED_STEPS = 60  # steps of the AND chain timed against the released-code loop
NESTED = Row("nested_disj_pos_color", "Conj(Disj(Position 1, Position 2), Color)", 1,
             (Term("position", box=LOWER_LEFT, label="position 1", either=True),
              Term("position", box=UPPER_RIGHT, label="position 2", either=True),
              Term("color")))
# (what the demo calls it, the row it evaluates)
DEMO_ROWS = (("AND", ROWS["conj_pos_color"]), ("OR", ROWS["disj_pos"]), ("NOT", ROWS["conj_pos_not_color"]),
             ("NESTED", NESTED))


def concepts_present(directory: str | Path | None = None) -> bool:
    """Whether ``directory`` (default: the shipped concepts) holds a model for each of :data:`ATTRIBUTES`."""
    return all(p.is_file() for p in concept_paths(directory, ATTRIBUTES).values())


def _time_against_released_loop(concepts, settings: ChainSettings, batch: int, seed: int) -> tuple[float, float]:
    """Seconds of one AND chain of ``batch`` samples: ``(ebm_fast.sample, released-code loop)``."""
    row = ROWS["conj_pos_color"]
    expr = build_expr(row, concepts, draw_targets(row, batch, torch.Generator().manual_seed(seed), concepts))
    res = settings.resolution or concepts_resolution(concepts)
    x0 = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    runs = {
        "ebm_fast": lambda: sample_images(expr, batch, settings, res, seed),
        "released": lambda: released_code_chain(expr, x0, steps=settings.steps, step_size=settings.step_size,
                                                noise=settings.noise, order=settings.order, clamp=(0.0, 1.0),
                                                grad_clip=settings.grad_clip, generator=gen),
    }
    best = {}
    for _ in range(2):  # the first round warms up (allocator, kernels); the faster of two is kept
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    return best["ebm_fast"], best["released"]


def run(directory: str | Path | None, *, n: int, settings: ChainSettings, seed: int, out: str | Path,
        judges_path: str | None = None, alpha: float = DEFAULT_NOT_ALPHA,
        temperature: float = DEFAULT_SAMPLE_TEMPERATURE) -> list[RowResult]:
    """Sample, judge and report the four demo expressions; print the table and the speed comparison.
    ``alpha`` weights each negation, ``temperature`` each disjunction (as in ``ebm-fast sample``)."""
    from .judges import Judges

    concepts = load_concepts(directory, attributes=ATTRIBUTES)
    judges = Judges.load(judges_path)
    balance = ("conjunctions balanced (--no-balance-and: the plain sum)" if settings.balance_and
               else "conjunctions as the plain sum of energies")
    print(f"concepts from {Path(next(iter(concept_paths(directory, ATTRIBUTES).values()))).parent}; "
          f"{n} samples per expression, Langevin chains of {settings.describe()}; {balance}")

    def progress(r: RowResult) -> None:
        name = next(k for k, row in DEMO_ROWS if row is r.row)
        vals = ", ".join(f"{m} {v:.3f}" for m, v in r.metrics.items())
        say(f"  {name:<7}{r.row.label}: {vals} ({r.seconds:.1f} s)")

    results = evaluate([row for _, row in DEMO_ROWS], concepts, judges, n, settings=settings, seed=seed,
                       alpha=alpha, temperature=temperature, progress=progress)
    print(format_table(results))
    # the ratio does not depend on the chain's length: time a short one, to keep the demo short; both
    # sides run the same (plain) expression, which the released code has no balancing for
    timing = dataclasses.replace(settings, steps=min(settings.steps, TIMED_STEPS), balance_and=False)
    t_ours, t_ref = _time_against_released_loop(concepts, timing, min(n, 32), seed)
    print(f"speed on the AND chain ({min(n, 32)} samples x {timing.steps} steps): released-code loop "
          f"{t_ref * 1e3:.0f} ms, ebm_fast.sample {t_ours * 1e3:.0f} ms ({t_ref / t_ours:.2f}x)")
    path = write_report(results, out, {"n": n, **settings.to_dict(), "seed": seed, "alpha": alpha,
                                       "temperature": temperature,
                                       "speedup_vs_released_loop": round(t_ref / t_ours, 3)})
    print(f"grids and report written to {path.parent}")
    return results
