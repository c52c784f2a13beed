"""The pieces of a training run around the trainer: devices and processes, the chains' model mode, what a
checkpoint holds, and the run's log.

* :func:`dist_setup` -- rank, world size and device; starts the process group under ``torchrun``.
* :func:`sampling_mode` -- the model as the negative chains use it (eval mode, no parameter gradients,
  spectral-norm weights computed once per chain on the CPU).
* :func:`replay_state`, :func:`to_cpu` -- checkpoint contents loadable with ``weights_only=True``.
* :func:`truncate_log` -- drop log lines a killed run wrote after its last checkpoint.
* :func:`roughness` -- a noise meter for the negatives.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["dist_setup", "sampling_mode", "replay_state", "replay_dtype", "to_cpu", "truncate_log", "roughness"]


def dist_setup(device: str) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if world <= 1:
        return 0, 1, dev
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"local rank {local} has no CUDA device: this machine has {torch.cuda.device_count()}; "
                             "start at most that many processes per node, or pass --device cpu (gloo)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


@contextlib.contextmanager
def sampling_mode(model: nn.Module, cache_weights: bool):
    """Eval mode, no parameter gradients, and (optionally) spectral-norm weights computed once.

    ``parametrize.cached`` computes each ``W / sigma`` once for the whole chain instead of once per
    Langevin step; it allocates fresh weight tensors, so it is used only where no CUDA graph is
    keyed on parameter storage (the CPU).
    """
    from torch.nn.utils import parametrize

    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with parametrize.cached() if cache_weights else contextlib.nullcontext():
            yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


def replay_state(replay) -> dict:
    """The buffer's state with only primitives and tensors (``weights_only``-loadable)."""
    st = dict(replay.state_dict())
    for k, v in st.items():
        if isinstance(v, torch.dtype):
            st[k] = str(v)
        elif isinstance(v, tuple):
            st[k] = list(v)
    return st


def replay_dtype(name: str) -> torch.dtype:
    return torch.uint8 if name == "uint8" else torch.float32


def roughness(images: Tensor) -> float:
    """Mean absolute deviation of images ``(B, C, H, W)`` from their 3x3 local mean.

    A noise meter for the negatives: uniform noise in [0, 1] scores ~0.23, the 32x32 MuJoCo scenes
    ~0.026; negatives far above the data's value are still noisy chains.
    """
    x = images.detach().float()
    return float((x - F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)).abs().mean())


def to_cpu(obj):
    """``obj`` with every tensor moved to the CPU (dicts become plain dicts)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written by a run that died after its last checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if rec.get("step", 0) <= step and not rec.get("final"):
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
