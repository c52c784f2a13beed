"""The variance-preserving (VP) noise schedule of a diffusion model.

Forward process: ``x_t = alpha_t x_0 + sigma_t eps`` with ``eps ~ N(0, I)`` and
``alpha_t^2 + sigma_t^2 = 1``, at the discrete levels ``t = 1 .. T``. Level 0 is the data itself
(``alpha = 1, sigma = 0``); level ``T`` is (almost) pure noise.

Two beta schedules, both standard:

* ``"cosine"`` (Nichol & Dhariwal 2021): ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2(((t/T + s) /
  (1 + s)) pi / 2)``, ``s = 0.008``, each ``beta_t = 1 - alpha_bar(t) / alpha_bar(t-1)`` clipped to
  ``0.999``. With ``T = 1000``: ``sigma_1 = 0.0064``, ``sigma_T = 1.0`` (``alpha_T = 5e-5``, i.e.
  the last level holds no information about the data).
* ``"linear"`` (Ho et al. 2020): ``beta_t`` evenly from ``1e-4`` to ``0.02`` (scaled by ``1000 / T``
  so other ``T`` keep the same curve). With ``T = 1000``: ``sigma_1 = 0.01``, ``alpha_T = 6.4e-3``.

A network sees the level as ``t / T`` in ``(0, 1]`` (see :meth:`VPSchedule.time`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["VPSchedule"]


class VPSchedule:
    """Discrete VP schedule with ``T`` levels.

    Args:
        T: number of noise levels (default 1000).
        kind: ``"cosine"`` (default) or ``"linear"``.

    Attributes (float64 tensors of length ``T + 1``, entry 0 = the data):
        betas, alpha_bars, alphas (``sqrt(alpha_bar)``), sigmas (``sqrt(1 - alpha_bar)``).
    """

    KINDS = ("cosine", "linear")

    def __init__(self, T: int = 1000, kind: str = "cosine"):
        if isinstance(T, bool) or not isinstance(T, int) or T < 2:
            raise ValueError(f"VPSchedule: T must be an integer >= 2, got {T!r}")
        if kind not in self.KINDS:
            raise ValueError(f"VPSchedule: kind must be one of {self.KINDS}, got {kind!r}")
        self.T = T
        self.kind = kind
        t = torch.arange(T + 1, dtype=torch.float64)
        if kind == "cosine":
            s = 0.008
            f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
            abar = f / f[0]
            betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
        else:
            scale = 1000.0 / T
            betas = torch.linspace(1e-4 * scale, 0.02 * scale, T, dtype=torch.float64)
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
        self.alpha_bars = torch.cumprod(1 - self.betas, dim=0)
        self.alphas = self.alpha_bars.sqrt()
        self.sigmas = (1 - self.alpha_bars).clamp(min=0).sqrt()

    def _index(self, t) -> Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"levels must be integers in [0, {self.T}], got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > self.T):
            raise ValueError(f"levels must lie in [0, {self.T}], got values in [{int(t.min())}, {int(t.max())}]")
        return t.long().cpu()

    def alpha(self, t, dtype: torch.dtype = torch.float32) -> Tensor:
        """``alpha_t`` of integer level(s) ``t`` (same shape)."""
        return self.alphas[self._index(t)].to(dtype)

    def sigma(self, t, dtype: torch.dtype = torch.float32) -> Tensor:
        """``sigma_t`` of integer level(s) ``t`` (same shape)."""
        return self.sigmas[self._index(t)].to(dtype)

    def time(self, t) -> Tensor:
        """The network's time input ``t / T`` (float32, same shape as ``t``)."""
        return self._index(t).float() / self.T

    def add_noise(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``x_t = alpha_t x0 + sigma_t eps`` for per-sample levels ``t`` ``(B,)``."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        a = self.alpha(t, x0.dtype).to(x0.device).view(shape)
        s = self.sigma(t, x0.dtype).to(x0.device).view(shape)
        return a * x0 + s * eps

    def levels(self, n: int, t_max: int | None = None, t_min: int = 1) -> list[int]:
        """``n`` integer levels from ``t_max`` (default ``T``) down to ``t_min``, evenly spaced
        and distinct, for a reverse process."""
        t_max = self.T if t_max is None else int(t_max)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"levels: n must be an integer >= 1, got {n!r}")
        if not 1 <= t_min <= t_max <= self.T:
            raise ValueError(f"levels: need 1 <= t_min <= t_max <= {self.T}, got t_min={t_min}, t_max={t_max}")
        if n > t_max - t_min + 1:
            raise ValueError(f"levels: n={n} exceeds the {t_max - t_min + 1} levels in [{t_min}, {t_max}]")
        if n == 1:
            return [t_max]
        grid = torch.linspace(t_max, t_min, n, dtype=torch.float64).round().long().tolist()
        return grid

    def to_dict(self) -> dict:
        return {"T": self.T, "kind": self.kind}

    def __repr__(self) -> str:
        return f"VPSchedule(T={self.T}, kind={self.kind!r})"
