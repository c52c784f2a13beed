"""Fig. 6 of Du, Li & Mordatch (2020): a conjunction of two positions of one position concept draws
two objects (one, when the positions are too close to hold two).

The paper's model is a position-conditioned EBM trained on scenes of one green cube among non-green
clutter (:func:`training_config`: ``SceneConfig(colors=("green",), shapes=("box",), clutter=3)``);
its conjunction ``position(p1) & position(p2)`` should put a green cube at each. The samples are
judged without training by :func:`ebm_fast.paper.detect.detect_objects` (the green regions of the
image, placed on the ground plane): per sample, whether a detected object lies within
``POSITION_THRESHOLD`` (0.4) of ``p1``, of ``p2``, of both, and how many objects were found, reported
overall and by the distance between the two asked positions (:data:`DISTANCE_BINS`), so "one object
when they are too close" shows as the fraction with exactly one object in the closest bin.

``ebm-fast eval multi-object`` writes ``report.md``, ``results.json`` and ``multi_object.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from ..chains import ChainSettings, concepts_resolution, sample_images, to_uint8
from ..image_grid import save_image_grid
from .detect import default_min_pixels, detect_objects, near
from .evaluate import Row, Term, build_expr, draw_targets, report_finish, report_start, tile_labels
from .judges import POSITION_THRESHOLD

__all__ = ["TWO_POSITIONS", "DISTANCE_BINS", "training_config", "train_command", "judge_two_positions",
           "evaluate_multi_object", "write_multi_object_report"]

TWO_POSITIONS = Row("two_positions", "Position 1 & Position 2", 1,
                    (Term("position", label="position 1"), Term("position", label="position 2")))
# distance between the two asked positions (normalised units): a cube of the default sizes spans
# 0.24-0.43 across, so below 0.4 two cubes would overlap
DISTANCE_BINS = ((0.0, 0.4), (0.4, 0.8), (0.8, 3.0))
CLUTTER = 3


def training_config(n: int = 10000, resolution: int = 32, seed: int = 0, clutter: int = CLUTTER):
    """The scenes of the paper's Fig. 6 model: one green cube among ``clutter`` non-green objects."""
    from .scenes import SceneConfig

    return SceneConfig(n=n, resolution=resolution, seed=seed, colors=("green",), shapes=("box",), clutter=clutter)


def train_command(data: str | Path, out: str | Path = "runs/fig6/position", resolution: int = 32) -> str:
    """The command that trains the Fig. 6 position concept on ``data`` (the .npz that ``ebm-fast eval
    multi-object --export-train`` writes) with the shipped concepts' recipe."""
    from .concepts import recipe_flags

    return f"ebm-fast train --data {data} --cond position {recipe_flags('position', resolution)} --out {out}"


def judge_two_positions(images: np.ndarray, p1: np.ndarray, p2: np.ndarray, colour: str = "green",
                        threshold: float = POSITION_THRESHOLD) -> dict[str, np.ndarray]:
    """Per sample of uint8 ``images`` ``(N, H, W, 3)`` asked for positions ``p1``, ``p2`` ``(N, 2)``:
    ``near1``, ``near2``, ``both`` (bool: a detected ``colour`` object within ``threshold``) and
    ``count`` (int: objects detected)."""
    found = detect_objects(images, colour)
    floor = default_min_pixels(*np.shape(images)[1:3])
    near1 = np.array([near(dets, p, threshold, floor) for dets, p in zip(found, p1)], bool)
    near2 = np.array([near(dets, p, threshold, floor) for dets, p in zip(found, p2)], bool)
    return {"near1": near1, "near2": near2, "both": near1 & near2,
            "count": np.array([len(d) for d in found], np.int64)}


def _summary(j: Mapping[str, np.ndarray], mask: np.ndarray) -> dict:
    m = int(mask.sum())
    frac = (lambda v: float(v[mask].mean()) if m else float("nan"))  # noqa: E731
    return {"n": m, "near position 1": frac(j["near1"]), "near position 2": frac(j["near2"]),
            "near both": frac(j["both"]), "one object": frac(j["count"] == 1),
            "two or more objects": frac(j["count"] >= 2), "no object": frac(j["count"] == 0)}


