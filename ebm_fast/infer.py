"""Concept inference with a trained conditional EBM: ``c* = argmin_c sum_i E(x_i | c)`` (paper eq. 11-12).

Three tools, from coarse to fine:

* :func:`grid_energies` / :func:`infer_grid` evaluate every (image, candidate condition) pair of a
  candidate grid in batched forward passes, chunked to a memory budget, and return the full energy
  table and its argmin. Observations of one concept (several views, sizes or lights of the same
  object) are passed as ``images`` of shape ``(B, V, ...)``; their energies add. ``autocast=``
  ``torch.bfloat16`` screens the grid at the lower precision and re-scores the lowest candidates in
  float32.
* :func:`refine` improves continuous conditions by gradient descent (or Langevin dynamics) on ``c``
  inside box bounds, started from the best grid point.
* :func:`energy_map` / :func:`energy_map_image` give the energy over a 2-D grid of conditions (e.g.
  positions) as an array and as a picture (the paper's Fig. 12).

:func:`trained_image_size` reads from a model file's meta the image size it was trained at: a
convolutional energy runs at any size, but inference is only right at that one.

Models are ``model(x, cond) -> energies`` of shape ``(B,)``, ``(B, 1)`` or ``(B, k)`` (summed), as
everywhere in ebm_fast. Inference never computes parameter gradients.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .compose import leaf_energy_from_output
from .leaf_eval import autocast_context, check_autocast, prefers_channels_last

__all__ = ["InferResult", "grid_energies", "infer_grid", "refine", "position_grid", "energy_map",
           "energy_map_image", "trained_image_size"]

# Default activation budgets per pass. On the CPU smaller passes are faster per row, not just leaner:
# small32 at 32x32 (one thread) ran 0.51-0.59 ms per pair in passes of 42-170 rows against 0.65 at 341
# rows and 0.79 at 21. On a GPU, bigger passes fill the device.
DEFAULT_BUDGET_BYTES = {"cpu": 64 * 2**20, "cuda": 1024 * 2**20}
# activation bytes of a pass per input byte, the default estimate that sizes passes against the budget
DEFAULT_ACTIVATION_FACTOR = 64.0


def default_budget(device: torch.device) -> int:
    """The activation budget per pass that :func:`grid_energies` uses on ``device`` by default."""
    return DEFAULT_BUDGET_BYTES.get(torch.device(device).type, DEFAULT_BUDGET_BYTES["cpu"])


@dataclass
class InferResult:
    """``cond`` ``(B, C)`` the inferred conditions; ``index`` ``(B,)`` their rows in the candidate grid
    (-1 after :func:`refine`); ``energy`` ``(B,)`` the summed energy at ``cond``; ``energies``
    ``(B, K)`` the full table over candidates (None after :func:`refine`)."""

    cond: Tensor
    index: Tensor
    energy: Tensor
    energies: Tensor | None


def _rows_per_chunk(image_numel: int, element_size: int, budget_bytes: int, activation_factor: float) -> int:
    per_row = max(1, int(image_numel * element_size * activation_factor))
    return max(1, budget_bytes // per_row)


def _shared_split(model) -> tuple[Callable, Callable] | None:
    """``(shared_features, energy_from_features)`` when the model exposes its condition-free head
    (:class:`ebm_fast.models.EnergyResNet` does): ``model(x, c) == energy_from_features(shared_features(x), c)``
    with the features a tuple of tensors whose rows are the images'."""
    if getattr(model, "shares_features", True) is False:  # an ensemble with a member lacking the head
        return None
    head, tail = getattr(model, "shared_features", None), getattr(model, "energy_from_features", None)
    return (head, tail) if callable(head) and callable(tail) else None


def _under_autocast(fn: Callable, autocast, device: torch.device) -> Callable:
    """``fn`` run under ``torch.autocast`` to ``autocast`` (itself when ``autocast`` is None)."""
    if autocast is None:
        return fn

    def run(*args):
        with autocast_context(autocast, device.type):
            return fn(*args)

    return run


