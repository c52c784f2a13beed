"""The compiled extension ``ebm_fast._C``: lazy import, constant checks, and the ``cpu`` / ``cuda`` launchers.

The extension does not link libtorch. Each native op takes one argument struct, bound once in
``csrc/ext.cpp`` and filled here in one function: for the fused step, ``_C.StepArgs`` (fields and
their meaning in ``csrc/langevin_step.h``) filled by :func:`step_args`. Tensors cross as data
pointers (integers), sizes and strides in elements; each scalar of a chain's schedule or RNG state
as a ``(pointer, value)`` pair -- a pointer of 0 means "use the value", a non-zero one points at a
0-dim tensor that the kernel reads (on the device for CUDA, so CUDA-graph replays read fresh values).
All checking of user input happens in :mod:`ebm_fast.ops` before these are called; the extension
checks only its own invariants (sizes, codes, null pointers).

When the extension is first loaded, the constants it was compiled with (dtype codes, update orders,
node kinds, ``MAX_NODES``, ``MAX_LEAVES``, the table width, the version) are compared with the Python
side (:mod:`ebm_fast.program`, :mod:`ebm_fast.step_reference`, :data:`DTYPE_CODES`; the Triton kernel
reads its constants from :mod:`ebm_fast.program`); a mismatch raises, naming the constant.
"""

from __future__ import annotations

import importlib
import warnings

import torch
from torch import Tensor

__all__ = ["load", "available", "cuda_available", "DTYPE_CODES", "step_args", "step_cpu", "step_cuda", "BUILD_HINT",
           "missing_error"]

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
BUILD_HINT = "pip install --no-build-isolation .   (or: pip install .) from the ebm_fast source tree"

_module = None
_tried = False
_error: str | None = None


def expected_constants() -> dict:
    """The values the extension must have been compiled with, from the Python side."""
    from . import program
    from .step_reference import ORDERS
    from .version import __version__

    return {
        "__version__": __version__,
        "DTYPE_F32": DTYPE_CODES[torch.float32], "DTYPE_F16": DTYPE_CODES[torch.float16],
        "DTYPE_BF16": DTYPE_CODES[torch.bfloat16],
        "ORDER_ULA": ORDERS["ula"], "ORDER_NOISE_FIRST": ORDERS["noise_first"],
        "NODE_LEAF": program.LEAF, "NODE_SUM": program.SUM, "NODE_LSE": program.LSE,
        "MAX_NODES": program.MAX_NODES, "MAX_LEAVES": program.MAX_LEAVES, "TABLE_COLUMNS": program.COLUMNS,
    }


def check_constants(module) -> None:
    """Raise ``RuntimeError`` when ``module`` (``ebm_fast._C``) disagrees with the Python side."""
    for name, want in expected_constants().items():
        got = getattr(module, name, None)
        if got != want:
            raise RuntimeError(
                f"ebm_fast._C does not match this ebm_fast: {name} is {got!r} in the extension and {want!r} "
                f"in Python (a stale or foreign build); rebuild it with: {BUILD_HINT}")


def load(warn: bool = True):
    """The ``ebm_fast._C`` module, or None when it is not built (warning once, with the command that
    builds it). Raises ``RuntimeError`` when it is built but its constants disagree with Python's."""
    global _module, _tried, _error
    if not _tried:
        _tried = True
        try:
            module = importlib.import_module("ebm_fast._C")
        except ImportError as exc:  # the extension was not built: torch backend only
            _error = str(exc)
            if warn:
                warnings.warn(
                    f"ebm_fast._C is not built ({exc}); the fused step runs on the slower torch "
                    f"backend. Build it with: {BUILD_HINT}",
                    RuntimeWarning,
                    stacklevel=3,
                )
        else:
            check_constants(module)
            _module = module
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


def step_args(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, *, step_size, noise, seed, step,
              order: int, grad_clip, clamp, out: Tensor, energy_out: Tensor, flag: Tensor):
    """The ``_C.StepArgs`` of one fused step: the one place that turns the backend arguments of
    :mod:`ebm_fast.step_reference` (validated and flattened by :mod:`ebm_fast.ops`) into the struct.

    ``step_size`` and ``noise`` (float32) and ``seed`` and ``step`` (int64) are Python numbers, passed
    by value, or 0-dim tensors, passed by address and read by the kernel. A Python ``seed`` in
    ``[0, 2**64)`` is the Philox key; an int64 tensor holds the same 64 bits (values >= 2**63 as
    negative int64, see :func:`ebm_fast.rng.seed_to_int64`).
    """
    n, b, d = grads.shape
    a = _module.StepArgs()
    a.x, a.out, a.dtype = x.data_ptr(), out.data_ptr(), DTYPE_CODES[x.dtype]
    a.B, a.D, a.x_stride, a.out_stride = b, d, x.stride(0), out.stride(0)
    a.g, a.g_stride_n, a.g_stride_b = grads.data_ptr(), grads.stride(0), grads.stride(1)
    a.e, a.table, a.M, a.N = energies.data_ptr(), table.data_ptr(), table.shape[0], n
    a.energy_out, a.flag = energy_out.data_ptr(), flag.data_ptr()
    for name, v in (("step_size", step_size), ("noise", noise), ("seed", seed), ("step", step)):
        if isinstance(v, Tensor):
            setattr(a, name + "_ptr", v.data_ptr())  # read by the kernel at run time
        else:
            setattr(a, name, v)
    a.order = order
    if grad_clip is not None:
        a.has_clip, a.grad_clip = True, grad_clip
    if clamp is not None:
        a.has_clamp, a.lo, a.hi = True, clamp[0], clamp[1]
    return a


