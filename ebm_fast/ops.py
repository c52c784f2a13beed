"""``langevin_step``: the one place that validates inputs and chooses a backend for the fused step.

Backends (all compute the step of docs/contract.md §3 with the noise of §4, within 1e-5 relative error in fp32):

========== ===================================== ==========================================
name       where                                 implementation
========== ===================================== ==========================================
``torch``  any device                            :mod:`ebm_fast.step_reference` (the reference)
``cpu``    CPU tensors                           C++/OpenMP in ``csrc/`` (``ebm_fast._C``)
``cuda``   CUDA tensors                          CUDA C++ in ``csrc/`` (``ebm_fast._C``)
``triton`` CUDA tensors (CPU under the            ``kernels/langevin_step.py`` (``ebm_fast.kernels``)
           interpreter, ``TRITON_INTERPRET=1``)
========== ===================================== ==========================================

``backend="auto"`` picks Triton, then the CUDA extension, then torch for CUDA tensors, and the C++
kernel, then torch for CPU tensors; a backend named explicitly that is not available raises with the
command that builds it.

How a scalar such as ``step_size`` reaches a kernel (``noise``, ``seed`` and ``step`` travel alongside):

* :func:`ebm_fast.sample` checks each entry with :func:`check_scale` (the rule :func:`langevin_step`
  applies too) and keeps the schedule on the host or on the device; ``Chain.step``
  (:mod:`ebm_fast.sampler`) calls the chain's :class:`PreparedStep` with ``step_size=`` a float or a
  0-dim float32 tensor (a CUDA graph's input).
* :class:`PreparedStep` passes it by keyword to the backend's launcher, all with the signature of
  :mod:`ebm_fast.step_reference`: ``langevin_step_torch`` (the reference),
  :func:`ebm_fast._native.step_cpu` / ``step_cuda`` and ``ebm_fast.kernels.langevin_step.langevin_step_triton``.
* ``_native.step_args`` stores it in the field ``StepArgs.step_size`` (a tensor: its address in
  ``StepArgs.step_size_ptr``) of the struct declared in ``csrc/langevin_step.h``; the C++ kernel reads it
  as ``eta`` in ``langevin_step_cpu``, the CUDA kernel as ``eta`` in ``langevin_step_kernel``. The Triton
  launcher passes it as the kernel argument ``step_size`` (read with ``_load_scalar``).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Callable

import torch
from torch import Tensor

from . import _native
from .compose import Expr
from .step_reference import ORDERS, langevin_step_torch

__all__ = ["langevin_step", "prepare_step", "PreparedStep", "available_backends", "resolve_backend", "BACKENDS",
           "triton_unusable_reason", "new_flag", "check_scale", "check_step", "check_seed", "prepare_mcmc"]

BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")
STATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@functools.lru_cache(maxsize=None)
def triton_unusable_reason(device_type: str) -> str | None:
    """Why the Triton backend cannot run on tensors of ``device_type`` (None when it can)."""
    if device_type not in ("cpu", "cuda"):
        return f"Triton runs on CUDA tensors (or CPU tensors through its interpreter), not {device_type}"
    if device_type == "cpu":
        import os

        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            return ("on CPU tensors Triton runs only through its interpreter: set TRITON_INTERPRET=1 "
                    "before triton is first imported")
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton does not import ({exc}): pip install triton"
    try:
        from .kernels import langevin_step as _k  # noqa: F401
    except ImportError as exc:
        return (f"ebm_fast.kernels does not import ({exc}); a source checkout has it only once installed "
                "(pip install -e . maps kernels/ to ebm_fast.kernels)")
    return None


def _triton_usable_on(device_type: str) -> bool:
    return triton_unusable_reason(device_type) is None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run a step on tensors of ``device``."""
    dev = torch.device(device)
    out = ["torch"]
    if dev.type == "cpu" and _native.load(warn=False) is not None:
        out.append("cpu")
    if dev.type == "cuda" and _native.cuda_available():
        out.append("cuda")
    if _triton_usable_on(dev.type):
        out.append("triton")
    return out


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete backend for ``device``; check an explicit one exists."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            if _triton_usable_on("cuda"):
                return "triton"
            return "cuda" if _native.cuda_available() else "torch"
        if device.type == "cpu":
            return "cpu" if _native.load() is not None else "torch"
        return "torch"
    if backend == "torch":
        return backend
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
        if _native.load(warn=False) is None:
            raise _native.missing_error("cpu")
    elif backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
        if not _native.cuda_available():
            raise _native.missing_error("cuda")
    elif backend == "triton":
        if (why := triton_unusable_reason(device.type)) is not None:
            raise RuntimeError(f"backend='triton' is not usable on {device.type} tensors: {why}")
    return backend


