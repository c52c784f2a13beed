"""The paper's conditional ResNet energies, and a registry that rebuilds them by name.

Every model is a plain ``nn.Module`` with ``forward(x, cond=None) -> energies`` ``(B,)``, usable as
``ebm_fast.Concept(model, cond)``:

* ``x`` ``(B, C_in, H, W)`` images (any ``H``, ``W`` divisible by ``2**len(widths)``; the global pool
  makes the energy resolution-agnostic, the registered names say what the model was built for),
* ``cond`` (``cond_type``):
  - ``"onehot"``: class indices ``(B,)`` (any integer dtype) or one-hot/soft labels ``(B, cond_dim)``;
  - ``"continuous"``: ``(B, cond_dim)`` floats (a position ``(x, y)``, a size), or ``(B,)`` when
    ``cond_dim == 1``;
  - ``"none"``: unconditional, ``cond`` must be None.

Architecture (Du & Mordatch 2019, Du, Li & Mordatch 2020): a 3×3 stem conv, then one residual block
per entry of ``widths`` (two 3×3 convs, each followed by FiLM from the condition and swish, a 1×1
skip when the width changes, then 2×2 average-pool downsampling), a global pool (mean for scenes,
sum for faces), and a dense layer to one energy per sample. Spectral norm on every conv layer (on the
dense head only on request, as in the released code), no BatchNorm: a sample's energy never depends on
the rest of the batch.

Registered names (:data:`MODEL_CONFIGS`):

============ ===== ===================== ====== ==========================================
name         res.  widths (stem)         pool   use
============ ===== ===================== ====== ==========================================
``scenes64`` 64    64, 128, 256 (64)     mean   the paper's MuJoCo Scenes model (~1.2 M params)
``faces128`` 128   64 … 1024 (64)        sum    the paper's 128×128 faces model
``small32``  32    16, 32, 64 (16)       mean   CPU-trainable scenes model (~80 k params)
``tiny``     16    8, 16 (8)             mean   tests and smoke runs
============ ===== ===================== ====== ==========================================

``build_model(name, cond_dim, cond_type, **overrides)`` builds one; ``model.config`` is a dict of
primitives from which :func:`model_from_config` rebuilds the same architecture (checkpoints store it).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EnergyResNet",
    "EnergyEnsemble",
    "ResBlock",
    "FiLM",
    "MODEL_CONFIGS",
    "COND_TYPES",
    "build_model",
    "model_from_config",
    "save_model",
    "load_model",
    "count_parameters",
    "coordinate_channels",
    "load_weights_widening",
]

COND_TYPES = ("onehot", "continuous", "none")
POOLS = ("mean", "sum", "max", "meanmax")

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "scenes64": {"resolution": 64, "stem": 64, "widths": (64, 128, 256), "pool": "mean"},
    "faces128": {"resolution": 128, "stem": 64, "widths": (64, 128, 256, 512, 1024), "pool": "sum"},
    # Sized for CPU training: ~12 M multiply-adds per 32x32 image forward, versus ~190 M for the
    # scenes64 architecture at 32x32 (one 32-channel 3x3 conv at 32x32, B = 32, took 40 ms on the
    # 2-core CI machine, so the full-width model costs ~1 s per Langevin step there).
    "small32": {"resolution": 32, "stem": 16, "widths": (16, 32, 64), "pool": "mean"},
    "tiny": {"resolution": 16, "stem": 8, "widths": (8, 16), "pool": "mean"},
}


def _sn(module: nn.Module, on: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(module) if on else module


class FiLM(nn.Module):
    """Feature-wise modulation ``h * (1 + gamma(c)) + beta(c)``; the identity at initialisation.

    ``h`` ``(B, C, H, W)``, ``c`` ``(B, cond_dim)`` float. Zero-initialised so an untrained
    conditional model starts as its unconditional twin (the condition's effect is learned).
    """

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        gamma, beta = self.linear(c).view(-1, 2 * self.channels, 1, 1).chunk(2, dim=1)
        # one pass over h (beta + h * (1 + gamma)): the (B, C, 1, 1) factors are tiny
        return torch.addcmul(beta, h, gamma + 1.0)


class ResBlock(nn.Module):
    """``y = pool2(skip(x) + swish(film2(conv2(swish(film1(conv1(x)))))))``, ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)``.

    ``skip`` is a 1×1 conv when ``C_in != C_out`` and the identity otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, *, spectral_norm: bool = True,
                 downsample: bool = True):
        super().__init__()
        self.conv1 = _sn(nn.Conv2d(in_channels, out_channels, 3, padding=1), spectral_norm)
        self.conv2 = _sn(nn.Conv2d(out_channels, out_channels, 3, padding=1), spectral_norm)
        self.film1 = FiLM(cond_dim, out_channels) if cond_dim > 0 else None
        self.film2 = FiLM(cond_dim, out_channels) if cond_dim > 0 else None
        self.skip = (_sn(nn.Conv2d(in_channels, out_channels, 1), spectral_norm)
                     if in_channels != out_channels else None)
        self.downsample = downsample

    def forward(self, x: Tensor, c: Tensor | None) -> Tensor:
        return self.finish(self.begin(x), c)

    def begin(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The part that does not read the condition: ``(conv1(x), skip(x))``."""
        return self.conv1(x), (x if self.skip is None else self.skip(x))

    def finish(self, begun: tuple[Tensor, Tensor], c: Tensor | None) -> Tensor:
        """The rest of the block from :meth:`begin`'s output."""
        h, residual = begun
        if self.film1 is not None:
            h = self.film1(h, c)
        h = self.conv2(F.silu(h))
        if self.film2 is not None:
            h = self.film2(h, c)
        h = F.silu(h) + residual
        return F.avg_pool2d(h, 2) if self.downsample else h


def coordinate_channels(x: Tensor) -> Tensor:
    """``(B, 2, H, W)`` pixel-centre coordinates for images ``x`` ``(B, C, H, W)``: channel 0 is x in
    [-1, 1] left to right, channel 1 is y in [-1, 1] bottom to top (+y is up, as in the scenes' labels)."""
    b, _, h, w = x.shape
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) * (2.0 / w) - 1.0
    ys = 1.0 - (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) * (2.0 / h)
    return torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)]).expand(b, 2, h, w)


