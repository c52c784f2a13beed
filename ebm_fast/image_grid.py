"""PNG grids of image samples, optionally with a caption under each tile.

A grid is what a person looks at to check samples by eye: training writes one of its negatives,
``ebm-fast sample`` and the evaluations one per expression. With ``labels`` each tile gets the target
it was drawn for (e.g. ``"(+0.50,-0.25)"`` and ``"red"`` on two lines) in a white strip below it, so
a sample that missed its target shows as such.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic_file import atomic_write

__all__ = ["image_grid", "save_image_grid"]

_LINE_PX = 11  # height of one caption line of PIL's built-in bitmap font (about 6 x 11 px per glyph)
_CHAR_PX = 6


def image_grid(images: np.ndarray, ncols: int = 8, pad: int = 2) -> np.ndarray:
    """Tile uint8 ``(N, H, W, 3)`` images into one ``(rows*(H+pad)+pad, cols*(W+pad)+pad, 3)`` uint8
    grid on a white background."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images: expected (N, H, W, C), got shape {images.shape}")
    n, h, w, c = images.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img
    return grid


def _fit(line: str, width_px: int) -> str:
    """``line`` cut to what fits ``width_px`` pixels of the bitmap font (a cut line ends in ``~``)."""
    room = max(1, width_px // _CHAR_PX)
    return line if len(line) <= room else line[: room - 1] + "~"


def save_image_grid(path: str | os.PathLike, images: np.ndarray, ncols: int = 8, scale: int = 2,
                    title: str | None = None, labels: Sequence[str] | None = None) -> Path:
    """Save a PNG grid of uint8 ``(N, H, W, 3)`` ``images`` (nearest-neighbour upscaled by ``scale``),
    atomically.

    Args:
        title: one line in a white strip above the grid.
        labels: one caption per image (``\\n`` separates its lines), written in a strip under its tile;
            lines wider than the tile are cut and end in ``~``.
    """
    from PIL import Image, ImageDraw

    images = np.asarray(images)
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"labels: expected one per image ({len(images)}), got {len(labels)}")
    pad = 2
    grid = image_grid(images, ncols, pad)
    im = Image.fromarray(grid)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    if labels is not None and len(images):
        n, h, w = images.shape[:3]
        cols = max(1, min(ncols, n))
        lines = max(s.count("\n") + 1 for s in labels)
        strip = lines * _LINE_PX + 2
        th, tw, edge = (h + pad) * scale, (w + pad) * scale, pad * scale
        slot = th + edge + strip  # a row of tiles with its padding, then its captions
        rows = -(-n // cols)
        framed = Image.new("RGB", (im.width, rows * slot), "white")
        draw = ImageDraw.Draw(framed)
        for i, text in enumerate(labels):
            r, q = divmod(i, cols)
            box = (q * tw, r * th, (q + 1) * tw + edge, (r + 1) * th + edge)
            framed.paste(im.crop(box), (box[0], r * slot))
            y = r * slot + th + edge
            for j, line in enumerate(text.split("\n")):
                draw.text((q * tw + pad * scale, y + j * _LINE_PX), _fit(line, tw - pad * scale), fill="black")
        im = framed
    if title:
        framed = Image.new("RGB", (im.width, im.height + 16), "white")
        framed.paste(im, (0, 16))
        ImageDraw.Draw(framed).text((4, 2), title, fill="black")
        im = framed
    return atomic_write(path, lambda f: im.save(f, format="PNG"))
