"""The fused Langevin step per backend against the same math written as separate PyTorch ops.

Run: ``pytest benchmarks/bench_langevin_step.py --benchmark-only --benchmark-json=benchmarks/results/<file>.json``
(add ``--benchmark-timer=time.process_time`` to time CPU work rather than wall time on a busy machine)

The baseline, :func:`torch_sequence`, is what a user writes without ebm_fast: ``torch.randn`` noise,
softmax weights of the composition, an einsum weighted sum of the leaf gradients, the update and a
clamp. Each benchmark also times that baseline in the same process and records the ratio in
``extra_info['speedup_vs_torch_sequence']``, with the achieved bandwidth over the step's memory floor
(docs/contract.md §5: bytes read of G, x, E plus bytes written of x') next to the device's measured copy bandwidth.
On a GPU every timed call runs ``STEPS_PER_CALL`` steps and synchronises once, so launch latency is
amortised the way a chain (or a CUDA-graph replay) amortises it; times in extra_info are per step.
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import pytest
import torch

import ebm_fast as ef
from ebm_fast import graphs
from ebm_fast.ops import available_backends, new_flag

# name: (N, B, D, expression over N leaves). "paper" is the target: 64x64 RGB, batch 128.
SHAPES = {"paper": (3, 128, 3 * 64 * 64), "small": (2, 16, 3 * 32 * 32)}
BACKENDS = ["torch_sequence", "torch", "cpu", "cuda", "triton"]
# (device, CPU threads): one thread as well as all of them, since on a shared machine a parallel
# region waits for its slowest thread to be scheduled (see csrc/langevin_step_cpu.cpp).
DEVICES = [("cpu", t) for t in sorted({1, torch.get_num_threads()})] + (
    [("cuda", None)] if torch.cuda.is_available() else [])
STEP_SIZE, NOISE, CLAMP = 0.01, 0.005, (0.0, 1.0)


class _Model:  # the step never calls the models: leaf energies and gradients are inputs
    def __call__(self, x, cond=None):  # pragma: no cover
        raise AssertionError("not called")


def _expression(n: int) -> ef.Expr:
    a, b, c = (ef.Concept(_Model()) for _ in range(3))
    return a & (b | c) if n == 3 else a | b


def torch_sequence(x, grads, energies, *, step_size, noise, clamp):
    """One Langevin step of ``a & (b | c)`` (N = 3) or ``a | b`` (N = 2) as separate PyTorch ops.

    x [B, D], grads [N, B, D], energies [N, B] -> x' [B, D].
    """
    if grads.shape[0] == 3:  # d(a + softmin(b, c)) = (1, softmax(-e_b, -e_c))
        w = torch.cat([torch.ones_like(energies[:1]), torch.softmax(-energies[1:], dim=0)])
    else:
        w = torch.softmax(-energies, dim=0)
    g = torch.einsum("nb,nbd->bd", w.to(grads.dtype), grads)
    xi = torch.randn_like(x)
    return (x - step_size * g + noise * xi).clamp(*clamp)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@functools.lru_cache(maxsize=None)
def copy_bandwidth(device: str, threads: int) -> float:
    """GB/s of ``dst.copy_(src)`` on a buffer well beyond the caches, counting bytes read and written
    (``threads``: torch's thread count it is measured with, part of the cache key)."""
    numel = (256 if device == "cuda" else 64) * 2**20 // 4
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(7):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / statistics.median(times[2:]) / 1e9


def _median_seconds(fn, device: str, timer=time.perf_counter, rounds: int = 9) -> float:
    fn()
    times = []
    for _ in range(rounds):
        _sync(device)
        t0 = timer()
        fn()
        _sync(device)
        times.append(timer() - t0)
    return statistics.median(times)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device, threads", DEVICES, ids=[f"{d}{t or ''}" for d, t in DEVICES])
def test_langevin_step(benchmark, machine, device, threads, backend, shape, dtype):
    if backend != "torch_sequence" and backend not in available_backends(device):
        pytest.skip(f"backend {backend!r} is not available on {device}")
    if device == "cpu" and backend == "triton":
        pytest.skip("Triton runs on the CPU only through its interpreter: not a benchmark")
    if device == "cpu" and dtype != torch.float32:
        pytest.skip("bf16 is benchmarked on the GPU only")
    benchmark.group = f"langevin_step {device}{threads or ''} {shape} {str(dtype).split('.')[-1]}"
    all_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # also the OpenMP team of the C++ kernel (torch's libgomp)
    try:
        _run(benchmark, machine, device, backend, shape, dtype)
    finally:
        torch.set_num_threads(all_threads)


def _run(benchmark, machine, device, backend, shape, dtype):
    n, b, d = SHAPES[shape]
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(b, d, generator=gen, device=device).to(dtype)
    grads = torch.randn(n, b, d, generator=gen, device=device).to(dtype)
    energies = torch.randn(n, b, generator=gen, device=device)
    expr = _expression(n)
    out = torch.empty_like(x)
    flag = new_flag(device)
    steps = 20 if device == "cuda" else 1

    def sequence_steps():
        for _ in range(steps):
            torch_sequence(x, grads, energies, step_size=STEP_SIZE, noise=NOISE, clamp=CLAMP)

    def fused_steps():
        for k in range(steps):
            ef.ops.langevin_step(x, grads, energies, expr, step_size=STEP_SIZE, noise=NOISE, seed=1, step=k,
                                 clamp=CLAMP, backend=backend, out=out, flag=flag)

    def sequence():
        sequence_steps()
        _sync(device)

    def fused():
        fused_steps()
        _sync(device)

    fn = sequence if backend == "torch_sequence" else fused
    # the baseline is timed with the benchmark's own timer (--benchmark-timer, e.g. time.process_time
    # for CPU time on a busy machine)
    timer = getattr(benchmark, "_timer", time.perf_counter)
    baseline_before = _median_seconds(sequence, device, timer)
    benchmark.pedantic(fn, rounds=15 if device == "cpu" else 30, iterations=1, warmup_rounds=2)
    baseline_after = _median_seconds(sequence, device, timer)
    per_call = benchmark.stats.stats.median
    baseline = (baseline_before + baseline_after) / 2  # the machine may be shared: bracket the run
    floor_bytes = (n * b * d + 2 * b * d) * x.element_size() + n * b * 4
    per_step = per_call / steps
    benchmark.extra_info.update(machine(device))
    benchmark.extra_info.update({
        "backend": backend, "dtype": str(dtype).split(".")[-1], "shape": {"N": n, "B": b, "D": d},
        "steps_per_call": steps, "step_ms": per_step * 1e3, "torch_sequence_step_ms": baseline / steps * 1e3,
        "speedup_vs_torch_sequence": baseline / per_call, "elements_per_s": b * d / per_step,
        "memory_floor_bytes": floor_bytes, "achieved_GBps": floor_bytes / per_step / 1e9,
        "copy_GBps": copy_bandwidth(device, torch.get_num_threads()),
        "fraction_of_copy_bandwidth": floor_bytes / per_step / 1e9 / copy_bandwidth(device, torch.get_num_threads()),
        "timer": getattr(timer, "__name__", str(timer)),
        **(_graph_figures(sequence_steps, sequence_steps if backend == "torch_sequence" else fused_steps, device,
                          steps, floor_bytes) if device == "cuda" else {}),
        "loadavg_1min": os.getloadavg()[0],  # other processes on the machine while this ran
    })


def _graph_figures(sequence_steps, steps_fn, device: str, steps: int, floor_bytes: int) -> dict:
    """The same ``steps`` steps captured in one CUDA graph per side and replayed: no Python or launch
    overhead, so the step's own memory traffic shows. The paper-size working set (31 MB) fits in the
    H100's 50 MB L2, as in a chain where the backward has just written the gradients."""
    dev = torch.device(device)
    try:
        ours = _median_seconds(graphs.capture(steps_fn, steps_fn, dev), device, rounds=30) / steps
        base = _median_seconds(graphs.capture(sequence_steps, sequence_steps, dev), device, rounds=30) / steps
    except RuntimeError as exc:  # a backend whose step cannot be captured: say why, time nothing
        return {"graph_error": str(exc)[:200]}
    return {"graph_step_us": ours * 1e6, "graph_torch_sequence_step_us": base * 1e6,
            "graph_speedup_vs_torch_sequence": base / ours, "graph_achieved_GBps": floor_bytes / ours / 1e9,
            "graph_fraction_of_copy_bandwidth": floor_bytes / ours / 1e9 / copy_bandwidth(device, torch.get_num_threads())}
