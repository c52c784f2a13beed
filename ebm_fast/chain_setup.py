"""What the chain drivers share: :func:`ebm_fast.sampler.sample` (the unadjusted chain) and
:func:`ebm_fast.mcmc.sample` (MALA/HMC).

* :func:`check_int` -- the integer-argument rule of both drivers (``steps``, ``graph_steps``, ...);
* :func:`graph_plan` -- whether a chain is captured in CUDA graphs, and if not, why;
* :func:`graph_key` -- everything a captured chain depends on (the key of :data:`ebm_fast.graphs.CACHE`);
* :func:`graphed_chain` -- a cached chain or a new one, its missing replays captured, falling back to
  eager (with one warning per key) when a capture fails; :func:`replay_lengths` -- the replays that
  cover a chain of ``steps`` updates in windows of ``S``.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from . import graphs
from .compose import Expr
from .model_state import couples_samples

__all__ = ["check_int", "graph_key", "graph_plan", "graphed_chain", "replay_lengths"]


def check_int(name: str, v: Any, low: int) -> int:
    """``int(v)`` when ``v`` is an integer (not a bool) ``>= low``; else TypeError / ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if int(v) < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    return int(v)


def replay_lengths(steps: int, window: int) -> list[int]:
    """Lengths of the replays that cover ``steps`` updates: ``window`` each, then the remainder."""
    return [window] * (steps // window) + ([steps % window] if steps % window else [])


def graph_plan(graph, device: torch.device, steps: int, diagnostics: bool, modules, parts) -> tuple[bool, str]:
    """Whether to capture this chain, and if not, why (ValueError when graph=True is impossible).

    ``diagnostics``: the call records something every step (energies, trajectory, grad norms),
    which runs eagerly. ``modules`` / ``parts``: the leaves' modules and
    :func:`ebm_fast.model_state.inspect_model` results.
    """
    if graph is False:
        return False, ""
    impossible = []
    why_not = graphs.graph_support(device)
    if why_not:
        impossible.append(why_not)
    if diagnostics:
        impossible.append("return_energies/trajectory/grad_norms record every step, which runs eagerly")
    if any(couples_samples(m) for m in modules):
        impossible.append("a model has BatchNorm in training mode: the capture's warm-up steps would "
                          "update its running statistics")
    if graph is True:
        if impossible:
            raise ValueError("graph=True is impossible: " + "; ".join(impossible))
        return True, ""
    if impossible:
        return False, "; ".join(impossible)
    if steps < 2:
        return False, "a single step is not worth a capture"
    if not all(p.complete for p in parts):
        return False, ("a model callable holds objects ebm_fast cannot look into, so a cached graph could "
                       "read stale memory (pass graph=True to capture anyway)")
    return True, ""


def graph_key(expr: Expr, leaves, parts, modules, x0: Tensor, options: tuple) -> tuple:
    """Everything a captured chain depends on (see :mod:`ebm_fast.graphs`); condition *values* are not
    in it: they are copied into the cached chain's buffers on every call. ``options``: the driver's
    own settings (method, backend, window, ...)."""
    first_use: dict[int, int] = {}
    model_pattern = tuple(first_use.setdefault(id(leaf.model), i) for i, leaf in enumerate(leaves))
    conds = tuple((None if leaf.cond is None else (tuple(leaf.cond.shape), str(leaf.cond.dtype)),
                   leaf.per_sample, leaf.column) for leaf in leaves)
    return ("chain", tuple(expr.program.table.flatten().tolist()), model_pattern, conds,
            tuple(p.fingerprint for p in parts), tuple(graphs.module_state(m) for m in modules),
            tuple(x0.shape), str(x0.dtype), str(x0.device), options)


def graphed_chain(key: tuple, new_chain: Callable[[bool], Any], leaves, lengths: Iterable[int],
                  capture: Callable[[Any, int], Callable[[], None]], *, what: str, stacklevel: int):
    """``(chain, replays, info.graph)`` for a captured chain, or ``(None, None, why)`` to run eagerly.

    The chain comes from :data:`ebm_fast.graphs.CACHE` (its conditions reloaded, ``"replayed"``) or
    from ``new_chain(True)`` (device-side RNG scalars, ``"captured"``). ``capture(chain, n)`` returns
    the replay of ``n`` steps for each length in ``lengths`` not cached yet; it may move the chain's
    state, so the caller loads the chain afterwards. A failed capture marks the key, warns once
    (``RuntimeWarning`` naming the ``what`` chain, ``stacklevel`` frames up) and returns ``why``.
    """
    failed = graphs.CACHE.failed(key)
    if failed is not None:
        return None, None, f"eager: graph capture failed before ({failed})"
    entry = graphs.CACHE.get(key)
    status = "replayed"
    if entry is None:
        entry = graphs.GraphEntry(chain=new_chain(True))
        status = "captured"
    chain = entry.chain
    if status == "replayed":
        chain.evaluator.load_conditions(leaves)
    missing = sorted(n for n in set(lengths) if n not in entry.replays)
    if not missing:
        return chain, entry.replays, status
    try:
        for n in missing:
            entry.replays[n] = capture(chain, n)
            graphs.CACHE.captures += 1
    except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager; the reason is reported
        reason = f"{type(exc).__name__}: {exc}".strip()
        graphs.CACHE.mark_failed(key, reason)
        warnings.warn(f"CUDA graph capture of the {what} chain failed ({reason}); running it eagerly (shown once "
                      "per chain configuration)", RuntimeWarning, stacklevel=stacklevel + 1)
        return None, None, f"eager: graph capture failed ({reason})"
    graphs.CACHE.put(key, entry)
    return chain, entry.replays, "captured"
