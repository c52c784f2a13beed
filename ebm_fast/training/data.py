"""Training data: images with per-image labels in memory, and where they come from.

:class:`ConditionalData` holds the images and labels a run trains on. :func:`load_data` gives the
data a :class:`~ebm_fast.training.TrainConfig` names: a data source registered under that name
(:func:`register_data_source`; the paper's reproduction registers ``"scenes"``, its rendered MuJoCo
scenes, when :mod:`ebm_fast.paper` is imported, as ``ebm-fast train`` does), else an ``.npz`` file.
:func:`synthetic_data` makes a tiny dataset for tests and smoke runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .config import TrainConfig, label_key

__all__ = ["ConditionalData", "DataSource", "register_data_source", "data_sources", "load_data", "load_npz",
           "conditional_data", "synthetic_data"]

# A data source: the config -> the data (it reads the fields it knows, e.g. resolution, n_images).
DataSource = Callable[[TrainConfig], "ConditionalData"]
_SOURCES: dict[str, DataSource] = {}


def register_data_source(name: str, source: DataSource) -> None:
    """Make ``TrainConfig(data=name)`` load its data with ``source(config)``."""
    if not name or name.endswith(".npz"):
        raise ValueError(f"name: expected a word that is not an .npz path, got {name!r}")
    _SOURCES[name] = source


def data_sources() -> list[str]:
    """The registered data source names."""
    return sorted(_SOURCES)


@dataclass
class ConditionalData:
    """Images and per-image labels held in memory.

    Attributes:
        images: ``(N, C, H, W)`` uint8 (0..255) or float (in [0, 1]).
        labels: name -> ``(N, ...)`` tensor (int64 class indices or float32 values).
        specs: name -> ``(cond_type, cond_dim)`` for every label that can condition a model.
        meta: primitives describing the data (source, class names...), stored with the model.
    """

    images: Tensor
    labels: dict[str, Tensor]
    specs: dict[str, tuple[str, int]]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images: expected (N, C, H, W), got shape {tuple(self.images.shape)}")
        n = self.images.shape[0]
        bad = {k: tuple(v.shape) for k, v in self.labels.items() if v.shape[0] != n}
        if bad:
            raise ValueError(f"labels: expected {n} rows like images, got {bad}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "ConditionalData":
        return ConditionalData(self.images.to(device), {k: v.to(device) for k, v in self.labels.items()},
                               self.specs, self.meta)

    def batch(self, idx: Tensor, names: Sequence[str]) -> tuple[Tensor, list[Tensor]]:
        """Float images ``(B, C, H, W)`` in [0, 1] and the labels ``names`` for indices ``idx``."""
        x = self.images[idx]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x, [self.labels[n][idx] for n in names]

    def attribute(self, name: str) -> tuple[str, str, int]:
        """``(label key, cond_type, cond_dim)`` of a conditioning attribute name."""
        key = label_key(name)
        if key not in self.specs:
            raise ValueError(f"cond: expected one of {sorted(set(self.specs) | {'none'})} for this data, got {name!r}")
        return (key, *self.specs[key])


def _specs_from_labels(labels: dict[str, Tensor], class_counts: dict[str, int]) -> dict[str, tuple[str, int]]:
    specs = {}
    for k, v in labels.items():
        if v.is_floating_point():
            specs[k] = ("continuous", 1 if v.dim() == 1 else int(np.prod(v.shape[1:])))
        elif v.dim() == 1:
            specs[k] = ("onehot", class_counts.get(k, int(v.max()) + 1 if v.numel() else 1))
    return specs


def _images_tensor(images: np.ndarray) -> Tensor:
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images: expected 4-d (N, H, W, C) or (N, C, H, W), got shape {images.shape}")
    t = torch.from_numpy(np.ascontiguousarray(images))
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.dtype != torch.uint8:
        t = t.float()
    return t.contiguous()


def conditional_data(images: np.ndarray, labels: Mapping[str, np.ndarray], meta: dict,
                     class_counts: Mapping[str, int] | None = None) -> ConditionalData:
    """:class:`ConditionalData` of numpy ``images`` (``(N, H, W, C)`` or ``(N, C, H, W)``) and ``labels``
    (name -> ``(N, ...)``; integer labels are class indices, with ``class_counts[name]`` classes, else
    max + 1); labels with another row count are dropped."""
    counts = dict(class_counts or {})
    t_images = _images_tensor(images)
    t_labels = {k: torch.from_numpy(np.asarray(v)) for k, v in labels.items()}
    t_labels = {k: (v.long() if not v.is_floating_point() else v.float()) for k, v in t_labels.items()
                if v.shape[:1] == (t_images.shape[0],)}
    return ConditionalData(t_images, t_labels, _specs_from_labels(t_labels, counts), meta)


def load_npz(path: str | Path) -> ConditionalData:
    """The images and labels of an .npz: ``images``, labels ``label_<name>`` or ``<name>``, and an optional
    JSON ``meta`` whose ``shapes``/``colors`` lists give the class counts (as scenes' ``save_scenes`` writes)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data: expected one of {data_sources()} or the path of an .npz file, got {str(path)!r} "
                         "(no such file)")
    counts: dict[str, int] = {}
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"data {path}: not a readable .npz file ({exc})") from None
    with z:
        if "images" not in z.files:
            raise ValueError(f"data {path}: expected an 'images' array, got arrays {z.files}")
        images = z["images"]
        labels = {}
        for k in z.files:
            if k.startswith("label_"):
                labels[k[len("label_"):]] = z[k]
            elif k not in ("images", "meta"):
                labels[k] = z[k]
        meta = {"source": str(path)}
        if "meta" in z.files:
            info = json.loads(str(z["meta"]))
            for k in ("shapes", "colors"):
                if k in info:
                    meta[k] = list(info[k])
                    counts[k[:-1]] = len(info[k])
    return conditional_data(images, labels, meta, counts)