def condition_head_keys(model: nn.Module) -> list[str]:
    """Names of the ``model.state_dict()`` entries that read the condition (the FiLM layers)."""
    return [f"{name}.{key}" for name, module in model.named_modules() if isinstance(module, FiLM)
            for key in module.state_dict()]


def load_weights_widening(model: nn.Module, state_dict: dict[str, Tensor], *, keep: Iterable[str] = ()) -> None:
    """Copy ``state_dict`` into ``model``, zero-padding any tensor whose input-channel dimension (dim 1)
    grew: a model given :func:`coordinate_channels` then computes exactly what the source computed until
    training moves the new weights. The entries named in ``keep`` are left as the model has them (and
    ignored in ``state_dict``). Any other mismatch (a missing or extra key, another dimension) is an
    error that names the tensor."""
    keep = set(keep)
    own = {k: v for k, v in model.state_dict().items() if k not in keep}
    state_dict = {k: v for k, v in state_dict.items() if k not in keep}
    missing, extra = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if missing or extra:
        raise ValueError(f"weights do not fit the model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, target in own.items():
            src = state_dict[name]
            if src.shape == target.shape:
                target.copy_(src)
            elif (src.dim() == target.dim() >= 2 and src.shape[0] == target.shape[0]
                  and src.shape[2:] == target.shape[2:] and src.shape[1] < target.shape[1]):
                target.zero_()
                target[:, :src.shape[1]].copy_(src)
            else:
                raise ValueError(f"weights do not fit the model: {name} is {tuple(src.shape)}, the model's "
                                 f"{tuple(target.shape)} (only the input channels, dim 1, may grow)")


class EnergyResNet(nn.Module):
    """Conditional ResNet energy ``E(x, cond)`` ``(B,)``; see the module docstring for ``cond``.

    Args:
        cond_dim: condition size (number of classes for ``"onehot"``; 2 for a position); 0 with
            ``cond_type="none"``.
        cond_type: ``"onehot"``, ``"continuous"`` or ``"none"``.
        in_channels: image channels (default 3).
        stem: channels of the 3×3 stem conv (default 64).
        widths: output channels of the residual blocks, one downsampling block each
            (default ``(64, 128, 256)``, the scenes model).
        pool: ``"mean"``, ``"sum"`` or ``"max"`` over the final feature map (default ``"mean"``, the
            paper's). A small object covers ~1/16 of small32's final 4x4 map, and the mean dilutes
            it: a small32 colour classifier (Adam 1e-3, B 16, 32x32 scenes) was still at chance
            after 300 steps with the mean and at 94-100% batch accuracy with the max. ``"meanmax"``
            feeds the head both (twice the features), so the energy still sees the whole image.
        spectral_norm: spectral normalisation on every conv layer (default True).
        head_spectral_norm: spectral normalisation on the final dense layer too (default False, as in
            the paper's released MuJoCo-Scenes model, whose last layer is free: with every layer
            normalised the energy's scale, and its input gradient, stay tiny -- a small32 position
            model after 500 iterations had per-pixel gradients of ~5e-6 and gave data and uniform
            noise the same energy).
        coords: append two constant coordinate channels to the input (CoordConv: x from -1 at the
            left to 1 at the right, y from 1 at the top to -1 at the bottom, the scenes' position
            convention). Default False, the paper's model. Without them every layer up to the mean
            pool is translation-equivariant, so the energy can tell where an object is only from
            the zero padding at the borders: a small32/tiny model trained on the conditional ranking
            term alone kept its position loss at log 2 (chance) while it learned colour.
        resolution: the image size the model is meant for (recorded in ``config``; not enforced
            beyond divisibility).
        name: registry name recorded in ``config`` (default ``"custom"``).
    """

    def __init__(self, cond_dim: int = 0, cond_type: str = "none", *, in_channels: int = 3, stem: int = 64,
                 widths: Sequence[int] = (64, 128, 256), pool: str = "mean", spectral_norm: bool = True,
                 head_spectral_norm: bool = False, coords: bool = False,
                 resolution: int | None = None, name: str = "custom"):
        super().__init__()
        if cond_type not in COND_TYPES:
            raise ValueError(f"cond_type: expected one of {COND_TYPES}, got {cond_type!r}")
        if cond_type == "none" and cond_dim != 0:
            raise ValueError(f"cond_dim: expected 0 for cond_type='none', got {cond_dim}")
        if cond_type != "none" and (not isinstance(cond_dim, int) or cond_dim < 1):
            raise ValueError(f"cond_dim: expected an integer >= 1 for cond_type={cond_type!r}, got {cond_dim!r}")
        if pool not in POOLS:
            raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1 or stem < 1 or in_channels < 1:
            raise ValueError(f"widths/stem/in_channels: expected positive sizes, got {widths}, {stem}, {in_channels}")
        self.cond_dim = int(cond_dim)
        self.cond_type = cond_type
        self.in_channels = int(in_channels)
        self.pool = pool
        self.config = {
            "name": name, "cond_dim": int(cond_dim), "cond_type": cond_type, "in_channels": int(in_channels),
            "stem": int(stem), "widths": list(widths), "pool": pool, "spectral_norm": bool(spectral_norm),
            "head_spectral_norm": bool(head_spectral_norm), "coords": bool(coords),
            "resolution": None if resolution is None else int(resolution),
        }
        self.coords = bool(coords)
        self.stem = _sn(nn.Conv2d(in_channels + 2 * self.coords, stem, 3, padding=1), spectral_norm)
        chans = (stem, *widths)
        self.blocks = nn.ModuleList(
            ResBlock(chans[i], chans[i + 1], self.cond_dim, spectral_norm=spectral_norm)
            for i in range(len(widths)))
        self.head = _sn(nn.Linear(widths[-1] * (2 if pool == "meanmax" else 1), 1), head_spectral_norm)
        self._min_size = 2 ** len(widths)

    def condition(self, cond: Any, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor | None:
        """``cond`` as the float ``(batch, cond_dim)`` the FiLM layers read (one-hot for class indices)."""
        if self.cond_type == "none":
            if cond is not None:
                raise ValueError("cond: this model is unconditional (cond_type='none'), got a condition")
            return None
        if cond is None:
            raise ValueError(f"cond: this model needs a condition ({self.cond_type}, cond_dim={self.cond_dim}), got None")
        c = cond if isinstance(cond, Tensor) else torch.as_tensor(cond)
        c = c.to(device)
        if self.cond_type == "onehot" and not c.is_floating_point():
            if c.shape != (batch,):
                raise ValueError(f"cond: expected class indices of shape ({batch},), got {tuple(c.shape)}")
            # The range check reads values on the host: CPU only, so a CUDA forward stays free of
            # syncs (the sampler captures it in a CUDA graph), and not while torch.compile traces,
            # where a host read would break the graph (an out-of-range index then gives a zero row).
            if c.device.type == "cpu" and c.numel() and not torch.compiler.is_compiling() and (int(c.min()) < 0 or int(c.max()) >= self.cond_dim):
                raise ValueError(f"cond: expected class indices in [0, {self.cond_dim}), got "
                                 f"[{int(c.min())}, {int(c.max())}]")
            return (c.long().unsqueeze(1) == torch.arange(self.cond_dim, device=device)).to(dtype)
        if self.cond_dim == 1 and c.shape == (batch,):
            c = c.unsqueeze(1)
        if c.shape != (batch, self.cond_dim):
            raise ValueError(f"cond: expected shape ({batch}, {self.cond_dim}) for cond_type={self.cond_type!r}, "
                             f"got {tuple(c.shape)}")
        return c.to(dtype)

    # how many tensors shared_features returns
    n_shared_features = 2

    def forward(self, x: Tensor, cond: Any = None) -> Tensor:
        return self.energy_from_features(self.shared_features(x), cond)

    def shared_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The condition-free head of the forward pass: the stem and the first block's ``conv1`` and skip.

        Inference over many candidate conditions for one image (:func:`ebm_fast.infer.grid_energies`)
        computes these once per image instead of once per (image, candidate) pair.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self._min_size or x.shape[3] % self._min_size:
            raise ValueError(f"x: expected H and W divisible by {self._min_size}, got {tuple(x.shape[2:])}")
        if self.coords:
            x = torch.cat([x, coordinate_channels(x)], dim=1)
        return self.blocks[0].begin(self.stem(x))

    def energy_from_features(self, features: tuple[Tensor, Tensor], cond: Any = None) -> Tensor:
        """Energies ``(B,)`` from :meth:`shared_features` (rows may be repeated per candidate) and ``cond``."""
        h0 = features[0]
        c = self.condition(cond, h0.shape[0], h0.device, h0.dtype)
        h = self.blocks[0].finish(features, c)
        for block in self.blocks[1:]:
            h = block(h, c)
        h = F.silu(h)
        if self.pool == "meanmax":
            h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        else:
            h = {"mean": h.mean, "sum": h.sum, "max": h.amax}[self.pool](dim=(2, 3))
        return self.head(h).squeeze(1)


class EnergyEnsemble(nn.Module):
    """Several energies of one concept as one: ``E(x, c) = sum_i w_i E_i(x, c)``.

    A product of experts over the same condition -- the paper's conjunction, applied to two models of
    one attribute rather than to two attributes. The sampler sees a single concept, so an ensemble
    drops in wherever an :class:`EnergyResNet` does (``ebm_fast.Concept``, concept files, the
    composition tables). Members must agree on ``cond_type``, ``cond_dim`` and ``in_channels``.

    Args:
        members: the energies (``EnergyResNet`` or ensembles; any ``forward(x, cond) -> (B,)``
            module samples and infers, but only members with a ``config`` save and reload).
        weights: one finite, positive weight per member (default: ``1 / len(members)`` each, the
            mean energy).
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None):
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"members: expected at least 2 energies, got {len(members)}")
        weights = [1.0 / len(members)] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members):
            raise ValueError(f"weights: expected {len(members)} (one per member), got {len(weights)}")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights: expected finite positive numbers, got {weights}")
        for key in ("cond_type", "cond_dim", "in_channels"):
            found = [getattr(m, key, None) for m in members]
            if len(set(found)) != 1:
                raise ValueError(f"members: expected one {key}, got {found}")
        resolutions = {(getattr(m, "config", None) or {}).get("resolution") for m in members} - {None}
        if len(resolutions) > 1:
            raise ValueError(f"members: expected one training resolution, got {sorted(resolutions)}")
        self.members = nn.ModuleList(members)
        self.weights = weights
        self.cond_type, self.cond_dim, self.in_channels = (getattr(members[0], k, None)
                                                           for k in ("cond_type", "cond_dim", "in_channels"))
        # a member without a config (a plain module) samples and infers, but does not save and reload
        self.config = {"name": "ensemble", "members": [copy.deepcopy(getattr(m, "config", None)) for m in members],
                       "weights": list(weights), "resolution": next(iter(resolutions), None)}

    def forward(self, x: Tensor, cond: Any = None) -> Tensor:
        return sum(w * m(x, cond) for w, m in zip(self.weights, self.members))

    def energy_terms(self) -> list[tuple[float, nn.Module]]:
        """``[(w_i, E_i)]`` with ``self(x, c) == sum_i w_i E_i(x, c)``, nested ensembles flattened (their
        weights multiplied). The sampler runs the terms of a CPU step in parallel threads
        (:mod:`ebm_fast.leaf_eval`)."""
        return [(w * v, term) for w, m in zip(self.weights, self.members)
                for v, term in (m.energy_terms() if isinstance(m, EnergyEnsemble) else [(1.0, m)])]

    @property
    def shares_features(self) -> bool:
        """Whether every member exposes a condition-free head (:mod:`ebm_fast.infer` then uses it)."""
        return all(hasattr(m, "n_shared_features") and callable(getattr(m, "shared_features", None))
                   and callable(getattr(m, "energy_from_features", None)) for m in self.members)

    @property
    def n_shared_features(self) -> int:
        return sum(m.n_shared_features for m in self.members)

    def shared_features(self, x: Tensor) -> tuple[Tensor, ...]:
        """Every member's condition-free head (:meth:`EnergyResNet.shared_features`), one after another
        in one flat tuple of tensors whose rows are the images'."""
        if not self.shares_features:
            raise TypeError("shared_features: a member has no condition-free head")
        return tuple(t for m in self.members for t in m.shared_features(x))

    def energy_from_features(self, features: Sequence[Tensor], cond: Any = None) -> Tensor:
        """Energies from :meth:`shared_features` (rows may be repeated per candidate); equals ``self(x, cond)``."""
        if len(features) != self.n_shared_features:
            raise ValueError(f"features: expected the {self.n_shared_features} tensors of shared_features, "
                             f"got {len(features)}")
        starts = [0]
        for m in self.members:
            starts.append(starts[-1] + m.n_shared_features)
        return sum(w * m.energy_from_features(tuple(features[a:b]), cond)
                   for w, m, a, b in zip(self.weights, self.members, starts, starts[1:]))


def build_model(name: str, cond_dim: int = 0, cond_type: str | None = None, **overrides) -> EnergyResNet:
    """A registered architecture (:data:`MODEL_CONFIGS`) with a condition head.

    Args:
        name: a key of :data:`MODEL_CONFIGS`.
        cond_dim: condition size (0 = unconditional).
        cond_type: ``"onehot"``, ``"continuous"`` or ``"none"``; default ``"none"`` if ``cond_dim == 0``
            else ``"onehot"``.
        overrides: any :class:`EnergyResNet` keyword (``stem``, ``widths``, ``pool``,
            ``spectral_norm``, ``coords``, ``in_channels``, ``resolution``).
    """
    if name not in MODEL_CONFIGS:
        raise ValueError(f"model: expected one of {sorted(MODEL_CONFIGS)}, got {name!r}")
    if cond_type is None:
        cond_type = "none" if cond_dim == 0 else "onehot"
    kw = dict(MODEL_CONFIGS[name])
    kw.update(overrides)
    return EnergyResNet(cond_dim, cond_type, name=name, **kw)


def model_from_config(config: dict) -> EnergyResNet:
    """Rebuild the architecture recorded in ``model.config`` (fresh weights)."""
    if not isinstance(config, dict):
        raise TypeError(f"model config: expected a dict, got {type(config).__name__}")
    if config.get("name") == "ensemble":
        extra = set(config) - {"name", "members", "weights", "resolution"}
        if extra or not isinstance(config.get("members"), list):
            raise ValueError(f"ensemble config: expected members, weights and resolution, got keys {sorted(config)}")
        return EnergyEnsemble([model_from_config(c) for c in config["members"]], config.get("weights"))
    known = {"name", "cond_dim", "cond_type", "in_channels", "stem", "widths", "pool", "spectral_norm",
             "head_spectral_norm", "coords", "resolution"}
    unknown = set(config) - known
    if unknown:
        raise ValueError(f"model config: unknown keys {sorted(unknown)} (expected some of {sorted(known)})")
    kw = dict(config)
    # configs written before head_spectral_norm existed normalised the head with everything else
    kw.setdefault("head_spectral_norm", kw.get("spectral_norm", True))
    return EnergyResNet(kw.pop("cond_dim", 0), kw.pop("cond_type", "none"), **kw)


def count_parameters(model: nn.Module) -> int:
    """Number of scalars in ``model.parameters()``."""
    return sum(p.numel() for p in model.parameters())


def save_model(path, model: EnergyResNet, meta: dict | None = None) -> None:
    """Save an inference-only model file: ``{"model_config", "state_dict", "meta"}``, atomically.

    ``meta`` is a dict of primitives (what the condition means, class names, training command...).
    Load with :func:`load_model` (``weights_only=True``).
    """
    from .checkpoint import atomic_torch_save

    state = {"kind": "ebm_fast.model", "model_config": copy.deepcopy(model.config),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "meta": dict(meta or {})}
    atomic_torch_save(state, path)


def load_model(path, map_location: str | torch.device = "cpu") -> tuple[EnergyResNet, dict]:
    """``(model, meta)`` from a file written by :func:`save_model` or a training checkpoint.

    A training checkpoint gives its EMA weights when it has them, else the live weights. The model
    is returned in eval mode.
    """
    from .checkpoint import load_checkpoint_file

    state = load_checkpoint_file(path, map_location=map_location)
    if state.get("kind") == "ebm_fast.model":
        sd, meta = state["state_dict"], state.get("meta", {})
    elif state.get("kind") == "ebm_fast.train":
        sd = state["ema"] if state.get("ema") is not None else state["model"]
        meta = dict(state.get("meta", {}))
        meta["step"] = state["step"]
    else:
        raise ValueError(f"{path}: not an ebm_fast model or training checkpoint (kind={state.get('kind')!r})")
    model = model_from_config(state["model_config"])
    model.load_state_dict(sd)
    return model.eval(), meta
