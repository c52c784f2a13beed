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
forward (:func:`ebm_fast.model_state.stateful_parts`), so its passes run one after another in a fixed order and a chain
gives the same bits run to run.

**Several chains at once.** Chains on one model may run from several Python threads:
:func:`ebm_fast.model_state.frozen_parameters` counts the chains holding a model and the last to finish restores the
flags and modes the first one found. A stateful model shared by concurrent chains still changes its
state in whatever order the threads reach it.

No parameter gradient is computed here: :func:`ebm_fast.model_state.frozen_parameters` turns ``requires_grad`` off for
the duration of a chain and restores the caller's flags afterwards, and gradients are taken with
``torch.autograd.grad(..., inputs=x)`` so no autograd graph outlives a call.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .compose import Concept, leaf_energy_from_output
from .model_state import couples_samples, inspect_model, stateful_parts, warn_once_per_model

__all__ = ["LeafEvaluator", "prefers_channels_last",
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


def prefers_channels_last(model: Any, device: torch.device) -> bool:
    """Whether image inputs ``[B, C, H, W]`` of ``model`` should go in channels_last layout: on the CPU,
    when a ``Conv2d`` is inside (see the module docstring for the measurement)."""
    return torch.device(device).type == "cpu" and any(
        isinstance(m, nn.Conv2d) for mod in inspect_model(model).modules for m in mod.modules())


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
            evaluators and stateful models (:func:`ebm_fast.model_state.stateful_parts`) use 1.

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
