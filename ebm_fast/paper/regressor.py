"""The supervised baseline of Table 3: a ResNet that regresses the object's position from the image."""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..models import EnergyResNet, build_model, model_from_config

__all__ = ["PositionRegressor", "train_regressor", "save_regressor", "load_regressor", "as_float_images"]


def as_float_images(images) -> Tensor:
    """uint8 ``(N, H, W, 3)`` / ``(N, 3, H, W)`` or float ``(N, 3, H, W)`` -> float32 ``(N, 3, H, W)`` in [0, 1]."""
    t = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images
    if t.dim() != 4:
        raise ValueError(f"images: expected 4-d (N, H, W, 3) or (N, 3, H, W), got shape {tuple(t.shape)}")
    if t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    return t.float().div(255.0) if t.dtype == torch.uint8 else t.float()


class PositionRegressor(nn.Module):
    """The EBM's :class:`~ebm_fast.models.EnergyResNet` body with an ``out_dim``-output dense head:
    ``forward(x (B, C, H, W)) -> (B, out_dim)``.

    Built from a registered name (``PositionRegressor("small32")``) or an EBM's ``model.config``
    (:meth:`from_energy_config`), so both models share one architecture definition. Spectral norm is
    off by default: it stabilises EBM sampling, a supervised regressor does not need it.
    """

    def __init__(self, name: str = "small32", out_dim: int = 2, *, spectral_norm: bool = False, **overrides):
        super().__init__()
        body = build_model(name, 0, "none", spectral_norm=spectral_norm, **overrides)
        self._setup(body, out_dim)

    def _setup(self, body: EnergyResNet, out_dim: int) -> None:
        if out_dim < 1:
            raise ValueError(f"out_dim: expected >= 1, got {out_dim}")
        body.head = nn.Linear(body.head.in_features, out_dim)
        self.body = body
        self.out_dim = out_dim
        self.config = {"body": dict(body.config), "out_dim": out_dim}

    @classmethod
    def from_energy_config(cls, config: dict, out_dim: int = 2, spectral_norm: bool = False) -> "PositionRegressor":
        """The architecture of the EBM whose ``model.config`` is ``config``, unconditional, new head."""
        body_cfg = dict(config, cond_dim=0, cond_type="none", spectral_norm=spectral_norm)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(model_from_config(body_cfg), out_dim)
        return self

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)  # EnergyResNet.forward: head(pooled) -> (B, out_dim) (squeeze(1) is a no-op)
        return out.view(x.shape[0], self.out_dim)


def train_regressor(model: PositionRegressor, images: Tensor, targets: Tensor, *, steps: int = 2000,
                    batch_size: int = 64, lr: float = 1e-3, seed: int = 0, log_every: int = 0,
                    log: Callable[[str], None] = print) -> list[float]:
    """Supervised MSE regression of ``targets`` ``(N, out_dim)`` from ``images`` ``(N, C, H, W)`` (float in
    [0, 1], or uint8), Adam; returns the per-step losses. The model is left in eval mode."""
    if images.dim() != 4 or targets.dim() != 2 or images.shape[0] != targets.shape[0]:
        raise ValueError(f"images, targets: expected (N, C, H, W) and (N, out_dim) with one N, got "
                         f"{tuple(images.shape)} and {tuple(targets.shape)}")
    if targets.shape[1] != model.out_dim:
        raise ValueError(f"targets: expected {model.out_dim} columns (model.out_dim), got {targets.shape[1]}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (min(batch_size, images.shape[0]),), generator=gen)
        x = as_float_images(images[idx])
        loss = (model(x) - targets[idx].float()).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            log(f"regressor step {step + 1}/{steps}  mse {np.mean(losses[-log_every:]):.4f}")
    model.eval()
    return losses


def save_regressor(path, model: PositionRegressor, meta: dict | None = None) -> None:
    """Save ``{"kind": "ebm_fast.regressor", "config", "state_dict", "meta"}`` atomically."""
    from ..checkpoint import atomic_torch_save

    atomic_torch_save({"kind": "ebm_fast.regressor", "config": json.loads(json.dumps(model.config)),
                       "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                       "meta": dict(meta or {})}, path)


def load_regressor(path, map_location="cpu") -> tuple[PositionRegressor, dict]:
    """``(model in eval mode, meta)`` from :func:`save_regressor`'s file."""
    from ..checkpoint import load_checkpoint_file

    state = load_checkpoint_file(path, map_location=map_location)
    if state.get("kind") != "ebm_fast.regressor":
        raise ValueError(f"{path}: expected an ebm_fast regressor file, got kind={state.get('kind')!r}")
    cfg = state["config"]
    model = PositionRegressor.from_energy_config(cfg["body"], cfg["out_dim"], cfg["body"].get("spectral_norm", False))
    model.load_state_dict(state["state_dict"])
    return model.eval(), dict(state.get("meta", {}))