# compiled grid passes, per model object: {(rows, autocast dtype or None): fn}
_COMPILED_PASSES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compiled_pass(fn: Callable, owner, rows: int, autocast, device: torch.device) -> Callable:
    """``torch.compile(fn)`` (under ``autocast`` when given) for passes of exactly ``rows`` pairs,
    cached on ``owner`` (the model).

    Every pass is padded to ``rows`` so one compiled graph serves the whole grid and later calls;
    compiling takes tens of seconds on a 2-core CPU, so this pays off for large grids or many images.
    """
    try:
        per_model = _COMPILED_PASSES.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: compile afresh
        per_model = {}
    compiled = per_model.get((rows, autocast))
    if compiled is None:
        compiled = per_model[(rows, autocast)] = torch.compile(_under_autocast(fn, autocast, device), dynamic=False)
    return compiled


def _weights_cached(model):
    """Parametrized weights (spectral norm) computed once for the whole grid instead of once per chunk."""
    from torch.nn.utils import parametrize

    has = isinstance(model, torch.nn.Module) and any(parametrize.is_parametrized(m) for m in model.modules())
    return parametrize.cached() if has else contextlib.nullcontext()


def grid_energies(model: Callable[[Tensor, Tensor], Tensor], images: Tensor, candidates: Tensor, *,
                  views: bool = False, budget_bytes: int | None = None,
                  activation_factor: float = DEFAULT_ACTIVATION_FACTOR, compile: bool = False,
                  autocast: torch.dtype | None = None) -> Tensor:
    """Energies of every (image, candidate) pair, summed over views: ``(B, K)``.

    Args:
        model: ``(x, cond) -> energies``.
        images: ``(B, *image_shape)``, or ``(B, V, *image_shape)`` with ``views=True`` (V observations
            of one concept each; their energies add, eq. 12).
        candidates: ``(K, *cond_shape)`` candidate conditions, shared by every image.
        budget_bytes: rows per forward pass are chosen so that ``rows * image bytes *
            activation_factor`` stays under this (default :func:`default_budget`: 64 MiB on the CPU,
            1 GiB on CUDA); ``activation_factor`` estimates
            the network's activation memory per input byte.
        compile: run the per-pair part of the model (or the whole model) under ``torch.compile``,
            in passes padded to one fixed size. The compiled code is cached per model object, so the
            first call pays the compilation (tens of seconds on a 2-core CPU) and later calls reuse it;
            worth it for large grids or many images (the paper's Table 3), not for one small query.
        autocast: None (float32), or ``torch.bfloat16`` / ``torch.float16``: run the model under
            ``torch.autocast``. Faster where the hardware has low-precision units (CPUs with AMX or
            AVX-512 BF16, GPUs), slower where it has not; the energies carry the lower precision
            (bfloat16: ~3 significant digits), so neighbouring candidates can swap order.
            :func:`infer_grid` re-scores the lowest ones in float32.

    Returns:
        float32 ``(B, K)``.

    Speed: a model that exposes its condition-free head (``shared_features`` /
    ``energy_from_features``, as :class:`ebm_fast.models.EnergyResNet` does) runs that head once per
    image rather than once per pair; parametrized (spectral-norm) weights are computed once per call;
    on the CPU, conv models get channels_last inputs. ``benchmarks/bench_infer.py`` measures it against
    the per-candidate loop.
    """
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a floating-point Tensor, got {getattr(images, 'dtype', type(images))}")
    if not isinstance(candidates, Tensor) or candidates.dim() < 1 or candidates.shape[0] == 0:
        raise ValueError(f"candidates must be a Tensor (K, ...) with K >= 1, got "
                         f"{tuple(candidates.shape) if isinstance(candidates, Tensor) else type(candidates)}")
    if candidates.device != images.device:
        raise ValueError(f"candidates are on {candidates.device} but images are on {images.device}")
    check_autocast(autocast)
    if views:
        if images.dim() < 3:
            raise ValueError(f"views=True needs images of shape (B, V, ...), got {tuple(images.shape)}")
        b, v = images.shape[:2]
        flat = images.reshape(b * v, *images.shape[2:])
    else:
        b, v = images.shape[0], 1
        flat = images
    k = candidates.shape[0]
    if budget_bytes is None:
        budget_bytes = default_budget(images.device)
    rows = _rows_per_chunk(flat[0].numel() if flat.shape[0] else 1, flat.element_size(), budget_bytes,
                           activation_factor)
    if compile:  # one fixed pass size: whole images' grids when they fit, no bigger than the whole table
        rows = min((rows // k) * k if rows >= k else rows, max(1, flat.shape[0] * k))
    out = torch.empty(flat.shape[0], k, dtype=torch.float32, device=images.device)
    split = _shared_split(model)
    nhwc = flat.dim() == 4 and prefers_channels_last(model, flat.device)
    # Images go in blocks of ~rows/K; each block's pairs (image-major: pair p = i * K + j) in chunks of
    # `rows`. With a condition-free split, the block's shared features are computed once per image.
    per_block = max(1, rows // k)
    per_pair = split[1] if split else model
    head = _under_autocast(split[0], autocast, images.device) if split else None
    if compile:
        per_pair = _compiled_pass(per_pair, model, rows, autocast, images.device)
    else:
        per_pair = _under_autocast(per_pair, autocast, images.device)
    # Compiled passes see the live parametrized weights; caching them would be a new tensor per call.
    with torch.no_grad(), (contextlib.nullcontext() if compile else _weights_cached(model)):
        for a in range(0, flat.shape[0], per_block):
            source = _pair_source(head, flat[a:a + per_block], nhwc)
            total = min(per_block, flat.shape[0] - a) * k
            for start in range(0, total, rows):
                stop = min(total, start + rows)
                # a compiled pass always has `rows` pairs: the last one repeats its final pair
                p = torch.arange(start, start + rows if compile else stop, device=images.device).clamp_(max=stop - 1)
                e = _pair_pass(per_pair, source, p // k, candidates[p % k])[:stop - start]
                out[a:a + per_block].view(-1)[start:stop] = e.float()
    return out.view(b, v, k).sum(1)


def _pair_source(head: Callable | None, block: Tensor, nhwc: bool):
    """What the per-pair part reads for a block of images: the condition-free head's features (a
    tuple), or the images themselves (NHWC when the model prefers it)."""
    if nhwc:
        block = block.contiguous(memory_format=torch.channels_last)
    return head(block) if head is not None else block


def _pair_pass(per_pair: Callable, source, i: Tensor, conds: Tensor) -> Tensor:
    """Energies ``(P,)`` of the block's images ``i`` under ``conds`` (one per pair)."""
    rows = tuple(f[i] for f in source) if isinstance(source, tuple) else source[i]
    return leaf_energy_from_output(per_pair(rows, conds), i.shape[0], "model")


def infer_grid(model, images: Tensor, candidates: Tensor, *, views: bool = False,
               budget_bytes: int | None = None, compile: bool = False, autocast: torch.dtype | None = None,
               rescore: int = 4) -> InferResult:
    """The candidate with the lowest (summed) energy for each image or group of views
    (arguments as :func:`grid_energies`).

    With ``autocast`` the table is a screen at the lower precision: the ``rescore`` lowest candidates
    of each image (or group of views) are evaluated again in float32, the result is the argmin among
    them, ``energy`` is its float32 energy, and those entries of ``energies`` hold their float32
    values (``rescore=0``: the screen's own argmin). Without ``autocast`` nothing is re-scored.
    """
    if isinstance(rescore, bool) or not isinstance(rescore, int) or rescore < 0:
        raise ValueError(f"rescore must be an integer >= 0, got {rescore!r}")
    energies = grid_energies(model, images, candidates, views=views, budget_bytes=budget_bytes, compile=compile,
                             autocast=autocast)
    if not torch.isfinite(energies).all():
        bad = (~torch.isfinite(energies)).nonzero()[0].tolist()
        raise FloatingPointError(f"non-finite energy for image {bad[0]} and candidate {bad[1]}")
    if autocast is None or rescore == 0:
        energy, index = energies.min(dim=1)
    else:
        top = energies.topk(min(rescore, energies.shape[1]), dim=1, largest=False).indices  # (B, r)
        exact = _pair_energies(model, images, candidates, top, views=views, budget_bytes=budget_bytes)
        energies.scatter_(1, top, exact)
        energy, best = exact.min(dim=1)
        index = top.gather(1, best[:, None]).squeeze(1)
    return InferResult(cond=candidates[index], index=index, energy=energy, energies=energies)


def _pair_energies(model, images: Tensor, candidates: Tensor, index: Tensor, *, views: bool,
                   budget_bytes: int | None) -> Tensor:
    """Energies ``(B, r)`` of image (or group of views) ``b`` under ``candidates[index[b, j]]``, in
    float32 and eagerly, with the condition-free head once per image, in passes of the rows
    :func:`grid_energies` would use."""
    b, r = index.shape
    v = images.shape[1] if views else 1
    flat = images.reshape(b * v, *images.shape[2:]) if views else images
    rows = _rows_per_chunk(flat[0].numel(), flat.element_size(),
                           default_budget(images.device) if budget_bytes is None else budget_bytes,
                           DEFAULT_ACTIVATION_FACTOR)
    split = _shared_split(model)
    nhwc = flat.dim() == 4 and prefers_channels_last(model, flat.device)
    per_block = max(1, rows // r)
    cand_of = index.repeat_interleave(v, dim=0)  # (B * V, r): each view under its group's candidates
    out = torch.empty(b * v, r, dtype=torch.float32, device=images.device)
    with torch.no_grad(), _weights_cached(model):
        for a in range(0, flat.shape[0], per_block):
            source = _pair_source(split[0] if split else None, flat[a:a + per_block], nhwc)
            p = torch.arange(min(per_block, flat.shape[0] - a) * r, device=images.device)
            out[a:a + per_block] = _pair_pass(split[1] if split else model, source, p // r,
                                              candidates[cand_of[a:a + per_block].reshape(-1)]).float().view(-1, r)
    return out.view(b, v, r).sum(1)


def refine(model, images: Tensor, init: Tensor, *, lo: Tensor | float, hi: Tensor | float, steps: int = 50,
           step_size: float = 0.01, noise: float = 0.0, views: bool = False, seed: int | None = None) -> InferResult:
    """Gradient descent (``noise=0``) or Langevin dynamics on continuous conditions inside ``[lo, hi]``.

    Args:
        images: ``(B, ...)`` or ``(B, V, ...)`` with ``views=True``.
        init: ``(B, C)`` starting conditions, e.g. ``infer_grid(...).cond``.
        lo, hi: box bounds (numbers or ``(C,)`` tensors).
        steps, step_size: ``c <- clamp(c - step_size * grad_c E + noise * xi, lo, hi)``, where ``E`` is
            the image's energy, or with ``views=True`` the MEAN energy of its views: the summed
            energy's minimiser, with a step in condition space that does not grow with the number of
            views (on the summed energy a step that suits one view overshoots with eight: Fig. 11's
            error rose again from 5 views on; README, Table 3).
        noise: 0 for descent; > 0 for Langevin exploration (the lowest-energy iterate is returned).
        seed: for the Langevin noise (default: drawn from torch's generator).

    Returns:
        :class:`InferResult` with the best conditions found (never worse than ``init``).
    """
    if init.dim() != 2 or init.shape[0] != images.shape[0]:
        raise ValueError(f"init must have shape (B, C) with B = {images.shape[0]}, got {tuple(init.shape)}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    b = images.shape[0]
    v = images.shape[1] if views else 1
    flat = images.reshape(b * v, *images.shape[2:]) if views else images
    lo_t = torch.as_tensor(lo, dtype=init.dtype, device=init.device)
    hi_t = torch.as_tensor(hi, dtype=init.dtype, device=init.device)
    gen = torch.Generator(device=init.device)
    gen.manual_seed(int(torch.randint(0, 2**62, ()).item()) if seed is None else seed)

    def summed_energy(c: Tensor) -> Tensor:
        rep = c.repeat_interleave(v, dim=0) if views else c
        e = leaf_energy_from_output(model(flat, rep), flat.shape[0], "model")
        return e.view(b, v).sum(1)

    params = [p for p in model.parameters()] if hasattr(model, "parameters") else []
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        c = init.detach().clone().clamp(lo_t, hi_t)
        with torch.no_grad():
            best_e = summed_energy(c).float()
        best_c = c.clone()
        for _ in range(steps):
            c.requires_grad_(True)
            e = summed_energy(c)
            (g,) = torch.autograd.grad(e.sum(), c)
            with torch.no_grad():
                better = e.detach().float() < best_e
                best_e = torch.where(better, e.detach().float(), best_e)
                best_c[better] = c.detach()[better]
                c = c.detach() - (step_size / v) * g  # the gradient of the mean over the v views
                if noise > 0:
                    c = c + noise * torch.randn(c.shape, generator=gen, device=c.device, dtype=c.dtype)
                c = c.clamp(lo_t, hi_t)
        with torch.no_grad():
            e = summed_energy(c).float()
            better = e < best_e
            best_e = torch.where(better, e, best_e)
            best_c[better] = c[better]
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return InferResult(cond=best_c, index=torch.full((b,), -1, device=init.device), energy=best_e, energies=None)


def position_grid(resolution: int, lo: float = -1.0, hi: float = 1.0, device=None) -> Tensor:
    """``(resolution**2, 2)`` positions ``(x, y)`` on a regular grid, row-major in ``y`` then ``x``."""
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    t = torch.linspace(lo, hi, resolution, device=device)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def energy_map(model, images: Tensor, resolution: int = 32, *, lo: float = -1.0, hi: float = 1.0,
               views: bool = False, extra_cond: Tensor | None = None, **grid_options) -> Tensor:
    """Energy over a ``resolution x resolution`` grid of positions: ``(B, resolution, resolution)``.

    Row ``r`` is ``y = lo + r (hi - lo)/(resolution - 1)``, column ``s`` likewise ``x``. ``extra_cond``
    ``(C',)`` is appended to every position when the model's condition has more than two entries.
    ``grid_options`` (``budget_bytes``, ``activation_factor``, ``compile``, ``autocast``) go to
    :func:`grid_energies`; under ``autocast`` the map is the lower precision's, not re-scored.
    """
    grid = position_grid(resolution, lo, hi, device=images.device)
    if extra_cond is not None:
        grid = torch.cat([grid, extra_cond.to(grid).expand(grid.shape[0], -1)], dim=1)
    return grid_energies(model, images, grid, views=views, **grid_options).view(-1, resolution, resolution)


MAP_STYLES = ("density", "contrast")


def energy_map_image(energies: Tensor, path: str | None = None, scale: int = 4, style: str = "density"):
    """A ``(R, R)`` energy map as a grey Pillow image, bright = low energy, y up.

    ``style="density"`` draws ``exp(-(E - min))``, the unnormalised density (a map whose energies span
    many units is then black but for its minimum); ``"contrast"`` draws the minimum white, the median
    energy and above black, linearly between, so basins of any depth show. Saved to ``path`` when
    given; returns the image.
    """
    from PIL import Image

    if energies.dim() != 2:
        raise ValueError(f"energies must be (R, R), got {tuple(energies.shape)}")
    if style not in MAP_STYLES:
        raise ValueError(f"style: expected one of {MAP_STYLES}, got {style!r}")
    e = energies.detach().double().cpu()
    low = e.min()
    if style == "density":
        bright = torch.exp(-(e - low))
        bright = bright / bright.max()
    else:
        mid = e.median()
        bright = 1.0 - ((e - low) / (mid - low)).clamp(0, 1) if mid > low else torch.ones_like(e)
    pix = (bright.flip(0) * 255).round().to(torch.uint8).numpy()
    img = Image.fromarray(pix, mode="L").resize((pix.shape[1] * scale, pix.shape[0] * scale), Image.NEAREST)
    if path is not None:
        img.save(path)
    return img


def trained_image_size(meta: dict | None) -> tuple[int, int] | None:
    """``(H, W)`` of the images a model was trained on, from its file's ``meta`` (``data.image_size``,
    which training records, else the square ``data.scene_config.resolution`` of a scenes-trained model);
    None when the file does not say."""
    data = (meta or {}).get("data") or {}
    size = data.get("image_size")
    if size is not None:
        return int(size[0]), int(size[1])
    res = (data.get("scene_config") or {}).get("resolution")
    return (int(res), int(res)) if res else None
