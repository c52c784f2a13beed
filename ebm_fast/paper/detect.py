"""A training-free detector of objects of one colour in scene images (the paper's Fig. 6 judge).

The judges (:mod:`ebm_fast.paper.judges`) read one object per image; a sample of two positions of a
green cube holds two. Here a pixel belongs to a colour when its hue lies within ``hue_tolerance``
degrees of the palette colour's hue, with saturation and value above floors (the checkered floor is
grey, saturation 0; the palette's hues lie 25 degrees or more apart: green 124, yellow 56, cyan 182);
the 8-connected regions of such pixels with at least ``min_pixels`` pixels are the objects. A region's
position is where the camera ray through its centroid meets the horizontal plane at ``height`` metres
(the half-extent of a typical object: its centre), in the dataset's normalised ``[-1, 1]^2`` units.

Checked on fresh renders of one green object among four clutter objects of the other colours, with
random light (tests/test_eval_multi_object.py): on 300 renders at 32x32 and at 64x64 (NumPy and MuJoCo
renderers) it found exactly one region in every image, at a median 0.06 and at most 0.30 from the
object's true position (normalised units; the judges' position threshold is 0.4).

Two objects of the colour that touch in the image form one region: two green cubes one behind the
other in the camera's view do (29 of 143 pairs more than 0.8 apart, all less than 0.5 apart in x, at
32x32). A region's count is then one, but :func:`near` still finds an object at each of the two
positions, since it also asks whether ``min_pixels`` of a region's pixels, each placed on the plane,
lie near the position.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .scenes import PALETTE, POSITION_EXTENT, SIZE_RANGE, camera_frame

__all__ = ["Detection", "colour_mask", "detect_objects", "near", "pixel_to_position", "hue_degrees", "default_min_pixels",
           "label_regions"]


@dataclass(frozen=True)
class Detection:
    """One region: ``pos`` normalised ``(x, y)``, ``pixels`` its area, ``centroid`` ``(column, row)``,
    ``points`` ``(pixels, 2)`` each pixel's normalised position on the plane."""

    pos: tuple[float, float]
    pixels: int
    centroid: tuple[float, float]
    points: np.ndarray = dataclasses.field(repr=False, compare=False, default_factory=lambda: np.zeros((0, 2)))


