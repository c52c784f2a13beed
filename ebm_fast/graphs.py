"""CUDA-graph capture, cache and replay of Langevin chains.

A chain step on a GPU at the paper's sizes is launch-bound: one step of a small conv EBM is a few
hundred kernel launches of a few microseconds each. The sampler therefore captures ``S`` steps --
the leaves' forward, the input-gradient backward, the fused step and the counter update -- in one
``torch.cuda.CUDAGraph`` and replays it ``K // S`` times (plus one graph of ``K mod S`` steps when
``S`` does not divide ``K``). Everything a replay reads lives in static device buffers owned by the
cached chain: the state, the conditions, the step-size/noise window, the RNG seed and a step counter
that the graph itself advances, so every replay draws fresh noise (docs/contract.md §4) without a host sync.

Cache. A captured chain is reused by later calls whose *key* matches: the expression's program
table, every leaf's model fingerprint (:func:`ebm_fast.model_state.inspect_model`), the storage of
every parameter and buffer of the models (data pointer, shape, dtype) and their train/eval flags,
the conditions' shapes and dtypes (their *values* are copied into the static buffers per call), the
state's shape/dtype/device, the backend, order, clip, clamp, grouping, autocast and compile options
and ``S``. Weights updated in place (an optimizer step, ``load_state_dict``) keep their storage, so
a training loop keeps replaying the same graph and sees the new weights; re-allocated parameters
(``model.to(...)``, ``p.data = ...``) change the key and trigger a new capture. Entries hold strong
references to their models; :func:`clear_cache` drops them, :func:`set_cache_size` bounds them (LRU).

If a capture fails (an op that syncs with the host, a CPU fallback inside the model, ...), the
sampler warns once per key with the reason (the first exception of the failure's chain, which
names the op that broke the capture where torch raised one, rather than capture_end's follow-up
error) and runs that chain eagerly; the device's default generator is taken out of capture mode, so
``torch.rand`` and dropout keep working afterwards (measured on an H100: without that, every later
random op on the device raised).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import nn

__all__ = ["capture", "graph_support", "module_state", "GraphEntry", "GraphCache", "CACHE", "cache_info",
           "clear_cache", "set_cache_size", "DEFAULT_GRAPH_STEPS", "WARMUP_STEPS"]

# S, the steps per graph: one replay launches S steps. 20 divides the paper's K = 60 (and 40, 80,
# 100, 200); capture time grows with S, memory does not (the graph's pool reuses one step's blocks).
DEFAULT_GRAPH_STEPS = 20
# Eager steps on a side stream before capture: compiles Triton kernels, initialises cuBLAS/cuDNN
# workspaces and the autograd engine's device threads, as torch.cuda.graphs requires.
WARMUP_STEPS = 3


def graph_support(device: torch.device) -> str | None:
    """None if chains on ``device`` can be captured, else the reason why not."""
    if device.type != "cuda":
        return f"CUDA graphs need CUDA tensors; x0 is on {device}"
    if not torch.cuda.is_available():  # pragma: no cover - a CUDA tensor exists only with CUDA
        return "CUDA is not available"
    return None


def capture(run: Callable[[], None], warmup: Callable[[], None], device: torch.device,
            warmup_steps: int = WARMUP_STEPS) -> Callable[[], None]:
    """Capture ``run`` in a ``torch.cuda.CUDAGraph`` after ``warmup_steps`` calls of ``warmup`` on a
    side stream; return the graph's ``replay``. ``run`` must read and write only static buffers."""
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            warmup()
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            run()
    except Exception as exc:
        _release_generators_after_failed_capture(device)
        root = exc
        while root.__context__ is not None and root.__context__ is not root:  # the op that broke the capture,
            root = root.__context__  # not capture_end's "operation failed due to a previous error"
        if root is exc:
            raise
        raise RuntimeError(f"{type(root).__name__}: {root}".strip()) from exc
    return graph.replay


def _release_generators_after_failed_capture(device: torch.device) -> None:
    """Take ``device``'s default CUDA generator out of capture mode after a capture that failed.

    ``CUDAGraph.capture_end`` ends the generators' capture only when ``cudaStreamEndCapture``
    succeeds; after an invalidated capture the generator stays marked as capturing, and every later
    ``torch.rand``/dropout on the device raises "Offset increment outside graph capture encountered
    unexpectedly". A clone of the state (seed and offset, not the capture flag) replaces it.
    """
    gen = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    gen.graphsafe_set_state(gen.clone_state())


def module_state(m: nn.Module) -> tuple:
    """What a captured graph depends on in a module: parameter/buffer storage and train/eval flags."""
    tensors = [*m.parameters(), *m.buffers()]
    return (id(m), tuple(sub.training for sub in m.modules()),
            tuple((t.data_ptr(), tuple(t.shape), str(t.dtype)) for t in tensors))


@dataclass
class GraphEntry:
    """A cached chain: its static buffers (``chain``), one replay per captured length, and strong
    references to what the key names by identity (so those identities stay valid)."""

    chain: Any
    replays: dict[int, Callable[[], None]] = field(default_factory=dict)
    keep_alive: Sequence[Any] = ()


class GraphCache:
    """An LRU cache of :class:`GraphEntry` by key, with hit/miss/capture/failure counters."""

    def __init__(self, max_entries: int = 8):
        self.max_entries = max_entries
        self._entries: "OrderedDict[Hashable, GraphEntry]" = OrderedDict()
        self._failed: dict[Hashable, str] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = self.captures = self.failures = 0

    def get(self, key: Hashable) -> GraphEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: Hashable, entry: GraphEntry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def failed(self, key: Hashable) -> str | None:
        """The reason a capture under ``key`` failed before, or None."""
        return self._failed.get(key)

    def mark_failed(self, key: Hashable, reason: str) -> None:
        with self._lock:
            self.failures += 1
            self._failed[key] = reason
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._failed.clear()
            self.hits = self.misses = self.captures = self.failures = 0

    def info(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "captures": self.captures,
                "failures": self.failures, "size": len(self._entries), "max_entries": self.max_entries}


CACHE = GraphCache()


def cache_info() -> dict:
    """Counters of the chain-graph cache: hits, misses, captures, failures, size, max_entries."""
    return CACHE.info()


def clear_cache() -> None:
    """Drop every cached graph (and the references it holds to models and buffers)."""
    CACHE.clear()


def set_cache_size(max_entries: int) -> None:
    """Keep at most ``max_entries`` captured chains (least recently used are dropped)."""
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
        raise ValueError(f"max_entries must be an int >= 0, got {max_entries!r}")
    CACHE.max_entries = max_entries
    with CACHE._lock:
        while len(CACHE._entries) > max_entries:
            CACHE._entries.popitem(last=False)