def evaluate_multi_object(concepts: Mapping, n: int, *, settings: ChainSettings | None = None, seed: int = 0,
                          colour: str = "green", sampler: Callable | None = None, keep_images: int = 32,
                          on_batch: Callable[[int], None] | None = None) -> dict:
    """Sample ``position(p1) & position(p2)`` for ``n`` random pairs of ``concepts["position"]`` and
    judge each sample (:func:`judge_two_positions`). ``sampler(expr, n, seed)`` as in
    :func:`ebm_fast.paper.evaluate.evaluate_row` (default :func:`sample_images`).

    Returns ``{"overall": summary, "by_distance": [summary per DISTANCE_BINS], "images", "labels",
    "seconds"}``; a summary holds the fractions near position 1, 2, both, and with no, one, two or
    more objects."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    settings = settings or ChainSettings()
    if sampler is None:
        res = settings.resolution or concepts_resolution(concepts)
        sampler = lambda expr, m, s: sample_images(expr, m, settings, res, s)  # noqa: E731
    t0 = time.perf_counter()
    p1, p2 = draw_targets(TWO_POSITIONS, n, torch.Generator().manual_seed(seed), concepts)
    parts: dict[str, list[np.ndarray]] = {}
    kept, labels = [], []
    for start in range(0, n, settings.batch_size):
        stop = min(n, start + settings.batch_size)
        tg = [p1[start:stop], p2[start:stop]]
        images = to_uint8(sampler(build_expr(TWO_POSITIONS, concepts, tg), stop - start, seed * 1_000_003 + start))
        j = judge_two_positions(images, tg[0].numpy(), tg[1].numpy(), colour)
        for k, v in j.items():
            parts.setdefault(k, []).append(v)
        room = keep_images - sum(len(k) for k in kept)
        if room > 0:
            kept.append(images[:room])
            caps = tile_labels(TWO_POSITIONS, [t[:room] for t in tg])
            labels += [f"{c}\n{k} found" for c, k in zip(caps, j["count"][:room])]
        if on_batch is not None:
            on_batch(stop - start)
    judged = {k: np.concatenate(v) for k, v in parts.items()}
    dist = (p1 - p2).norm(dim=1).numpy()
    return {"overall": _summary(judged, np.ones(n, bool)),
            "by_distance": [{"distance": [lo, hi], **_summary(judged, (dist >= lo) & (dist < hi))}
                            for lo, hi in DISTANCE_BINS],
            "images": np.concatenate(kept) if kept else np.zeros((0, *images.shape[1:]), np.uint8),
            "labels": labels, "seconds": time.perf_counter() - t0}


_COLUMNS = ("n", "near position 1", "near position 2", "near both", "no object", "one object", "two or more objects")


def _line(name: str, s: Mapping) -> str:
    return f"| {name} | " + " | ".join(str(s[c]) if c == "n" else f"{s[c]:.3f}" for c in _COLUMNS) + " |"


def write_multi_object_report(result: Mapping, out: str | Path, info: Mapping | None = None) -> Path:
    """``out/report.md`` (overall and by distance), ``out/results.json`` and ``out/multi_object.png``
    (the first samples captioned with their two positions and the objects found); returns the report."""
    out, md = report_start(
        out, "Multi-object composition (Du, Li & Mordatch 2020, Fig. 6)",
        "Samples of `position(p1) & position(p2)`, judged by the training-free green-object detector "
        "(`ebm_fast.paper.detect`): a sample is near a position when a detected green object lies within "
        f"{POSITION_THRESHOLD} of it (normalised units). By distance between p1 and p2: below 0.4 two cubes "
        "would overlap, so one object is the expected drawing there. Objects are counted as connected "
        "green regions: two that touch in the image count as one, though each is still found near its position.",
        info)
    md += ["| pairs | " + " | ".join(_COLUMNS) + " |", "| --- |" + " ---: |" * len(_COLUMNS),
           _line("all", result["overall"])]
    md += [_line(f"distance {b['distance'][0]:g}-{b['distance'][1]:g}", b) for b in result["by_distance"]]
    md.append("")
    if len(result["images"]):
        save_image_grid(out / "multi_object.png", result["images"], ncols=8,
                        title="position 1 & position 2: first samples, captioned with both and the objects found",
                        labels=result["labels"])
        md += ["![samples](multi_object.png)", ""]
    return report_finish(out, {"info": dict(info or {}), **{k: result[k] for k in ("overall", "by_distance")},
                               "seconds": round(result["seconds"], 3)}, md)
