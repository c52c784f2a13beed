"""Attribute judges for the MuJoCo Scenes dataset.

A small two-stage CNN (:class:`JudgeNet`: a global locator regresses the
central object's normalised position ``(x, y)``; a second net reads an
object-centred window resampled at that position through the dataset's fixed
camera and predicts colour class, shape class and size in metres) judges an
image.  The judges score generated
images the way Du, Li & Mordatch (2020) do: a position is correct when the
Euclidean distance to the target is at most ``POSITION_THRESHOLD = 0.4``
(normalised units, the square being ``[-1, 1]^2``); colour and shape are correct
when the predicted class equals the target; a size is correct within
``SIZE_TOLERANCE = 0.025`` m.

Trained weights for 64x64 ship as ``ebm_fast/paper/assets/judges_64.pt``
(:func:`default_judges_path`); ``Judges.load()`` reads them.  They were made by
``ebm-fast judges train --n 20000 --val-n 2000 --res 64 --seed 1000 --epochs 10
--renderer mujoco --threads 1 --out ebm_fast/paper/assets/judges_64.pt`` (distractor-free
scenes with light variation) and score 1.0 colour, 1.0 shape, 1.0 position
(mean error 0.029) on the 2000 held-out renders; they are not trained for
scenes with distractors.  Files hold a
plain dict (``format``, ``config``, ``colors``, ``shapes``, ``size_range``,
``metrics``, ``train``, ``state_dict``) and are read with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..progress import progress_bar
from .scenes import (
    COLOR_NAMES,
    POSITION_EXTENT,
    RESOLUTIONS,
    SHAPE_ALIASES,
    SHAPES,
    SIZE_RANGE,
    SceneConfig,
    atomic_write,
    camera_frame,
    load_scenes,
)

__all__ = [
    "POSITION_THRESHOLD",
    "SIZE_TOLERANCE",
    "JudgeNet",
    "Judges",
    "default_judges_path",
    "fit_judges",
    "train_judges",
]

POSITION_THRESHOLD = 0.4
SIZE_TOLERANCE = 0.025
FORMAT = "ebm_fast.judges/1"  # a file-format tag: kept from the shipped judges file


def default_judges_path(resolution: int = 64) -> Path:
    """Path of the packaged judges for ``resolution`` (``ebm_fast/paper/assets/judges_<res>.pt``)."""
    return Path(__file__).resolve().parent / "assets" / f"judges_{resolution}.pt"


# --------------------------------------------------------------------------- #
# Network
# --------------------------------------------------------------------------- #


def _conv_stack(c_in: int, chans: Sequence[int], first_stride: int) -> tuple[nn.Sequential, int]:
    """3x3 conv + BN + ReLU layers; the first has ``first_stride``, the others stride 2."""
    layers: list[nn.Module] = []
    for i, c in enumerate(chans):
        layers += [nn.Conv2d(c_in, c, 3, stride=first_stride if i == 0 else 2, padding=1, bias=False),
                   nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        c_in = c
    return nn.Sequential(*layers), c_in


class JudgeNet(nn.Module):
    """Two-stage judge: a global locator, then an object-centred crop classifier.

    1. The *locator* (stride-2 convs down to 4x4, a fully connected layer)
       regresses the central object's normalised position ``pos``.
    2. A ``crop x crop`` window centred on the projection of the world point
       ``(pos * POSITION_EXTENT, crop_z)`` and spanning ``2 * crop_half`` metres
       at that depth is resampled from the image (``grid_sample``, the
       dataset's fixed camera), so the object appears at the same place and
       scale wherever it stands.  During training the window follows the true
       position (with jitter); at inference the predicted one.
    3. The *crop net* (convs + global max pool and a fully connected layer)
       predicts colour, shape and size from the window.

    Args:
        resolution: input height = width, one of ``RESOLUTIONS`` (default 64).
        width: channels of the first conv (default 32; later ones up to 2x).
        hidden: width of the fully connected layers (default 96).
        crop: side of the resampled window in pixels (default ``resolution // 2``).
        crop_half: half-width of the window in metres (default 0.6).
        crop_z: height of the window centre above the plane in metres (default 0.25).
        n_colors, n_shapes: class counts (default: the dataset's palette and shapes).

    ``forward(x, pos=None)`` takes ``(N, 3, resolution, resolution)`` floats in
    [0, 1] (and optionally the window positions ``(N, 2)``) and returns a dict:
    ``color`` logits ``(N, n_colors)``, ``shape`` logits ``(N, n_shapes)``,
    ``pos`` ``(N, 2)`` (normalised units) and ``size01`` ``(N,)`` (size mapped
    linearly from ``SIZE_RANGE`` to [0, 1]).
    """

    def __init__(self, resolution: int = 64, width: int = 32, hidden: int = 96, crop: int | None = None,
                 crop_half: float = 0.6, crop_z: float = 0.25,
                 n_colors: int = len(COLOR_NAMES), n_shapes: int = len(SHAPES)):
        super().__init__()
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution: expected one of {RESOLUTIONS}, got {resolution!r}")
        crop = resolution // 2 if crop is None else int(crop)
        self.config = {"resolution": resolution, "width": width, "hidden": hidden, "crop": crop,
                       "crop_half": crop_half, "crop_z": crop_z, "n_colors": n_colors, "n_shapes": n_shapes}
        n_down = int(math.log2(resolution // 4))
        chans = [width, width, 2 * width, 2 * width, 2 * width][:n_down]
        self.locator, c = _conv_stack(3, chans, first_stride=2)
        self.loc_head = nn.Sequential(nn.Flatten(), nn.Linear(c * 16, hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, 2))
        self.crop_net, c = _conv_stack(3, [width, width, 2 * width, 2 * width], first_stride=1)
        self.crop_fc = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True))
        self.color = nn.Linear(hidden, n_colors)
        self.shape = nn.Linear(hidden, n_shapes)
        self.size = nn.Linear(hidden, 1)
        cam = camera_frame()
        for name, value in (("cam_pos", cam.pos), ("cam_right", cam.right), ("cam_up", cam.up),
                            ("cam_forward", cam.forward)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32), persistent=False)
        self.tan_half = cam.tan_half_fovy

    def window(self, x: Tensor, pos: Tensor) -> Tensor:
        """Resample the ``(N, 3, crop, crop)`` object-centred windows at normalised ``pos`` ``(N, 2)``."""
        cfg = self.config
        centre = torch.cat([pos * POSITION_EXTENT, torch.full_like(pos[:, :1], cfg["crop_z"])], dim=1)
        p = centre - self.cam_pos
        depth = p @ self.cam_forward
        u = (p @ self.cam_right) / depth / self.tan_half  # image x in [-1, 1]
        v = (p @ self.cam_up) / depth / self.tan_half  # image y (up) in [-1, 1]
        half = cfg["crop_half"] / depth / self.tan_half
        zero = torch.zeros_like(u)
        theta = torch.stack([torch.stack([half, zero, u], 1), torch.stack([zero, half, -v], 1)], 1)
        grid = F.affine_grid(theta, [len(x), 3, cfg["crop"], cfg["crop"]], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> dict[str, Tensor]:
        z = x * 2.0 - 1.0
        pred_pos = self.loc_head(self.locator(z))
        where = pred_pos.detach() if pos is None else pos
        f = self.crop_net(self.window(z, where.clamp(-1.5, 1.5)))
        h = self.crop_fc(f.amax(dim=(2, 3)))
        return {"color": self.color(h), "shape": self.shape(h), "pos": pred_pos,
                "size01": self.size(h).squeeze(1)}


# --------------------------------------------------------------------------- #
# Inference and scoring
# --------------------------------------------------------------------------- #


def _class_targets(name: str, values, names: Sequence[str], aliases: Mapping[str, str], n: int) -> Tensor:
    """Class indices ``(n,)`` from ints or names (a scalar/single name is broadcast)."""
    if isinstance(values, (str, int, np.integer)):
        values = [values] * n
    if isinstance(values, Tensor):
        out = values.detach().cpu().long().reshape(-1)
    else:
        idx = []
        for v in (values.tolist() if isinstance(values, np.ndarray) else values):
            if isinstance(v, str):
                key = aliases.get(v.lower(), v.lower())
                if key not in names:
                    raise ValueError(f"{name}: expected names from {tuple(names)}, got unknown {v!r}")
                idx.append(names.index(key))
            else:
                idx.append(int(v))
        out = torch.tensor(idx, dtype=torch.long)
    if out.numel() == 1 and n != 1:
        out = out.expand(n)
    if out.shape != (n,):
        raise ValueError(f"{name}: expected {n} targets, got shape {tuple(out.shape)}")
    if len(out) and (out.min() < 0 or out.max() >= len(names)):
        raise ValueError(f"{name}: expected class indices in [0, {len(names) - 1}], got {out.tolist()[:8]}")
    return out


def _float_targets(name: str, values, tail: tuple[int, ...], n: int) -> Tensor:
    t = torch.as_tensor(np.asarray(values) if not isinstance(values, Tensor) else values.detach().cpu(),
                        dtype=torch.float32)
    if t.shape == tail:
        t = t.expand(n, *tail)
    if tuple(t.shape) != (n, *tail):
        raise ValueError(f"{name}: expected shape {(n, *tail)} or {tail}, got {tuple(t.shape)}")
    return t


class Judges:
    """Trained attribute judges.

    Build with :meth:`load` (a saved file, default the packaged 64x64 judges)
    or get one from :func:`train_judges`.  All methods take images as float
    ``(N, 3, H, W)`` in [0, 1] (torch tensor or NumPy array) with square
    ``H = W`` in ``RESOLUTIONS``; other sizes are resized to the judge's
    resolution (bilinear, antialiased when shrinking).
    """

    def __init__(self, net: JudgeNet, meta: dict | None = None):
        self.net = net.eval()
        self.meta = dict(meta or {})
        self.colors = tuple(self.meta.get("colors", COLOR_NAMES))
        self.shapes = tuple(self.meta.get("shapes", SHAPES))
        self.size_range = tuple(self.meta.get("size_range", SIZE_RANGE))

    @property
    def resolution(self) -> int:
        return int(self.net.config["resolution"])

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> "Judges":
        self.net.to(device)
        return self

    # -- persistence ------------------------------------------------------- #

    def state(self) -> dict:
        """The dict written by :meth:`save` (tensors on the CPU)."""
        return {
            "format": FORMAT,
            "config": dict(self.net.config),
            "colors": list(self.colors),
            "shapes": list(self.shapes),
            "size_range": [float(v) for v in self.size_range],
            "metrics": dict(self.meta.get("metrics", {})),
            "train": dict(self.meta.get("train", {})),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
        }

    def save(self, path: str | Path) -> Path:
        """Save atomically (temporary file in the same directory, then ``os.replace``)."""
        buf = io.BytesIO()
        torch.save(self.state(), buf)
        return atomic_write(path, lambda f: f.write(buf.getvalue()))

    @classmethod
    def load(cls, path: str | Path | None = None, map_location: str | torch.device = "cpu") -> "Judges":
        """Load judges saved by :meth:`save` (default: the packaged 64x64 judges)."""
        path = Path(path) if path is not None else default_judges_path(64)
        if not path.is_file():
            raise FileNotFoundError(
                f"judges file: expected {path} to exist; train one with `ebm-fast judges train --out {path}`")
        blob = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
            raise ValueError(f"judges file {path}: expected format {FORMAT!r}, got {got!r}")
        net = JudgeNet(**blob["config"])
        net.load_state_dict(blob["state_dict"])
        meta = {k: blob[k] for k in ("colors", "shapes", "size_range", "metrics", "train")}
        meta["path"] = str(path)
        return cls(net.to(map_location), meta)

    # -- inference ----------------------------------------------------------- #

    def prepare(self, images) -> Tensor:
        """Validate ``images`` and return float32 ``(N, 3, R, R)`` at the judge's resolution."""
        x = torch.as_tensor(images) if not isinstance(images, Tensor) else images
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise ValueError(f"images: expected floats in [0, 1], got dtype {x.dtype} "
                             "(convert uint8 with images.float() / 255)")
        h, w = int(x.shape[2]), int(x.shape[3])
        if h != w or h not in RESOLUTIONS:
            raise ValueError(f"images: expected square resolution in {RESOLUTIONS}, got {h}x{w}")
        x = x.to(self.device, torch.float32).clamp(0.0, 1.0)
        r = self.resolution
        if h != r:
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=h > r)
        return x

    @torch.no_grad()
    def predict(self, images, batch_size: int = 512) -> dict[str, Tensor]:
        """Predicted attributes of ``images`` (float ``(N, 3, H, W)`` in [0, 1]).

        Returns a dict of CPU tensors: ``color`` ``(N,)`` int64, ``shape`` ``(N,)``
        int64, ``pos`` ``(N, 2)`` float32 (normalised), ``size`` ``(N,)`` float32
        (metres), ``color_prob`` ``(N, n_colors)`` and ``shape_prob`` ``(N, n_shapes)``.
        """
        x = self.prepare(images)
        self.net.eval()
        if len(x):
            outs = [self.net(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
            cat = {k: torch.cat([o[k] for o in outs]).float().cpu() for k in outs[0]}
        else:
            cfg = self.net.config
            cat = {"color": torch.zeros(0, cfg["n_colors"]), "shape": torch.zeros(0, cfg["n_shapes"]),
                   "pos": torch.zeros(0, 2), "size01": torch.zeros(0)}
        lo, hi = self.size_range
        return {
            "color": cat["color"].argmax(1),
            "shape": cat["shape"].argmax(1),
            "pos": cat["pos"],
            "size": lo + cat["size01"] * (hi - lo),
            "color_prob": cat["color"].softmax(1),
            "shape_prob": cat["shape"].softmax(1),
        }

    def correct(self, images, targets: Mapping, position_threshold: float = POSITION_THRESHOLD,
                size_tolerance: float = SIZE_TOLERANCE, pred: dict | None = None) -> dict[str, Tensor]:
        """Per-image correctness against ``targets``.

        Args:
            images: float ``(N, 3, H, W)`` in [0, 1].
            targets: any of ``color`` / ``shape`` (class indices or names,
                ``(N,)`` or one value for all), ``pos`` (``(N, 2)`` or ``(2,)``),
                ``size`` (``(N,)`` or a scalar, metres).  Other keys are ignored.
            position_threshold: max Euclidean position error (default 0.4).
            size_tolerance: max absolute size error in metres (default 0.025).
            pred: reuse a :meth:`predict` result for these images.

        Returns:
            dict of bool ``(N,)`` tensors for each attribute given, plus ``all``.
        """
        p = self.predict(images) if pred is None else pred
        n = len(p["color"])
        out: dict[str, Tensor] = {}
        if "color" in targets:
            out["color"] = p["color"] == _class_targets("color", targets["color"], self.colors, {}, n)
        if "shape" in targets:
            out["shape"] = p["shape"] == _class_targets("shape", targets["shape"], self.shapes, SHAPE_ALIASES, n)
        if "pos" in targets:
            err = (p["pos"] - _float_targets("pos", targets["pos"], (2,), n)).norm(dim=1)
            out["pos"] = err <= position_threshold
        if "size" in targets:
            out["size"] = (p["size"] - _float_targets("size", targets["size"], (), n)).abs() <= size_tolerance
        if not out:
            raise ValueError(f"targets: expected some of ('color', 'shape', 'pos', 'size'), got {sorted(targets)}")
        out["all"] = torch.stack(list(out.values())).all(0)
        return out

    def score(self, images, targets: Mapping, position_threshold: float = POSITION_THRESHOLD,
              size_tolerance: float = SIZE_TOLERANCE) -> dict[str, float]:
        """Mean accuracies of :meth:`correct` (keys ``<attr>_acc`` and ``all_acc``) plus
        ``pos_error`` (mean Euclidean distance) and ``size_error`` (mean absolute, metres)
        when those targets are given."""
        pred = self.predict(images)
        ok = self.correct(images, targets, position_threshold, size_tolerance, pred=pred)
        res = {f"{k}_acc": float(v.float().mean()) for k, v in ok.items()}
        n = len(pred["color"])
        if "pos" in targets:
            res["pos_error"] = float((pred["pos"] - _float_targets("pos", targets["pos"], (2,), n)).norm(dim=1).mean())
        if "size" in targets:
            res["size_error"] = float((pred["size"] - _float_targets("size", targets["size"], (), n)).abs().mean())
        return res

    @torch.no_grad()
    def features(self, images, batch_size: int = 512) -> Tensor:
        """Feature vectors ``(N, F)`` of ``images`` (float ``(N, 3, H, W)`` in [0, 1]) for distances between
        image sets: the locator's last convolution averaged over the image, beside the crop net's hidden
        layer at the predicted position (``F = 2 * width + hidden``; 160 for the packaged judges)."""
        x = self.prepare(images)
        net = self.net.eval()
        out = []
        for i in range(0, len(x), batch_size):
            z = x[i:i + batch_size] * 2.0 - 1.0
            loc = net.locator(z)
            pos = net.loc_head(loc).clamp(-1.5, 1.5)
            h = net.crop_fc(net.crop_net(net.window(z, pos)).amax(dim=(2, 3)))
            out.append(torch.cat([loc.mean(dim=(2, 3)), h], dim=1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, net.crop_fc[0].in_features + net.config["hidden"])


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


def _batch(images_u8: Tensor, idx: Tensor) -> Tensor:
    """uint8 ``(N, H, W, 3)`` rows ``idx`` -> float ``(B, 3, H, W)`` in [0, 1]."""
    return images_u8[idx].permute(0, 3, 1, 2).float().div_(255.0)


def _check_data(name: str, images: np.ndarray, labels: Mapping[str, np.ndarray]) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    missing = {"color", "shape", "pos", "size"} - set(labels)
    if missing:
        raise ValueError(f"{name} labels: expected keys color, shape, pos, size, got {sorted(labels)}")
    for k in ("color", "shape", "pos", "size"):
        if len(labels[k]) != len(images):
            raise ValueError(f"{name} labels[{k!r}]: expected {len(images)} rows, got {len(labels[k])}")


def fit_judges(
    train_images: np.ndarray,
    train_labels: Mapping[str, np.ndarray],
    val_images: np.ndarray | None = None,
    val_labels: Mapping[str, np.ndarray] | None = None,
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 2e-3,
    noise: float = 0.04,
    pos_jitter: float = 0.05,
    seed: int = 0,
    width: int = 32,
    hidden: int = 96,
    log: Callable[[str], None] | None = print,
    progress: bool = False,
) -> tuple[Judges, dict]:
    """Train :class:`JudgeNet` on rendered scenes.

    Args:
        train_images: uint8 ``(N, R, R, 3)``; ``R`` sets the judge's resolution.
        train_labels: labels dict with ``color``, ``shape``, ``pos``, ``size``.
        val_images, val_labels: held-out data scored after every epoch (optional).
        epochs, batch_size, lr: AdamW with a one-cycle schedule.
        noise: per-image Gaussian noise std drawn uniformly in ``[0, noise]`` (augmentation).
        pos_jitter: std of the noise added to the true position that places the
            crop window during training (normalised units).
        seed: torch seed for initialisation and batch order.
        width, hidden: :class:`JudgeNet` sizes.
        log: called with one line per epoch (``None`` = silent).
        progress: a progress bar over the batches on a terminal (``log`` then prints best with
            :func:`ebm_fast.progress.say`, which keeps the bar below its lines).

    Returns:
        ``(judges, metrics)``; ``metrics`` holds the final validation scores
        (``color_acc``, ``shape_acc``, ``pos_acc``, ``pos_error``, ``size_acc``,
        ``size_error``, ``all_acc``; empty without validation data), ``epochs``
        and ``train_seconds``.
    """
    _check_data("train", train_images, train_labels)
    if val_images is not None:
        _check_data("val", val_images, val_labels or {})
    res = int(train_images.shape[1])
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = JudgeNet(res, width=width, hidden=hidden)
    judges = Judges(net)
    lo, hi = SIZE_RANGE
    x_all = torch.from_numpy(np.ascontiguousarray(train_images))
    y_color = torch.as_tensor(train_labels["color"], dtype=torch.long)
    y_shape = torch.as_tensor(train_labels["shape"], dtype=torch.long)
    y_pos = torch.as_tensor(train_labels["pos"], dtype=torch.float32)
    y_size = (torch.as_tensor(train_labels["size"], dtype=torch.float32) - lo) / (hi - lo)
    n = len(x_all)
    steps_per_epoch = max(1, n // batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    metrics: dict = {}
    t0 = time.perf_counter()
    bar = progress_bar(total=epochs * steps_per_epoch, desc="judges", unit="batch", disable=None if progress else True)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            x = _batch(x_all, idx)
            if noise > 0:
                sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * noise
                x = (x + sigma * torch.randn(x.shape, generator=gen)).clamp_(0.0, 1.0)
            # the window follows the true position, jittered like the locator's errors
            where = y_pos[idx] + pos_jitter * torch.randn(len(idx), 2, generator=gen)
            out = net(x, where)
            loss = (F.cross_entropy(out["color"], y_color[idx]) + F.cross_entropy(out["shape"], y_shape[idx])
                    + 5.0 * F.mse_loss(out["pos"], y_pos[idx]) + 5.0 * F.mse_loss(out["size01"], y_size[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            bar.update(1)
        net.eval()
        line = f"epoch {epoch + 1}/{epochs} loss {total / steps_per_epoch:.4f} ({time.perf_counter() - t0:.0f} s)"
        if val_images is not None:
            metrics = judges.score(torch.from_numpy(val_images).permute(0, 3, 1, 2).float().div_(255.0),
                                   {k: val_labels[k] for k in ("color", "shape", "pos", "size")})
            line += " | val " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        if log is not None:
            log(line)
    bar.close()
    metrics = dict(metrics, epochs=epochs, train_seconds=round(time.perf_counter() - t0, 1))
    judges.meta["metrics"] = metrics
    return judges, metrics


def train_judges(
    n: int = 20000,
    resolution: int = 64,
    val_n: int = 2000,
    seed: int = 1000,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 2e-3,
    renderer: str = "auto",
    workers: int | None = None,
    cache_dir: str | Path | None = None,
    light_variation: bool = True,
    distractors: int = 0,
    out: str | Path | None = None,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> tuple[Judges, dict]:
    """Render (or load cached) training scenes with ``seed`` and held-out
    validation scenes with ``seed + 1``, fit the judges, report validation
    metrics and save them to ``out`` (atomically) when given.

    ``threads`` sets ``torch.set_num_threads`` for the training.  Returns
    ``(judges, metrics)`` as :func:`fit_judges`, with the data settings stored
    in ``judges.meta["train"]``.
    """
    if n < 1 or val_n < 1:
        raise ValueError(f"n, val_n: expected >= 1, got {n}, {val_n}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    common = dict(resolution=resolution, light_variation=light_variation, distractors=distractors)
    train_cfg = SceneConfig(n=n, seed=seed, **common)
    val_cfg = SceneConfig(n=val_n, seed=seed + 1, **common)
    t0 = time.perf_counter()
    tr_images, tr_labels = load_scenes(train_cfg, cache_dir, renderer, workers, progress)
    va_images, va_labels = load_scenes(val_cfg, cache_dir, renderer, workers, progress)
    data_seconds = time.perf_counter() - t0
    if log is not None:
        log(f"data: {n} train + {val_n} val scenes at {resolution}x{resolution} in {data_seconds:.1f} s")
    judges, metrics = fit_judges(tr_images, tr_labels, va_images, va_labels, epochs=epochs,
                                 batch_size=batch_size, lr=lr, seed=seed, log=log, progress=progress)
    from ebm_fast.paper.scenes import resolve_renderer

    judges.meta["train"] = {"n": n, "val_n": val_n, "seed": seed, "val_seed": seed + 1,
                            "resolution": resolution, "renderer": resolve_renderer(renderer),
                            "light_variation": light_variation, "distractors": distractors,
                            "epochs": epochs, "batch_size": batch_size, "lr": lr,
                            "data_seconds": round(data_seconds, 1)}
    if out is not None:
        path = judges.save(out)
        if log is not None:
            log(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return judges, metrics
