"""Step-size and noise schedules given as objects, and TorchEBM's noise convention.

:func:`ebm_fast.sample` takes ``step_size`` and ``noise`` as a number or as K numbers (a sequence or
a 1-D tensor, entry ``i`` used by update ``i = 0..K-1``). Research code also writes schedules as

* a callable of the update index, ``i -> value`` (``lambda i: 0.01 * 0.99 ** i``);
* a scheduler object with ``get_value()`` and ``step()`` (and usually ``reset()``), the interface of
  TorchEBM's ``BaseScheduler`` subclasses: its sampler reads ``get_value()`` for update ``i`` and
  calls ``step()`` after it, having called ``reset()`` first (``reset_schedulers=True``, its default).

:func:`schedule_values` turns either into the K numbers. A scheduler object is read from a deep copy,
reset first when it has ``reset()``: the caller's object is not advanced, so passing it twice gives
the same schedule twice.

TorchEBM's ``LangevinDynamics(step_size=eta, noise_scale=s)`` adds ``s * sqrt(2 * eta) * randn``
per step (its Euler-Maruyama integrator with diffusion ``D = s**2``); ebm_fast's ``noise`` is the
standard deviation of the added noise itself. :func:`noise_from_scale` converts, entry by entry for
schedules; ``ebm_fast.langevin(..., noise_scale=s)`` does it for you.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Sequence

from torch import Tensor

__all__ = ["schedule_values", "schedule_list", "is_scheduler", "noise_from_scale"]


def is_scheduler(v: Any) -> bool:
    """Whether ``v`` has the scheduler interface: callable ``get_value()`` and ``step()``."""
    return callable(getattr(v, "get_value", None)) and callable(getattr(v, "step", None))


def _number(name: str, i: int, t: Any) -> float:
    if isinstance(t, Tensor) and t.numel() == 1:
        t = t.item()
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"{name} schedule gave {type(t).__name__} for update {i}, expected a number")
    return float(t)


def schedule_values(name: str, v: Any, steps: int) -> list[float]:
    """The K values of a callable ``i -> value`` or a scheduler object (see the module docstring)."""
    if is_scheduler(v):
        sched = copy.deepcopy(v)
        if callable(getattr(sched, "reset", None)):
            sched.reset()
        vals = []
        for i in range(steps):
            vals.append(_number(name, i, sched.get_value()))
            sched.step()
        return vals
    if callable(v):
        return [_number(name, i, v(i)) for i in range(steps)]
    raise TypeError(f"{name} must be a number, a schedule of {steps} numbers, a callable of the update "
                    f"index or a scheduler object (get_value/step), got {type(v).__name__}")


def noise_from_scale(noise_scale: Any, step_size: Any, steps: int) -> float | list[float]:
    """ebm_fast's ``noise`` for TorchEBM's ``noise_scale``: ``noise_scale * sqrt(2 * step_size)``.

    Each argument may be a number, K numbers, a callable of the update index or a scheduler object;
    the result is a number when both are numbers, else K numbers.
    """
    if _is_number(noise_scale) and _is_number(step_size):
        return float(noise_scale) * math.sqrt(2.0 * max(float(step_size), 0.0))
    s = schedule_list("noise_scale", noise_scale, steps)
    eta = schedule_list("step_size", step_size, steps)
    return [si * math.sqrt(2.0 * max(ei, 0.0)) for si, ei in zip(s, eta)]


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def schedule_list(name: str, v: Any, steps: int) -> list[float]:
    """K host floats from a number, a sequence or a 1-D tensor of K numbers, a callable of the update
    index or a scheduler object (their values are not range-checked here)."""
    if _is_number(v):
        return [float(v)] * steps
    if isinstance(v, Tensor):
        v = v.detach().cpu().tolist()
    if isinstance(v, Sequence) and not isinstance(v, str):
        if len(v) != steps:
            raise ValueError(f"{name} schedule must have one entry per step ({steps}), got {len(v)}")
        return [_number(name, i, t) for i, t in enumerate(v)]
    return schedule_values(name, v, steps)
