"""Leaf energies and input-gradients of a composed expression: ``E`` ``[N, B]`` and ``G`` ``[N, B, ...]``.

The fused step (docs/contract.md §3) needs, for every leaf ``i`` of ``expr.leaves()``, the energy ``E_i(x)`` and
its input-gradient ``grad_x E_i(x)``. Leaves that share one model form a *group* (same model object,
conditions of one shape and dtype); a group is evaluated in one of two ways:

* **batched**: one forward of ``n·B`` rows -- ``x`` repeated ``n`` times, leaf-major, with the ``n``
  conditions concatenated in the same order -- and one input-gradient backward (docs/contract.md §2);
* **per leaf**: ``n`` forwards of ``B`` rows on ``n`` autograd views of ``x`` and one backward call
  over the ``n`` disjoint graphs.

Both give the same numbers up to floating-point reassociation. ``grouping="auto"`` batches on CUDA
(one launch per layer instead of ``n``: launch-bound at the sizes of the paper) and runs per leaf on
the CPU, where the larger batched pass is slower (the ``small32`` conditional ResNet, three
concepts, one thread, K = 5: 629 ms per leaf against 761 ms batched at 32x32, B = 32; 1122 against
1340 ms at 64x64, B = 16; docs/sampling.md, "Leaves that share a model"). A model whose output couples the samples of a batch
(BatchNorm in training mode, or BatchNorm without running statistics) always runs per leaf: batching
would change its energies. BatchNorm in training mode also updates its running statistics on every
step of a chain; either is warned about once per model object (and listed in the chain's info).

``memory_format="auto"`` feeds image states ``[B, C, H, W]`` to models that contain a ``Conv2d`` in
``channels_last`` layout on the CPU: oneDNN's NHWC convolutions ran the same forward + input-gradient
1.44x faster than NCHW (``small32``, 32x32 B = 32 and 64x64 B = 16, one thread; weights left as they
are -- converting them too gave only 1.27x). Gradients come back in the state's layout. A model that
cannot take a channels_last input (a ``.view`` of its input) is retried once in the standard layout,
which is then kept for that evaluator.

**Threads on the CPU.** A step's model passes are independent: each leaf of a per-leaf group, each
member of an ensemble leaf (a model with ``energy_terms()``, :class:`ebm_fast.models.EnergyEnsemble`)
and each batched group is one *task* (its forward and input-gradient backward). With ``workers > 1``
(default: ``torch.get_num_threads()``, capped at the number of tasks) the tasks of one evaluation run
in that many threads at once, each with the caller's intra-op thread count, and their results are
combined in a fixed order, so the numbers do not depend on which thread finished first (an ensemble's
energy is its weighted sum in member order, as its own forward computes it; its gradient is the same
sum of the members' gradients). A conv pass of 32x32 images at B = 32 does not keep 2 cores busy on
its own: the shipped ``position & color`` step (four passes) took 99 ms in two threads against 137 ms
one after another on the 2-core CPU (docs/sampling.md, "Threads on the CPU"). CUDA devices,
compiled evaluators and *stateful* models keep one thread: a model with BatchNorm, spectral
normalisation or dropout in training mode changes its buffers or draws random numbers on every
forward (:func:`stateful_parts`), so its passes run one after another in a fixed order and a chain
gives the same bits run to run.

**Several chains at once.** Chains on one model may run from several Python threads:
:func:`frozen_parameters` counts the chains holding a model and the last to finish restores the
flags and modes the first one found. A stateful model shared by concurrent chains still changes its
state in whatever order the threads reach it.

No parameter gradient is computed here: :func:`frozen_parameters` turns ``requires_grad`` off for
the duration of a chain and restores the caller's flags afterwards, and gradients are taken with
``torch.autograd.grad(..., inputs=x)`` so no autograd graph outlives a call.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import types
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from .compose import Concept, leaf_energy_from_output

__all__ = ["LeafEvaluator", "ModelParts", "inspect_model", "frozen_parameters", "couples_samples", "stateful_parts",
           "energy_terms",
           "GROUPINGS", "MEMORY_FORMATS", "AUTOCAST_DTYPES", "check_autocast", "autocast_context"]

GROUPINGS = ("auto", "batched", "per_leaf")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def check_autocast(autocast) -> None:
    """Raise ``ValueError`` unless ``autocast`` is None or one of :data:`AUTOCAST_DTYPES`."""
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}")


def autocast_context(autocast, device_type: str):
    """``torch.autocast`` to ``autocast`` on ``device_type``, or a null context for None."""
    return contextlib.nullcontext() if autocast is None else torch.autocast(device_type=device_type, dtype=autocast)


# ---- what a model callable holds --------------------------------------------------------------
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


def prefers_channels_last(model: Any, device: torch.device) -> bool:
    """Whether image inputs ``[B, C, H, W]`` of ``model`` should go in channels_last layout: on the CPU,
    when a ``Conv2d`` is inside (see the module docstring for the measurement)."""
    return torch.device(device).type == "cpu" and any(
        isinstance(m, nn.Conv2d) for mod in inspect_model(model).modules for m in mod.modules())


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


# ---- the evaluator -----------------------------------------------------------------------------
@dataclass
class _Group:
    model: Any
    index: list[int]  # leaf indices, in expression order
    batched: bool
    where: str  # the first leaf's repr, for messages
    conds: list[Tensor | None] = field(default_factory=list)  # batched: [cat (n·B, ...)], else one per leaf
    channels_last: bool = False  # feed the model NHWC inputs
    compiled: Any = None
    column: int | None = None  # the leaves' Concept.column (one per group)


@dataclass
class _Task:
    """One independent model pass of an evaluation: a whole batched group (``slot`` None), or term
    ``model`` (weight ``weight``) of the leaf in ``group``'s slot ``slot``."""

    group: _Group
    slot: int | None
    weight: float
    model: Any


