"""The paper's concept-inference evaluation (Table 3, Fig. 11) and the ``ebm-fast infer`` command
(Fig. 12, two objects in one scene, is :mod:`ebm_fast.eval_two_objects`; ``--two-objects`` runs it here).

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

What :mod:`ebm_fast.data.scenes` cannot express, done here by editing sampled labels before
rendering (:func:`sample_split_labels`): a light range other than the training one (SceneConfig only
has ``light_variation`` on/off with fixed ranges ``LIGHT_ELEVATION_RANGE``/``LIGHT_INTENSITY_RANGE``),
and sizes above ``SIZE_RANGE[1] = 0.32`` m (SceneConfig rejects ``size_range`` outside
``SIZE_RANGE``). Both backends render such labels as given.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .data import scenes
from .eval_two_objects import summary_markdown, two_object_maps
from .infer import energy_map, energy_map_image, grid_energies, infer_grid, position_grid, refine
from .models import EnergyResNet, build_model, model_from_config

__all__ = [
    "TRAIN_COLORS", "HELDOUT_COLORS", "TRAIN_SHAPES", "TRAIN_SIZE_RANGE", "UNSEEN_LIGHT_ELEVATION",
    "UNSEEN_LIGHT_INTENSITY", "PAPER_TABLE3", "Split", "table3_splits", "multiview_split",
    "sample_split_labels", "render_split", "PositionRegressor", "train_regressor", "save_regressor",
    "load_regressor", "ebm_positions", "regressor_positions", "position_error", "evaluate_table3",
    "error_vs_views", "plot_curves", "write_report", "cli_main", "infer_cli_main",
]

TRAIN_SHAPES = ("sphere", "box")
TRAIN_COLORS = ("red", "green", "blue", "yellow")
HELDOUT_COLORS = ("purple", "cyan", "orange")
# Half-extents in metres; the "Size" set doubles them to 0.36..0.48 m (beyond SIZE_RANGE, see module doc).
# `--train-size-range` trains and tests on another range (inside scenes.SIZE_LIMITS); Size doubles that.
TRAIN_SIZE_RANGE = (0.18, 0.24)
# Training lights (light_variation=True): elevation 35..80 deg, intensity 0.5..1.0. Unseen: a low,
# dim light -- long shadows and dark objects the model never saw.
UNSEEN_LIGHT_ELEVATION = (12.0, 28.0)
UNSEEN_LIGHT_INTENSITY = (0.25, 0.45)
SET_NAMES = ("Test", "Color", "Light", "Size", "Type")
SHIFTED = ("Color", "Light", "Size", "Type")
# Du, Li & Mordatch 2020, Table 3 (their unit): EBM and ResNet mean position error per test set.
PAPER_TABLE3 = {"EBM": {"Test": 2.917, "shifted_mean": 4.666}, "ResNet": {"Test": 3.635, "shifted_mean": 10.643}}


@dataclass(frozen=True)
class Split:
    """One evaluation set: a :class:`~ebm_fast.data.scenes.SceneConfig` plus label edits it cannot express.

    Attributes:
        name: set name (``"train"``, ``"Test"``, ``"Color"``, ...).
        config: what to sample (shapes, colours, sizes, light variation, seed, ``n`` images).
        size_scale: every central-object half-extent is multiplied by this after sampling (default 1).
        light_elevation, light_intensity: when set, each image's light is redrawn with elevation
            (degrees) and diffuse intensity uniform in these ranges, azimuth uniform in ``[0, 2 pi)``.
        views: images ``g*views .. g*views + views - 1`` share the position of image ``g*views``
            (observations of one concept, Fig. 11); 1 = independent images.
    """

    name: str
    config: scenes.SceneConfig
    size_scale: float = 1.0
    light_elevation: tuple[float, float] | None = None
    light_intensity: tuple[float, float] | None = None
    views: int = 1

    def __post_init__(self) -> None:
        if not self.size_scale > 0:
            raise ValueError(f"size_scale: expected > 0, got {self.size_scale}")
        if (self.light_elevation is None) != (self.light_intensity is None):
            raise ValueError("light_elevation and light_intensity: expected both set or both None, got "
                             f"{self.light_elevation}, {self.light_intensity}")
        if self.light_elevation is not None:
            lo, hi = self.light_elevation
            if not 0.0 < lo <= hi <= 90.0:
                raise ValueError(f"light_elevation: expected 0 < low <= high <= 90 degrees, got {self.light_elevation}")
            lo, hi = self.light_intensity
            if not 0.0 < lo <= hi:
                raise ValueError(f"light_intensity: expected 0 < low <= high, got {self.light_intensity}")
        if not isinstance(self.views, int) or self.views < 1 or self.config.n % self.views:
            raise ValueError(f"views: expected an integer >= 1 dividing n = {self.config.n}, got {self.views!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return json.loads(json.dumps(d))


def table3_splits(n_train: int = 10000, n_test: int = 500, resolution: int = 32, seed: int = 0,
                  size_range: tuple[float, float] = TRAIN_SIZE_RANGE) -> dict[str, Split]:
    """The training set and the five Table 3 test sets, keyed ``train``, ``Test``, ``Color``, ``Light``,
    ``Size``, ``Type``.

    Training: one object, ``TRAIN_SHAPES`` (sphere, box), ``TRAIN_COLORS`` (4 of the 7), half-extent in
    ``size_range`` (default ``TRAIN_SIZE_RANGE``), random light. Every test set draws from its own seed
    (``seed + 1 ..``) and changes one factor: ``Color`` uses ``HELDOUT_COLORS``; ``Light`` the
    ``UNSEEN_LIGHT_*`` ranges; ``Size`` doubles the size; ``Type`` draws cylinders.
    """
    base = scenes.SceneConfig(n=n_train, resolution=resolution, seed=seed, light_variation=True,
                              shapes=TRAIN_SHAPES, colors=TRAIN_COLORS, size_range=tuple(size_range))
    test = base.replace(n=n_test)
    return {
        "train": Split("train", base),
        "Test": Split("Test", test.replace(seed=seed + 1)),
        "Color": Split("Color", test.replace(seed=seed + 2, colors=HELDOUT_COLORS)),
        "Light": Split("Light", test.replace(seed=seed + 3), light_elevation=UNSEEN_LIGHT_ELEVATION,
                       light_intensity=UNSEEN_LIGHT_INTENSITY),
        "Size": Split("Size", test.replace(seed=seed + 4), size_scale=2.0),
        "Type": Split("Type", test.replace(seed=seed + 5, shapes=("cylinder",))),
    }


def multiview_split(n_concepts: int = 100, views: int = 8, resolution: int = 32, seed: int = 100,
                    size_range: tuple[float, float] = TRAIN_SIZE_RANGE) -> Split:
    """Fig. 11's data: ``n_concepts`` groups of ``views`` renders of one position each; size (in
    ``size_range``), colour (all 7), shape (sphere/box), yaw and light differ between the views of a group."""
    config = scenes.SceneConfig(n=n_concepts * views, resolution=resolution, seed=seed, light_variation=True,
                                shapes=TRAIN_SHAPES, size_range=tuple(size_range))
    return Split("views", config, views=views)


def sample_split_labels(split: Split) -> dict[str, np.ndarray]:
    """The labels of ``split`` (the scenes labels dict, see :mod:`ebm_fast.data.scenes`) with its edits
    applied; deterministic in ``(split, image index)``."""
    labels = scenes.sample_scene_params(split.config)
    if split.size_scale != 1.0:
        labels["size"] = (labels["size"] * split.size_scale).astype(np.float32)
    if split.light_elevation is not None:
        n = split.config.n
        # a seed stream of its own ([seed, k, 1]) so the scene's other draws stay those of its config
        draws = np.array([np.random.default_rng([split.config.seed, k, 1]).uniform(size=3) for k in range(n)])
        az = 2 * np.pi * draws[:, 0]
        el = np.deg2rad(split.light_elevation[0] + (split.light_elevation[1] - split.light_elevation[0]) * draws[:, 1])
        ce = np.cos(el)
        labels["light_dir"] = (-np.stack([ce * np.cos(az), ce * np.sin(az), np.sin(el)], 1)).astype(np.float32)
        lo, hi = split.light_intensity
        labels["light_intensity"] = (lo + (hi - lo) * draws[:, 2]).astype(np.float32)
    if split.views > 1:
        v = split.views
        labels["pos"] = np.repeat(labels["pos"][::v], v, axis=0)
    return labels


def render_split(split: Split, renderer: str = "auto", cache_dir: str | Path | None = None,
                 progress: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(images (N, R, R, 3) uint8, labels)`` of ``split``, cached as .npz under ``cache_dir``
    (default :func:`ebm_fast.data.scenes.default_cache_dir`) by a hash of the split and renderer."""
    backend = scenes.resolve_renderer(renderer)
    blob = json.dumps({"split": split.to_dict(), "renderer": backend, "version": scenes.DATASET_VERSION},
                      sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else scenes.default_cache_dir()
    path = root / f"infer_{split.name}_{backend}_r{split.config.resolution}_n{split.config.n}_{key[:16]}.npz"
    if path.exists():
        images, labels, meta = scenes.read_scenes(path)
        if meta.get("key") == key:
            return images, labels
    labels = sample_split_labels(split)
    images = scenes.render_scenes(labels, split.config.resolution, backend, progress=progress)
    root.mkdir(parents=True, exist_ok=True)
    scenes.save_scenes(path, images, labels, {"split": split.to_dict(), "renderer": backend, "key": key})
    return images, labels


# ---- the ResNet regressor baseline ------------------------------------------------------------------
class PositionRegressor(nn.Module):
    """The EBM's :class:`~ebm_fast.models.EnergyResNet` body with an ``out_dim``-output dense head:
    ``forward(x (B, C, H, W)) -> (B, out_dim)``.

    Built from a registered name (``PositionRegressor("small32")``) or an EBM's ``model.config``
    (:meth:`from_energy_config`), so both models share one architecture definition. Spectral norm is
    off by default: it stabilises EBM sampling, a supervised regressor does not need it.
    """

    def __init__(self, name: str = "small32", out_dim: int = 2, *, spectral_norm: bool = False, **overrides):
        super().__init__()
        body = build_model(name, 0, "none", spectral_norm=spectral_norm, **overrides)
        self._setup(body, out_dim)

    def _setup(self, body: EnergyResNet, out_dim: int) -> None:
        if out_dim < 1:
            raise ValueError(f"out_dim: expected >= 1, got {out_dim}")
        body.head = nn.Linear(body.head.in_features, out_dim)
        self.body = body
        self.out_dim = out_dim
        self.config = {"body": dict(body.config), "out_dim": out_dim}

    @classmethod
    def from_energy_config(cls, config: dict, out_dim: int = 2, spectral_norm: bool = False) -> "PositionRegressor":
        """The architecture of the EBM whose ``model.config`` is ``config``, unconditional, new head."""
        body_cfg = dict(config, cond_dim=0, cond_type="none", spectral_norm=spectral_norm)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(model_from_config(body_cfg), out_dim)
        return self

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)  # EnergyResNet.forward: head(pooled) -> (B, out_dim) (squeeze(1) is a no-op)
        return out.view(x.shape[0], self.out_dim)


