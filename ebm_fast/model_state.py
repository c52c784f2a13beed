"""What a model callable holds, and how a chain holds it still.

A chain calls users' models: plain ``nn.Module`` s, lambdas closing over them, bound methods,
``functools.partial`` objects. Before it runs, the sampler needs to know which modules and tensors
such a callable reaches (:func:`inspect_model`: to freeze their parameters, and to fingerprint the
callable so a captured CUDA graph is reused only for the same model), whether a forward couples the
samples of a batch (:func:`couples_samples`: BatchNorm in training mode), and whether a forward
changes state (:func:`stateful_parts`: BatchNorm statistics, spectral-norm power iterations, dropout),
in which case its passes run one after another.

:func:`frozen_parameters` turns parameter gradients off for the duration of a chain and restores the
caller's ``requires_grad`` flags and train/eval modes afterwards, also when several Python threads run
chains on one model at once (the last chain to finish restores what the first one found).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import types
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["ModelParts", "inspect_model", "couples_samples", "stateful_parts", "warn_once_per_model",
           "frozen_parameters"]

@dataclass
class ModelParts:
    """What a model callable holds: its ``nn.Module`` s, tensors, and a structural fingerprint.

    ``fingerprint`` is a hashable description of the callable: modules and objects by identity,
    tensors by storage (data pointer, shape, strides, dtype), plain values by value, functions by code
    object and what their closures hold -- two lambdas from one line closing over the same module get
    the same fingerprint. ``complete`` is False when the callable holds objects that cannot be looked
    into (a CUDA graph captured over such a callable could read stale memory, so ``graph="auto"``
    does not capture it).
    """

    modules: list[nn.Module] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    complete: bool = True
    fingerprint: tuple = ()


_PLAIN = (int, float, complex, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_MAX_ITEMS = 64  # larger containers (a dataset list a lambda happens to name) are not walked: incomplete
_OPAQUE_OK = (types.ModuleType, types.BuiltinFunctionType, types.BuiltinMethodType, types.MethodWrapperType,
              type)


def inspect_model(model: Any, max_depth: int = 4) -> ModelParts:
    """Walk a model callable: modules, bound methods, ``functools.partial``, functions (closure cells,
    defaults, and the globals their code names), containers, and the attributes of plain callable
    objects, up to ``max_depth`` levels deep."""
    parts = ModelParts()
    seen: dict[int, tuple] = {}

    def visit(obj: Any, depth: int) -> tuple:
        if id(obj) in seen:
            return seen[id(obj)]
        seen[id(obj)] = ("ref", id(obj))  # cycles resolve to a reference
        fp = _visit(obj, depth)
        seen[id(obj)] = fp
        return fp

    def _visit(obj: Any, depth: int) -> tuple:
        if isinstance(obj, nn.Module):
            parts.modules.append(obj)
            return ("module", id(obj))
        if isinstance(obj, Tensor):
            parts.tensors.append(obj)
            return ("tensor", obj.data_ptr(), tuple(obj.shape), obj.stride(), str(obj.dtype), str(obj.device))
        if isinstance(obj, _PLAIN) or obj is Ellipsis:
            return ("value", type(obj).__name__, repr(obj))
        if isinstance(obj, _OPAQUE_OK):
            return ("opaque", id(obj))
        if depth >= max_depth:
            parts.complete = False
            return ("?", id(obj))
        if isinstance(obj, types.MethodType):
            return ("method", visit(obj.__self__, depth + 1), visit(obj.__func__, depth + 1))
        if isinstance(obj, functools.partial):
            return ("partial", visit(obj.func, depth + 1), tuple(visit(o, depth + 1) for o in obj.args),
                    tuple((k, visit(v, depth + 1)) for k, v in sorted(obj.keywords.items())))
        if isinstance(obj, types.FunctionType):
            cells = []
            for cell in obj.__closure__ or ():
                try:
                    cells.append(visit(cell.cell_contents, depth + 1))
                except ValueError:  # an empty cell
                    cells.append(("empty",))
            defaults = tuple(visit(o, depth + 1) for o in obj.__defaults__ or ())
            kwdefaults = tuple((k, visit(v, depth + 1)) for k, v in sorted((obj.__kwdefaults__ or {}).items()))
            g = obj.__globals__
            names = tuple((n, visit(g[n], depth + 1)) for n in obj.__code__.co_names if n in g)
            return ("function", id(obj.__code__), tuple(cells), defaults, kwdefaults, names)
        if isinstance(obj, (list, tuple, dict)) and len(obj) > _MAX_ITEMS:
            parts.complete = False
            return ("?", id(obj))
        if isinstance(obj, (list, tuple)):
            return (type(obj).__name__, tuple(visit(o, depth + 1) for o in obj))
        if isinstance(obj, dict):
            return ("dict", tuple((k if isinstance(k, (str, int, float, bool, type(None))) else ("id", id(k)),
                                   visit(v, depth + 1)) for k, v in obj.items()))
        if hasattr(obj, "__dict__") and len(vars(obj)) <= _MAX_ITEMS:
            return ("object", id(type(obj)), tuple((k, visit(v, depth + 1)) for k, v in vars(obj).items()))
        parts.complete = False
        return ("?", id(obj))

    parts.fingerprint = visit(model, 0)
    return parts


def couples_samples(module: nn.Module) -> bool:
    """True when ``module``'s output for one sample depends on the other samples of the batch."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            return True
    return False


