"""The data of the paper's concept-inference evaluation (Table 3, Fig. 11): which scenes each set holds.

* :func:`table3_splits` -- ``train``, ``Test`` (same distribution, other seed), ``Color`` (held-out
  colours), ``Light`` (light elevations/intensities outside the training ranges), ``Size`` (every
  half-extent doubled), ``Type`` (cylinders).
* :func:`multiview_split` -- Fig. 11's data: groups of ``V`` renders that share one position and differ
  in size, light and colour.
* :func:`render_split` -- render (or read from the cache) a split's images and labels.

What :mod:`ebm_fast.paper.scenes` cannot express, done here by editing sampled labels before
rendering (:func:`sample_split_labels`): a light range other than the training one (SceneConfig only
has ``light_variation`` on/off with fixed ranges ``LIGHT_ELEVATION_RANGE``/``LIGHT_INTENSITY_RANGE``),
and sizes above ``SIZE_RANGE[1] = 0.32`` m (SceneConfig rejects ``size_range`` outside
``SIZE_RANGE``). Both backends render such labels as given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import scenes

__all__ = ["TRAIN_SHAPES", "TRAIN_COLORS", "HELDOUT_COLORS", "TRAIN_SIZE_RANGE", "UNSEEN_LIGHT_ELEVATION",
           "UNSEEN_LIGHT_INTENSITY", "SET_NAMES", "SHIFTED", "Split", "table3_splits", "multiview_split",
           "sample_split_labels", "render_split"]

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


@dataclass(frozen=True)
class Split:
    """One evaluation set: a :class:`~ebm_fast.paper.scenes.SceneConfig` plus label edits it cannot express.

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
    """The labels of ``split`` (the scenes labels dict, see :mod:`ebm_fast.paper.scenes`) with its edits
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
    (default :func:`ebm_fast.paper.scenes.default_cache_dir`) by a hash of the split and renderer."""
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