def train_regressor(model: PositionRegressor, images: Tensor, targets: Tensor, *, steps: int = 2000,
                    batch_size: int = 64, lr: float = 1e-3, seed: int = 0, log_every: int = 0,
                    log: Callable[[str], None] = print) -> list[float]:
    """Supervised MSE regression of ``targets`` ``(N, out_dim)`` from ``images`` ``(N, C, H, W)`` (float in
    [0, 1], or uint8), Adam; returns the per-step losses. The model is left in eval mode."""
    if images.dim() != 4 or targets.dim() != 2 or images.shape[0] != targets.shape[0]:
        raise ValueError(f"images, targets: expected (N, C, H, W) and (N, out_dim) with one N, got "
                         f"{tuple(images.shape)} and {tuple(targets.shape)}")
    if targets.shape[1] != model.out_dim:
        raise ValueError(f"targets: expected {model.out_dim} columns (model.out_dim), got {targets.shape[1]}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (min(batch_size, images.shape[0]),), generator=gen)
        x = _as_float_images(images[idx])
        loss = (model(x) - targets[idx].float()).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            log(f"regressor step {step + 1}/{steps}  mse {np.mean(losses[-log_every:]):.4f}")
    model.eval()
    return losses


def save_regressor(path, model: PositionRegressor, meta: dict | None = None) -> None:
    """Save ``{"kind": "ebm_fast.regressor", "config", "state_dict", "meta"}`` atomically."""
    from .checkpoint import atomic_torch_save

    atomic_torch_save({"kind": "ebm_fast.regressor", "config": json.loads(json.dumps(model.config)),
                       "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                       "meta": dict(meta or {})}, path)


def load_regressor(path, map_location="cpu") -> tuple[PositionRegressor, dict]:
    """``(model in eval mode, meta)`` from :func:`save_regressor`'s file."""
    from .checkpoint import load_checkpoint_file

    state = load_checkpoint_file(path, map_location=map_location)
    if state.get("kind") != "ebm_fast.regressor":
        raise ValueError(f"{path}: expected an ebm_fast regressor file, got kind={state.get('kind')!r}")
    cfg = state["config"]
    model = PositionRegressor.from_energy_config(cfg["body"], cfg["out_dim"], cfg["body"].get("spectral_norm", False))
    model.load_state_dict(state["state_dict"])
    return model.eval(), dict(state.get("meta", {}))


# ---- measurements ------------------------------------------------------------------------------------
def _as_float_images(images) -> Tensor:
    """uint8 ``(N, H, W, 3)`` / ``(N, 3, H, W)`` or float ``(N, 3, H, W)`` -> float32 ``(N, 3, H, W)`` in [0, 1]."""
    t = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images
    if t.dim() != 4:
        raise ValueError(f"images: expected 4-d (N, H, W, 3) or (N, 3, H, W), got shape {tuple(t.shape)}")
    if t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    return t.float().div(255.0) if t.dtype == torch.uint8 else t.float()


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


def _table_markdown(table: dict[str, dict[str, float]]) -> str:
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
    with ``two_objects`` (:func:`ebm_fast.eval_two_objects.evaluate_two_objects`' result) a Fig. 12
    section, whose figure ``out/fig12_two_objects.png`` the caller writes. Returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# Concept inference: Table 3 and Figs. 11-12", ""]
    if any(table.values()):
        md += ["Mean absolute position error, averaged over images and both coordinates, in the dataset's "
               "normalised coordinates [-1, 1] (1 unit = 0.75 m). The paper's numbers are in its own unit; "
               "compare ratios, not values.", "", _table_markdown(table), ""]
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


# ---- CLIs --------------------------------------------------------------------------------------------
AUTOCAST_CHOICES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_autocast_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--autocast", choices=tuple(AUTOCAST_CHOICES), default="none",
                   help="screen the position grid under torch.autocast at this precision and re-score its "
                        "lowest candidates in float32 (default none; bf16 pays off on CPUs with AMX or "
                        "AVX-512 BF16 and on GPUs, and is slower elsewhere)")


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebm-fast eval inference", description=(
        "Table 3 (position error on Test/Color/Light/Size/Type, EBM vs ResNet regressor) and Fig. 11 "
        "(error vs number of observations). Errors in normalised [-1, 1] units."))
    p.add_argument("--ebm", help="position EBM (model.pt from `ebm-fast train --cond position`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--regressor", help="regressor file from an earlier --train-regressor run")
    g.add_argument("--train-regressor", action="store_true",
                   help="train the ResNet regressor on the training split (saved to OUT/regressor.pt)")
    p.add_argument("--regressor-steps", type=int, default=2000)
    p.add_argument("--regressor-model", default=None,
                   help="registered architecture for the regressor (default: the EBM's; small32 without --ebm)")
    p.add_argument("--export-train", metavar="PATH",
                   help="write the training split as an .npz for `ebm-fast train --data PATH --cond position`")
    p.add_argument("--n", type=int, default=500, help="images per test set (default 500; 0: skip Table 3)")
    p.add_argument("--n-train", type=int, default=10000, help="training images (default 10000)")
    p.add_argument("--train-size-range", nargs=2, type=float, default=list(TRAIN_SIZE_RANGE), metavar=("LO", "HI"),
                   help="half-extents (m) of the training, Test and other sets, of Fig. 11's views and of Fig. "
                        "12's objects; Size doubles them (default "
                        f"{TRAIN_SIZE_RANGE[0]} {TRAIN_SIZE_RANGE[1]}; inside {scenes.SIZE_LIMITS[0]} .. "
                        f"{scenes.SIZE_LIMITS[1]})")
    p.add_argument("--concepts", type=int, default=100, help="Fig. 11: position groups (default 100; 0: skip Fig. 11)")
    p.add_argument("--views", type=int, default=8, help="Fig. 11: observations per group (default 8)")
    p.add_argument("--two-objects", type=int, default=100, metavar="N",
                   help="Fig. 12: energy maps of N two-object scenes and of each object alone (default 100; 0: skip)")
    p.add_argument("--resolution", type=int, default=None, help="default: the EBM's, else 32")
    p.add_argument("--grid", type=int, default=32, help="position grid per axis (default 32)")
    p.add_argument("--refine-steps", type=int, default=0, help="gradient steps after the grid (default 0)")
    p.add_argument("--compile", action="store_true",
                   help="grid passes under torch.compile (~30 s to compile, then faster per pair)")
    add_autocast_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--renderer", default="auto", choices=("auto", "mujoco", "numpy"))
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="reports/inference")
    return p


