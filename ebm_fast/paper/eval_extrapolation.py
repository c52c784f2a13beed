"""Section 3.4 / Fig. 9 of Du, Li & Mordatch (2020): cross-product extrapolation of size and position.

Training data per split fraction ``f`` (:func:`training_config`): spheres of all sizes only in the
top-right corner of the position box holding the fraction ``f`` of its area, large spheres
(``split_large_range``) everywhere else (``SceneConfig.split_fraction``); ``f = 1`` shows every
combination. On each, three models are trained (:func:`train_commands`): a position concept, a size
concept and, as the paper's baseline, one model of the same architecture conditioned on both
(label ``pos_size`` = ``(x, y, size)``, written by :func:`export_training_set`).

Test: ``n`` (position, size) targets that no split below 1 shows (:func:`unseen_targets`: positions
outside the largest evaluated split's corner, which holds the smaller ones', and sizes below the large
ones). Each fraction's ``position(p) & size(s)`` and its joint model at ``(p, s)`` are sampled, and a
regressor trained on scenes of every combination (:class:`SizePositionRegressor`) measures each
sample's position error (L2, normalised units) and size error (metres). The regressor's own error on
renders of the test targets is reported beside them: the floor of what it can tell.

``ebm-fast eval extrapolation`` writes ``report.md`` and ``results.json``, plus a grid per fraction.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..chains import ChainSettings, sample_images, to_uint8
from ..compose import And, Concept
from ..image_grid import save_image_grid
from .evaluate import report_finish, report_start
from .regressor import PositionRegressor, as_float_images, load_regressor, save_regressor, train_regressor

__all__ = ["FRACTIONS", "MODEL_FILES", "fraction_tag", "training_config", "all_combinations_config",
           "export_training_set", "train_commands", "unseen_targets", "SizePositionRegressor", "measure",
           "evaluate_fraction", "write_extrapolation_report"]

FRACTIONS = (0.01, 0.05, 0.1, 1.0)  # the paper's Fig. 9
MODEL_FILES = {"position": "position.pt", "size": "size.pt", "joint": "joint.pt"}
JOINT_LABEL = "pos_size"  # (x, y, size): the label the joint baseline is conditioned on


def fraction_tag(fraction: float) -> str:
    """``0.01`` -> ``"f0.01"``: the folder of a fraction's data and models."""
    return f"f{fraction:g}"


def training_config(fraction: float, n: int = 10000, resolution: int = 32, seed: int = 0):
    """Spheres, all sizes only in the top-right ``fraction`` of positions, large ones elsewhere."""
    from .scenes import SceneConfig

    return SceneConfig(n=n, resolution=resolution, seed=seed, shapes=("sphere",),
                       split_fraction=None if fraction >= 1.0 else fraction)


def all_combinations_config(n: int, resolution: int = 32, seed: int = 1):
    """Spheres of every size at every position: the regressor's training scenes."""
    return training_config(1.0, n, resolution, seed)