def hue_degrees(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hue in [0, 360), saturation, value)`` of float RGB ``(..., 3)`` in [0, 1]."""
    rgb = np.asarray(rgb, dtype=np.float64)
    mx, mn = rgb.max(-1), rgb.min(-1)
    delta = mx - mn
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(delta > 0, hue * 60.0, 0.0)
    sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
    return hue, sat, mx


def colour_mask(images: np.ndarray, colour: str = "green", *, hue_tolerance: float = 20.0,
                min_saturation: float = 0.45, min_value: float = 0.12) -> np.ndarray:
    """Boolean ``(N, H, W)``: the pixels of uint8 ``(N, H, W, 3)`` (or float in [0, 1]) images whose
    colour is ``colour`` of ``PALETTE``."""
    if colour not in PALETTE:
        raise ValueError(f"colour: expected one of {tuple(PALETTE)}, got {colour!r}")
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images: expected (N, H, W, 3), got shape {x.shape}")
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    hue, sat, val = hue_degrees(x)
    want, _, _ = hue_degrees(np.array(PALETTE[colour]))
    dist = np.abs((hue - float(want) + 180.0) % 360.0 - 180.0)
    return (dist <= hue_tolerance) & (sat >= min_saturation) & (val >= min_value)


def pixel_to_position(col: np.ndarray, row: np.ndarray, resolution: int,
                      height: float = float(np.mean(SIZE_RANGE))) -> np.ndarray:
    """Normalised ``(x, y)`` ``(..., 2)`` where the camera rays through pixel ``(col, row)`` (pixel
    centres at ``+ 0.5``) meet the plane ``z = height`` metres; the inverse of
    :func:`ebm_fast.paper.scenes.world_to_pixel` on that plane."""
    cam = camera_frame()
    u = np.asarray(col, np.float64) / resolution * 2.0 - 1.0
    v = 1.0 - np.asarray(row, np.float64) / resolution * 2.0
    d = (cam.forward[None] + cam.tan_half_fovy * (u.reshape(-1, 1) * cam.right[None] + v.reshape(-1, 1) * cam.up[None]))
    t = (height - cam.pos[2]) / d[:, 2]
    hit = cam.pos[None] + t[:, None] * d
    return (hit[:, :2] / POSITION_EXTENT).reshape(*np.shape(u), 2)


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected regions of a boolean ``(H, W)`` mask: ``(labels (H, W) int64, 1..k; 0 outside, k)``,
    numbered in row-major order of their first pixel (as ``scipy.ndimage.label`` numbers them). A flood
    fill over the mask's pixels: a few hundred per image here, so plain Python is fast enough and the
    package needs no SciPy."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    lab = np.zeros((h, w), np.int64)
    k = 0
    for r0, c0 in zip(*np.nonzero(mask)):
        if lab[r0, c0]:
            continue
        k += 1
        lab[r0, c0] = k
        stack = [(int(r0), int(c0))]
        while stack:
            r, c = stack.pop()
            for rr in range(max(r - 1, 0), min(r + 2, h)):
                for cc in range(max(c - 1, 0), min(c + 2, w)):
                    if mask[rr, cc] and not lab[rr, cc]:
                        lab[rr, cc] = k
                        stack.append((rr, cc))
    return lab, k


def default_min_pixels(height: int, width: int) -> int:
    """0.5% of the image, at least 3 pixels (see :func:`detect_objects`)."""
    return max(3, int(0.005 * height * width))


def near(detections: list[Detection], pos, threshold: float, min_pixels: int) -> bool:
    """Whether a detected object lies within ``threshold`` of ``pos`` (normalised ``(x, y)``): a region's
    centroid does, or ``min_pixels`` of its pixels do (a region holding two touching objects)."""
    p = np.asarray(pos, dtype=np.float64)
    for d in detections:
        if np.hypot(d.pos[0] - p[0], d.pos[1] - p[1]) <= threshold:
            return True
        if len(d.points) and int((np.linalg.norm(d.points - p, axis=1) <= threshold).sum()) >= min_pixels:
            return True
    return False


def detect_objects(images: np.ndarray, colour: str = "green", *, min_pixels: int | None = None,
                   height: float = float(np.mean(SIZE_RANGE)), **mask_kw) -> list[list[Detection]]:
    """The ``colour`` objects of each image: 8-connected regions of :func:`colour_mask` with at least
    ``min_pixels`` pixels, largest first. The default, 0.5% of the image (5 pixels at 32x32, 20 at
    64x64), keeps every object of 300 renders at either size (the smallest covered 8 and 34 pixels)
    and drops most specks of a noisy sample."""
    mask = colour_mask(images, colour, **mask_kw)
    n, h, w = mask.shape
    floor = default_min_pixels(h, w) if min_pixels is None else int(min_pixels)
    out = []
    for i in range(n):
        lab, k = label_regions(mask[i])
        found = []
        if k:
            sizes = np.bincount(lab.ravel(), minlength=k + 1)[1:]
            rows, cols = np.nonzero(lab)
            ids = lab[rows, cols] - 1
            mean_r = np.bincount(ids, weights=rows, minlength=k) / np.maximum(sizes, 1)
            mean_c = np.bincount(ids, weights=cols, minlength=k) / np.maximum(sizes, 1)
            for j in np.argsort(-sizes, kind="stable"):
                if sizes[j] < floor:
                    continue
                c, r = mean_c[j] + 0.5, mean_r[j] + 0.5
                pos = pixel_to_position(np.array(c), np.array(r), h, height)
                mine = ids == j
                points = pixel_to_position(cols[mine] + 0.5, rows[mine] + 0.5, h, height)
                found.append(Detection((float(pos[0]), float(pos[1])), int(sizes[j]), (float(c), float(r)), points))
        out.append(found)
    return out
