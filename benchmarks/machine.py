"""What machine a benchmark ran on, for ``benchmark.extra_info`` (shared by every benchmark file)."""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["bf16_units", "device_name", "machine_info"]


def device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def bf16_units(device: torch.device | str = "cpu") -> list[str]:
    """The CPU's bfloat16 instruction sets (``amx_bf16``, ``avx512_bf16``) from /proc/cpuinfo; on CUDA,
    the device's compute capability."""
    device = torch.device(device)
    if device.type == "cuda":
        return ["sm_%d%d" % torch.cuda.get_device_capability(device)]
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted({"amx_bf16", "avx512_bf16"} & set(flags))


def machine_info(device: torch.device | str = "cpu") -> dict:
    """Device name, torch/triton versions, thread count and bf16 units, for ``benchmark.extra_info``."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": device_name(device), "torch": torch.__version__, "triton": triton_version,
            "threads": torch.get_num_threads(), "bf16_units": bf16_units(device)}