def _step_fn(backend: str) -> Callable[..., None]:
    if backend == "torch":
        return langevin_step_torch
    if backend == "cpu":
        return _native.step_cpu
    if backend == "cuda":
        return _native.step_cuda
    from .kernels.langevin_step import langevin_step_triton

    return langevin_step_triton


def new_flag(device: torch.device | str) -> Tensor:
    """A zeroed non-finite flag ``int32 [2]`` (see :mod:`ebm_fast.step_reference`)."""
    return torch.zeros(2, dtype=torch.int32, device=device)


# ---- validation -----------------------------------------------------------------------------------
def _stack(name: str, v, device) -> Tensor:
    if isinstance(v, Tensor):
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(t, Tensor) for t in v):
        return torch.stack(list(v))
    raise TypeError(f"{name} must be a Tensor or a non-empty sequence of Tensors, got {type(v).__name__}")


def check_scale(name: str, v) -> float:
    """The rule for ``step_size`` and ``noise`` given as numbers (every entry of a schedule too): a
    finite real number >= 0, returned as a float. A negative step size climbs the energy and a
    negative noise is the same chain as its absolute value, so both are refused rather than run.
    Used by :func:`langevin_step` and by :func:`ebm_fast.sample`."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    v = float(v)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {v}")
    return v


def check_step(v) -> int:
    """The rule for the RNG step index given as a number: an int in ``[0, 2**63)`` (docs/contract.md §4's counter)."""
    return _check_int("step", v, 2**63, ">= 0 and < 2**63")


def check_seed(v) -> int:
    """The rule for a seed given as a number: an int in ``[0, 2**64)`` (the Philox key's 64 bits).

    Negative seeds are refused: ``-1`` would otherwise be the key ``2**64 - 1`` without a word. A
    seed given as an int64 tensor holds the key's 64 bits as they are (keys >= 2**63 read as negative
    int64, :func:`ebm_fast.rng.seed_to_int64`). Used by :func:`langevin_step` and :func:`ebm_fast.sample`.
    """
    return _check_int("seed", v, 2**64, "in [0, 2**64) (64 bits)")


def _check_int(name: str, v, end: int, rule: str) -> int:
    """``v`` as an int in ``[0, end)``; else one line naming ``name`` and the ``rule``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int or an int64 tensor, got {type(v).__name__}")
    v = int(v)
    if not 0 <= v < end:
        raise ValueError(f"{name} must be {rule}, got {v}")
    return v


def _scalar_arg(name: str, v, device: torch.device, dtype: torch.dtype, check: Callable):
    """A Python number passed through ``check``, or a 0-dim / 1-element tensor on ``device`` (a
    schedule entry or RNG state read by the kernel; its value is not checked here, which would sync)."""
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be a number or a 1-element tensor, got shape {tuple(v.shape)}")
        if v.device != device:
            raise ValueError(f"{name} is on {v.device} but x is on {device}")
        if v.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype} when given as a tensor, got {v.dtype}")
        return v.reshape(()) if v.is_contiguous() else v.reshape(()).clone()
    return check(v)


def _check_fixed(order: str, grad_clip, clamp) -> tuple[float | None, tuple[float, float] | None]:
    """Check the arguments that stay fixed over a chain; return ``(grad_clip, clamp)`` as floats."""
    if order not in ORDERS:
        raise ValueError(f"order must be 'ula' or 'noise_first', got {order!r}")
    if grad_clip is not None:
        grad_clip = float(grad_clip)
        if not grad_clip > 0 or not math.isfinite(grad_clip):
            raise ValueError(f"grad_clip must be a finite positive number or None, got {grad_clip}")
    if clamp is not None:
        if len(clamp) != 2 or not float(clamp[0]) < float(clamp[1]):
            raise ValueError(f"clamp must be (lo, hi) with lo < hi, got {clamp}")
        clamp = (float(clamp[0]), float(clamp[1]))
    return grad_clip, clamp


class PreparedStep:
    """The fused step for one chain, validated once by :func:`prepare_step`; calls go to the backend.

    ``step(x, grads, energies, *, step_size, noise, seed, step, out, energy_out, flag)`` takes the
    backends' flattened layout (see :mod:`ebm_fast.step_reference`): ``x``/``out`` ``[B, D]`` and
    ``grads`` ``[N, B, D]`` in the state dtype with unit inner stride, ``energies`` float32 ``[N, B]``
    contiguous, ``energy_out`` float32 ``[B]``, ``flag`` int32 ``[2]``; scalars are Python numbers or
    0-dim tensors on x's device (float32 for ``step_size``/``noise``, int64 for ``seed``/``step``).
    Nothing is checked per call: this is the chain's hot loop.
    """

    __slots__ = ("backend", "order", "grad_clip", "clamp", "_fn", "_table", "_order_code")

    def __init__(self, backend: str, fn: Callable[..., None], table: Tensor, order: str, grad_clip, clamp):
        self.backend, self.order, self.grad_clip, self.clamp = backend, order, grad_clip, clamp
        self._fn, self._table, self._order_code = fn, table, ORDERS[order]

    def __call__(self, x: Tensor, grads: Tensor, energies: Tensor, *, step_size, noise, seed, step,
                 out: Tensor, energy_out: Tensor, flag: Tensor) -> None:
        with torch.no_grad():
            self._fn(x, grads, energies, self._table, step_size=step_size, noise=noise, seed=seed, step=step,
                     order=self._order_code, grad_clip=self.grad_clip, clamp=self.clamp, out=out,
                     energy_out=energy_out, flag=flag)


def prepare_step(expr: Expr, device: torch.device | str, *, order: str = "ula", grad_clip: float | None = None,
                 clamp: tuple[float, float] | None = None, backend: str = "auto") -> PreparedStep:
    """Validate once what stays fixed over a chain and return the step as a :class:`PreparedStep`.

    Used by the samplers (:mod:`ebm_fast.sampler`) so the K-step loop does not re-validate per step;
    the backend is chosen here, as in :func:`langevin_step`.
    """
    if not isinstance(expr, Expr):
        raise TypeError(f"expr must be an ebm_fast expression, got {type(expr).__name__}")
    device = torch.device(device)
    program = expr.program
    program.check_integrable()
    grad_clip, clamp = _check_fixed(order, grad_clip, clamp)
    name = resolve_backend(backend, device)
    # The torch backend reads the table on the host (Program.weights_and_energy); handing it the CPU
    # copy avoids a device-to-host sync per step, which would also break CUDA-graph capture.
    table = program.table if name == "torch" else program.on(device)
    return PreparedStep(name, _step_fn(name), table, order, grad_clip, clamp)


def prepare_mcmc(expr: Expr, device: torch.device | str, *, backend: str = "auto") -> tuple[str, Callable, Callable,
                                                                                          Tensor]:
    """The fused MALA/HMC operations of one backend: ``(backend, move, accept, table)``.

    ``move`` and ``accept`` have the signatures of :mod:`ebm_fast.mcmc_reference`; the chains of
    :mod:`ebm_fast.mcmc` validate their tensors once. ``auto`` as for :func:`prepare_step`, except
    that an extension built without the MALA/HMC kernels falls back to torch (named explicitly, it raises).
    """
    if not isinstance(expr, Expr):
        raise TypeError(f"expr must be an ebm_fast expression, got {type(expr).__name__}")
    device = torch.device(device)
    program = expr.program
    program.check_integrable()
    name = resolve_backend(backend, device)
    if name in ("cpu", "cuda") and not _native.has_mcmc():
        if backend != "auto":
            raise RuntimeError(f"backend={name!r} needs an ebm_fast._C built with the MALA/HMC kernels; rebuild "
                               f"it with: {_native.BUILD_HINT}")
        name = "torch"
    table = program.table if name == "torch" else program.on(device)
    if name == "torch":
        from .mcmc_reference import mcmc_accept_torch, mcmc_move_torch

        return name, mcmc_move_torch, mcmc_accept_torch, table
    if name == "cpu":
        return name, _native.mcmc_move_cpu, _native.mcmc_accept_cpu, table
    if name == "cuda":
        return name, _native.mcmc_move_cuda, _native.mcmc_accept_cuda, table
    from .kernels.mcmc_step import mcmc_accept_triton, mcmc_move_triton

    return name, mcmc_move_triton, mcmc_accept_triton, table


def langevin_step(x: Tensor, grads, energies, expr: Expr, *, step_size, noise, seed: int | Tensor,
                  step: int | Tensor, order: str = "ula", grad_clip: float | None = None,
                  clamp: tuple[float, float] | None = None, backend: str = "auto",
                  out: Tensor | None = None, flag: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One fused Langevin step on a composed expression (docs/contract.md §3).

    Args:
        x: state ``[B, ...]`` (``[B, D]`` or images ``[B, C, H, W]``), float32/float16/bfloat16/float64;
            arithmetic is fp32.
        grads: leaf input-gradients ``[N, B, ...]`` (or a sequence of N ``[B, ...]``), dtype of x;
            ``grads[i]`` belongs to ``expr.leaves()[i]``.
        energies: leaf energies ``[N, B]`` (or a sequence of N ``[B]``), any float dtype.
        expr: the composed expression (its compiled program gives the per-sample weights).
        step_size: ``eta``: a finite number >= 0 (:func:`check_scale`), or a 1-element float32 tensor
            on x's device that the kernel reads (a schedule entry; its value is not checked).
        noise: ``sigma``; likewise.
        seed: the Philox key of docs/contract.md §4: an int in ``[0, 2**64)`` (:func:`check_seed`; negative seeds
            are refused), or a 1-element int64 tensor on x's device holding the key's 64 bits.
        step: the RNG step index of docs/contract.md §4: an int >= 0 (:func:`check_step`), or a 1-element int64
            tensor on x's device.
        order: ``"ula"`` (``x' = clamp(x - eta g + sigma xi)``) or ``"noise_first"``
            (``x' = clamp(x - eta g) + sigma xi``, the released code's order).
        grad_clip: if given, ``g`` is clamped element-wise to ``[-grad_clip, grad_clip]``.
        clamp: ``(lo, hi)`` or None.
        backend: ``"auto"``, ``"torch"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.
        out: where to write ``x'`` (``out=x`` updates in place); default a new tensor.
        flag: an ``int32 [2]`` tensor from :func:`new_flag` that records non-finite values
            (bit i of ``flag[0]``: leaf i; ``flag[1]``: the new state). Never read here (no sync).

    Returns:
        ``(x_new, energy)``: the new state (x's shape and dtype) and the composed energy at ``x``,
        float32 ``[B]``.
    """
    if not isinstance(expr, Expr):
        raise TypeError(f"expr must be an ebm_fast expression, got {type(expr).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dtype not in STATE_DTYPES:
        raise TypeError(f"x must have a floating dtype in {STATE_DTYPES}, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape [B, D] or [B, ...], got {tuple(x.shape)}")
    device = x.device
    n = expr.program.num_leaves
    grads = _stack("grads", grads, device)
    energies = _stack("energies", energies, device)
    batch = x.shape[0]
    if grads.dim() < 1 or grads.shape[0] != n:
        raise ValueError(
            f"grads must have a leading size of {n} (len(expr.leaves())), got shape {tuple(grads.shape)}")
    if tuple(grads.shape[1:]) != tuple(x.shape):
        raise ValueError(f"grads must have shape [N, *x.shape] = {[n, *x.shape]}, got {list(grads.shape)}")
    if tuple(energies.shape) != (n, batch):
        if energies.dim() == 3 and energies.shape[2] == 1 and tuple(energies.shape[:2]) == (n, batch):
            energies = energies[..., 0]
        else:
            raise ValueError(f"energies must have shape [N, B] = {[n, batch]}, got {list(energies.shape)}")
    for name, t in (("grads", grads), ("energies", energies)):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but x is on {device}")
    if grads.dtype != x.dtype:
        raise TypeError(f"grads dtype {grads.dtype} does not match x dtype {x.dtype}")
    if not energies.is_floating_point():
        raise TypeError(f"energies must be floating point, got {energies.dtype}")
    prepared = prepare_step(expr, device, order=order, grad_clip=grad_clip, clamp=clamp, backend=backend)
    step_size = _scalar_arg("step_size", step_size, device, torch.float32,
                            functools.partial(check_scale, "step_size"))
    noise = _scalar_arg("noise", noise, device, torch.float32, functools.partial(check_scale, "noise"))
    seed = _scalar_arg("seed", seed, device, torch.int64, check_seed)
    step = _scalar_arg("step", step, device, torch.int64, check_step)
    if out is not None:
        if out.shape != x.shape or out.dtype != x.dtype or out.device != device:
            raise ValueError(
                f"out must match x (shape {tuple(x.shape)}, {x.dtype}, {device}), got "
                f"({tuple(out.shape)}, {out.dtype}, {out.device})")
    if flag is None:
        flag = new_flag(device)
    elif flag.shape != (2,) or flag.dtype != torch.int32 or flag.device != device:
        raise ValueError(f"flag must be an int32 tensor of shape (2,) on {device}, got "
                         f"{flag.dtype} {tuple(flag.shape)} on {flag.device}")

    # Flatten to the kernels' layout: rows with unit inner stride; fp64 runs as fp32.
    work_dtype = torch.float32 if x.dtype == torch.float64 else x.dtype
    x2 = _flatten(x.detach().to(work_dtype), 1)
    g3 = _flatten(grads.detach().to(work_dtype), 2)
    e2 = energies.detach().to(torch.float32).contiguous()
    result = out if out is not None else torch.empty_like(x)
    out2 = _flat_view(result, 1) if result.dtype == work_dtype else None
    direct = out2 is not None
    if not direct:
        out2 = torch.empty_like(x2)
    energy_out = torch.empty(batch, dtype=torch.float32, device=device)
    prepared(x2, g3, e2, step_size=step_size, noise=noise, seed=seed, step=step, out=out2,
             energy_out=energy_out, flag=flag)
    if not direct:
        with torch.no_grad():
            result.copy_(out2.view(x.shape))
    return result, energy_out


def _flat_view(t: Tensor, lead: int) -> Tensor | None:
    """``t`` viewed as ``[*t.shape[:lead], rest]`` with unit inner stride, or None if no such view."""
    try:
        f = t.view(*t.shape[:lead], math.prod(t.shape[lead:]))
    except RuntimeError:
        return None
    return f if f.shape[-1] <= 1 or f.stride(-1) == 1 else None


def _flatten(t: Tensor, lead: int) -> Tensor:
    """``t`` as ``[*t.shape[:lead], rest]`` with unit inner stride (a view when possible)."""
    f = _flat_view(t, lead)
    return f if f is not None else t.contiguous().view(*t.shape[:lead], math.prod(t.shape[lead:]))
