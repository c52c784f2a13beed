"""Denoising score matching (DSM) for energy-parameterized diffusion models.

Loss (epsilon weighting, Ho et al. 2020 written for an energy): for data ``x_0``, a level ``t``
uniform in ``1..T``, ``eps ~ N(0, I)`` and ``x_t = alpha_t x_0 + sigma_t eps``::

    L = mean over batch and elements of (sigma_t grad_x E(x_t, t, c) - eps)^2

Its minimiser has ``-grad_x E(x, t, c) = E[-eps | x_t = x, c] / sigma_t = grad_x log p_t(x | c)``
(Vincent 2011), the score of the noised data at level ``t``. Each iteration costs one forward, the
input-gradient backward (with ``create_graph``) and the backward of that through the parameters.

:class:`DSMTrainer` runs Adam with an exponential moving average (EMA) of the weights, drops each
condition attribute independently (so the same network learns the unconditional energy), writes
crash-proof checkpoints (:class:`ebm_fast.checkpoint.CheckpointManager`) on a wall-clock period and
resumes from them exactly: every random draw (batch indices, levels, noise, condition dropout)
comes from one ``torch.Generator`` whose state is checkpointed, so on the same machine and thread
count a resumed run computes the same numbers as an uninterrupted one.

The data is generic: images ``(N, C, H, W)`` (uint8 0..255, or floats already in the model's
``[-1, 1]`` range) and packed conditions ``(N, width)`` (see :class:`CondSpec`); nothing here
knows about any dataset.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointManager, atomic_torch_save, load_checkpoint_file
from .network import CondSpec, EnergyMLP, EnergyUNet
from .schedule import VPSchedule

__all__ = ["dsm_loss", "DSMTrainer", "export_model", "load_model", "build_model", "warm_start",
           "EXPORT_FORMAT"]

EXPORT_FORMAT = "ebm_fast.diffusion_model"


def dsm_loss(model: nn.Module, x0: Tensor, cond: Tensor | None, t: Tensor, eps: Tensor,
             create_graph: bool = True) -> Tensor:
    """The DSM loss (module docstring) of ``model(x, cond, t) -> energies (B,)`` on ``x0`` ``(B, ...)``
    at levels ``t`` ``(B,)`` with noise ``eps`` (``x0``'s shape). Differentiable in the parameters
    when ``create_graph``."""
    if eps.shape != x0.shape:
        raise ValueError(f"eps: expected x0's shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t: expected shape ({x0.shape[0]},), got {tuple(t.shape)}")
    schedule = model.schedule
    xt = schedule.add_noise(x0, t, eps).detach().requires_grad_(True)
    energy = model(xt, cond, t)
    (grad,) = torch.autograd.grad(energy.sum(), xt, create_graph=create_graph)
    sigma = schedule.sigma(t, x0.dtype).to(x0.device).view(-1, *([1] * (x0.dim() - 1)))
    return (sigma * grad - eps).pow(2).mean()


def build_model(spec: dict) -> nn.Module:
    """The network a :meth:`EnergyUNet.spec` dict describes (weights untrained)."""
    kinds = {"EnergyUNet": EnergyUNet, "EnergyMLP": EnergyMLP}
    if spec.get("kind") not in kinds:
        raise ValueError(f"model spec: expected kind in {sorted(kinds)}, got {spec.get('kind')!r}")
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()
           if k not in ("kind", "schedule", "cond_spec")}
    return kinds[spec["kind"]](VPSchedule(**spec["schedule"]), CondSpec.from_dict(spec["cond_spec"]), **cfg)


def export_model(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model`` (spec + weights + ``meta`` primitives) atomically to ``path``."""
    return atomic_torch_save({"format": EXPORT_FORMAT, "spec": model.spec(), "state_dict": model.state_dict(),
                              "meta": dict(meta or {})}, path)


def load_model(path: str | os.PathLike, map_location="cpu", weights: str = "ema") -> tuple[nn.Module, dict]:
    """``(model, meta)`` from a file :func:`export_model` (or :meth:`DSMTrainer.export`) wrote, or from
    a trainer checkpoint (``ckpt/last.pt``), whose ``weights`` (``"ema"`` or ``"model"``, the raw
    weights) are loaded; ``meta`` then holds the run's meta and ``step``. The model is in eval mode
    with gradients off for its parameters."""
    state = load_checkpoint_file(path, map_location=map_location)
    if state.get("format") == EXPORT_FORMAT:
        sd, meta = state["state_dict"], state.get("meta", {})
    elif "spec" in state and "ema" in state and "model" in state:
        if weights not in ("ema", "model"):
            raise ValueError(f"weights: expected 'ema' or 'model', got {weights!r}")
        sd, meta = state[weights], {**state.get("meta", {}), "step": state.get("step"), "weights": weights}
    else:
        raise ValueError(f"{path}: expected an exported diffusion model ({EXPORT_FORMAT}) or a DSMTrainer "
                         f"checkpoint, got format {state.get('format')!r}")
    model = build_model(state["spec"])
    model.load_state_dict(sd)
    model.eval().requires_grad_(False)
    return model, meta


def warm_start(model: nn.Module, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Copy another run's weights ``state_dict`` into ``model`` where the two networks differ only in
    widths that grew (e.g. the input convolution of an :class:`EnergyUNet` given a ``spatial``
    condition channel): a tensor of the same shape is copied; one whose every dimension is at most
    the model's is copied into the leading slice and the rest of the model's tensor is set to zero
    (new inputs start unused, so the network computes what the old one did). Returns the names of
    the tensors that were widened.

    Raises:
        ValueError: naming the tensors, when the two have different names or a tensor shrank.
    """
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if missing or extra:
        raise ValueError(f"warm start: the networks differ in tensors (missing {missing[:5]}, unexpected "
                         f"{extra[:5]}); only widths may differ")
    widened = []
    with torch.no_grad():
        for name, target in own.items():
            src = state_dict[name]
            if src.shape == target.shape:
                target.copy_(src)
                continue
            if src.dim() != target.dim() or any(a > b for a, b in zip(src.shape, target.shape)):
                raise ValueError(f"warm start: {name} is {tuple(src.shape)} in the source and "
                                 f"{tuple(target.shape)} here; only widths that grow can be carried over")
            target.zero_()
            target[tuple(slice(0, n) for n in src.shape)].copy_(src)
            widened.append(name)
    return widened


def _as_model_images(images: Tensor) -> Tensor:
    return images.float().div(127.5).sub(1.0) if images.dtype == torch.uint8 else images.float()


class DSMTrainer:
    """Train an energy network by DSM on in-memory data.

    Args:
        model: e.g. :class:`EnergyUNet` (has ``schedule`` and ``cond_spec``; ``forward(x, cond, t)``).
        images: ``(N, C, H, W)`` uint8 or float in [-1, 1] (or any ``(N, ...)`` float data).
        conds: ``(N, width)`` packed conditions, or None for an unconditional model.
        out: run folder (``ckpt/last.pt``, ``ckpt/prev.pt``, ``ema.pt`` exports).
        batch_size, lr: Adam's batch and learning rate (defaults 32, 2e-4; betas (0.9, 0.999)).
        ema: EMA decay (default 0.999), warmed up as ``min(ema, (1 + step) / (10 + step))``.
        drop: per-attribute probability of dropping a condition (one number or one per attribute).
        grad_clip: max global gradient norm (default 1.0), or None.
        seed: seeds the generator that draws every batch, level, noise and dropout.
        checkpoint_seconds: wall-clock period of checkpoints (default 300).
        export_every: write the EMA model to ``out/ema.pt`` every this many iterations (0: only at
            the end and at checkpoints).
        log_every: iterations between progress lines on ``log`` (default 50).
        meta: primitives stored with every export (data description, attribute scalings...).
    """

    def __init__(self, model: nn.Module, images: Tensor, conds: Tensor | None, out: str | os.PathLike, *,
                 batch_size: int = 32, lr: float = 2e-4, ema: float = 0.999, drop: float | Sequence[float] = 0.1,
                 grad_clip: float | None = 1.0, seed: int = 0, checkpoint_seconds: float = 300.0,
                 export_every: int = 0, log_every: int = 50, meta: dict | None = None, log=None):
        if images.dim() < 2:
            raise ValueError(f"images: expected (N, ...) data (images (N, C, H, W) or vectors (N, D)), got shape "
                             f"{tuple(images.shape)}")
        width = model.cond_spec.width
        if conds is None and width:
            raise ValueError(f"conds: the model is conditioned on {list(model.cond_spec.names)}; pass (N, {width}) "
                             f"packed conditions")
        if conds is not None and conds.shape != (images.shape[0], width):
            raise ValueError(f"conds: expected shape ({images.shape[0]}, {width}), got {tuple(conds.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema: expected a decay in [0, 1), got {ema!r}")
        self.model = model
        self.images = images
        self.conds = conds
        self.out = Path(out)
        self.batch_size = batch_size
        self.ema_decay = float(ema)
        self.drop = drop
        self.grad_clip = grad_clip
        self.checkpoint_seconds = float(checkpoint_seconds)
        self.export_every = int(export_every)
        self.log_every = int(log_every)
        self.meta = dict(meta or {})
        self.log = log or sys.stdout
        self.opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.step = 0
        self.ckpt = CheckpointManager(self.out / "ckpt")

    # ---- one iteration ---------------------------------------------------------------------
    def draw(self) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """The next batch ``(x0, cond, t, eps)`` from the trainer's generator."""
        g = self.generator
        idx = torch.randint(0, self.images.shape[0], (self.batch_size,), generator=g)
        x0 = _as_model_images(self.images[idx])
        t = torch.randint(1, self.model.schedule.T + 1, (self.batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        cond = None
        if self.conds is not None:
            cond = self.model.cond_spec.drop(self.conds[idx].float(), self.drop, generator=g)
        return x0, cond, t, eps

    def train_step(self) -> float:
        self.model.train()
        x0, cond, t, eps = self.draw()
        loss = dsm_loss(self.model, x0, cond, t, eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.step += 1
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(p, 1 - decay)
        return float(loss.detach())

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(), "generator": self.generator.get_state(), "spec": self.model.spec(),
                "meta": self.meta}

    def load_state_dict(self, state: dict) -> None:
        theirs, ours = state.get("spec") or {}, self.model.spec()
        if theirs != ours:
            diff = {k: (theirs.get(k), ours.get(k)) for k in sorted(set(theirs) | set(ours))
                    if theirs.get(k) != ours.get(k)}
            raise ValueError(f"checkpoint: its model differs from this run's in {sorted(diff)} "
                             f"(checkpoint, now: {diff}); resume with the options that started the run")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])

    def start_from(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Begin a fresh run (step 0, new optimizer) from another run's weights, carried over by
        :func:`warm_start` into both the model and its EMA; returns the widened tensors' names."""
        if self.step:
            raise ValueError(f"start_from: the run is at step {self.step}; a warm start begins a fresh run")
        widened = warm_start(self.model, state_dict)
        self.ema.load_state_dict(self.model.state_dict())
        return widened

    def save_checkpoint(self) -> Path:
        return self.ckpt.save(self.state_dict())

    def resume(self) -> bool:
        """Load the newest good checkpoint of ``out``; False when there is none."""
        found = self.ckpt.load_latest()
        if found is None:
            return False
        self.load_state_dict(found[0])
        return True

    def export(self, path: str | os.PathLike | None = None) -> Path:
        """Write the EMA model (default ``out/ema.pt``) for :func:`load_model`."""
        return export_model(self.ema, path or self.out / "ema.pt", {**self.meta, "step": self.step})

    # ---- loop ------------------------------------------------------------------------------------
    def train(self, iterations: int, max_seconds: float | None = None, should_stop=None) -> dict:
        """Run until ``step == iterations`` (or ``max_seconds`` pass, or ``should_stop()`` turns
        true after an iteration), checkpointing on the way and at the end.
        Returns ``{"step", "loss", "seconds"}``."""
        last_ckpt = t_log = time.monotonic()
        start = time.monotonic()
        losses: list[float] = []
        step_log = self.step
        loss = float("nan")
        while self.step < iterations:
            loss = self.train_step()
            if not math.isfinite(loss):
                raise FloatingPointError(f"DSM loss became {loss} at step {self.step}")
            losses.append(loss)
            now = time.monotonic()
            if self.log_every and self.step % self.log_every == 0:
                rate = (self.step - step_log) / max(now - t_log, 1e-9)
                print(f"step {self.step} loss {sum(losses) / len(losses):.5f} it/s {rate:.3f} "
                      f"elapsed_min {(now - start) / 60:.1f}", file=self.log, flush=True)
                losses, t_log, step_log = [], now, self.step
            if self.export_every and self.step % self.export_every == 0:
                self.export()
            if now - last_ckpt >= self.checkpoint_seconds:
                self.save_checkpoint()
                self.export()
                print(f"checkpoint step {self.step}", file=self.log, flush=True)
                last_ckpt = time.monotonic()
            if (max_seconds is not None and now - start >= max_seconds) or (should_stop and should_stop()):
                break
        self.save_checkpoint()
        self.export()
        elapsed = time.monotonic() - start
        return {"step": self.step, "loss": loss, "seconds": elapsed}