def cli_main(argv: list[str] | None = None) -> int:
    """``ebm-fast eval inference``: see ``--help``."""
    a = _eval_parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.ebm is None and a.export_train is None and not a.train_regressor:
        print("ebm-fast eval inference: expected --ebm, --export-train or --train-regressor", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    ebm, ebm_meta = (None, {})
    if a.ebm:
        from .models import load_model

        ebm, ebm_meta = load_model(a.ebm)
        if ebm.cond_type != "continuous" or ebm.cond_dim != 2:
            raise SystemExit(f"--ebm {a.ebm}: expected a position model (continuous, cond_dim 2), got "
                             f"{ebm.cond_type}, cond_dim {ebm.cond_dim}")
    resolution = a.resolution or (ebm.config.get("resolution") if ebm is not None else None) or 32
    if a.resolution is None and resolution not in scenes.RESOLUTIONS:
        resolution = 32  # e.g. the 16x16 `tiny` model: the global pool makes it run on any size
    for flag, value in (("--n", a.n), ("--concepts", a.concepts), ("--two-objects", a.two_objects)):
        if value < 0:
            raise SystemExit(f"{flag}: expected a count >= 0, got {value}")
    try:
        splits = table3_splits(a.n_train, a.n or 1, resolution, a.seed, size_range=tuple(a.train_size_range))
    except ValueError as e:
        raise SystemExit(f"--train-size-range: {e}") from None
    load = lambda s: render_split(s, a.renderer, a.cache_dir, progress=False)  # noqa: E731
    if a.export_train:
        images, labels = load(splits["train"])
        scenes.save_scenes(a.export_train, images, labels, {"split": splits["train"].to_dict()})
        print(f"wrote {a.export_train} ({len(images)} images); train with: ebm-fast train --data "
              f"{a.export_train} --cond position --resolution {resolution}")
        if a.ebm is None and not a.train_regressor:
            return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    regressor = None
    if a.regressor:
        regressor, regressor_meta = load_regressor(a.regressor)
        trained_on = regressor_meta.get("split")
        if trained_on is not None and trained_on != splits["train"].to_dict():
            print(f"warning: --regressor {a.regressor} was trained on another training split than this "
                  f"command's (its size_range {trained_on['config'].get('size_range')}, seed "
                  f"{trained_on['config'].get('seed')}, n {trained_on['config'].get('n')}); it is not the "
                  "matching baseline", file=sys.stderr)
    elif a.train_regressor:
        images, labels = load(splits["train"])
        if ebm is not None and a.regressor_model is None:
            regressor = PositionRegressor.from_energy_config(ebm.config)
        else:
            regressor = PositionRegressor(a.regressor_model or "small32")
        torch.manual_seed(a.seed)
        train_regressor(regressor, _as_float_images(images), torch.from_numpy(labels["pos"]),
                        steps=a.regressor_steps, seed=a.seed, log_every=max(1, a.regressor_steps // 10))
        save_regressor(out / "regressor.pt", regressor, {"split": splits["train"].to_dict(),
                                                         "steps": a.regressor_steps})
    sets = {}
    for name in SET_NAMES if a.n else ():
        images, labels = load(splits[name])
        sets[name] = (_as_float_images(images), torch.from_numpy(labels["pos"]))
    autocast = AUTOCAST_CHOICES[a.autocast]
    table = evaluate_table3(sets, ebm, regressor, grid=a.grid, refine_steps=a.refine_steps, compile=a.compile,
                            autocast=autocast)
    curve = None
    if ebm is not None and a.concepts:
        mv = multiview_split(a.concepts, a.views, resolution, a.seed + 100, size_range=tuple(a.train_size_range))
        images, labels = load(mv)
        x = _as_float_images(images).view(a.concepts, a.views, 3, resolution, resolution)
        curve = error_vs_views(ebm, x, torch.from_numpy(labels["pos"][::a.views]), grid=a.grid,
                               refine_steps=a.refine_steps, regressor=regressor, compile=a.compile,
                               autocast=autocast)
    two = None
    if ebm is not None and a.two_objects > 0:
        two = two_object_maps(ebm, a.two_objects, resolution, grid=a.grid, renderer=a.renderer, seed=a.seed + 200,
                              size_range=tuple(a.train_size_range), figure=out / "fig12_two_objects.png")
    meta = {"command": "ebm-fast eval inference " + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": f"cpu x{torch.get_num_threads()} threads", "torch": torch.__version__,
            "ebm": a.ebm, "ebm_meta": ebm_meta, "regressor": a.regressor or ("trained" if regressor else None),
            "splits": {k: v.to_dict() for k, v in splits.items() if a.n or k == "train"}, "grid": a.grid,
            "refine_steps": a.refine_steps, "compile": a.compile, "autocast": a.autocast, "renderer": scenes.resolve_renderer(a.renderer),
            "seconds": round(time.perf_counter() - t0, 1)}
    path = write_report(out, table, curve, meta, two)
    if any(table.values()):
        print(_table_markdown(table))
    if curve is not None:
        print("Fig. 11 (EBM):", " ".join(f"{n}:{e:.4f}" for n, e in zip(curve["views"], curve["EBM"])))
    if two is not None:
        print(f"Fig. 12 (EBM, {two['n']} two-object scenes): both objects at the two deepest minima "
              f"{two['both_found']:.3f}, the deepest at one {two['one_found']:.3f}; correlation with the sum of "
              f"the one-object maps {two['corr_sum']:.3f} (with one alone {two['corr_single']:.3f})")
    print(f"wrote {path}")
    return 0


def _load_images(paths: Sequence[str]) -> tuple[Tensor, np.ndarray | None]:
    """Images ``(N, 3, H, W)`` in [0, 1] from one .npz (``images``, optional ``label_pos``) or PNG files."""
    if len(paths) == 1 and paths[0].endswith(".npz"):
        with np.load(paths[0], allow_pickle=False) as z:
            if "images" not in z.files:
                raise SystemExit(f"--images {paths[0]}: expected an 'images' array, got {z.files}")
            pos = z["label_pos"] if "label_pos" in z.files else (z["pos"] if "pos" in z.files else None)
            return _as_float_images(z["images"]), pos
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise SystemExit(f"--images: expected images of one size, got {sorted(shapes)}")
    return _as_float_images(np.stack(arrays)), None


def infer_cli_main(argv: list[str] | None = None) -> int:
    """``ebm-fast infer``: print the inferred position of each image (or of all images as views of one)."""
    p = argparse.ArgumentParser(prog="ebm-fast infer", description=(
        "Infer the position condition c* = argmin_c sum_i E(x_i | c) of images with a trained position EBM."))
    p.add_argument("--model", required=True, help="position EBM (model.pt)")
    p.add_argument("--images", nargs="+", required=True, help="one .npz with 'images' (and label_pos) or PNG files")
    p.add_argument("--views", action="store_true", help="all images are observations of one concept (energies add)")
    p.add_argument("--grid", type=int, default=32, help="candidate positions per axis (default 32)")
    p.add_argument("--refine", type=int, nargs="?", const=50, default=0,
                   help="gradient-descent steps after the grid (default 0; bare --refine = 50)")
    p.add_argument("--energy-map", metavar="PNG", help="write the energy map over positions (first image or the views)")
    p.add_argument("--map-style", choices=("contrast", "density"), default="contrast",
                   help="contrast: white at the minimum, black from the median energy up (default); "
                        "density: exp(-(E - min))")
    p.add_argument("--compile", action="store_true",
                   help="grid passes under torch.compile (pays off for many images: ~30 s to compile)")
    add_autocast_arg(p)
    a = p.parse_args(argv)
    from .models import load_model

    model, _ = load_model(a.model)
    if model.cond_type != "continuous" or model.cond_dim != 2:
        raise SystemExit(f"--model {a.model}: expected a position model (continuous, cond_dim 2), got "
                         f"{model.cond_type}, cond_dim {model.cond_dim}")
    x, pos = _load_images(a.images)
    if a.views:
        x = x.unsqueeze(0)
    pred = ebm_positions(model, x, grid=a.grid, refine_steps=a.refine, views=a.views, compile=a.compile,
                         autocast=AUTOCAST_CHOICES[a.autocast])
    for i, (px, py) in enumerate(pred.tolist()):
        line = f"{'views' if a.views else 'image'} {i}: x={px:+.4f} y={py:+.4f}"
        if pos is not None and not a.views:
            line += f"  (true x={pos[i][0]:+.4f} y={pos[i][1]:+.4f})"
        print(line)
    if pos is not None and not a.views:
        print(f"mean |error| (normalised units): {position_error(pred, torch.from_numpy(np.asarray(pos)).float()):.4f}")
    if a.energy_map:
        emap = energy_map(model, x[:1], resolution=a.grid, views=a.views, compile=a.compile,
                          autocast=AUTOCAST_CHOICES[a.autocast])[0]
        energy_map_image(emap, a.energy_map, style=a.map_style)
        print(f"wrote {a.energy_map}")
    return 0
