"""Time- and condition-conditioned energy networks for diffusion training.

Energy parameterization (:class:`EnergyUNet`, :class:`EnergyMLP`)::

    E(x, t, c) = ||x - alpha_t D(x, t, c)||^2 / (2 sigma_t^2),      score = -grad_x E

where ``D`` is a network that outputs a clean-image estimate (Salimans & Ho 2021's form of an
energy from a denoiser). Why this form: for data ``N(mu, s^2 I)`` the exact noised energy at level
``t`` is ``||x - alpha_t mu||^2 / (2 (alpha_t^2 s^2 + sigma_t^2))`` (up to a constant); with
``s -> 0`` it is this formula with ``D = mu``, a constant, so the ``1 / sigma_t^2`` curvature that a
noised density has across a data manifold is built in rather than learned, and a network with zero
output starts at the uninformative prior (``E = ||x||^2 / 2`` at ``sigma_t = 1``). The energy is on
the scale of ``-log p_t(x)`` (up to a constant per level and condition), which is what a
Metropolis test and a disjunction's log-sum-exp read. Every operation is twice differentiable (SiLU,
GroupNorm, convolutions), as training by denoising score matching differentiates ``grad_x E`` once
more.

``sigma_data > 0`` switches to EDM's preconditioning written in VP coordinates,
``D = (alpha_t s_d^2 / v) x + (sigma_t s_d / sqrt(v)) F(x / sqrt(v), t, c)`` with
``v = alpha_t^2 s_d^2 + sigma_t^2``: better where the data spread widely at low noise, worse across
thin directions, where the network must learn a gain of ``1 / sigma_t`` (median relative score
error at levels 1 / 10 after 1500 iterations on 2-D Gaussian data, docs/diffusion.md: spread
``(0.2, 0.4)``: 0.37 / 0.21 with ``s_d = 0.5``, 1.43 / 0.78 without; one thin direction
``(0.3, 0.005)``: 0.89 / 0.29 with it, 0.57 / 0.08 without). Images are mostly thin directions, so
the default is ``sigma_data = 0``.

Noise level: a model holds its current level in the buffer ``level`` (an integer ``t``, 0-d int64
tensor); ``forward(x, cond)`` reads it, so the model is an ordinary ``(x, cond) -> energies``
callable that :class:`ebm_fast.Concept` and the fused sampler use unchanged. The annealed sampler
moves the level with :meth:`EnergyUNet.set_level` (an in-place ``fill_``: no Python state that a
worker thread or a captured CUDA graph would miss). Training passes per-sample levels explicitly:
``forward(x, cond, t=levels)``.

Conditions (:class:`CondSpec`): a dict of attributes, each a class (``("color", 7)``) or a vector
(``("pos", 2)``), packed into one float tensor per sample, ``[present flags (n_attr), values...]``
(a class is stored as its index). An attribute whose flag is 0 takes a learned *null* embedding, so
one network conditioned on several attributes, each dropped independently during training, holds
``p(x | any subset of the attributes)`` including the unconditional ``p(x)``; a spec with one
attribute is the usual single-condition model with classifier-free-guidance dropout.

Spatial conditions (``EnergyUNet(spatial={"pos": H})``): a 2-vector attribute that names a place in
the image can also enter as an image. ``H`` is a 3x3 homography from the attribute's value
``(u, v, 1)`` to image coordinates (``x`` right, ``y`` down, both in ``[-1, 1]`` across the image; the
identity when the values are image coordinates already, a camera's plane-to-image map when they
are positions on a ground plane). The network then sees, beside the image, one channel per such
attribute: a Gaussian bump of width ``spatial_sigma`` centred where ``H`` puts the value (zeros
when the attribute is absent). A convolution reads "put the object here" from that channel at
once, where from the global embedding it would first have to learn the map from coordinates to
pixels (the embedding is kept as well).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .schedule import VPSchedule

__all__ = ["CondSpec", "TimeEnergy", "EnergyUNet", "EnergyMLP", "GaussianEnergy", "spatial_maps"]


@dataclass(frozen=True)
class CondSpec:
    """The attributes a model is conditioned on.

    Args:
        attributes: ``(name, kind, size)`` triples; ``kind`` is ``"class"`` (``size`` classes, given as
            an index) or ``"vector"`` (``size`` floats).
    """

    attributes: tuple[tuple[str, str, int], ...] = ()

    def __post_init__(self):
        attrs = tuple(tuple(a) for a in self.attributes)
        names = set()
        for a in attrs:
            if len(a) != 3 or not isinstance(a[0], str) or a[1] not in ("class", "vector") \
                    or isinstance(a[2], bool) or not isinstance(a[2], int) or a[2] < 1:
                raise ValueError(f"CondSpec: expected (name, 'class' | 'vector', size >= 1) per attribute, got {a!r}")
            if a[0] in names:
                raise ValueError(f"CondSpec: attribute {a[0]!r} given twice")
            names.add(a[0])
        object.__setattr__(self, "attributes", attrs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a[0] for a in self.attributes)

    @property
    def width(self) -> int:
        """Floats per packed condition: one flag per attribute, then the values."""
        return len(self.attributes) + sum(1 if k == "class" else n for _, k, n in self.attributes)

    def slices(self) -> dict[str, slice]:
        """Where each attribute's values sit in a packed condition."""
        out, at = {}, len(self.attributes)
        for name, kind, n in self.attributes:
            w = 1 if kind == "class" else n
            out[name] = slice(at, at + w)
            at += w
        return out

    def pack(self, values: Mapping[str, Any] | None = None, batch: int | None = None) -> Tensor:
        """A packed condition from ``{name: value}``; attributes left out are absent (null).

        A value without a batch dimension (a class index, a position ``(2,)``) gives one condition
        ``(width,)``; with ``batch`` given, values are per sample (``(B,)`` indices, ``(B, 2)``
        positions) and the result is ``(B, width)``.
        """
        values = dict(values or {})
        unknown = set(values) - set(self.names)
        if unknown:
            raise ValueError(f"condition: unknown attribute(s) {sorted(unknown)}; this model knows {list(self.names)}")
        lead = () if batch is None else (int(batch),)
        out = torch.zeros(*lead, self.width)
        sl = self.slices()
        for i, (name, kind, n) in enumerate(self.attributes):
            if name not in values or values[name] is None:
                continue
            v = torch.as_tensor(values[name], dtype=torch.float32)
            if kind == "class":
                if v.shape != lead:
                    raise ValueError(f"condition {name!r}: expected a class index of shape {lead}, "
                                     f"got {tuple(v.shape)}")
                if v.numel() and (bool((v != v.round()).any()) or int(v.min()) < 0 or int(v.max()) >= n):
                    raise ValueError(f"condition {name!r}: expected class indices in [0, {n - 1}], got {v.tolist()}")
                v = v.unsqueeze(-1)
            elif v.shape != lead + (n,):
                raise ValueError(f"condition {name!r}: expected shape {lead + (n,)}, got {tuple(v.shape)}")
            out[..., i] = 1.0
            out[..., sl[name]] = v
        return out

    def drop(self, cond: Tensor, p: float | Sequence[float], generator: torch.Generator | None = None) -> Tensor:
        """``cond`` ``(B, width)`` with each attribute independently marked absent with probability
        ``p`` (one number or one per attribute); draws from ``generator``."""
        n = len(self.attributes)
        probs = torch.as_tensor([float(p)] * n if isinstance(p, (int, float)) else [float(v) for v in p])
        if probs.shape != (n,) or bool(((probs < 0) | (probs > 1)).any()):
            raise ValueError(f"drop: expected {n} probabilities in [0, 1], got {p!r}")
        keep = (torch.rand(cond.shape[0], n, generator=generator) >= probs).to(cond.dtype).to(cond.device)
        out = cond.clone()
        out[:, :n] = out[:, :n] * keep
        return out

    def to_dict(self) -> dict:
        return {"attributes": [list(a) for a in self.attributes]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "CondSpec":
        return cls(tuple((str(a[0]), str(a[1]), int(a[2])) for a in d["attributes"]))


def _fourier(v: Tensor, n_freq: int) -> Tensor:
    """``[sin(2^k pi v), cos(2^k pi v)]`` for ``k < n_freq``, per column of ``v`` ``(B, n)``."""
    freqs = (2.0 ** torch.arange(n_freq, device=v.device, dtype=v.dtype)) * math.pi
    z = v.unsqueeze(-1) * freqs
    return torch.cat([z.sin(), z.cos()], dim=-1).flatten(1)


class _CondEmbedding(nn.Module):
    """Sum of per-attribute embeddings; an absent attribute contributes its learned null vector."""

    def __init__(self, spec: CondSpec, dim: int, n_freq: int = 6):
        super().__init__()
        self.spec = spec
        self.n_freq = n_freq
        self.embed = nn.ModuleDict()
        for name, kind, n in spec.attributes:
            if kind == "class":
                self.embed[name] = nn.Embedding(n, dim)
            else:
                self.embed[name] = nn.Sequential(nn.Linear(2 * n_freq * n, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(len(spec.attributes), dim))
        nn.init.normal_(self.null, std=0.02)
        self._slices = spec.slices()

    def forward(self, cond: Tensor) -> Tensor:
        total = 0.0
        for i, (name, kind, n) in enumerate(self.spec.attributes):
            v = cond[:, self._slices[name]]
            flag = cond[:, i:i + 1]
            if kind == "class":
                # absent attributes carry index 0 (pack) or a stale one (drop): masked below
                e = self.embed[name](v[:, 0].round().long().clamp(0, n - 1))
            else:
                e = self.embed[name](_fourier(v, self.n_freq))
            total = total + flag * e + (1 - flag) * self.null[i]
        return total


def _timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of ``t`` in [0, 1] (scaled to 0..1000), ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    z = (t.float() * 1000.0).unsqueeze(-1) * freqs
    return torch.cat([z.sin(), z.cos()], dim=-1)


def _check_homography(name: str, h) -> list[list[float]]:
    m = torch.as_tensor(h, dtype=torch.float64)
    if m.shape != (3, 3) or not bool(torch.isfinite(m).all()) or abs(float(torch.linalg.det(m))) < 1e-12:
        raise ValueError(f"spatial[{name!r}]: expected an invertible 3x3 homography, got {h!r}")
    return m.tolist()


def spatial_maps(cond: Tensor, spec: CondSpec, homographies: Mapping[str, Tensor | Sequence[Sequence[float]]],
                 height: int, width: int, sigma: float) -> Tensor:
    """``(B, len(homographies), height, width)`` Gaussian bumps of width ``sigma`` at each spatial
    attribute's image position (see the module docstring), times its present flag. A homography given
    as a tensor on ``cond``'s device and dtype is used as it is (no host copy: safe in a captured
    CUDA graph)."""
    B = cond.shape[0]
    sl = spec.slices()
    names = spec.names
    ys = (torch.arange(height, device=cond.device, dtype=cond.dtype) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=cond.device, dtype=cond.dtype) + 0.5) / width * 2 - 1
    maps = []
    for name, h in homographies.items():
        uv = cond[:, sl[name]]
        hom = torch.cat([uv, torch.ones(B, 1, device=cond.device, dtype=cond.dtype)], dim=1)
        p = hom @ torch.as_tensor(h, device=cond.device, dtype=cond.dtype).T
        px, py = p[:, 0] / p[:, 2], p[:, 1] / p[:, 2]
        dx = (xs.view(1, 1, -1) - px.view(B, 1, 1)) ** 2
        dy = (ys.view(1, -1, 1) - py.view(B, 1, 1)) ** 2
        flag = cond[:, names.index(name)].view(B, 1, 1)
        maps.append(flag * torch.exp(-(dx + dy) / (2 * sigma * sigma)))
    return torch.stack(maps, dim=1)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        z = self.norm2(z) * (1 + scale) + shift
        z = self.conv2(F.silu(z))
        return self.skip(h) + z


class TimeEnergy(nn.Module):
    """Base of the energy networks: ``E = ||x - alpha_t D(x, t, c)||^2 / (2 sigma_t^2)`` with the level
    buffer, :meth:`set_level`, :meth:`cond` and input checks; subclasses define :meth:`denoise`."""

    def __init__(self, schedule: VPSchedule, cond_spec: CondSpec | None, config: dict):
        super().__init__()
        self.schedule = schedule
        self.cond_spec = cond_spec or CondSpec()
        self.config = config
        self.sigma_data = float(config.get("sigma_data", 0.0))
        if not (self.sigma_data >= 0.0):
            raise ValueError(f"sigma_data: expected a number >= 0 (0: no skip term), "
                             f"got {config.get('sigma_data')!r}")
        self.register_buffer("level", torch.tensor(schedule.T, dtype=torch.long), persistent=False)
        self.register_buffer("alpha_table", schedule.alphas.float(), persistent=False)
        self.register_buffer("sigma_table", schedule.sigmas.float(), persistent=False)

    # ---- noise level -------------------------------------------------------------------------
    def set_level(self, t: int) -> None:
        """Set the level ``forward(x, cond)`` uses (in place)."""
        t = int(t)
        if not 0 <= t <= self.schedule.T:
            raise ValueError(f"level must lie in [0, {self.schedule.T}], got {t}")
        if t == 0:
            raise ValueError("level 0 is the data itself (sigma = 0): the energy is undefined there; use t >= 1")
        self.level.fill_(t)

    def cond(self, **values) -> Tensor:
        """A packed condition ``(width,)`` with the given attributes (others absent)."""
        return self.cond_spec.pack(values)

    def denoise(self, x: Tensor, cond: Tensor | None, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        B = x.shape[0]
        if cond is not None and (cond.dim() != 2 or cond.shape != (B, self.cond_spec.width)):
            raise ValueError(f"cond: expected shape ({B}, {self.cond_spec.width}) "
                             f"(packed {list(self.cond_spec.names)}), got {tuple(cond.shape)}")
        if t is None:
            t = self.level.expand(B)
        elif t.shape != (B,):
            raise ValueError(f"t: expected integer levels of shape ({B},), got {tuple(t.shape)}")
        shape = (B,) + (1,) * (x.dim() - 1)
        a = self.alpha_table[t].to(x.dtype).view(shape)
        s = self.sigma_table[t].to(x.dtype).view(shape)
        sd = self.sigma_data
        if sd:  # EDM preconditioning in VP coordinates (module docstring)
            v = a * a * sd * sd + s * s
            d = (a * sd * sd / v) * x + (s * sd / v.sqrt()) * self.denoise(x / v.sqrt(), cond, t)
        else:
            d = self.denoise(x, cond, t)
        return (x - a * d).pow(2).flatten(1).sum(1) / (2 * s.flatten() ** 2)

    def _embedding(self, x: Tensor, cond: Tensor | None, t: Tensor) -> Tensor:
        """Time embedding plus the condition embedding, ``(B, emb)``."""
        emb = self.time_mlp(_timestep_embedding(t.float() / self.schedule.T, self.emb_dim).to(x.dtype))
        if self.cond_embed is not None:
            if cond is None:
                cond = torch.zeros(x.shape[0], self.cond_spec.width, device=x.device, dtype=x.dtype)
            emb = emb + self.cond_embed(cond.to(x.dtype))
        return emb

    def _init_embeddings(self, emb: int) -> None:
        self.emb_dim = emb
        self.time_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.cond_embed = _CondEmbedding(self.cond_spec, emb) if self.cond_spec.attributes else None

    def spec(self) -> dict:
        """Primitives that rebuild this network (with :func:`ebm_fast.diffusion.build_model`)."""
        return {"kind": type(self).__name__, "schedule": self.schedule.to_dict(),
                "cond_spec": self.cond_spec.to_dict(), **self.config}


class EnergyUNet(TimeEnergy):
    """A compact UNet ``D(x, t, c)`` read as the energy ``||x - alpha_t D||^2 / (2 sigma_t^2)``.

    Args:
        schedule: the :class:`VPSchedule` whose ``alpha_t, sigma_t`` the energy uses.
        cond_spec: the condition attributes (default: none, an unconditional model).
        channels: image channels (default 3).
        base: channels at full resolution (default 32).
        mults: channel multipliers per resolution (default ``(1, 2, 2)``: 32x32 -> 16x16 -> 8x8).
        blocks: residual blocks per resolution on the way down (up: ``blocks + 1``).
        emb: time/condition embedding width (default 128).
        sigma_data: 0 (default) or ``s_d > 0`` for EDM's skip term (module docstring).
        spatial: ``{attribute: 3x3 homography}`` for 2-vector attributes that also enter as a bump
            image (module docstring); default none.
        spatial_sigma: the bumps' width in image coordinates (default 0.1, 1/20 of the image).

    With the defaults, 32x32 RGB: 1.04M parameters.

    ``forward(x, cond=None, t=None)``: ``x`` ``(B, C, H, W)``; ``cond`` ``(B, width)`` packed (see
    :class:`CondSpec`; None = every attribute absent); ``t`` ``(B,)`` integer levels (None = the
    ``level`` buffer). Returns energies ``(B,)``.
    """

    def __init__(self, schedule: VPSchedule, cond_spec: CondSpec | None = None, *, channels: int = 3,
                 base: int = 32, mults: Sequence[int] = (1, 2, 2), blocks: int = 1, emb: int = 128,
                 sigma_data: float = 0.0, spatial: Mapping[str, Sequence[Sequence[float]]] | None = None,
                 spatial_sigma: float = 0.1):
        config = {"channels": channels, "base": base, "mults": list(mults), "blocks": blocks, "emb": emb,
                  "sigma_data": sigma_data}
        spatial = dict(spatial or {})
        if spatial:  # only then in the spec, so the specs of models without it stay as they were
            config.update(spatial=spatial, spatial_sigma=spatial_sigma)
        super().__init__(schedule, cond_spec, config)
        kinds = {name: (kind, n) for name, kind, n in self.cond_spec.attributes}
        for name in spatial:
            if kinds.get(name) != ("vector", 2):
                raise ValueError(f"spatial: {name!r} must be a 2-vector attribute of the condition spec "
                                 f"({list(self.cond_spec.names)}), got {kinds.get(name)}")
            spatial[name] = _check_homography(name, spatial[name])
        if not (float(spatial_sigma) > 0):
            raise ValueError(f"spatial_sigma: expected a width > 0, got {spatial_sigma!r}")
        self.spatial = spatial
        # the homographies as a buffer: they move with the model and cost no host copy per forward
        self.register_buffer("spatial_h", torch.tensor([spatial[k] for k in spatial], dtype=torch.float32)
                             .reshape(len(spatial), 3, 3), persistent=False)
        self.spatial_sigma = float(spatial_sigma)
        self._init_embeddings(emb)
        self.inp = nn.Conv2d(channels + len(spatial), base, 3, padding=1)
        chans = [base * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [base]
        c = base
        for i, ch in enumerate(chans):
            for _ in range(blocks):
                self.down.append(_ResBlock(c, ch, emb))
                c = ch
                skips.append(c)
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([_ResBlock(c, c, emb), _ResBlock(c, c, emb)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):
            for _ in range(blocks + 1):
                self.up.append(_ResBlock(c + skips.pop(), ch, emb))
                c = ch
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.out_norm = nn.GroupNorm(8, c)
        self.out = nn.Conv2d(c, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self._n_levels = len(chans)
        self._blocks = blocks

    # ---- network -----------------------------------------------------------------------------
    def denoise(self, x: Tensor, cond: Tensor | None, t: Tensor) -> Tensor:
        """``D(x, t, c)``: the clean-image estimate, ``x``'s shape."""
        emb = self._embedding(x, cond, t)
        if self.spatial:
            c = cond if cond is not None else torch.zeros(x.shape[0], self.cond_spec.width, device=x.device,
                                                          dtype=x.dtype)
            homs = {k: self.spatial_h[i].to(x.dtype) for i, k in enumerate(self.spatial)}
            x = torch.cat([x, spatial_maps(c.to(x.dtype), self.cond_spec, homs, x.shape[-2], x.shape[-1],
                                           self.spatial_sigma)], dim=1)
        h = self.inp(x)
        hs = [h]
        k = 0
        for i in range(self._n_levels):
            for _ in range(self._blocks):
                h = self.down[k](h, emb)
                k += 1
                hs.append(h)
            if i < self._n_levels - 1:
                h = self.downsample[i](h)
                hs.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        k = 0
        for j, i in enumerate(reversed(range(self._n_levels))):
            for _ in range(self._blocks + 1):
                h = self.up[k](torch.cat([h, hs.pop()], dim=1), emb)
                k += 1
            if i > 0:
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))



class EnergyMLP(TimeEnergy):
    """The same energy over vectors ``(B, dim)``: ``D`` is an MLP of ``[x, embedding]`` (SiLU).

    For toy and analytic data (2-D mixtures, Gaussians): ``hidden`` units, ``depth`` hidden layers.
    """

    def __init__(self, schedule: VPSchedule, cond_spec: CondSpec | None = None, *, dim: int = 2,
                 hidden: int = 64, depth: int = 2, emb: int = 32, sigma_data: float = 0.0):
        super().__init__(schedule, cond_spec, {"dim": dim, "hidden": hidden, "depth": depth, "emb": emb,
                                               "sigma_data": sigma_data})
        self._init_embeddings(emb)
        layers, w = [], dim + emb
        for _ in range(depth):
            layers += [nn.Linear(w, hidden), nn.SiLU()]
            w = hidden
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(w, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def denoise(self, x: Tensor, cond: Tensor | None, t: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ValueError(f"EnergyMLP: expected x of shape (B, {self.config['dim']}), got {tuple(x.shape)}")
        return self.out(self.net(torch.cat([x, self._embedding(x, cond, t)], dim=1)))


class GaussianEnergy(nn.Module):
    """The exact noised energy of Gaussian data ``N(mu_c, s_c^2 I)``, one Gaussian per class.

    ``E(x, t, c) = ||x - alpha_t mu_c||^2 / (2 v) + (D/2) log v + offset_c(t)``, with
    ``v = alpha_t^2 s_c^2 + sigma_t^2``: ``-log p_t(x | c)`` plus an arbitrary constant
    ``offset_c(t)`` (what denoising score matching leaves undetermined). The analytic oracle for
    composition tests; conditions are packed by a :class:`CondSpec` with one class attribute
    ``"c"`` (absent = class ``len(mu)``, an extra Gaussian given as the unconditional one).

    Args:
        schedule: the noise schedule.
        mu: ``(K, D)`` means (row ``K - 1`` is the unconditional one when ``has_null``).
        s: ``(K,)`` standard deviations.
        offsets: ``(K, T + 1)`` constants added per class and level (default 0).
    """

    def __init__(self, schedule: VPSchedule, mu: Tensor, s: Tensor, offsets: Tensor | None = None):
        super().__init__()
        self.schedule = schedule
        self.register_buffer("mu", mu.double())
        self.register_buffer("s", s.double())
        K = mu.shape[0]
        self.cond_spec = CondSpec((("c", "class", K - 1),))
        off = torch.zeros(K, schedule.T + 1, dtype=torch.float64) if offsets is None else offsets.double()
        self.register_buffer("offsets", off)
        self.register_buffer("level", torch.tensor(schedule.T, dtype=torch.long))
        self.register_buffer("alpha_table", schedule.alphas.clone())
        self.register_buffer("sigma_table", schedule.sigmas.clone())

    set_level = TimeEnergy.set_level
    cond = TimeEnergy.cond

    def forward(self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        B, D = x.shape[0], x[0].numel()
        K = self.mu.shape[0]
        if cond is None:
            k = torch.full((B,), K - 1, dtype=torch.long, device=x.device)
        else:
            k = torch.where(cond[:, 0] > 0.5, cond[:, 1].round().long(), torch.full_like(cond[:, 1], K - 1).long())
        t = self.level.expand(B) if t is None else t
        a, sg = self.alpha_table[t], self.sigma_table[t]
        v = a ** 2 * self.s[k] ** 2 + sg ** 2
        diff = x.flatten(1).double() - a[:, None] * self.mu[k]
        e = diff.pow(2).sum(1) / (2 * v) + 0.5 * D * v.log() + self.offsets[k, t]
        return e.to(x.dtype)
