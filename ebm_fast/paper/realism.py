"""How much samples look like the scenes: the Fréchet distance between judge features of samples and of
fresh renders, beside the same distance for a second set of fresh renders (the floor a perfect sampler
reaches at that sample size) and for uniform noise (the ceiling).

The features are :meth:`ebm_fast.paper.judges.Judges.features` (the locator's pooled convolution and the
object-centred crop net's hidden layer), so the distance weighs the floor, the light and the object
alike; ``scaled = (fd - floor) / (noise - floor)`` puts a sample set on a 0 (as close as renders) to 1
(as far as noise) scale. The renders use a scenes seed that no model trained on (:data:`RENDER_SEED`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["RENDER_SEED", "frechet_distance", "fresh_renders", "realism", "render_references"]

RENDER_SEED = 424242  # a scenes seed kept out of every training set


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to the rows of ``a`` ``(N, F)`` and ``b`` ``(M, F)``:
    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)`` (float64)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: expected (N, F) and (M, F) features, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance: need at least 2 rows a set, got {len(a)} and {len(b)}")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross)


def fresh_renders(n: int, resolution: int = 32, seed: int = RENDER_SEED, renderer: str = "auto") -> Tensor:
    """``n`` scenes renders ``(n, 3, R, R)`` in [0, 1] of the default scenes config with ``seed``."""
    from . import scenes

    images, _ = scenes.generate_scenes(scenes.SceneConfig(n=n, resolution=resolution, seed=seed), renderer=renderer,
                                       progress=False)
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def realism(judges, samples: Tensor, renders: Tensor, reference: Tensor, seed: int = 0) -> dict:
    """``{"fd", "floor", "noise", "scaled"}`` of ``samples`` against ``renders``; ``reference`` is a second,
    independent set of renders of ``samples``' size (the floor), uniform noise of that size (drawn from
    ``seed``) the ceiling."""
    if len(reference) != len(samples):
        raise ValueError(f"realism: the reference renders ({len(reference)}) must be as many as the samples "
                         f"({len(samples)}): the distance's floor depends on the set size")
    g = torch.Generator().manual_seed(seed)
    f_r = judges.features(renders)
    fd = frechet_distance(judges.features(samples), f_r)
    floor = frechet_distance(judges.features(reference), f_r)
    noise = frechet_distance(judges.features(torch.rand(samples.shape, generator=g)), f_r)
    return {"fd": fd, "floor": floor, "noise": noise, "scaled": (fd - floor) / (noise - floor)}


def render_references(n_renders: int, n_samples: int, resolution: int = 32) -> tuple[Tensor, Tensor, dict]:
    """``(renders, reference, info)`` for :func:`realism` of sample sets of ``n_samples``: ``n_renders``
    renders of :data:`RENDER_SEED`, ``n_samples`` of the next seed, and a record of both for a report."""
    renders = fresh_renders(n_renders, resolution, seed=RENDER_SEED)
    reference = fresh_renders(n_samples, resolution, seed=RENDER_SEED + 1)
    return renders, reference, {"n": n_renders, "seed": RENDER_SEED, "reference_seed": RENDER_SEED + 1}