def load_data(config: TrainConfig) -> ConditionalData:
    """The training data ``config.data`` names: a registered data source, else an .npz path."""
    source = _SOURCES.get(config.data)
    if source is not None:
        return source(config)
    if config.data == "scenes":
        raise ValueError("data 'scenes': the scenes data source is registered by ebm_fast.paper; import it "
                         "(ebm-fast train does) or pass the path of an .npz")
    return load_npz(config.data)


def synthetic_data(n: int = 256, resolution: int = 16, seed: int = 0) -> ConditionalData:
    """A tiny conditional dataset for tests and smoke runs: a bright square on a dark background.

    Labels: ``pos`` ``(N, 2)`` in [-1, 1]^2 (the square's centre), ``color`` ``(N,)`` in {0, 1, 2}
    (red, green, blue square). Images ``(N, 3, R, R)`` uint8.
    """
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 2, generator=g) * 2 - 1
    color = torch.randint(0, 3, (n,), generator=g)
    r = resolution
    side = max(2, r // 2)
    coords = torch.arange(r, dtype=torch.float32)
    cx = (pos[:, 0] + 1) / 2 * (r - side) + side / 2
    cy = (1 - pos[:, 1]) / 2 * (r - side) + side / 2  # +y is up in the image
    inside = ((coords.view(1, 1, r) - cx.view(n, 1, 1)).abs() < side / 2) & \
             ((coords.view(1, r, 1) - cy.view(n, 1, 1)).abs() < side / 2)
    img = torch.full((n, 3, r, r), 0.1)
    rgb = torch.eye(3)[color] * 0.8 + 0.1
    img = torch.where(inside.unsqueeze(1), rgb.view(n, 3, 1, 1), img)
    images = (img * 255).round().to(torch.uint8)
    labels = {"pos": pos, "color": color}
    return ConditionalData(images, labels, {"pos": ("continuous", 2), "color": ("onehot", 3)},
                           {"source": f"synthetic(n={n}, resolution={r}, seed={seed})", "colors": ["red", "green", "blue"]})