def _joint_labels(labels: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([labels["pos"], labels["size"][:, None]], axis=1).astype(np.float32)


def export_training_set(config, path: str | Path, renderer: str = "auto") -> Path:
    """Render ``config`` to ``path`` (.npz) with the extra label ``pos_size`` ``(N, 3)`` the joint
    baseline trains on (``ebm-fast train --data PATH --cond pos_size``)."""
    from . import scenes

    images, labels = scenes.generate_scenes(config, renderer, progress=False)
    labels = {**labels, JOINT_LABEL: _joint_labels(labels)}
    return scenes.save_scenes(path, images, labels, {"config": config.to_dict(), "figure": "fig9"})


def train_commands(data: str | Path, models: str | Path, runs: str | Path, resolution: int = 32) -> list[str]:
    """The three training commands of one fraction (position, size, joint baseline) on ``data``, each
    copying its ``model.pt`` into ``models`` as :data:`MODEL_FILES` names it; the shipped concepts' recipe.
    The joint model reads a position, so it gets the coordinate channels (``--coords``), but not the
    position's ``--cond-jitter 0.1``: its third condition is a size in metres, whose whole range is 0.14."""
    from .concepts import recipe_flags

    flags = {"position": recipe_flags("position", resolution), "size": recipe_flags("size", resolution),
             "joint": recipe_flags("size", resolution) + " --coords"}
    cond = {"position": "position", "size": "size", "joint": JOINT_LABEL}
    return [f"ebm-fast train --data {data} --cond {cond[k]} {flags[k]} --out {Path(runs) / k} && "
            f"cp {Path(runs) / k / 'model.pt'} {Path(models) / MODEL_FILES[k]}" for k in MODEL_FILES]


def unseen_targets(n: int, seed: int, config) -> tuple[Tensor, Tensor]:
    """``n`` positions ``(n, 2)`` and sizes ``(n,)`` that ``config``'s split never shows: positions
    uniform outside :func:`ebm_fast.paper.scenes.split_region` (by rejection), sizes uniform below
    ``split_large_range``."""
    from .scenes import split_region

    if config.split_fraction is None or config.split_fraction >= 1.0:
        raise ValueError("config: expected a split_fraction below 1 (the test combinations are those it hides)")
    gen = torch.Generator().manual_seed(seed)
    x_lo, y_lo = split_region(config)
    (x0, x1), (y0, y1) = config.x_range, config.y_range
    pos = torch.empty(0, 2)
    while len(pos) < n:
        u = torch.rand(2 * n, 2, generator=gen)
        cand = torch.stack([x0 + (x1 - x0) * u[:, 0], y0 + (y1 - y0) * u[:, 1]], dim=1)
        pos = torch.cat([pos, cand[(cand[:, 0] < x_lo) | (cand[:, 1] < y_lo)]])
    lo, hi = config.size_range[0], config.split_large_range[0]
    return pos[:n], lo + (hi - lo) * torch.rand(n, generator=gen)


class SizePositionRegressor:
    """A :class:`PositionRegressor` with three outputs: ``(x, y)`` and the size rescaled from
    ``size_range`` to ``[-1, 1]`` (so its error weighs like a position's in the MSE).
    ``predict(images) -> (pos (N, 2), size (N,) metres)``."""

    def __init__(self, net: PositionRegressor, size_range: Sequence[float]):
        self.net = net.eval()
        self.size_range = (float(size_range[0]), float(size_range[1]))

    @classmethod
    def build(cls, name: str, size_range: Sequence[float]) -> "SizePositionRegressor":
        return cls(PositionRegressor(name, out_dim=3), size_range)

    def _scale(self, size: Tensor) -> Tensor:
        lo, hi = self.size_range
        return (size - lo) / (hi - lo) * 2.0 - 1.0

    def fit(self, images, pos: Tensor, size: Tensor, *, steps: int, seed: int = 0, log_every: int = 0) -> list[float]:
        targets = torch.cat([pos.float(), self._scale(size.float())[:, None]], dim=1)
        return train_regressor(self.net, as_float_images(images), targets, steps=steps, seed=seed, log_every=log_every)

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        x = as_float_images(images)
        device = next(self.net.parameters()).device
        out = torch.cat([self.net(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
        lo, hi = self.size_range
        return out[:, :2], (out[:, 2] + 1.0) / 2.0 * (hi - lo) + lo

    def save(self, path, meta: Mapping | None = None) -> None:
        save_regressor(path, self.net, {**dict(meta or {}), "size_range": list(self.size_range)})

    @classmethod
    def load(cls, path) -> tuple["SizePositionRegressor", dict]:
        net, meta = load_regressor(path)
        if net.out_dim != 3 or "size_range" not in meta:
            raise ValueError(f"{path}: expected a size and position regressor (3 outputs and a size_range), got "
                             f"{net.out_dim} outputs")
        return cls(net, meta["size_range"]), meta


def measure(regressor: SizePositionRegressor, images, pos: Tensor, size: Tensor) -> dict[str, float]:
    """Mean position error (L2, normalised) and size error (|metres|) of ``images`` against targets."""
    p, s = regressor.predict(images)
    return {"position_error": float((p - pos.float()).norm(dim=1).mean()),
            "size_error": float((s - size.float()).abs().mean())}


def _leaf(model, cond: Tensor) -> Concept:
    return Concept(model, cond.to(next(model.parameters()).device), per_sample=True)


def evaluate_fraction(models: Mapping[str, torch.nn.Module], regressor: SizePositionRegressor, pos: Tensor,
                      size: Tensor, *, settings: ChainSettings, resolution: int, seed: int = 0,
                      sampler: Callable | None = None, keep_images: int = 16) -> dict:
    """Sample the composition ``position(p) & size(s)`` and the joint model at ``(p, s)`` for every
    target, measure both with ``regressor``; returns ``{"composed": errors, "joint": errors,
    "images": {method: uint8 (k, R, R, 3)}, "seconds"}``."""
    sampler = sampler or (lambda expr, m, s: sample_images(expr, m, settings, resolution, s))
    t0 = time.perf_counter()
    out: dict = {"images": {}}
    n = len(pos)
    for method in ("composed", "joint"):
        batches = []
        for start in range(0, n, settings.batch_size):
            stop = min(n, start + settings.batch_size)
            p, s = pos[start:stop], size[start:stop]
            if method == "composed":
                expr = And(_leaf(models["position"], p), _leaf(models["size"], s[:, None]))
            else:
                expr = _leaf(models["joint"], torch.cat([p, s[:, None]], dim=1))
            batches.append(sampler(expr, stop - start, seed * 1_000_003 + start))
        images = torch.cat(batches)
        out[method] = measure(regressor, images, pos, size)
        out["images"][method] = to_uint8(images[:keep_images])
    out["seconds"] = time.perf_counter() - t0
    return out


def write_extrapolation_report(results: Mapping[float, Mapping], floor: Mapping[str, float] | None, out: str | Path,
                               info: Mapping | None = None, captions: Sequence[str] | None = None) -> Path:
    """``out/report.md`` (errors per fraction and method, the regressor's floor), ``out/results.json``
    and ``out/<tag>.png`` (composed samples over joint samples per fraction); returns the report."""
    out, md = report_start(
        out, "Cross-product extrapolation (Du, Li & Mordatch 2020, section 3.4, Fig. 9)",
        "Training data: spheres of all sizes only in the top-right fraction f of positions, large spheres "
        "elsewhere. Test: positions outside the corner with sizes below the large ones (combinations no split "
        "below 100% shows). Errors measured by a regressor trained on every combination: position error in "
        "normalised [-1, 1] units (L2), size error in metres. Lower is better.", info)
    md += ["| fraction | method | position error | size error | seconds |", "| ---: | --- | ---: | ---: | ---: |"]
    for f, r in sorted(results.items()):
        for method, name in (("composed", "position & size (EBM composition)"), ("joint", "joint model (baseline)")):
            md.append(f"| {f:g} | {name} | {r[method]['position_error']:.3f} | {r[method]['size_error']:.4f} | "
                      f"{r['seconds']:.1f} |")
    if floor:
        md.append(f"| | regressor on renders of the test targets | {floor['position_error']:.3f} | "
                  f"{floor['size_error']:.4f} | |")
    md.append("")
    for f, r in sorted(results.items()):
        imgs = [r["images"][m] for m in ("composed", "joint")]
        k = min(len(i) for i in imgs)
        if k:
            name = f"{fraction_tag(f)}.png"
            labels = None if captions is None else [f"{m}\n{c}" for m in ("and", "joint") for c in captions[:k]]
            save_image_grid(out / name, np.concatenate([i[:k] for i in imgs]), ncols=k,
                            title=f"f={f:g}: composed (top) and joint (bottom)", labels=labels)
            md += [f"![f={f:g}]({name})", ""]
    return report_finish(out, {"info": dict(info or {}), "floor": floor,
                               "fractions": {f"{f:g}": {k: v for k, v in r.items() if k != "images"}
                                             for f, r in sorted(results.items())}}, md)
