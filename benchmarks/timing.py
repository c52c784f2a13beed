"""Round-robin timing of variants run in one process (shared by the benchmark files)."""

from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["timed", "sync"]


def sync() -> None:
    """Wait for queued GPU work (a no-op without CUDA), so a host clock reads finished work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Fastest seconds per variant over ``rounds`` round-robin rounds (one warm-up call each first).

    The minimum, not the median: on a shared machine other processes only ever add time, and the
    median of two identical variants differed by 15% at a load average of 5 on 2 cores. The order
    rotates every round so that no variant always runs right after the same neighbour.
    """
    for fn in variants.values():
        fn()
    sync()
    names = list(variants)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            sync()
            t0 = time.perf_counter()
            variants[n]()
            sync()
            samples[n].append(time.perf_counter() - t0)
    return {n: min(v) for n, v in samples.items()}
