"""The unadjusted Langevin chain: its state, its in-place step and its driver.

* :class:`Chain` -- what carries between steps: the state ``x`` (updated in place), the RNG state
  ``(seed, step)``, the step-size/noise schedule, the non-finite flag and the composed energy;
* :meth:`Chain.step` -- one update in place: the leaves' energies and input-gradients
  (:class:`~ebm_fast.leaf_eval.LeafEvaluator`), then the one fused step
  (:func:`ebm_fast.ops.prepare_step`, validated once per chain);
* :func:`drive` -- a Python loop, or replays of a captured CUDA graph of ``S`` steps
  (:mod:`ebm_fast.graphs`).

:func:`ebm_fast.sample` and :func:`ebm_fast.langevin` (:mod:`ebm_fast.sampler`) check their
arguments, build a chain and drive it; the step indices and update orders are described there.

Scalars live on the host for CPU chains (Python numbers: nothing to synchronise) and in device memory
elsewhere (``[2, S]`` window of the schedule plus an int64 counter that each step advances on the
device), so a CUDA chain never waits on the host and its steps can be captured in a graph.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from . import ops
from .compose import Concept
from .leaf_eval import LeafEvaluator
from .rng import normal_noise, seed_to_int64
from .schedules import schedule_list

__all__ = ["Chain", "drive", "schedule", "schedule_by_step", "nonfinite_message"]


def schedule(name: str, v: Any, steps: int, device: torch.device) -> list[float] | Tensor:
    """A step-size or noise schedule: K host floats, or a float32 ``[K]`` tensor on a non-CPU device."""
    if isinstance(v, Tensor):
        if v.dim() != 1 or v.shape[0] != steps:
            raise ValueError(f"{name} as a tensor must be a schedule of shape ({steps},) (one entry per step), "
                             f"got shape {tuple(v.shape)}")
        if not v.is_floating_point():
            raise TypeError(f"{name} schedule must be floating point, got {v.dtype}")
        if v.device.type != "cpu" and device.type != "cpu":
            # stays on the device: its values are not checked here (that would sync); a non-finite
            # entry shows up in the non-finite flag
            return v.detach().to(device=device, dtype=torch.float32)
    # numbers, sequences, host tensors, callables of the update index, scheduler objects
    return [ops.check_scale(name, t) for t in schedule_list(name, v, steps)]  # the rule of ops.langevin_step


def schedule_by_step(eta, sigma, order: str, device: torch.device, host: bool):
    """Schedules indexed by the RNG step ``s = 0..K`` (see the module docstring).

    Host: two lists of K + 1 floats. Device: one float32 ``[2, K + 1]`` tensor (row 0: step size,
    row 1: noise).
    """
    if host:
        eta_s = [0.0] + list(eta)
        sigma_s = ([0.0] + list(sigma)) if order == "ula" else (list(sigma) + [0.0])
        return eta_s, sigma_s
    rows = []
    for v in (eta, sigma):
        rows.append(v if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float32).to(device))
    zero = torch.zeros(1, dtype=torch.float32, device=device)
    eta_t = torch.cat([zero, rows[0]])
    sigma_t = torch.cat([zero, rows[1]]) if order == "ula" else torch.cat([rows[1], zero])
    return torch.stack([eta_t, sigma_t])


# ---- the chain --------------------------------------------------------------------------------
class Chain:
    """A chain's state and its in-place update (see the module docstring for the step indices).

    Args:
        evaluator: the leaves' energies and gradients at ``x``.
        stepper: the fused step, validated for this chain.
        shape: the state's shape ``[B, ...]``; dtype: the state's dtype (fp32/fp16/bf16).
        device_scalars: keep step size, noise, seed and step in device memory (graph-capturable).
        window: ``S``, the steps one chunk (one graph replay) covers.
        order: ``"ula"`` or ``"noise_first"``.
    """

    def __init__(self, evaluator: LeafEvaluator, stepper: ops.PreparedStep, shape: Sequence[int],
                 dtype: torch.dtype, device: torch.device, *, device_scalars: bool, window: int, order: str):
        self.evaluator, self.stepper = evaluator, stepper
        self.device_scalars, self.window, self.order = device_scalars, window, order
        self.x = torch.empty(tuple(shape), dtype=dtype, device=device)
        self.batch = self.x.shape[0]
        self.flat = self.x.view(self.batch, -1)
        self.num_leaves = evaluator.num_leaves
        self.energy = torch.zeros(self.batch, dtype=torch.float32, device=device)
        self.flag = ops.new_flag(device)
        # host chains read the flag every step through a numpy view: 1 us against 5 us for flag.any()
        self._flag_host = self.flag.numpy() if device.type == "cpu" else None
        self.reinit_init: Callable[[int], Tensor] | None = None
        self.on_grads: Callable[[Tensor, Tensor], None] | None = None  # diagnostics: sees (E, G) per step
        if device_scalars:
            self.win = torch.zeros(2, window, dtype=torch.float32, device=device)
            self.now = torch.zeros(2, 1, dtype=torch.float32, device=device)
            self.eta_now, self.sigma_now = self.now[0, 0], self.now[1, 0]
            self.ctr = torch.zeros(2, dtype=torch.int64, device=device)  # [RNG step, window index]
            self.step_now, self.win_idx = self.ctr[0], self.ctr[1:2]
            self.seed_t = torch.zeros((), dtype=torch.int64, device=device)
            self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
            self.reinit_count = torch.zeros((), dtype=torch.int64, device=device)
        self.seed = 0
        self.s = 1
        self.sched: Any = None
        self.first_bad_host = -1
        self.reinit_host = 0

    # -- per call ---------------------------------------------------------------------------------
    def load(self, x0: Tensor, seed: int, sched) -> None:
        """Start a chain at ``x0`` (plus ``sigma_0 xi(seed, 0)`` for ``noise_first``)."""
        self.seed, self.sched, self.s = seed, sched, 1
        self.flag.zero_()
        if self.order == "noise_first":
            sigma0 = sched[1][0] if not self.device_scalars else sched[1, 0]
            if isinstance(sigma0, float) and sigma0 == 0.0:
                self.x.copy_(x0)
            else:
                xi = normal_noise(seed, 0, x0.numel(), device=self.x.device).view(self.x.shape)
                self.x.copy_(x0.float() + sigma0 * xi)
        else:
            self.x.copy_(x0)
        if self.device_scalars:
            self.seed_t.fill_(seed_to_int64(seed))
            self.first_bad.fill_(-1)
            self.reinit_count.zero_()
        self.first_bad_host, self.reinit_host = -1, 0

    # -- one update -------------------------------------------------------------------------------
    def step(self) -> None:
        """One update of the whole batch, in place."""
        if self.device_scalars:
            torch.index_select(self.win, 1, self.win_idx, out=self.now)
            e, g = self.evaluator(self.x)
            if self.on_grads is not None:
                self.on_grads(e, g)
            self.stepper(self.flat, g.view(self.num_leaves, self.batch, -1), e, step_size=self.eta_now,
                         noise=self.sigma_now, seed=self.seed_t, step=self.step_now, out=self.flat,
                         energy_out=self.energy, flag=self.flag)
            self.ctr.add_(1)
            return
        s = self.s
        e, g = self.evaluator(self.x)
        if self.on_grads is not None:
            self.on_grads(e, g)
        self.stepper(self.flat, g.view(self.num_leaves, self.batch, -1), e, step_size=self.sched[0][s],
                     noise=self.sched[1][s], seed=self.seed, step=s, out=self.flat, energy_out=self.energy,
                     flag=self.flag)
        self.s = s + 1

    def run_steps(self, n: int) -> None:
        for _ in range(n):
            self.step()

    def warmup_step(self) -> None:
        """A step at window index 0 (graph warm-up: never reads past the window)."""
        self.ctr[1].zero_()
        self.step()

    # -- chunks (device scalars) ----------------------------------------------------------------
    def begin_chunk(self, s0: int, n: int) -> None:
        """Point the window at updates ``s0 .. s0 + n - 1`` (device copies only, no host sync)."""
        self.win[:, :n].copy_(self.sched[:, s0:s0 + n])
        self.ctr[0].fill_(s0)
        self.ctr[1].fill_(0)

    def end_chunk(self, s0: int, reinit: bool) -> None:
        """Record the first chunk that met a non-finite value; re-initialise non-finite chains."""
        hit = (self.flag != 0).any()
        self.first_bad.masked_fill_(hit & (self.first_bad < 0), s0)
        if reinit:
            bad = self._bad_rows()
            fresh = self.reinit_init(self.batch).view(self.batch, -1)
            self.flat.copy_(torch.where(bad.unsqueeze(1), fresh, self.flat))
            self.reinit_count.add_(bad.sum())

    def _bad_rows(self) -> Tensor:
        """bool ``[B]``: chains whose state or last composed energy is non-finite."""
        return ~torch.isfinite(self.flat).all(dim=1) | ~torch.isfinite(self.energy)

    # -- per step checks (host scalars: CPU memory, reading it costs nothing) -----------------------
    def check_host(self, s: int, reinit: bool) -> bool:
        """After update ``s``: True if the flag is set (first time recorded); re-initialises bad rows."""
        if not self._flag_host.any():
            return False
        if self.first_bad_host < 0:
            self.first_bad_host = s
        if reinit:
            bad = self._bad_rows()
            nbad = int(bad.sum())
            if nbad:
                self.flat[bad] = self.reinit_init(nbad).reshape(nbad, -1).to(self.flat.dtype)
                self.reinit_host += nbad
        return True

    def status(self) -> tuple[int, bool, int, int]:
        """``(leaf bits, state non-finite, first bad step or -1, re-initialised rows)``: one read."""
        if self.device_scalars:
            vals = torch.cat([self.flag.long(), self.first_bad.view(1), self.reinit_count.view(1)]).tolist()
            bits, state, first, count = vals
        else:
            bits, state = self.flag.tolist()
            first, count = self.first_bad_host, self.reinit_host
        return int(bits) & 0xFFFFFFFF, bool(state), int(first), int(count)


# ---- the driver -------------------------------------------------------------------------------
def drive(chain: Chain, steps: int, *, replays: dict[int, Callable[[], None]] | None, reinit: bool,
           raise_at: Callable[[int], None] | None, record: Callable[[int], None] | None) -> None:
    """Run updates 1..K: host scalars step by step; device scalars in chunks of S (graph replays)."""
    if not chain.device_scalars:
        for s in range(1, steps + 1):
            chain.step()
            if chain.check_host(s, reinit) and raise_at is not None:
                raise_at(s)
            if record is not None:
                record(s)
        return
    s0 = 1
    while s0 <= steps:
        n = min(chain.window, steps - s0 + 1)
        chain.begin_chunk(s0, n)
        replay = replays.get(n) if replays else None
        if replay is not None:
            replay()
        else:
            for j in range(n):
                chain.step()
                if record is not None:
                    record(s0 + j)
        chain.end_chunk(s0, reinit)
        s0 += n


def nonfinite_message(leaves: Sequence[Concept], bits: int, state: bool, first: int, last: int, steps: int,
                       seed: int) -> str:
    names = [f"{leaves[i]!r} (leaf {i})" for i in range(len(leaves)) if bits >> i & 1]
    where = f"step {first}" if first == last else f"steps {first}-{last}"
    if names:
        what = "non-finite energy or gradient in " + ", ".join(names)
    else:
        what = "the chain's state became non-finite (energies and gradients were finite)"
    return (f"{what} during {where} of {steps} (seed {seed}); lower step_size, set grad_clip, or pass "
            "on_nonfinite='reinit' to re-initialise the affected chains")
