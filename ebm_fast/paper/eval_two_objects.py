"""The paper's Fig. 12: a position EBM trained on one-object scenes, shown two objects at once.

Du, Li & Mordatch (2020) show that the energy map over positions of a scene with two cubes -- a
scene the position EBM never saw in training -- has a low-energy mode at each cube and looks like
the sum of the maps of the two one-cube scenes. Here that is measured rather than shown once:

* :func:`two_object_labels` draws ``n`` scenes from Table 3's "Test" distribution (training colours,
  sizes and lights) with a second object of the same kind at least ``min_separation`` away, and the
  two one-object scenes made of each object alone (same light, same everything else);
* :func:`local_minima` finds the deepest, mutually separated local minima of an energy map;
* :func:`evaluate_two_objects` computes the three energy maps of every scene and reports:
  ``both_found`` -- the fraction of two-object scenes whose two deepest separated minima lie within
  ``threshold`` (0.4, the paper's position criterion) of the two objects, one each; ``one_found``
  -- the fraction whose deepest minimum lies at either object;
  ``single_found`` -- the same for the argmin of each one-object map (the model's accuracy on the
  training distribution, for reference); ``corr_sum`` -- the Pearson correlation over the grid of
  the two-object map with the sum of the one-object maps, beside ``corr_single``, its correlation
  with the better of the two one-object maps alone (the sum should explain more), and ``corr_lse``,
  with ``-log(exp(-E_A) + exp(-E_B))`` (the map of the two densities' sum);
* :func:`two_object_figure` draws a few scenes with their maps.

``ebm-fast eval inference --two-objects N`` runs it beside Table 3 and adds a "Fig. 12" section to
the report.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import scenes
from ..infer import energy_map, energy_map_image
from .inference_splits import TRAIN_COLORS, TRAIN_SIZE_RANGE

__all__ = ["two_object_labels", "local_minima", "evaluate_two_objects", "two_object_maps", "two_object_figure",
           "summary_markdown"]

POSITION_THRESHOLD = 0.4  # the paper's: a position is correct within 0.4 of the truth


def two_object_labels(n: int, resolution: int = 32, seed: int = 200, *, shapes: Sequence[str] = ("box",),
                      min_separation: float = 1.0,
                      size_range: tuple[float, float] | None = None) -> tuple[dict, dict, dict]:
    """``(pair, first, second)`` labels dicts of ``n`` scenes (see :mod:`ebm_fast.paper.scenes`).

    Both objects of scene ``k`` are drawn like Table 3's training objects (colours, half-extents in
    ``size_range``, default ``TRAIN_SIZE_RANGE``, random light), of ``shapes`` (default boxes, the
    paper's "two-cube scene"); the second object's position is redrawn until it is at least
    ``min_separation`` (normalised units) from the first. ``pair`` holds the first as the central
    object and the second as its one "distractor" slot; ``first`` and ``second`` hold each object
    alone under the pair's light. The second object's yaw is 0 in all three (the distractor slot has
    none).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    if not 0.0 < min_separation < 2.0 * np.sqrt(2.0):
        raise ValueError(f"min_separation: expected a distance in (0, 2.83) in normalised units, got {min_separation}")
    base = scenes.SceneConfig(n=n, resolution=resolution, seed=seed, light_variation=True, shapes=tuple(shapes),
                              colors=TRAIN_COLORS,
                              size_range=TRAIN_SIZE_RANGE if size_range is None else tuple(size_range))
    first = scenes.sample_scene_params(base)
    other = scenes.sample_scene_params(base.replace(seed=seed + 1))
    pos_b = other["pos"].astype(np.float64)
    for k in range(n):
        rng = np.random.default_rng([seed, k, 2])
        while np.linalg.norm(pos_b[k] - first["pos"][k]) < min_separation:
            pos_b[k] = rng.uniform(-1.0, 1.0, size=2)
    second = {key: v.copy() for key, v in other.items()}
    second["pos"] = pos_b.astype(np.float32)
    second["yaw"] = np.zeros_like(other["yaw"])
    for key in ("light_dir", "light_intensity"):
        second[key] = first[key].copy()
    pair = {key: v.copy() for key, v in first.items()}
    for key in ("shape", "color", "size", "pos"):  # the second object in the one distractor slot
        pair[f"distractor_{key}"] = second[key][:, None].copy()
    return pair, first, second


def local_minima(emap: Tensor, k: int = 2, *, lo: float = -1.0, hi: float = 1.0,
                 min_separation: float = POSITION_THRESHOLD) -> Tensor:
    """Positions ``(m, 2)``, ``m <= k``, of the deepest local minima of ``emap`` ``(R, R)`` (row ``r`` is
    ``y``, column ``s`` is ``x``, as :func:`ebm_fast.infer.energy_map` lays them out), deepest first, each
    at least ``min_separation`` from those before it. A local minimum is no higher than its 8 neighbours
    (border cells compare with the neighbours they have)."""
    if emap.dim() != 2 or emap.shape[0] != emap.shape[1] or emap.shape[0] < 2:
        raise ValueError(f"emap: expected a square (R, R) map with R >= 2, got {tuple(emap.shape)}")
    if not torch.isfinite(emap).all():
        raise ValueError("emap: non-finite energies")
    r = emap.shape[0]
    e = emap.double()
    lowest_around = -F.max_pool2d(-e[None, None], 3, stride=1, padding=1)[0, 0]
    rows, cols = torch.nonzero(e <= lowest_around, as_tuple=True)
    order = torch.argsort(e[rows, cols])
    coords = torch.linspace(lo, hi, r, dtype=torch.float64)
    picked: list[Tensor] = []
    for i in order.tolist():
        p = torch.stack([coords[cols[i]], coords[rows[i]]])
        if all(float((p - q).norm()) >= min_separation for q in picked):
            picked.append(p)
            if len(picked) == k:
                break
    return torch.stack(picked).float()


def _both_found(modes: Tensor, a: Tensor, b: Tensor, threshold: float) -> bool:
    if modes.shape[0] < 2:
        return False
    d = torch.cdist(modes[:2].double(), torch.stack([a, b]).double())  # (mode, object)
    return bool((d[0, 0] <= threshold and d[1, 1] <= threshold) or (d[0, 1] <= threshold and d[1, 0] <= threshold))


def _pearson(u: Tensor, v: Tensor) -> float:
    u, v = u.double().flatten(), v.double().flatten()
    u, v = u - u.mean(), v - v.mean()
    den = float(u.norm() * v.norm())
    return float((u * v).sum()) / den if den > 0 else float("nan")


def evaluate_two_objects(ebm, images: Tensor, pos_a: Tensor, pos_b: Tensor, *, grid: int = 32,
                         threshold: float = POSITION_THRESHOLD) -> dict:
    """Energy maps and measurements of Fig. 12.

    Args:
        ebm: a position EBM ``(x, cond (B, 2)) -> energies``.
        images: ``(n, 3, 3, H, W)`` float in [0, 1]: per scene the two-object image, then each object alone.
        pos_a, pos_b: ``(n, 2)`` the objects' true positions.
        grid: positions per axis of the maps.
        threshold: how near a minimum must be to an object to find it.

    Returns:
        ``{"maps": (n, 3, grid, grid) float32, "both_found", "one_found" (the deepest minimum is at
        one of the objects), "single_found", "corr_sum", "corr_lse", "corr_single": the means over scenes, "per_scene": {name: list}, "n", "grid", "threshold"}``.
    """
    if images.dim() != 5 or images.shape[1] != 3:
        raise ValueError(f"images: expected (n, 3, C, H, W) (pair, first, second per scene), got {tuple(images.shape)}")
    n = images.shape[0]
    if pos_a.shape != (n, 2) or pos_b.shape != (n, 2):
        raise ValueError(f"pos_a, pos_b: expected ({n}, 2) each, got {tuple(pos_a.shape)} and {tuple(pos_b.shape)}")
    maps = energy_map(ebm, images.reshape(n * 3, *images.shape[2:]), resolution=grid).view(n, 3, grid, grid)
    if not torch.isfinite(maps).all():
        raise FloatingPointError("evaluate_two_objects: the EBM gave non-finite energies")
    per = {"both_found": [], "one_found": [], "single_found": [], "corr_sum": [], "corr_lse": [], "corr_single": []}
    for k in range(n):
        pair, ea, eb = maps[k]
        a, b = pos_a[k].double(), pos_b[k].double()
        modes = local_minima(pair, 2, min_separation=threshold)
        per["both_found"].append(float(_both_found(modes, a, b, threshold)))
        per["one_found"].append(float(min(float((modes[0].double() - p).norm()) for p in (a, b)) <= threshold))
        for e, p in ((ea, a), (eb, b)):
            per["single_found"].append(float(float((local_minima(e, 1)[0].double() - p).norm()) <= threshold))
        per["corr_sum"].append(_pearson(pair, ea + eb))
        per["corr_lse"].append(_pearson(pair, -torch.logaddexp(-ea.double(), -eb.double())))
        per["corr_single"].append(max(_pearson(pair, ea), _pearson(pair, eb)))
    # a map that does not vary (an untrained model) has no correlation: such scenes are left out
    out = {name: float(np.mean(kept)) if (kept := [x for x in v if not np.isnan(x)]) else float("nan")
           for name, v in per.items()}
    out.update({"maps": maps.float(), "per_scene": per, "n": n, "grid": grid, "threshold": threshold})
    return out


def two_object_maps(ebm, n: int, resolution: int = 32, *, grid: int = 32, renderer: str = "auto", seed: int = 200,
                    min_separation: float = 1.0, size_range: tuple[float, float] | None = None, figure=None,
                    rows: int = 6) -> dict:
    """Render ``n`` scenes of :func:`two_object_labels` (objects of half-extents in ``size_range``; default
    Table 3's training range) and each object alone, run :func:`evaluate_two_objects` on them, and (with
    ``figure``, a path) draw the first ``rows``."""
    size_range = TRAIN_SIZE_RANGE if size_range is None else tuple(size_range)
    pair, first, second = two_object_labels(n, resolution, seed, min_separation=min_separation,
                                            size_range=size_range)
    rendered = [scenes.render_scenes(labels, resolution, renderer, progress=False) for labels in (pair, first, second)]
    images = torch.from_numpy(np.stack(rendered, 1)).permute(0, 1, 4, 2, 3).float().div(255.0)
    pos_a, pos_b = torch.from_numpy(first["pos"]), torch.from_numpy(second["pos"])
    result = evaluate_two_objects(ebm, images, pos_a, pos_b, grid=grid)
    if figure is not None:
        two_object_figure(figure, images, result["maps"], pos_a, pos_b, rows=rows)
    result["min_separation"] = min_separation
    result["size_range"] = [float(v) for v in size_range]
    return result


def two_object_figure(path, images: Tensor, maps: Tensor, pos_a: Tensor, pos_b: Tensor, rows: int = 6,
                      scale: int = 3):
    """A PNG, one scene per row: the two-object image, its energy map, the sum of the one-object maps,
    then each one-object image and map. Maps are drawn in :func:`ebm_fast.infer.energy_map_image`'s
    ``"contrast"`` style (white at the minimum, black from the median energy up, ``y`` up), with the
    objects' true positions marked (red: first, blue: second). Returns the image."""
    from PIL import Image, ImageDraw

    rows = min(rows, images.shape[0])
    res = images.shape[-1]
    cell = maps.shape[-1] * scale
    side = max(cell, res * scale)
    titles = ["two objects", "its map", "sum of maps", "first alone", "its map", "second alone", "its map"]
    head = 14
    fig = Image.new("RGB", (side * len(titles), head + side * rows), "white")
    d = ImageDraw.Draw(fig)
    for j, t in enumerate(titles):
        d.text((j * side + 2, 1), t, fill="black")

    def picture(x: Tensor) -> Image.Image:
        pix = (x.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        return Image.fromarray(pix).resize((res * scale, res * scale), Image.NEAREST)

    def drawn_map(e: Tensor, k: int) -> Image.Image:
        img = energy_map_image(e, scale=scale, style="contrast").convert("RGB")
        md = ImageDraw.Draw(img)
        for p, colour in ((pos_a[k], (230, 30, 30)), (pos_b[k], (30, 80, 230))):
            u = (float(p[0]) + 1) / 2 * (cell - 1)
            v = (1 - (float(p[1]) + 1) / 2) * (cell - 1)
            md.line([u - 3, v, u + 3, v], fill=colour)
            md.line([u, v - 3, u, v + 3], fill=colour)
        return img

    for k in range(rows):
        tiles = [picture(images[k, 0]), drawn_map(maps[k, 0], k), drawn_map(maps[k, 1] + maps[k, 2], k),
                 picture(images[k, 1]), drawn_map(maps[k, 1], k), picture(images[k, 2]), drawn_map(maps[k, 2], k)]
        for j, tile in enumerate(tiles):
            fig.paste(tile, (j * side, head + k * side))
    if path is not None:
        fig.save(path)
    return fig


def summary_markdown(result: dict, figure: str | None = None) -> list[str]:
    """Report lines for :func:`evaluate_two_objects`' ``result``."""
    lines = ["## Fig. 12: two objects, never seen in training", "",
             f"{result['n']} scenes of two training objects"
             + (f" at least {result['min_separation']:g} apart" if "min_separation" in result else "")
             + (" (half-extents {:g}-{:g} m)".format(*result["size_range"]) if "size_range" in result else "")
             + f", energy maps on a "
             f"{result['grid']}x{result['grid']} grid of positions.", "",
             "| measure | value |", "| --- | --- |",
             f"| both objects at the map's two deepest minima (within {result['threshold']}) | {result['both_found']:.3f} |",
             f"| the deepest minimum at one of the objects | {result['one_found']:.3f} |",
             f"| one-object maps: argmin within {result['threshold']} of the object | {result['single_found']:.3f} |",
             f"| correlation of the two-object map with the sum of the one-object maps | {result['corr_sum']:.3f} |",
             f"| ... with -log(exp(-E_A) + exp(-E_B)) | {result['corr_lse']:.3f} |",
             f"| ... with the closer one-object map alone | {result['corr_single']:.3f} |", ""]
    if figure:
        lines += [f"![two-object energy maps]({figure})", ""]
    return lines
