"""The compiled extension ``ebm_fast._C``: lazy import and the ``cpu`` / ``cuda`` step launchers.

The extension does not link libtorch: tensors cross as data pointers, sizes, strides (in elements)
and dtype codes, scalars as ``(pointer, value)`` pairs -- a pointer of 0 means "use the value", a
non-zero one points at a device scalar (a schedule entry or the RNG state, so CUDA-graph replays
read fresh values) -- and the CUDA stream as an integer. All checking happens in
:mod:`ebm_fast.ops` before these are called.

``_C.langevin_step_cpu`` and ``_C.langevin_step_cuda`` take, in order::

    x_ptr, out_ptr, dtype_code, B, D, x_stride, out_stride,
    g_ptr, g_stride_n, g_stride_b,
    e_ptr,                                   # float32 [N, B] contiguous
    table_ptr, M, N,                         # float32 [M, 5] program table
    step_size_ptr, step_size, noise_ptr, noise,
    seed_ptr, seed, step_ptr, step,          # seed: uint64 value; seed_ptr/step_ptr: int64 scalars
    order, has_clip, grad_clip, has_clamp, lo, hi,
    energy_out_ptr, flag_ptr                 # float32 [B], int32 [2]
    [, stream]                               # cuda only: cudaStream_t as an integer
"""

from __future__ import annotations

import importlib
import warnings

import torch
from torch import Tensor

__all__ = ["load", "available", "cuda_available", "DTYPE_CODES", "step_cpu", "step_cuda", "BUILD_HINT"]

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
BUILD_HINT = "pip install --no-build-isolation .   (or: pip install .) from the ebm_fast source tree"

_module = None
_tried = False
_error: str | None = None


def load(warn: bool = True):
    """The ``ebm_fast._C`` module, or None (warning once, with the command that builds it)."""
    global _module, _tried, _error
    if not _tried:
        _tried = True
        try:
            _module = importlib.import_module("ebm_fast._C")
        except ImportError as exc:  # the extension was not built: torch backend only
            _error = str(exc)
            if warn:
                warnings.warn(
                    f"ebm_fast._C is not built ({exc}); the fused step runs on the slower torch "
                    f"backend. Build it with: {BUILD_HINT}",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _module


def available() -> bool:
    return load() is not None


def cuda_available() -> bool:
    m = load()
    return m is not None and bool(getattr(m, "has_cuda", False))


def missing_error(backend: str) -> RuntimeError:
    load(warn=False)
    if backend == "cuda" and _module is not None:
        why = "ebm_fast._C was built without CUDA (nvcc was not found or EBM_FAST_NO_CUDA was set)"
    else:
        why = f"ebm_fast._C could not be imported ({_error})"
    return RuntimeError(f"backend={backend!r} needs the compiled extension: {why}. Build it with: {BUILD_HINT}")


def _scalar(v) -> tuple[int, float | int]:
    """``(pointer, value)``: a tensor passes by pointer, a Python number by value."""
    if isinstance(v, Tensor):
        return v.data_ptr(), 0
    return 0, v


def _args(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, *, step_size, noise, seed, step,
          order: int, grad_clip, clamp, out: Tensor, energy_out: Tensor, flag: Tensor) -> list:
    n, b, d = grads.shape
    ss_ptr, ss = _scalar(step_size)
    nz_ptr, nz = _scalar(noise)
    sd_ptr, sd = _scalar(seed)
    st_ptr, st = _scalar(step)
    if not isinstance(seed, Tensor):
        sd = int(sd) & 0xFFFFFFFFFFFFFFFF
    lo, hi = (float(clamp[0]), float(clamp[1])) if clamp is not None else (0.0, 0.0)
    return [
        x.data_ptr(), out.data_ptr(), DTYPE_CODES[x.dtype], b, d, x.stride(0), out.stride(0),
        grads.data_ptr(), grads.stride(0), grads.stride(1),
        energies.data_ptr(),
        table.data_ptr(), table.shape[0], n,
        ss_ptr, float(ss), nz_ptr, float(nz),
        sd_ptr, sd, st_ptr, int(st),
        order, grad_clip is not None, float(grad_clip or 0.0), clamp is not None, lo, hi,
        energy_out.data_ptr(), flag.data_ptr(),
    ]


def step_cpu(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, **kw) -> None:
    m = load()
    if m is None:
        raise missing_error("cpu")
    if x.shape[0] == 0:  # nothing to write; D = 0 still writes energy_out
        return
    m.langevin_step_cpu(*_args(x, grads, energies, table, **kw))


def step_cuda(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, **kw) -> None:
    m = load()
    if m is None or not getattr(m, "has_cuda", False):
        raise missing_error("cuda")
    if x.shape[0] == 0:  # nothing to write; D = 0 still writes energy_out
        return
    stream = torch.cuda.current_stream(x.device).cuda_stream
    m.langevin_step_cuda(*_args(x, grads, energies, table, **kw), stream)