def energy_terms(model: Any) -> list[tuple[float, Any]]:
    """``[(w_i, E_i)]`` with ``model(x, c) == sum_i w_i E_i(x, c)``: a module's own ``energy_terms()``
    (an ensemble's members), else ``[(1.0, model)]``."""
    terms = getattr(model, "energy_terms", None) if isinstance(model, nn.Module) else None
    return list(terms()) if callable(terms) else [(1.0, model)]


# Worker threads, one pool per (process, size): a pool does not survive a fork.
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_IN_WORKER = threading.local()


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    key = (os.getpid(), workers)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ebm_fast-leaf",
                                                    initializer=_mark_worker)
    return pool


def _mark_worker() -> None:
    _IN_WORKER.active = True


def _cond_signature(leaf: Concept) -> tuple:
    c = leaf.cond
    if c is None:
        return (None,)
    shape = tuple(c.shape[1:]) if leaf.per_sample else tuple(c.shape)
    return (shape, c.dtype)


# Compiled energy-and-gradient functions, per model object, keyed by everything they specialise on.
_COMPILED: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


class LeafEvaluator:
    """Evaluates the leaves of an expression at a state ``x``.

    Args:
        leaves: ``expr.leaves()`` (N concepts).
        batch: ``B``; sample_shape: the shape of one sample (``x.shape[1:]``).
        device: where ``x`` lives.
        model_dtype: the dtype the models are fed (the caller's ``x0`` dtype).
        grad_dtype: the dtype of the returned gradients (the chain's state dtype).
        grouping: ``"auto"``, ``"batched"`` or ``"per_leaf"`` (see the module docstring).
        memory_format: ``"auto"``, ``"contiguous"`` or ``"channels_last"``: the layout of 4-D inputs
            handed to the models (see the module docstring).
        autocast: None, ``torch.bfloat16`` or ``torch.float16``: run the models' forward under
            autocast (gradients and energies come back in ``grad_dtype`` / float32).
        compile: False, True or a dict of ``torch.compile`` keyword arguments: evaluate each group's
            energy and input-gradient as one compiled ``torch.func.grad_and_value`` function.
        workers: None (``torch.get_num_threads()``) or an int >= 1: on the CPU, how many of the
            evaluation's independent model passes run at once in threads (see the module docstring;
            capped at the number of passes; 1 runs them one after another). CUDA devices, compiled
            evaluators and stateful models (:func:`stateful_parts`) use 1.

    Calling it with ``x`` ``[B, *sample_shape]`` returns ``(E, G)``: float32 ``[N, B]`` and
    ``grad_dtype`` ``[N, B, *sample_shape]``, both contiguous (standard layout).
    """

    def __init__(self, leaves: Sequence[Concept], batch: int, sample_shape: Sequence[int], device: torch.device,
                 *, model_dtype: torch.dtype, grad_dtype: torch.dtype, grouping: str = "auto",
                 memory_format: str = "auto", autocast: torch.dtype | None = None, compile: bool | dict = False,
                 workers: int | None = None):
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
        check_autocast(autocast)
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f"compile must be a bool or a dict of torch.compile options, got {type(compile).__name__}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be None (torch's thread count) or an int >= 1, got {workers!r}")
        self.num_leaves = len(leaves)
        self.batch = int(batch)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.device = torch.device(device)
        self.model_dtype, self.grad_dtype = model_dtype, grad_dtype
        self.autocast = autocast
        self.compile = compile
        self.warnings: list[str] = []
        self.groups = self._make_groups(leaves, grouping)
        for g in self.groups:
            g.channels_last = self._wants_channels_last(g, memory_format)
        # One batched group that holds every leaf in order: its output is (E, G) without a copy.
        self._identity = len(self.groups) == 1 and self.groups[0].index == list(range(self.num_leaves))
        self._tasks = self._make_tasks()
        # a stateful model's passes (BatchNorm statistics, spectral-norm power iterations, dropout draws)
        # run one after another in task order: in threads their order, and so the result, would vary
        threads = 1 if self.device.type != "cpu" or compile is not False or self.stateful else (
            torch.get_num_threads() if workers is None else workers)
        self.workers = max(1, min(threads, len(self._tasks)))
        self.load_conditions(leaves)

    # -- setup ----------------------------------------------------------------------------------
    def _make_groups(self, leaves: Sequence[Concept], grouping: str) -> list[_Group]:
        by_key: dict[tuple, _Group] = {}
        groups: list[_Group] = []
        for i, leaf in enumerate(leaves):
            if not isinstance(leaf, Concept):
                raise TypeError(f"leaves must be Concepts, got {type(leaf).__name__}")
            key = (id(leaf.model), _cond_signature(leaf), leaf.column)
            g = by_key.get(key)
            if g is None:
                g = _Group(model=leaf.model, index=[], batched=False, where=repr(leaf), column=leaf.column)
                by_key[key] = g
                groups.append(g)
            g.index.append(i)
        self.stateful: list[str] = []
        for g in groups:
            modules = inspect_model(g.model).modules
            coupled = any(couples_samples(m) for m in modules)
            if coupled and grouping == "batched":
                raise ValueError(
                    f"grouping='batched' is impossible for {g.where}: its model has BatchNorm in training "
                    "mode (or without running statistics), which couples the samples of a batch; use "
                    "grouping='auto' or 'per_leaf', or put the model in eval() mode")
            parts = sorted({what for m in modules for what in stateful_parts(m)})
            if parts:
                self.stateful.append(f"{g.where}: " + ", ".join(parts))
            if coupled and (len(g.index) > 1 or "BatchNorm in training mode" in parts):
                msg = (f"{g.where}: the model has BatchNorm in training mode (or without running "
                       "statistics), which couples the samples of a batch")
                if "BatchNorm in training mode" in parts:
                    msg += " and updates its running statistics on every step of the chain"
                if len(g.index) > 1:
                    msg += (f"; its {len(g.index)} leaves run one pass of B rows each (as the reference loop "
                            "does) instead of one batched pass")
                msg += "; call model.eval() before sampling (shown once per model)"
                self.warnings.append(msg)
                for m in modules:
                    if couples_samples(m):
                        warn_once_per_model(m, msg, stacklevel=5)
                        break
            if len(g.index) == 1 or coupled or grouping == "per_leaf":
                g.batched = False
            elif grouping == "batched":
                g.batched = True
            else:
                g.batched = self.device.type == "cuda"
        return groups

    def _make_tasks(self) -> list[_Task]:
        tasks = []
        for g in self.groups:
            if g.batched:
                tasks.append(_Task(g, None, 1.0, g.model))
                continue
            terms = energy_terms(g.model)
            tasks += [_Task(g, j, w, m) for j in range(len(g.index)) for w, m in terms]
        return tasks

    def _wants_channels_last(self, group: _Group, memory_format: str) -> bool:
        if len(self.sample_shape) != 3 or memory_format == "contiguous":
            return False
        if memory_format == "channels_last":
            return True
        return prefers_channels_last(group.model, self.device)

    @property
    def modes(self) -> list[tuple[list[int], str]]:
        """``(leaf indices, "batched" | "per_leaf")`` per group (``+channels_last`` when the model gets NHWC)."""
        return [(list(g.index),
                 ("batched" if g.batched else "per_leaf") + ("+channels_last" if g.channels_last else ""))
                for g in self.groups]

    def load_conditions(self, leaves: Sequence[Concept]) -> None:
        """(Re)load the leaves' conditions into this evaluator's buffers.

        The first call allocates the buffers; later calls (a cached CUDA graph reused with new
        condition values of the same shapes) copy into them, so captured addresses stay valid.
        """
        b, dev = self.batch, self.device
        for g in self.groups:
            per_leaf = []
            for i in g.index:
                c = leaves[i].batched_cond(b, dev)
                per_leaf.append(None if c is None else c.detach())
            if g.batched:
                new = [None if per_leaf[0] is None else torch.cat(per_leaf, dim=0)]
            else:
                new = [None if c is None else c.contiguous() for c in per_leaf]
            if not g.conds:
                g.conds = new
                continue
            for old, c in zip(g.conds, new):
                if (old is None) != (c is None) or (c is not None and (old.shape != c.shape or old.dtype != c.dtype)):
                    raise ValueError(f"{g.where}: condition changed shape or dtype; build a new evaluator")
                if c is not None:
                    old.copy_(c)

    # -- evaluation ----------------------------------------------------------------------------
    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.workers > 1 and not getattr(_IN_WORKER, "active", False):
            return self._eval_in_threads(x)
        if self._identity:
            e, g = self._eval_group(self.groups[0], x)
            return e, g.contiguous()
        es: list[Tensor | None] = [None] * self.num_leaves
        gs: list[Tensor | None] = [None] * self.num_leaves
        for group in self.groups:
            e, g = self._eval_group(group, x)
            for j, i in enumerate(group.index):
                es[i], gs[i] = e[j], g[j]
        return torch.stack(es), torch.stack(gs).contiguous()

    def _eval_in_threads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``__call__`` with the tasks spread over ``self.workers`` threads, combined in task order."""
        inputs = {id(g): self._input(g, x) for g in self.groups if not g.batched}
        pool = _thread_pool(self.workers)
        threads = torch.get_num_threads()
        futures = [pool.submit(self._run_task, t, x if t.slot is None else inputs[id(t.group)], threads)
                   for t in self._tasks]
        for t, f in zip(self._tasks, futures):  # every task has finished before a retry or a raise
            exc = f.exception()
            if exc is None:
                continue
            if t.group.channels_last and _is_layout_error(exc):
                t.group.channels_last = False  # the model cannot take NHWC inputs: standard layout from now on
                return self._eval_in_threads(x)
            raise exc
        es: list[Tensor | None] = [None] * self.num_leaves
        gs: list[Tensor | None] = [None] * self.num_leaves
        for t, f in zip(self._tasks, futures):
            e, g = f.result()
            if t.slot is None:
                for j, i in enumerate(t.group.index):
                    es[i], gs[i] = e[j], g[j]
                continue
            i = t.group.index[t.slot]
            if t.weight != 1.0:
                e, g = t.weight * e, t.weight * g
            es[i], gs[i] = (e, g) if es[i] is None else (es[i] + e, gs[i] + g)
        g = torch.stack(gs)
        return torch.stack(es), (g if g.dtype == self.grad_dtype else g.to(self.grad_dtype)).contiguous()

    def _run_task(self, t: _Task, xin: Tensor, threads: int) -> tuple[Tensor, Tensor]:
        """A batched group's ``(e [n, B], g [n, B, ...])``, or one term's ``(e [B], g [B, ...])``, computed
        with the caller's intra-op thread count ``threads``."""
        if torch.get_num_threads() != threads:
            # a thread keeps the count it first ran with; the kernels (oneDNN's convolutions) may split
            # their sums by it, so the caller's count is what makes a task's numbers the caller's own
            torch.set_num_threads(threads)
        if t.slot is None:
            return self._eval_group_once(t.group, xin)
        xi = xin.detach().requires_grad_(True)  # this task's own autograd leaf
        with torch.enable_grad(), self._autocast():
            e = _checked_energy(_call(t.model, xi, t.group.conds[t.slot]), self.batch, t.group.where, t.group.column)
            (g,) = torch.autograd.grad(e.sum(), xi, allow_unused=True)
        return e.detach(), torch.zeros_like(xi) if g is None else g

    def _input(self, group: _Group, x: Tensor) -> Tensor:
        """``x`` as the models see it: a new detached tensor object (model dtype, chosen layout)."""
        xin = x.detach() if x.dtype == self.model_dtype else x.detach().to(self.model_dtype)
        return xin.contiguous(memory_format=torch.channels_last) if group.channels_last else xin

    def _eval_group(self, group: _Group, x: Tensor) -> tuple[Tensor, Tensor]:
        if not group.channels_last:
            return self._eval_group_once(group, x)
        try:
            return self._eval_group_once(group, x)
        except RuntimeError as exc:
            if not _is_layout_error(exc):
                raise
            group.channels_last = False  # the model cannot take NHWC inputs: standard layout from now on
            return self._eval_group_once(group, x)

    def _autocast(self):
        return autocast_context(self.autocast, self.device.type)

    def _eval_group_once(self, group: _Group, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(e, g)``: float32 ``[n, B]`` and ``grad_dtype`` ``[n, B, ...]`` (any layout) for the group."""
        if self.compile is not False:
            return self._eval_compiled(group, x)
        n, b = len(group.index), self.batch
        with torch.enable_grad():
            if group.batched:
                xb = x.detach().to(self.model_dtype).unsqueeze(0).expand(n, *x.shape)
                xb = xb.reshape(n * b, *x.shape[1:])
                if group.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                xb.requires_grad_(True)
                with self._autocast():
                    out = _call(group.model, xb, group.conds[0])
                e = leaf_energy_from_output(out, n * b, group.where, group.column).float()
                _check_graph(e, group.where)
                (g,) = torch.autograd.grad(e.sum(), xb, allow_unused=True)
                if g is None:
                    g = torch.zeros_like(xb)
                return e.detach().view(n, b), g.reshape(n, *x.shape).to(self.grad_dtype)
            xin = self._input(group, x)
            # one autograd leaf per concept (views of one storage); _input already made a new object
            xs = [xin.requires_grad_(True)] if n == 1 else [xin.detach().requires_grad_(True) for _ in range(n)]
            if self.autocast is None:  # (the context manager costs ~4 us a step: this loop is hot)
                outs = [_call(group.model, xi, c) for xi, c in zip(xs, group.conds)]
            else:
                with self._autocast():
                    outs = [_call(group.model, xi, c) for xi, c in zip(xs, group.conds)]
            es = [_checked_energy(out, b, group.where, group.column) for out in outs]
            gs = torch.autograd.grad([e.sum() for e in es], xs, allow_unused=True)
            gs = [torch.zeros_like(xi) if gi is None else gi for gi, xi in zip(gs, xs)]
        # energies leave detached: no autograd graph outlives this call
        if n == 1:
            g = gs[0] if gs[0].dtype == self.grad_dtype else gs[0].to(self.grad_dtype)
            return es[0].detach().unsqueeze(0), g.unsqueeze(0)
        return torch.stack(es).detach(), torch.stack(gs).to(self.grad_dtype)

    def _eval_compiled(self, group: _Group, x: Tensor) -> tuple[Tensor, Tensor]:
        n = len(group.index)
        rows = n if group.batched else 1
        if group.compiled is None:
            group.compiled = _compiled_energy_grad(group.model, rows, self.batch, self.model_dtype,
                                                   self.autocast, self.device.type, group.where,
                                                   self.compile if isinstance(self.compile, dict) else {},
                                                   group.column)
        xin = self._input(group, x)
        if group.batched:
            e, g = group.compiled(xin, group.conds[0])
            return e, g.to(self.grad_dtype)
        pairs = [group.compiled(xin, c) for c in group.conds]
        e = torch.cat([p[0] for p in pairs]) if n > 1 else pairs[0][0]
        g = torch.cat([p[1] for p in pairs]) if n > 1 else pairs[0][1]
        return e, g.to(self.grad_dtype)


def _is_layout_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what a model that cannot take a channels_last input (a ``.view``) raises."""
    return isinstance(exc, RuntimeError) and ("view" in str(exc) or "stride" in str(exc))


def _call(model, x: Tensor, cond: Tensor | None) -> Tensor:
    return model(x) if cond is None else model(x, cond)


def _checked_energy(out: Tensor, batch: int, where: str, column: int | None = None) -> Tensor:
    """A leaf's per-sample energies ``(B,)`` in float32 from its model output, with an autograd graph."""
    e = leaf_energy_from_output(out, batch, where, column)
    e = e if e.dtype == torch.float32 else e.float()
    _check_graph(e, where)
    return e


def _check_graph(e: Tensor, where: str) -> None:
    if not e.requires_grad:
        raise ValueError(
            f"{where}: the energy model returned energies that do not depend on x through autograd "
            "(is it running under torch.no_grad(), or detaching its input?); sampling needs grad_x E")


def _compiled_energy_grad(model, rows: int, batch: int, dtype: torch.dtype, autocast, device_type: str,
                          where: str, options: dict, column: int | None = None):
    """``f(x [B, ...], cond) -> (e float32 [rows, B], g [rows, B, ...])`` compiled with ``torch.compile``.

    ``rows > 1`` repeats ``x`` leaf-major (the batched pass). Cached per model object and settings, so
    later chains reuse the compiled code (compiling takes ~28 s for a conv EBM on a 2-core CPU).
    """
    key = (rows, batch, dtype, autocast, device_type, tuple(sorted(options.items())), column)
    try:
        per_model = _COMPILED.setdefault(model, {})
    except TypeError:  # not weak-referenceable: cache on nothing
        per_model = {}
    fn = per_model.get(key)
    if fn is not None:
        return fn

    def total(xx: Tensor, cond: Tensor | None):
        with autocast_context(autocast, device_type):
            out = _call(model, xx, cond)
        e = leaf_energy_from_output(out, xx.shape[0], where, column).float()
        return e.sum(), e

    grad_and_value = torch.func.grad_and_value(total, has_aux=True)

    def energy_grad(x: Tensor, cond: Tensor | None):
        xb = x if rows == 1 else x.unsqueeze(0).expand(rows, *x.shape).reshape(rows * x.shape[0], *x.shape[1:])
        g, (_, e) = grad_and_value(xb, cond)
        return e.view(rows, x.shape[0]), g.reshape(rows, *x.shape)

    fn = torch.compile(energy_grad, **options)
    per_model[key] = fn
    return fn