def _power_iterates(m: nn.Module) -> bool:
    """Whether a forward of ``m`` itself runs a spectral-norm power iteration (updating its ``u``)."""
    if not m.training:
        return False
    if type(m).__name__ == "_SpectralNorm":  # torch.nn.utils.parametrizations.spectral_norm
        return getattr(m, "n_power_iterations", 1) > 0
    return any(type(h).__name__ == "SpectralNorm" for h in m._forward_pre_hooks.values())  # nn.utils.spectral_norm


def stateful_parts(module: nn.Module) -> list[str]:
    """What makes a forward of ``module`` change state or draw random numbers, in words (empty: nothing).

    BatchNorm in training mode updates its running statistics; spectral normalisation in training
    mode runs a power iteration that updates its ``u`` vector; dropout in training mode draws from
    torch's global generator. Passes of such a model run one after another (their order fixes the
    result), never in worker threads.
    """
    found = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            found.append("BatchNorm in training mode")
        elif _power_iterates(m):
            found.append("spectral norm in training mode")
        elif isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            found.append("dropout in training mode")
    return sorted(set(found))


# Models that have had the BatchNorm-in-training-mode warning (shown once per model object).
_WARNED_BATCHNORM: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
_WARNED_LOCK = threading.Lock()


def warn_once_per_model(model: nn.Module, message: str, stacklevel: int) -> None:
    """``RuntimeWarning(message)`` the first time it is asked for ``model``."""
    with _WARNED_LOCK:
        if model in _WARNED_BATCHNORM:
            return
        _WARNED_BATCHNORM.add(model)
    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)


# Parameters and modules that some chain holds frozen, with the caller's flags and modes and the
# number of chains holding them: concurrent chains on one model (several Python threads) restore
# what the caller set, not what another chain had set in between.
_FROZEN_LOCK = threading.Lock()
_FROZEN_PARAMS: dict[int, list] = {}  # id -> [parameter, caller's requires_grad, holders]
_FROZEN_MODES: dict[int, list] = {}  # id -> [module, caller's training flag, holders]


@contextlib.contextmanager
def frozen_parameters(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Turn ``requires_grad`` off on every parameter of ``modules``; restore the caller's flags and
    train/eval modes exactly afterwards, also when an exception is raised.

    Safe for chains on one model in several threads at once: the flags and modes are those found by
    the first chain to enter, and the last chain to leave restores them. (While any chain runs, the
    parameters have ``requires_grad=False`` in every thread: do not train the model concurrently.)
    """
    params: dict[int, Tensor] = {}
    mods: dict[int, nn.Module] = {}
    for mod in modules:
        for m in mod.modules():
            mods.setdefault(id(m), m)
        for p in mod.parameters():
            params.setdefault(id(p), p)
    requires_grad = (lambda p: p.requires_grad, lambda p, flag: p.requires_grad_(flag))
    training = (lambda m: m.training, lambda m, flag: m.train(flag))
    with _FROZEN_LOCK:
        _hold(_FROZEN_PARAMS, params, *requires_grad, frozen=False)
        _hold(_FROZEN_MODES, mods, *training, frozen=None)
    try:
        yield
    finally:
        with _FROZEN_LOCK:
            _release(_FROZEN_PARAMS, params, *requires_grad)
            _release(_FROZEN_MODES, mods, *training)


def _hold(table: dict, objs: dict, read, write, frozen) -> None:
    """Count one more holder of each object; the first records the caller's value (and sets ``frozen``)."""
    for k, o in objs.items():
        entry = table.get(k)
        if entry is not None:
            entry[2] += 1
            continue
        table[k] = [o, read(o), 1]
        if frozen is not None and read(o) != frozen:
            write(o, frozen)


def _release(table: dict, objs: dict, read, write) -> None:
    """Count one holder less; the last restores the value the first recorded."""
    for k in objs:
        entry = table[k]
        entry[2] -= 1
        if entry[2] == 0:
            del table[k]
            if read(entry[0]) != entry[1]:
                write(entry[0], entry[1])
