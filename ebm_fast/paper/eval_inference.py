"""The paper's concept-inference evaluation (Table 3, Fig. 11): the measurements and the report
(Fig. 12, two objects in one scene, is :mod:`ebm_fast.paper.eval_two_objects`; the data sets are
:mod:`ebm_fast.paper.inference_splits`, the ResNet baseline :mod:`ebm_fast.paper.regressor`; the
commands ``ebm-fast eval inference`` and ``ebm-fast infer`` are in :mod:`ebm_fast.cli`).

Table 3 asks: a position EBM trained on one-object scenes (sphere or box, some colours, varying light
and size) infers the object's position ``argmin_c E(x | c)``; how far off is it on the training
distribution and on four shifted ones, against a ResNet of the same architecture trained by
supervised regression on the same images?

* :func:`table3_splits` -- the data: ``train``, ``Test`` (same distribution, other seed), ``Color``
  (held-out colours), ``Light`` (light elevations/intensities outside the training ranges), ``Size``
  (every half-extent doubled), ``Type`` (cylinders). :func:`multiview_split` -- Fig. 11's data:
  groups of ``V`` renders that share one position and differ in size, light and colour.
* :class:`PositionRegressor` / :func:`train_regressor` -- the baseline.
* :func:`ebm_positions`, :func:`regressor_positions`, :func:`evaluate_table3`,
  :func:`error_vs_views` -- the measurements; :func:`write_report` -- markdown, JSON and a PNG plot.

Unit of every error here: the mean over images and both coordinates of ``|pred - true|`` in the
dataset's normalised position coordinates ``[-1, 1]`` (1 unit = ``POSITION_EXTENT`` = 0.75 m). The
paper reports its own (unstated) unit; its numbers are printed beside ours, labelled as such.

What :mod:`ebm_fast.paper.scenes` cannot express, done here by editing sampled labels before
rendering (:func:`sample_split_labels`): a light range other than the training one (SceneConfig only
has ``light_variation`` on/off with fixed ranges ``LIGHT_ELEVATION_RANGE``/``LIGHT_INTENSITY_RANGE``),
and sizes above ``SIZE_RANGE[1] = 0.32`` m (SceneConfig rejects ``size_range`` outside
``SIZE_RANGE``). Both backends render such labels as given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .eval_two_objects import summary_markdown
from ..infer import energy_map, energy_map_image, grid_energies, infer_grid, position_grid, refine, trained_image_size
from .inference_splits import (HELDOUT_COLORS, SET_NAMES, SHIFTED, TRAIN_COLORS, TRAIN_SHAPES, TRAIN_SIZE_RANGE,
                               UNSEEN_LIGHT_ELEVATION, UNSEEN_LIGHT_INTENSITY, Split, multiview_split,
                               render_split, sample_split_labels, table3_splits)
from .regressor import PositionRegressor, as_float_images, load_regressor, save_regressor, train_regressor

__all__ = [
    "TRAIN_COLORS", "HELDOUT_COLORS", "TRAIN_SHAPES", "TRAIN_SIZE_RANGE", "UNSEEN_LIGHT_ELEVATION",
    "UNSEEN_LIGHT_INTENSITY", "SET_NAMES", "SHIFTED", "PAPER_TABLE3", "Split", "table3_splits", "multiview_split",
    "sample_split_labels", "render_split", "PositionRegressor", "train_regressor", "save_regressor",
    "load_regressor", "as_float_images", "ebm_positions", "regressor_positions", "position_error", "evaluate_table3",
    "error_vs_views", "plot_curves", "write_report", "table_markdown", "AUTOCAST_CHOICES", "load_images",
    "energy_map", "energy_map_image",
]

# Du, Li & Mordatch 2020, Table 3 (their unit): EBM and ResNet mean position error per test set.
PAPER_TABLE3 = {"EBM": {"Test": 2.917, "shifted_mean": 4.666}, "ResNet": {"Test": 3.635, "shifted_mean": 10.643}}
# --autocast choices: the precision the position grid is screened at
AUTOCAST_CHOICES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def ebm_positions(ebm, images: Tensor, *, grid: int = 32, refine_steps: int = 0, step_size: float = 0.002,
                  views: bool = False, budget_bytes: int | None = None, compile: bool = False,
                  autocast: torch.dtype | None = None) -> Tensor:
    """Positions ``(B, 2)`` = argmin over a ``grid x grid`` lattice of ``[-1, 1]^2`` of the (view-summed)
    energy, then ``refine_steps`` of projected gradient descent on the position (0 = grid only).

    ``images``: ``(B, 3, H, W)``, or ``(B, V, 3, H, W)`` with ``views=True``. ``compile``, ``autocast``:
    as in :func:`ebm_fast.infer.infer_grid` (the grid screened at the lower precision, its lowest
    candidates re-scored in float32); the refinement runs in float32.
    """
    kw = {} if budget_bytes is None else {"budget_bytes": budget_bytes}
    res = infer_grid(ebm, images, position_grid(grid, device=images.device), views=views, compile=compile,
                     autocast=autocast, **kw)
    if refine_steps:
        res = refine(ebm, images, res.cond, lo=-1.0, hi=1.0, steps=refine_steps, step_size=step_size, views=views)
    return res.cond


def regressor_positions(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """``model(images)`` ``(B, 2)`` in batches, clamped to ``[-1, 1]``; ``(B, V, ...)`` images are not
    accepted (average per-view predictions yourself)."""
    with torch.no_grad():
        out = torch.cat([model(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    return out.clamp(-1.0, 1.0)


def position_error(pred: Tensor, true: Tensor) -> float:
    """Mean over images and coordinates of ``|pred - true|`` (normalised units)."""
    if pred.shape != true.shape:
        raise ValueError(f"pred, true: expected one shape, got {tuple(pred.shape)} and {tuple(true.shape)}")
    return float((pred.float() - true.float()).abs().mean())


def evaluate_table3(sets: dict[str, tuple[Tensor, Tensor]], ebm=None, regressor=None, *, grid: int = 32,
                    refine_steps: int = 0, compile: bool = False,
                    autocast: torch.dtype | None = None) -> dict[str, dict[str, float]]:
    """``{model: {set name: error}}`` for ``model`` in ``EBM``/``ResNet`` (those given).

    ``sets``: name -> ``(images (N, 3, H, W) float, positions (N, 2))``. Also adds ``shifted_mean``, the
    mean over the sets named in ``SHIFTED`` that are present.
    """
    out: dict[str, dict[str, float]] = {}
    for label, model in (("EBM", ebm), ("ResNet", regressor)):
        if model is None:
            continue
        row = {}
        for name, (images, pos) in sets.items():
            pred = (ebm_positions(model, images, grid=grid, refine_steps=refine_steps, compile=compile,
                                  autocast=autocast)
                    if label == "EBM"
                    else regressor_positions(model, images))
            row[name] = position_error(pred, pos)
        shifted = [row[n] for n in SHIFTED if n in row]
        if shifted:
            row["shifted_mean"] = float(np.mean(shifted))
        out[label] = row
    return out


def error_vs_views(ebm, images: Tensor, pos: Tensor, *, grid: int = 32, refine_steps: int = 0,
                   step_size: float = 0.002, regressor: nn.Module | None = None,
                   compile: bool = False, autocast: torch.dtype | None = None) -> dict[str, list[float]]:
    """Fig. 11: error when the first ``n = 1 .. V`` views of each group are used.

    ``images`` ``(G, V, 3, H, W)``, ``pos`` ``(G, 2)``. The EBM's estimate from ``n`` views is the grid
    argmin of the summed energies of those views -- what ``infer_grid(..., views=True)`` computes on
    ``images[:, :n]`` -- obtained from one ``(G, V, K)`` energy table and its running sum over views
    (V passes instead of V(V+1)/2), then ``refine_steps`` of projected gradient descent on the mean
    energy of those ``n`` views (:func:`ebm_fast.infer.refine`; the summed energy's minimiser, at a
    step that does not grow with ``n``). Without refinement the estimate is a grid
    point: once the views pin the position within a grid cell, the error stops falling at the grid's
    own (about a quarter of the spacing ``2 / (grid - 1)`` per coordinate). The regressor's (optional) averages its
    per-view predictions. Returns ``{"views": [1..V], "EBM": [...], "ResNet": [...]}``.
    """
    if images.dim() != 5 or pos.shape != (images.shape[0], 2):
        raise ValueError(f"images, pos: expected (G, V, C, H, W) and (G, 2), got {tuple(images.shape)} "
                         f"and {tuple(pos.shape)}")
    g, v = images.shape[:2]
    cand = position_grid(grid, device=images.device)
    flat = images.reshape(g * v, *images.shape[2:])
    e = grid_energies(ebm, flat, cand, compile=compile, autocast=autocast).view(g, v, -1).cumsum(1)  # (G, V, K): summed over the first n views
    est = [cand[e[:, n].argmin(1)] for n in range(v)]
    if refine_steps:
        est = [refine(ebm, images[:, :n + 1], est[n], lo=-1.0, hi=1.0, steps=refine_steps, step_size=step_size,
                      views=True).cond for n in range(v)]
    out = {"views": list(range(1, v + 1)), "EBM": [position_error(c, pos) for c in est]}
    if regressor is not None:
        pred = regressor_positions(regressor, flat).view(g, v, 2).cumsum(1)
        out["ResNet"] = [position_error(pred[:, n] / (n + 1), pos) for n in range(v)]
    return out


_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def plot_curves(path, xs: Sequence[float], series: dict[str, Sequence[float]], *, title: str = "",
                xlabel: str = "", ylabel: str = "", size: tuple[int, int] = (480, 320)):
    """A line plot of ``series`` (name -> values at ``xs``) as a PNG (Pillow, no matplotlib); returns the image."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 60, 20, 30, 45
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    vals = [float(y) for ys in series.values() for y in ys]
    if not vals or not xs:
        raise ValueError("series and xs: expected at least one value each")
    y0, y1 = 0.0, max(vals) * 1.1 or 1.0
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        d.text((4, px(x0, y)[1] - 5), f"{y:.3f}", fill="black")
    for x in xs:
        d.text((px(x, y0)[0] - 3, h - bottom + 4), f"{x:g}", fill="black")
    for i, (name, ys) in enumerate(series.items()):
        c = _COLORS[i % len(_COLORS)]
        pts = [px(x, float(y)) for x, y in zip(xs, ys)]
        d.line(pts, fill=c, width=2)
        for p in pts:
            d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=c)
        d.text((w - right - 110, top + 6 + 14 * i), name, fill=c)
    d.text((left, 8), title, fill="black")
    d.text((w // 2 - 40, h - 16), xlabel, fill="black")
    d.text((4, top - 16), ylabel, fill="black")
    if path is not None:
        img.save(path)
    return img


def table_markdown(table: dict[str, dict[str, float]]) -> str:
    cols = [n for n in (*SET_NAMES, "shifted_mean") if any(n in row for row in table.values())]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model, row in table.items():
        lines.append(f"| {model} (ours, normalised units) | " + " | ".join(
            f"{row[c]:.4f}" if c in row else "-" for c in cols) + " |")
    for model, row in PAPER_TABLE3.items():
        lines.append(f"| {model} (paper, its unit) | " + " | ".join(
            f"{row[c]:.3f}" if c in row else "-" for c in cols) + " |")
    return "\n".join(lines)


def write_report(out, table: dict[str, dict[str, float]], curve: dict[str, list[float]] | None,
                 meta: dict, two_objects: dict | None = None) -> Path:
    """Write ``out/report.md``, ``out/results.json`` and (with ``curve``) ``out/fig11_views.png``;
    with ``two_objects`` (:func:`ebm_fast.paper.eval_two_objects.evaluate_two_objects`' result) a Fig. 12
    section, whose figure ``out/fig12_two_objects.png`` the caller writes. Returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# Concept inference: Table 3 and Figs. 11-12", ""]
    if any(table.values()):
        md += ["Mean absolute position error, averaged over images and both coordinates, in the dataset's "
               "normalised coordinates [-1, 1] (1 unit = 0.75 m). The paper's numbers are in its own unit; "
               "compare ratios, not values.", "", table_markdown(table), ""]
    if "EBM" in table and "ResNet" in table:
        e, r = table["EBM"], table["ResNet"]
        if "shifted_mean" in e and r.get("shifted_mean"):
            md.append(f"Shifted sets, EBM / ResNet: ours {e['shifted_mean'] / r['shifted_mean']:.3f}, "
                      f"paper {4.666 / 10.643:.3f} (target <= 0.5).")
        if "Test" in e and r.get("Test"):
            md.append(f"Test, EBM / ResNet: ours {e['Test'] / r['Test']:.3f}, paper {2.917 / 3.635:.3f} (target <= 1).")
        md.append("")
    if curve is not None:
        plot_curves(out / "fig11_views.png", curve["views"], {k: v for k, v in curve.items() if k != "views"},
                    title="Fig. 11: position error vs observations", xlabel="observations",
                    ylabel="mean |error|")
        md += ["## Fig. 11: error vs number of observations", "", "![error vs views](fig11_views.png)", "",
               "| observations | " + " | ".join(str(n) for n in curve["views"]) + " |",
               "|---" * (len(curve["views"]) + 1) + "|"]
        for k, ys in curve.items():
            if k != "views":
                md.append(f"| {k} | " + " | ".join(f"{y:.4f}" for y in ys) + " |")
        md.append("")
    fig12 = None
    if two_objects is not None:
        md += summary_markdown(two_objects, "fig12_two_objects.png")
        fig12 = {k: v for k, v in two_objects.items() if k != "maps"}
    md += ["## Run", "", "```", json.dumps(meta, indent=1, sort_keys=True), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    (out / "results.json").write_text(json.dumps({"table3": table, "fig11": curve, "fig12": fig12, "meta": meta,
                                                  "paper": PAPER_TABLE3}, indent=1, sort_keys=True))
    return path


def load_images(paths: Sequence[str], meta: dict | None = None) -> tuple[Tensor, np.ndarray | None]:
    """Images ``(N, 3, H, W)`` in [0, 1] from one .npz (``images``, optional true positions ``label_pos`` or
    ``pos``) or image files (PNG, ...), with the true positions or None.

    With ``meta`` (a position model's), the images must have the size the model was trained at
    (:func:`ebm_fast.infer.trained_image_size`): the energy runs at any size, but off its training size
    the inferred positions are wrong (the 32x32 position concept's error grows ~5x at 64x64). True
    positions must lie in the model's square ``[-1, 1]^2``.

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    paths = [str(p) for p in paths]
    pos = None
    if len(paths) == 1 and paths[0].endswith(".npz"):
        try:
            z = np.load(paths[0], allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--images {paths[0]}: not a readable .npz ({exc})") from None
        with z:
            if "images" not in z.files:
                raise ValueError(f"--images {paths[0]}: expected an 'images' array, got {z.files}")
            pos = z["label_pos"] if "label_pos" in z.files else (z["pos"] if "pos" in z.files else None)
            x = as_float_images(z["images"])
        if pos is not None:
            pos = np.asarray(pos, dtype=np.float64)
            if pos.shape != (x.shape[0], 2):
                raise ValueError(f"--images {paths[0]}: expected positions of shape ({x.shape[0]}, 2), got {pos.shape}")
            bad = ~np.isfinite(pos).all(1) | (np.abs(pos) > 1.0).any(1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"--images {paths[0]}: {int(bad.sum())} true position(s) outside [-1, 1]^2 "
                                 f"(first: image {i} at {pos[i].tolist()}); positions are normalised to [-1, 1]")
    else:
        from PIL import Image, UnidentifiedImageError

        arrays = []
        for p in paths:
            try:
                with Image.open(p) as im:
                    arrays.append(np.asarray(im.convert("RGB")))
            except (UnidentifiedImageError, OSError) as exc:
                raise ValueError(f"--images {p}: not a readable image ({exc.strerror or exc})") from None
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"--images: expected images of one size, got {sorted(shapes)}")
        x = as_float_images(np.stack(arrays))
    if x.shape[1] != 3:
        raise ValueError(f"--images: expected RGB images (3 channels), got {x.shape[1]}")
    size = trained_image_size(meta) if meta is not None else None
    if size is not None and tuple(x.shape[-2:]) != size:
        raise ValueError(f"--images: {x.shape[-2]}x{x.shape[-1]} images, but the model was trained at "
                         f"{size[0]}x{size[1]}; resize them to that size")
    return x, pos