def step_cpu(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, **kw) -> None:
    """The C++/OpenMP step; arguments as :func:`step_args` (the launcher signature of
    :mod:`ebm_fast.step_reference`)."""
    m = load()
    if m is None:
        raise missing_error("cpu")
    if x.shape[0] == 0:  # nothing to write; D = 0 still writes energy_out
        return
    m.langevin_step_cpu(step_args(x, grads, energies, table, **kw))


def step_cuda(x: Tensor, grads: Tensor, energies: Tensor, table: Tensor, **kw) -> None:
    """The CUDA step, enqueued on the current stream of x's device; arguments as :func:`step_args`."""
    m = load()
    if m is None or not getattr(m, "has_cuda", False):
        raise missing_error("cuda")
    if x.shape[0] == 0:  # nothing to write; D = 0 still writes energy_out
        return
    m.langevin_step_cuda(step_args(x, grads, energies, table, **kw), torch.cuda.current_stream(x.device).cuda_stream)


def has_mcmc() -> bool:
    """Whether the extension has the fused MALA/HMC kernels (:mod:`ebm_fast.mcmc_reference`)."""
    m = load(warn=False)
    return m is not None and hasattr(m, "mcmc_accept_cpu")


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def mcmc_args(x: Tensor, out: Tensor, grads: Tensor, energies: Tensor, table: Tensor, *, step_size: Tensor,
              temperature: float, inv_mass: Tensor | None, seed, step, momentum: Tensor | None, energy: Tensor,
              phase: int = 0, method: int = 0, grads_state: Tensor | None = None,
              energies_state: Tensor | None = None, accept_out: Tensor | None = None,
              alpha_out: Tensor | None = None):
    """``_C.MCMCArgs`` (fields in ``csrc/mcmc_step.h``) from the tensors of :mod:`ebm_fast.mcmc_reference`."""
    a = load().MCMCArgs()
    n, b, d = grads.shape
    a.x, a.out, a.g, a.e = x.data_ptr(), out.data_ptr(), grads.data_ptr(), energies.data_ptr()
    a.table = table.data_ptr()
    a.M, a.N, a.B, a.D = table.shape[0], n, b, d
    a.g_state, a.e_state = _ptr(grads_state), _ptr(energies_state)
    a.step_size, a.inv_mass, a.momentum = step_size.data_ptr(), _ptr(inv_mass), _ptr(momentum)
    a.energy = energy.data_ptr()
    a.accept_out, a.alpha_out = _ptr(accept_out), _ptr(alpha_out)
    a.temperature = float(temperature)
    if isinstance(seed, Tensor):
        a.seed_ptr = seed.data_ptr()
    else:
        a.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    if isinstance(step, Tensor):
        a.step_ptr = step.data_ptr()
    else:
        a.step = int(step)
    a.phase, a.method = int(phase), int(method)
    return a


def _mcmc_move_args(x, grads, energies, table, *, phase, out, energy_out, **kw):
    return mcmc_args(x, out, grads, energies, table, energy=energy_out, phase=phase, **kw)


def _mcmc_accept_args(x, proposal, grads_p, energies_p, table, *, method, grads, energies, energy, accept_out,
                      alpha_out, **kw):
    return mcmc_args(x, proposal, grads_p, energies_p, table, energy=energy, method=method, grads_state=grads,
                     energies_state=energies, accept_out=accept_out, alpha_out=alpha_out, **kw)


def mcmc_move_cpu(*args, **kw) -> None:
    """The C++ move; arguments as :func:`ebm_fast.mcmc_reference.mcmc_move_torch`."""
    load().mcmc_move_cpu(_mcmc_move_args(*args, **kw))


def mcmc_accept_cpu(*args, **kw) -> None:
    """The C++ accept; arguments as :func:`ebm_fast.mcmc_reference.mcmc_accept_torch`."""
    load().mcmc_accept_cpu(_mcmc_accept_args(*args, **kw))


def mcmc_move_cuda(*args, **kw) -> None:
    """The CUDA move, enqueued on the current stream of x's device."""
    x = args[0]
    load().mcmc_move_cuda(_mcmc_move_args(*args, **kw), torch.cuda.current_stream(x.device).cuda_stream)


def mcmc_accept_cuda(*args, **kw) -> None:
    """The CUDA accept, enqueued on the current stream of x's device."""
    x = args[0]
    load().mcmc_accept_cuda(_mcmc_accept_args(*args, **kw), torch.cuda.current_stream(x.device).cuda_stream)
