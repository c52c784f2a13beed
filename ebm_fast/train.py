"""Training conditional EBMs: contrastive divergence with Langevin negatives and a replay buffer.

One iteration (Du & Mordatch 2019, as in the released code):

1. positives ``x+`` ``(B, C, H, W)`` and their conditions ``y`` from the data;
2. negatives: chains start from the replay buffer with probability ``replay_p`` (0.95) and from
   uniform noise otherwise, run ``langevin_steps`` steps of :func:`ebm_fast.sample` on
   ``Concept(model, y, per_sample=True)`` (conjoined with frozen concepts in continual learning),
   and are added back to the buffer;
3. loss ``mean(E(x+) - E(x-)) + alpha * mean(E(x+)^2 + E(x-)^2)`` (alpha = 1), Adam (lr 3e-4,
   betas (0, 0.999)), optional gradient-norm clipping, optional EMA of the weights.

The sampler runs on the *unwrapped* model (never through DistributedDataParallel, whose hooks expect
one forward per backward) in eval mode without parameter gradients; on the CPU the spectral-norm
weights are computed once per chain (``torch.nn.utils.parametrize.cached``) instead of once per step.

Everything is configured by :class:`TrainConfig` (also the CLI, ``ebm-fast train``). Outputs in
``config.out``: ``log.jsonl`` (one JSON object per ``log_every`` iterations), ``samples/neg_*.png``
(grids of negatives), ``ckpt/last.pt`` and ``ckpt/prev.pt`` (see :mod:`ebm_fast.checkpoint`),
``config.json`` and, at the end, ``model.pt`` (EMA weights if enabled; load with
:func:`ebm_fast.models.load_model`).

Resuming (``resume=True``, ``--resume``) restores model, optimiser, EMA, replay buffer(s), every RNG
state and the step, so on the CPU ``n`` iterations, a kill, and a resume to ``2n`` give bit-identical
parameters to ``2n`` uninterrupted iterations.

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel (gloo on the
CPU, nccl on GPUs); each rank has its own data stream and replay buffer; rank 0 writes the
checkpoints, which hold every rank's buffer and RNG states.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dictconfig import DictConfig
from .checkpoint import CheckpointManager, rng_state, set_rng_state
from .continual import FrozenConcept, load_frozen, negatives_expr, param_digest
from .leaf_eval import prefers_channels_last
from .models import (MODEL_CONFIGS, POOLS, EnergyEnsemble, build_model, condition_head_keys, load_model,
                     load_weights_widening, save_model)

__all__ = ["TrainConfig", "ConditionalData", "Trainer", "load_data", "synthetic_data", "train", "cli_main",
           "ATTRIBUTES"]

# dataset attribute -> (label key in the scenes labels, cond_type); class counts come from the dataset
ATTRIBUTES = {"position": ("pos", "continuous"), "pos": ("pos", "continuous"), "size": ("size", "continuous"),
              "color": ("color", "onehot"), "shape": ("shape", "onehot")}


def label_key(name: str) -> str:
    """The label an attribute name reads (``"position"`` and ``"pos"`` both read ``"pos"``); a name
    :data:`ATTRIBUTES` does not list (another label of an .npz, ``"none"``) is its own key."""
    return ATTRIBUTES.get(name, (name,))[0]


# Config fields a resumed run may change (bookkeeping, where the run folder now is, and how the same
# chains are executed: compiled or eager, which step backend); any other difference is an error.
# cond_contrast (and cond_jitter, cond_reg, cond_adv, cond_adv_steps) may also be switched on (or re-weighted) in a
# resumed run, so a run that has not learned to read its condition can be fine-tuned with the term (its log
# lines carry cond_loss from then on); init_from is read only when a run starts.
RESUME_OVERRIDABLE = ("iterations", "log_every", "image_every", "checkpoint_every", "export_every", "progress",
                      "threads", "device", "resume", "compile", "backend", "out", "cond_contrast", "cond_jitter",
                      "cond_reg", "cond_adv", "cond_adv_steps", "init_from", "max_minutes")


@dataclass
class TrainConfig(DictConfig):
    """Everything a training run needs (defaults: the paper's settings where it gives them).

    Data: ``data`` is ``"scenes"`` (render/cache :mod:`ebm_fast.data.scenes` with ``n_images``,
    ``resolution``, ``data_seed``, ``shapes``, ``colors``, ``distractors``, ``renderer``) or the path
    of an ``.npz`` with ``images`` (``(N, H, W, 3)`` or ``(N, 3, H, W)``, uint8 or floats in [0, 1])
    and labels ``label_<name>`` or ``<name>``. ``cond`` names the label that conditions the model:
    ``position``, ``color``, ``shape``, ``size``, any other label key of the .npz, or ``none``.
    """

    out: str = "runs/concept"
    # data
    data: str = "scenes"
    cond: str = "position"
    resolution: int = 32
    n_images: int = 10000
    data_seed: int = 0
    shapes: tuple[str, ...] | None = None
    colors: tuple[str, ...] | None = None
    distractors: int = 0
    renderer: str = "auto"
    # model
    model: str = "small32"
    spectral_norm: bool = True
    pool: str | None = None
    coords: bool = False
    init_from: str | None = None
    # optimisation
    iterations: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    betas: tuple[float, float] = (0.0, 0.999)
    alpha: float = 1.0
    cond_contrast: float = 0.0
    cond_jitter: float = 0.0
    cond_reg: float = 0.0
    cond_adv: float = 0.0
    cond_adv_steps: int = 1
    grad_clip: float | None = None
    ema: float | None = None
    # negatives
    langevin_steps: int = 60
    step_size: float = 10.0
    noise: float = 0.005
    sample_grad_clip: float | None = 0.01
    order: str = "noise_first"
    backend: str = "auto"
    replay_capacity: int = 10000
    replay_p: float = 0.95
    replay_dtype: str = "uint8"
    replay_labels: bool = True
    compile: bool = False
    # continual learning: frozen concepts "PATH=ATTRIBUTE"
    frozen: tuple[str, ...] = ()
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    log_every: int = 10
    image_every: int = 250
    checkpoint_every: int = 100
    export_every: int = 0
    max_minutes: float | None = None
    progress: bool = True
    resume: bool = False

    def __post_init__(self) -> None:
        def positive(name, integer=True, allow_zero=False):
            v = getattr(self, name)
            ok = isinstance(v, int) and not isinstance(v, bool) if integer else isinstance(v, (int, float))
            if not ok or (v < 0 if allow_zero else v <= 0) or (not integer and not math.isfinite(v)):
                kind = "an integer" if integer else "a number"
                raise ValueError(f"{name}: expected {kind} {'>= 0' if allow_zero else '> 0'}, got {v!r}")

        for name in ("resolution", "n_images", "iterations", "batch_size", "langevin_steps", "replay_capacity",
                     "log_every", "image_every", "checkpoint_every", "cond_adv_steps"):
            positive(name)
        positive("data_seed", allow_zero=True)
        positive("export_every", allow_zero=True)
        positive("seed", allow_zero=True)
        positive("distractors", allow_zero=True)
        for name in ("lr", "step_size"):
            positive(name, integer=False)
        positive("noise", integer=False, allow_zero=True)
        positive("alpha", integer=False, allow_zero=True)
        positive("cond_contrast", integer=False, allow_zero=True)
        positive("cond_jitter", integer=False, allow_zero=True)
        positive("cond_reg", integer=False, allow_zero=True)
        positive("cond_adv", integer=False, allow_zero=True)
        for name in ("cond_jitter", "cond_reg", "cond_adv"):
            if getattr(self, name) and not self.cond_contrast:
                raise ValueError(f"{name}: acts on the wrong conditions of the ranking term; set cond_contrast > 0 too")
        if self.cond_adv_steps != 1 and not self.cond_adv:
            raise ValueError("cond_adv_steps: counts the steps of the cond_adv attack; set cond_adv > 0 too")
        for name in ("grad_clip", "sample_grad_clip", "max_minutes"):
            if getattr(self, name) is not None:
                positive(name, integer=False)
        if self.cond_contrast and self.cond == "none":
            raise ValueError("cond_contrast: an unconditional model (cond='none') has no condition to contrast")
        if self.ema is not None and not (0.0 < self.ema < 1.0):
            raise ValueError(f"ema: expected a decay in (0, 1) or None, got {self.ema!r}")
        if not (0.0 <= self.replay_p <= 1.0):
            raise ValueError(f"replay_p: expected a probability in [0, 1], got {self.replay_p!r}")
        if self.replay_dtype not in ("uint8", "float32"):
            raise ValueError(f"replay_dtype: expected 'uint8' or 'float32', got {self.replay_dtype!r}")
        if self.order not in ("noise_first", "ula"):
            raise ValueError(f"order: expected 'noise_first' or 'ula', got {self.order!r}")
        if self.pool is not None and self.pool not in POOLS:
            raise ValueError(f"pool: expected one of {POOLS} or None, got {self.pool!r}")
        if self.model not in MODEL_CONFIGS:
            raise ValueError(f"model: expected one of {sorted(MODEL_CONFIGS)}, got {self.model!r}")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {self.betas!r}")
        for name in ("shapes", "colors", "frozen"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, (v,) if isinstance(v, str) else tuple(v))


# ---- data ------------------------------------------------------------------------------------------
@dataclass
class ConditionalData:
    """Images and per-image labels held in memory.

    Attributes:
        images: ``(N, C, H, W)`` uint8 (0..255) or float (in [0, 1]).
        labels: name -> ``(N, ...)`` tensor (int64 class indices or float32 values).
        specs: name -> ``(cond_type, cond_dim)`` for every label that can condition a model.
        meta: primitives describing the data (source, class names...), stored with the model.
    """

    images: Tensor
    labels: dict[str, Tensor]
    specs: dict[str, tuple[str, int]]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images: expected (N, C, H, W), got shape {tuple(self.images.shape)}")
        n = self.images.shape[0]
        bad = {k: tuple(v.shape) for k, v in self.labels.items() if v.shape[0] != n}
        if bad:
            raise ValueError(f"labels: expected {n} rows like images, got {bad}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "ConditionalData":
        return ConditionalData(self.images.to(device), {k: v.to(device) for k, v in self.labels.items()},
                               self.specs, self.meta)

    def batch(self, idx: Tensor, names: Sequence[str]) -> tuple[Tensor, list[Tensor]]:
        """Float images ``(B, C, H, W)`` in [0, 1] and the labels ``names`` for indices ``idx``."""
        x = self.images[idx]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x, [self.labels[n][idx] for n in names]

    def attribute(self, name: str) -> tuple[str, str, int]:
        """``(label key, cond_type, cond_dim)`` of a conditioning attribute name."""
        key = label_key(name)
        if key not in self.specs:
            raise ValueError(f"cond: expected one of {sorted(set(self.specs) | {'none'})} for this data, got {name!r}")
        return (key, *self.specs[key])


def _specs_from_labels(labels: dict[str, Tensor], class_counts: dict[str, int]) -> dict[str, tuple[str, int]]:
    specs = {}
    for k, v in labels.items():
        if v.is_floating_point():
            specs[k] = ("continuous", 1 if v.dim() == 1 else int(np.prod(v.shape[1:])))
        elif v.dim() == 1:
            specs[k] = ("onehot", class_counts.get(k, int(v.max()) + 1 if v.numel() else 1))
    return specs


def _images_tensor(images: np.ndarray) -> Tensor:
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images: expected 4-d (N, H, W, C) or (N, C, H, W), got shape {images.shape}")
    t = torch.from_numpy(np.ascontiguousarray(images))
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.dtype != torch.uint8:
        t = t.float()
    return t.contiguous()


def load_data(config: TrainConfig) -> ConditionalData:
    """The training data ``config`` names (the scenes dataset or an .npz file)."""
    from .data import scenes

    # class counts: the scenes' (all classes, also for a subset such as purple boxes), a .npz's
    # meta lists (as save_scenes writes), else max label + 1
    counts: dict[str, int] = {}
    if config.data == "scenes":
        counts = {"shape": len(scenes.SHAPES), "color": len(scenes.COLOR_NAMES)}
        kw = {}
        if config.shapes:
            kw["shapes"] = tuple(config.shapes)
        if config.colors:
            kw["colors"] = tuple(config.colors)
        sc = scenes.SceneConfig(n=config.n_images, resolution=config.resolution, seed=config.data_seed,
                                distractors=config.distractors, **kw)
        images, labels = scenes.load_scenes(sc, renderer=config.renderer, progress=config.progress)
        meta = {"source": "scenes", "scene_config": sc.to_dict(), "shapes": list(scenes.SHAPES),
                "colors": list(scenes.COLOR_NAMES)}
    else:
        path = Path(config.data)
        if not path.is_file():
            raise ValueError(f"data: expected 'scenes' or the path of an .npz file, got {config.data!r} (no such file)")
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise ValueError(f"data {path}: expected an 'images' array, got arrays {z.files}")
            images = z["images"]
            labels = {}
            for k in z.files:
                if k.startswith("label_"):
                    labels[k[len("label_"):]] = z[k]
                elif k not in ("images", "meta"):
                    labels[k] = z[k]
            meta = {"source": str(path)}
            if "meta" in z.files:
                info = json.loads(str(z["meta"]))
                for k in ("shapes", "colors"):
                    if k in info:
                        meta[k] = list(info[k])
                        counts[k[:-1]] = len(info[k])
    t_images = _images_tensor(images)
    t_labels = {k: torch.from_numpy(np.asarray(v)) for k, v in labels.items()}
    t_labels = {k: (v.long() if not v.is_floating_point() else v.float()) for k, v in t_labels.items()
                if v.shape[:1] == (t_images.shape[0],)}
    return ConditionalData(t_images, t_labels, _specs_from_labels(t_labels, counts), meta)


def synthetic_data(n: int = 256, resolution: int = 16, seed: int = 0) -> ConditionalData:
    """A tiny conditional dataset for tests and smoke runs: a bright square on a dark background.

    Labels: ``pos`` ``(N, 2)`` in [-1, 1]^2 (the square's centre), ``color`` ``(N,)`` in {0, 1, 2}
    (red, green, blue square). Images ``(N, 3, R, R)`` uint8.
    """
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 2, generator=g) * 2 - 1
    color = torch.randint(0, 3, (n,), generator=g)
    r = resolution
    side = max(2, r // 2)
    coords = torch.arange(r, dtype=torch.float32)
    cx = (pos[:, 0] + 1) / 2 * (r - side) + side / 2
    cy = (1 - pos[:, 1]) / 2 * (r - side) + side / 2  # +y is up in the image
    inside = ((coords.view(1, 1, r) - cx.view(n, 1, 1)).abs() < side / 2) & \
             ((coords.view(1, r, 1) - cy.view(n, 1, 1)).abs() < side / 2)
    img = torch.full((n, 3, r, r), 0.1)
    rgb = torch.eye(3)[color] * 0.8 + 0.1
    img = torch.where(inside.unsqueeze(1), rgb.view(n, 3, 1, 1), img)
    images = (img * 255).round().to(torch.uint8)
    labels = {"pos": pos, "color": color}
    return ConditionalData(images, labels, {"pos": ("continuous", 2), "color": ("onehot", 3)},
                           {"source": f"synthetic(n={n}, resolution={r}, seed={seed})", "colors": ["red", "green", "blue"]})


# ---- distributed -----------------------------------------------------------------------------------
def _dist_setup(device: str) -> tuple[int, int, torch.device]:
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
def _sampling_mode(model: nn.Module, cache_weights: bool):
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


def _replay_state(replay) -> dict:
    """The buffer's state with only primitives and tensors (``weights_only``-loadable)."""
    st = dict(replay.state_dict())
    for k, v in st.items():
        if isinstance(v, torch.dtype):
            st[k] = str(v)
        elif isinstance(v, tuple):
            st[k] = list(v)
    return st


def _replay_dtype(name: str) -> torch.dtype:
    return torch.uint8 if name == "uint8" else torch.float32


# ---- the trainer -----------------------------------------------------------------------------------
class Trainer:
    """A training run. ``Trainer(config).train()`` runs it; :meth:`step` is one iteration.

    Args:
        config: the run's :class:`TrainConfig`.
        data: the data (default: :func:`load_data` of ``config``).
        model: an energy model ``forward(x, cond) -> (B,)`` (default: ``build_model(config.model, ...)``
            with the condition of ``config.cond``). A model not built by :mod:`ebm_fast.models` needs
            a ``config`` dict attribute to be exported with :func:`ebm_fast.models.save_model`.
        frozen: frozen earlier concepts for continual learning (default: loaded from ``config.frozen``).
    """

    def __init__(self, config: TrainConfig, data: ConditionalData | None = None, model: nn.Module | None = None,
                 frozen: list[FrozenConcept] | None = None):
        import ebm_fast as ef

        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.rank, self.world, self.device = _dist_setup(config.device)
        self.out = Path(config.out)
        self.is_main = self.rank == 0

        data = data if data is not None else load_data(config)
        self.data = data.to(self.device)
        self.cond_names: list[str] = []
        if config.cond != "none":
            key, ctype, cdim = self.data.attribute(config.cond)
            self.cond_names.append(key)
        else:
            ctype, cdim = "none", 0
        if model is None:
            torch.manual_seed(config.seed)  # the same initial weights on every rank
            extra = {} if config.pool is None else {"pool": config.pool}
            model = build_model(config.model, cdim, ctype, spectral_norm=config.spectral_norm,
                                coords=config.coords, in_channels=self.data.images.shape[1], **extra)
        if config.init_from is not None:  # a fresh run's starting weights (a resume then loads its checkpoint)
            self._init_from(model, config.init_from)
        self.model = model.to(self.device)
        self.frozen = list(frozen) if frozen is not None else [load_frozen(s, self.device) for s in config.frozen]
        for f in self.frozen:
            self.cond_names.append(self.data.attribute(f.attribute)[0])

        self.net: nn.Module = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=config.betas)
        self.ema = None
        if config.ema is not None:
            self.ema = copy.deepcopy(self.model).eval()
            for p in self.ema.parameters():
                p.requires_grad_(False)
        shape = tuple(self.data.images.shape[1:])
        # With replay_labels, a stored state keeps the conditions it was sampled under, so a replayed
        # chain continues under its own label (persistent conditional chains); fresh chains take the
        # data batch's labels. Without, every chain takes the batch's labels (the released code).
        self._label_sizes = [int(np.prod(self.data.labels[n].shape[1:])) for n in self.cond_names]
        self._label_dtypes = [self.data.labels[n].dtype for n in self.cond_names]
        store_labels = config.replay_labels and bool(self.cond_names)
        self.replay = ef.ReplayBuffer(config.replay_capacity, shape, dtype=_replay_dtype(config.replay_dtype),
                                      device=self.device,
                                      label_shape=(sum(self._label_sizes),) if store_labels else None)
        # All of this rank's training randomness (batch indices, chain seeds, replay draws) comes from
        # generators seeded by (seed, rank): ranks see different data and noise, and their states are
        # checkpointed.
        rank_seed = config.seed * 1_000_003 + self.rank
        self.gen = torch.Generator(device="cpu").manual_seed(rank_seed)
        self._replay_seed = rank_seed + 7919
        self.replay_gen = torch.Generator(device=self.device).manual_seed(self._replay_seed)
        torch.manual_seed(rank_seed)
        np.random.seed(rank_seed % 2**32)  # unused here; seeded so user hooks are repeatable too
        random.seed(rank_seed)
        self.step_count = 0
        self.ckpt = CheckpointManager(self.out / "ckpt")
        # parametrize.cached() hands the model fresh weight tensors per chain: fine for eager CPU
        # chains, but it would defeat a CUDA graph or a compiled function keyed on parameter storage.
        self._cache_weights = self.device.type == "cpu" and not config.compile
        # oneDNN's NHWC convolutions ran the update (forward + parameter backward, small32, 2B = 64 rows,
        # one thread) 1.1-1.5x faster than NCHW on the CPU, as they do the chains (leaf_eval).
        self._update_channels_last = len(shape) == 3 and prefers_channels_last(self.model, self.device)
        self.last_negatives: Tensor | None = None
        self.last_positives: Tensor | None = None
        self.last_positive_cond: Tensor | None = None
        self.last_negative_conds: list[Tensor] = []

    # --- one iteration ----------------------------------------------------------------------------
    def _seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self.gen))

    def _pack(self, conds: list[Tensor]) -> Tensor:
        """Per-sample conditions -> one float32 ``(B, L)`` row each (the replay buffer's labels)."""
        return torch.cat([c.reshape(c.shape[0], -1).float() for c in conds], dim=1)

    def _unpack(self, packed: Tensor) -> list[Tensor]:
        out, at = [], 0
        for name, size, dtype in zip(self.cond_names, self._label_sizes, self._label_dtypes):
            c = packed[:, at:at + size].reshape(packed.shape[0], *self.data.labels[name].shape[1:])
            out.append(c.round().to(dtype) if not dtype.is_floating_point else c.to(dtype))
            at += size
        return out

    def sample_negatives(self, conds: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Negatives ``(B, C, H, W)`` and their per-sample conditions.

        ``conds``: the data batch's conditions (the model's, then each frozen concept's), used by the
        chains that start from noise (and by every chain when ``replay_labels`` is off).
        """
        import ebm_fast as ef

        c = self.config
        n = c.batch_size
        packed = self._pack(conds) if self.replay.labels is not None else None
        draw = self.replay.sample(n, p=c.replay_p, labels=packed, generator=self.replay_gen)
        neg_conds = self._unpack(draw.labels) if packed is not None else conds
        own, others = (None, neg_conds) if c.cond == "none" else (neg_conds[0], neg_conds[1:])
        with _sampling_mode(self.model, self._cache_weights):
            expr = negatives_expr(self.model, own, self.frozen, others)
            x = ef.sample(expr, draw.x, steps=c.langevin_steps, step_size=c.step_size, noise=c.noise,
                          clamp=(0.0, 1.0), grad_clip=c.sample_grad_clip, order=c.order, seed=self._seed(),
                          backend=c.backend, compile=c.compile)
        x = x.detach()
        self.replay.add(x, labels=draw.labels)
        return x, neg_conds

    def mismatched_conditions(self, cond: Tensor) -> Tensor:
        """A wrong condition for each positive, for the ``cond_contrast`` term: another class drawn
        uniformly for class indices, the label of another batch element (a random permutation) for
        continuous labels. With ``cond_jitter`` = s > 0, every second continuous one is instead the
        positive's own label plus Gaussian noise of scale s: a near miss, which teaches the energy to
        peak sharply at the true value rather than only to tell it from a far-away one. Drawn from the
        run's generator, so only runs with the term draw it."""
        b = cond.shape[0]
        if not cond.is_floating_point():
            classes = self.data.attribute(self.config.cond)[2]
            shift = torch.randint(1, max(classes, 2), (b,), generator=self.gen).to(cond.device)
            return (cond + shift.view(b, *([1] * (cond.dim() - 1)))) % classes
        perm = torch.randperm(b, generator=self.gen).to(cond.device)
        wrong = cond[perm]
        if self.config.cond_jitter > 0:
            near = cond + self.config.cond_jitter * torch.randn(cond.shape, generator=self.gen).to(cond)
            wrong[1::2] = near[1::2]  # cond[perm] is a copy
        return wrong

    def adversarial_positives(self, x_pos: Tensor, cond_pos: Tensor, cond_wrong: Tensor, differs: Tensor) -> Tensor:
        """The positives moved towards their wrong conditions, for the ``cond_adv`` term: a uniform random
        start in the L-inf ball of radius eps = ``cond_adv`` around each image, then ``cond_adv_steps``
        signed-gradient steps that raise the ranking loss ``softplus(E(x|c+) - E(x|c~))``, each projected
        back into the ball and into [0, 1]. One step has size eps (a one-step attack with a random start);
        n > 1 steps have size 2.5 eps / n each (projected gradient descent as Madry et al. set it), so the
        attack can cross the ball and come back. The aim: a condition read from what moving a pixel by
        eps cannot change, so that lowering ``E(x | c)`` draws ``c``. One step can carry the label
        instead (session 17 measured that; docs/training.md); several steps are the known remedy. The
        random start is drawn from the run's generator."""
        eps, steps, b = self.config.cond_adv, self.config.cond_adv_steps, x_pos.shape[0]
        size = eps if steps == 1 else 2.5 * eps / steps
        lo, hi = x_pos - eps, x_pos + eps
        x = (x_pos + (torch.rand(x_pos.shape, generator=self.gen) * 2 - 1).to(x_pos) * eps).clamp(0, 1)
        conds = torch.cat([cond_pos, cond_wrong])
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                e = self.model(torch.cat([x, x]), conds).reshape(2 * b, -1).sum(1)
                rank = (torch.nn.functional.softplus(e[:b] - e[b:]) * differs).sum()
                (grad,) = torch.autograd.grad(rank, x)
            x = torch.minimum(torch.maximum(x.detach() + size * grad.sign(), lo), hi).clamp(0, 1)
        return x

    def update(self, x_pos: Tensor, x_neg: Tensor, cond_pos: Tensor | None, cond_neg: Tensor | None) -> dict:
        """One optimiser step on the contrastive loss; returns ``loss``, ``e_pos``, ``e_neg`` (floats),
        and ``cond_loss`` when ``cond_contrast`` is on.

        The loss is the paper's ``mean(E+ - E-) + alpha * mean(E+^2 + E-^2)``. With ``cond_contrast``
        = lambda > 0 it adds ``lambda * mean(softplus(E(x+|c+) - E(x+|c~)))`` over the positives, c~ a
        wrong condition (:meth:`mismatched_conditions`; pairs whose labels are equal are left out): a
        logistic ranking term that teaches the model to read its condition directly, where contrastive
        divergence alone only does so once the negatives already show the concept. With ``cond_reg`` =
        mu > 0 it also adds ``mu * mean(E(x+|c~)^2)`` over the same pairs: the paper's regulariser on the
        one energy it does not otherwise see. Without it the ranking term lifts E(x+|c~) far above the
        negatives' energies (to ~+7 against +0.5), and the energy becomes too steep for the chains.
        With ``cond_adv`` > 0 both act on :meth:`adversarial_positives` instead of the clean positives
        (the contrastive term keeps the clean ones), which adds the positives once more to the forward.

        All rows (positives, negatives, and the positives under wrong conditions) go through one forward
        (the DDP wrapper's, so its gradient all-reduce runs once per iteration).
        """
        c = self.config
        b = x_pos.shape[0]
        self.model.train()
        xs, conds = [x_pos, x_neg], [cond_pos, cond_neg]
        contrast = c.cond_contrast > 0 and cond_pos is not None
        adv = contrast and c.cond_adv > 0
        if contrast:
            cond_wrong = self.mismatched_conditions(cond_pos)
            differs = (cond_wrong != cond_pos).reshape(b, -1).any(1)
            if adv:
                x_adv = self.adversarial_positives(x_pos, cond_pos, cond_wrong, differs)
                xs.append(x_adv)
                conds.append(cond_pos)
            xs.append(x_adv if adv else x_pos)
            conds.append(cond_wrong)
        x = torch.cat(xs)
        if self._update_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        e = self.net(x) if cond_pos is None else self.net(x, torch.cat(conds))
        e = e.reshape(x.shape[0], -1).sum(1)
        e_pos, e_neg = e[:b], e[b:2 * b]
        loss = (e_pos - e_neg).mean() + c.alpha * (e_pos.square() + e_neg.square()).mean()
        out = {}
        if contrast:
            e_right = e[2 * b:3 * b] if adv else e_pos
            e_wrong, pairs = e[-b:], differs.sum().clamp(min=1)
            cond_loss = (torch.nn.functional.softplus(e_right - e_wrong) * differs).sum() / pairs
            loss = loss + c.cond_contrast * cond_loss
            if c.cond_reg > 0:
                loss = loss + c.cond_reg * (e_wrong.square() * differs).sum() / pairs
            out["cond_loss"] = float(cond_loss.detach())
            out["e_wrong"] = float((e_wrong.detach() * differs).sum() / pairs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip is not None:
            out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip))
        self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.model.parameters()],
                                     1.0 - c.ema)
                for eb, mb in zip(self.ema.buffers(), self.model.buffers()):
                    eb.copy_(mb)
        out.update(loss=float(loss.detach()), e_pos=float(e_pos.detach().mean()),
                   e_neg=float(e_neg.detach().mean()))
        return out

    def step(self) -> dict:
        """One training iteration; returns its statistics (also timings ``t_sample``, ``t_update`` in s)."""
        c = self.config
        idx = torch.randint(0, len(self.data), (c.batch_size,), generator=self.gen).to(self.device)
        x_pos, conds = self.data.batch(idx, self.cond_names)
        t0 = time.perf_counter()
        x_neg, neg_conds = self.sample_negatives(conds)
        t1 = time.perf_counter()
        own = c.cond != "none"
        stats = self.update(x_pos, x_neg, conds[0] if own else None, neg_conds[0] if own else None)
        t2 = time.perf_counter()
        self.step_count += 1
        self.last_negatives, self.last_negative_conds = x_neg, neg_conds
        self.last_positives, self.last_positive_cond = x_pos, (conds[0] if own else None)
        stats.update(step=self.step_count, t_sample=t1 - t0, t_update=t2 - t1,
                     neg_mean=float(x_neg.mean()), pos_mean=float(x_pos.mean()))
        if x_neg.dim() == 4:
            stats.update(neg_roughness=roughness(x_neg), pos_roughness=roughness(x_pos))
        return stats

    def condition_accuracy(self) -> float | None:
        """How well the model reads its condition, on the last data batch: the fraction of positives
        ``x_i`` with ``E(x_i | c_i) < E(x_i | c_{i-1})`` (each image against its neighbour's condition;
        pairs whose two labels are equal are left out).

        0.5 means the condition is ignored; near 1 the concept is learned well enough for inference.
        None for an unconditional model. One no-grad forward in eval mode: no RNG, no state touched.
        """
        x, cond = self.last_positives, self.last_positive_cond
        if x is None or cond is None or x.shape[0] < 2:
            return None
        other = cond.roll(1, 0)
        differs = (cond != other).reshape(cond.shape[0], -1).any(1)  # identical labels can't be told apart
        if not bool(differs.any()):
            return None
        with torch.no_grad(), _sampling_mode(self.model, self._cache_weights):
            e = self.model(torch.cat([x, x]), torch.cat([cond, other])).reshape(2 * x.shape[0], -1).sum(1)
        right, wrong = e[:x.shape[0]], e[x.shape[0]:]
        return float((right < wrong)[differs].float().mean())

    # --- state -------------------------------------------------------------------------------------
    def _rank_state(self) -> dict:
        return {"rank": self.rank, "replay": _replay_state(self.replay), "rng": rng_state(),
                "gen": self.gen.get_state(), "replay_gen": self.replay_gen.get_state()}

    def state_dict(self) -> dict:
        """The full checkpoint state (call on every rank under DDP; complete on rank 0)."""
        ranks = [self._rank_state()]
        if self.world > 1:
            import torch.distributed as dist

            gathered = [None] * self.world if self.is_main else None
            dist.gather_object(_to_cpu(ranks[0]), gathered, dst=0)
            ranks = gathered if self.is_main else []
        return {
            "kind": "ebm_fast.train",
            "step": self.step_count,
            "config": self.config.to_dict(),
            "model_config": copy.deepcopy(getattr(self.model, "config", {})),
            "model": _to_cpu(self.model.state_dict()),
            "ema": _to_cpu(self.ema.state_dict()) if self.ema is not None else None,
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "frozen": [{"path": f.path, "attribute": f.attribute, "digest": f.digest} for f in self.frozen],
            "world_size": self.world,
            "ranks": ranks,
            "meta": self._meta(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("checkpoint has no EMA weights but the config asks for ema")
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        for f, saved in zip(self.frozen, state.get("frozen", [])):
            if saved["digest"] and f.digest and saved["digest"] != f.digest:
                raise ValueError(f"frozen concept {f.path}: its weights changed since the checkpoint was written "
                                 f"(sha256 {saved['digest'][:12]}… then, {f.digest[:12]}… now)")
        mine = [r for r in state.get("ranks", []) if r["rank"] == self.rank]
        if not mine:
            warnings.warn(f"checkpoint has no state for rank {self.rank} (written with world size "
                          f"{state.get('world_size')}): this rank starts with an empty replay buffer and fresh RNG",
                          RuntimeWarning, stacklevel=2)
            return
        r = mine[0]
        self.replay.load_state_dict(r["replay"])
        set_rng_state(r["rng"])
        self.gen.set_state(r["gen"])
        current = self.replay_gen.get_state()
        if r["replay_gen"].numel() == current.numel():
            self.replay_gen.set_state(r["replay_gen"].to(current.device))
        else:  # the run moved between CPU and CUDA: the saved state is of the other generator kind
            warnings.warn(f"checkpoint's replay generator state is of another device kind (the run moved to "
                          f"{self.device.type}): replay draws restart from the run's seed at step {self.step_count}",
                          RuntimeWarning, stacklevel=2)
            self.replay_gen.manual_seed(self._replay_seed + self.step_count)

    def _init_from(self, model: nn.Module, path: str) -> None:
        """Copy the weights of the model or checkpoint at ``path`` into ``model``. A source that reads
        another attribute (or none) gives its trunk only: the condition head (the FiLM layers) stays
        freshly initialised, i.e. zero, so the new concept starts as the source's unconditional twin."""
        source, meta = load_model(path)
        if isinstance(source, EnergyEnsemble):
            files = ", ".join(m.get("file", "?") for m in meta.get("members", []))
            raise ValueError(f"--init-from {path}: an ensemble of {len(source.members)} models (ebm-fast models "
                             f"combine) has no single set of weights to start from; start from a member ({files})")
        reads = meta.get("cond", "none")
        keep = ()
        if label_key(reads) != label_key(self.config.cond):
            keep = condition_head_keys(model) + condition_head_keys(source)
            if self.is_main:
                print(f"ebm-fast train: --init-from {path} reads {reads!r}, this run "
                      f"{self.config.cond!r}: copying its trunk, not its condition head", file=sys.stderr)
        load_weights_widening(model, source.state_dict(), keep=keep)

    def _meta(self) -> dict:
        m = {"cond": self.config.cond, "data": dict(self.data.meta)}
        if self.config.cond != "none":
            m["cond_type"], m["cond_dim"] = self.data.attribute(self.config.cond)[1:]
        return m

    def save_checkpoint(self) -> None:
        state = self.state_dict()
        if self.is_main:
            self.ckpt.save(state)

    def resume(self) -> bool:
        """Load the newest good checkpoint in ``out/ckpt``; False if there is none."""
        found = self.ckpt.load_latest(map_location="cpu")
        if found is None:
            return False
        state, path = found
        saved = TrainConfig.from_dict(state["config"])
        diff = {k: (getattr(saved, k), getattr(self.config, k)) for k in saved.to_dict()
                if k not in RESUME_OVERRIDABLE and getattr(saved, k) != getattr(self.config, k)}
        if diff:
            raise ValueError(f"resume from {path}: config differs from the checkpoint's in {sorted(diff)} "
                             f"(checkpoint, now: {diff}); only {RESUME_OVERRIDABLE} may change")
        self.load_state_dict(state)
        return True

    # --- the loop --------------------------------------------------------------------------------
    def train(self) -> dict:
        """Run (or resume) to ``config.iterations``; returns the last statistics plus ``param_digest``."""
        c = self.config
        if self.ckpt.exists() and not c.resume:
            raise FileExistsError(f"{self.ckpt.directory} holds a checkpoint: pass resume=True (--resume) to "
                                  "continue it, or choose another out folder")
        if c.resume and not self.resume() and self.is_main:
            print(f"ebm-fast train: no checkpoint in {self.ckpt.directory}; starting from step 0", file=sys.stderr)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(c.to_dict(), indent=1))
            _truncate_log(self.out / "log.jsonl", self.step_count)
        bar = None
        if self.is_main and c.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=c.iterations, initial=self.step_count, desc="train", dynamic_ncols=True)
        stats: dict = {}
        window: list[float] = []
        # each line is appended by path, not through a handle held open: a log.jsonl replaced while the
        # run goes on (a checkout, a copy back) gets the new lines instead of an unlinked file
        log = self.out / "log.jsonl" if self.is_main else None
        deadline = None if c.max_minutes is None else time.monotonic() + 60.0 * c.max_minutes
        stopped = False
        try:
            while self.step_count < c.iterations:
                t = time.perf_counter()
                stats = self.step()
                window.append(time.perf_counter() - t)
                s = self.step_count
                if not all(math.isfinite(stats[k]) for k in ("loss", "e_pos", "e_neg")):
                    raise FloatingPointError(f"step {s}: non-finite loss or energies {stats}; lower lr or "
                                             "step_size, or set grad_clip")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss']:.4f}", e_pos=f"{stats['e_pos']:.4f}",
                                    e_neg=f"{stats['e_neg']:.4f}")
                if log is not None and (s % c.log_every == 0 or s == c.iterations):
                    stats["it_per_s"] = len(window) / sum(window)
                    window = []
                    acc = self.condition_accuracy()
                    if acc is not None:
                        stats["cond_acc"] = acc
                    with open(log, "a") as f:
                        f.write(json.dumps({k: v for k, v in stats.items()}) + "\n")
                if self.is_main and (s % c.image_every == 0 or s == c.iterations):
                    self.save_negatives(self.out / "samples" / f"neg_{s:06d}.png")
                if s % c.checkpoint_every == 0 or s == c.iterations:
                    self.save_checkpoint()
                if self.is_main and c.export_every and s % c.export_every == 0:
                    (self.out / "models").mkdir(exist_ok=True)
                    self.export(self.out / "models" / f"model_{s:06d}.pt")
                if deadline is not None and s % c.checkpoint_every == 0 and s < c.iterations \
                        and self._all_ranks_agree(time.monotonic() > deadline):
                    stopped = True  # at a checkpoint just written: --resume goes on from here
                    break
        finally:
            if bar is not None:
                bar.close()
        if stopped:
            if self.is_main:
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps({"stopped": f"max_minutes={c.max_minutes}", "step": self.step_count}) + "\n")
                print(f"ebm-fast train: stopped at step {self.step_count} of {c.iterations} after max_minutes="
                      f"{c.max_minutes}; resume with --resume", file=sys.stderr)
            return dict(stats, step=self.step_count, stopped=True)
        digest = param_digest(self.model)
        stats = dict(stats, step=self.step_count, param_digest=digest)
        if self.world > 1:
            import torch.distributed as dist

            digests = [None] * self.world
            dist.all_gather_object(digests, digest)
            stats["rank_digests"] = digests
        if self.is_main:
            self.export(self.out / "model.pt")
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps({"final": True, **stats}) + "\n")
        return stats

    def _all_ranks_agree(self, flag: bool) -> bool:
        """``flag`` of rank 0 on every rank (one small all-reduce under DDP), so all ranks stop together."""
        if self.world <= 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if (flag and self.rank == 0) else 0.0], device=self.device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def export(self, path) -> None:
        """Save the inference model (EMA weights if enabled) for :func:`ebm_fast.models.load_model`."""
        src = self.ema if self.ema is not None else self.model
        if not hasattr(src, "config"):
            return
        save_model(path, src, {**self._meta(), "step": self.step_count, "train_config": self.config.to_dict()})

    def save_negatives(self, path) -> None:
        """A PNG grid of the last negatives (up to 64)."""
        if self.last_negatives is None:
            return
        from .data.scenes import save_image_grid

        x = self.last_negatives[:64].detach().clamp(0, 1).mul(255).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        save_image_grid(path, x.permute(0, 2, 3, 1).cpu().numpy(), ncols=8, scale=2)


def roughness(images: Tensor) -> float:
    """Mean absolute deviation of images ``(B, C, H, W)`` from their 3x3 local mean.

    A noise meter for the negatives: uniform noise in [0, 1] scores ~0.23, the 32x32 MuJoCo scenes
    ~0.026; negatives far above the data's value are still noisy chains.
    """
    x = images.detach().float()
    return float((x - F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)).abs().mean())


def _to_cpu(obj):
    """``obj`` with every tensor moved to the CPU (dicts become plain dicts)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _truncate_log(path: Path, step: int) -> None:
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


def train(config: TrainConfig, **kwargs) -> dict:
    """``Trainer(config, **kwargs).train()``."""
    return Trainer(config, **kwargs).train()


# ---- CLI ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="ebm-fast train", argument_default=argparse.SUPPRESS,
        description="Train a conditional EBM by contrastive divergence (Langevin negatives from a replay "
                    "buffer). Under torchrun it uses DistributedDataParallel.")

    def opt(name, type_, help_, **kw):
        dest = name.lstrip("-").replace("-", "_")
        default = getattr(d, dest)
        p.add_argument(name, type=type_, help=f"{help_} (default {default})", **kw)

    def none_or(type_):
        return lambda s: None if s.lower() in ("none", "off", "") else type_(s)

    opt("--out", str, "output folder: log.jsonl, samples/, ckpt/, model.pt")
    opt("--data", str, "'scenes' or the path of an .npz with images and label_<name> arrays")
    opt("--cond", str, "label conditioning the model: position, color, shape, size, another label key, or none")
    opt("--resolution", int, "scenes: image size (32, 64, 128)")
    opt("--n-images", int, "scenes: number of images")
    opt("--data-seed", int, "scenes: dataset seed")
    p.add_argument("--shapes", nargs="+", help="scenes: keep only these shapes (e.g. box)")
    p.add_argument("--colors", nargs="+", help="scenes: keep only these colours (e.g. purple)")
    opt("--distractors", int, "scenes: background objects per image")
    opt("--renderer", str, "scenes: auto, mujoco or numpy")
    opt("--model", str, f"architecture: one of {sorted(MODEL_CONFIGS)}")
    p.add_argument("--no-spectral-norm", dest="spectral_norm", action="store_false", help="drop spectral norm")
    opt("--pool", none_or(str), "pooling of the final feature map: mean, sum, max or meanmax (none: the model's)")
    p.add_argument("--coords", action="store_true",
                   help="give the model two coordinate input channels (CoordConv), so it can read positions")
    opt("--init-from", none_or(str), "start from this model's or checkpoint's weights (EMA if it has them); "
                                    "input channels it lacks, such as --coords', start at zero")
    opt("--iterations", int, "training iterations")
    opt("--batch-size", int, "positives (and negatives) per iteration, per rank")
    opt("--lr", float, "Adam learning rate")
    p.add_argument("--betas", type=float, nargs=2, help="Adam betas (default 0 0.999)")
    opt("--alpha", float, "weight of the energy regulariser alpha (E+^2 + E-^2)")
    opt("--cond-contrast", float, "weight of the conditional ranking term softplus(E(x+|c+) - E(x+|wrong c)); "
                                  "0: the paper's loss alone (may be switched on when resuming)")
    opt("--cond-jitter", float, "continuous conditions: every second wrong condition of the ranking term is the "
                                "true one plus Gaussian noise of this scale (a near miss; 0: off)")
    opt("--cond-reg", float, "weight of the regulariser E(x+|wrong c)^2 on the ranking term's energies, which keeps "
                             "them near the negatives' (0: off; may be switched on when resuming)")
    opt("--cond-adv", float, "the ranking term (and --cond-reg) on adversarial positives: each positive moved by a "
                             "random start and signed-gradient steps within this L-inf radius (pixel units, "
                             "e.g. 0.03) towards its wrong condition (0: off; may be switched on when resuming)")
    opt("--cond-adv-steps", int, "signed-gradient steps of the --cond-adv attack: 1 steps by the radius, n > 1 by "
                                 "2.5 x radius / n each (projected gradient descent; may be changed when resuming)")
    opt("--grad-clip", none_or(float), "clip the gradient norm to this value (none: off)")
    opt("--ema", none_or(float), "EMA decay of the weights, e.g. 0.999 (none: off)")
    opt("--langevin-steps", int, "Langevin steps per negative chain (K)")
    opt("--step-size", float, "Langevin step size on the energy gradient")
    opt("--noise", float, "Langevin noise scale")
    opt("--sample-grad-clip", none_or(float), "element-wise clip of the Langevin gradient (none: off)")
    opt("--order", str, "noise_first (the released code's) or ula")
    opt("--backend", str, "fused-step backend: auto, torch, cpu, cuda, triton")
    opt("--replay-capacity", int, "replay buffer size, per rank")
    opt("--replay-p", float, "probability a chain starts from the replay buffer (else uniform noise)")
    opt("--replay-dtype", str, "replay storage: uint8 or float32")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="run the energy + input gradient of the chains under torch.compile (minutes to compile "
                        "on a 2-core CPU; ~1.1x per step there); --no-compile turns it off in a resumed run")
    p.add_argument("--no-replay-labels", dest="replay_labels", action="store_false",
                   help="replayed chains take the data batch's labels (the released code) instead of their own")
    p.add_argument("--frozen", nargs="+", help="continual learning: frozen concepts PATH=ATTRIBUTE "
                                               "(e.g. runs/pos/model.pt=position)")
    opt("--seed", int, "random seed")
    opt("--device", str, "auto, cpu, cuda")
    opt("--threads", none_or(int), "torch CPU threads (none: torch's default)")
    opt("--log-every", int, "iterations between log.jsonl lines")
    opt("--image-every", int, "iterations between PNG grids of negatives")
    opt("--checkpoint-every", int, "iterations between checkpoints")
    opt("--export-every", int, "iterations between model exports OUT/models/model_NNNNNN.pt (EMA weights; 0: off), "
                               "to pick the best step by judging afterwards")
    opt("--max-minutes", none_or(float), "wall-clock budget: stop at the first checkpoint after it (resumable, no "
                                         "model.pt; none: no limit)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in OUT/ckpt (its config; --iterations and bookkeeping may change)")
    p.add_argument("--export-model", metavar="PATH",
                   help="no training: write the model (EMA weights if on) of the newest checkpoint in OUT/ckpt to "
                        "PATH, loadable by load_model, `ebm-fast sample` and the evaluations; then exit")
    return p


def config_from_args(argv: list[str] | None) -> TrainConfig:
    """Parse ``ebm-fast train`` arguments; with ``--resume``, start from the checkpoint's config."""
    given = vars(_parser().parse_args(argv))
    given.pop("export_model", None)
    if given.get("resume"):
        out = Path(given.get("out", TrainConfig.out))
        found = CheckpointManager(out / "ckpt").load_latest()
        if found is not None:
            base = found[0]["config"]
            base.pop("max_minutes", None)  # a budget is per invocation, not part of the run
            base.update(given)
            return TrainConfig.from_dict(base)
    return TrainConfig.from_dict(given)


def cli_main(argv: list[str] | None = None) -> int:
    """``ebm-fast train [options]``: train (or ``--resume``) a concept; prints the final statistics."""
    export = vars(_parser().parse_args(argv)).get("export_model")
    if export is not None:
        argv = list(sys.argv[1:] if argv is None else argv)
        config = config_from_args(argv if "--resume" in argv else [*argv, "--resume"])
        trainer = Trainer(config)
        if not trainer.resume():
            print(f"ebm-fast train --export-model: no checkpoint in {config.out}/ckpt", file=sys.stderr)
            return 2
        trainer.export(export)
        print(f"wrote {export} (step {trainer.step_count})")
        return 0
    config = config_from_args(argv)
    stats = Trainer(config).train()
    if int(os.environ.get("RANK", "0")) == 0:
        keys = ("step", "loss", "e_pos", "e_neg", "param_digest")
        print(json.dumps({k: stats[k] for k in keys if k in stats}))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            # every rank waits for rank 0's export and last log line: a rank that tears gloo down while
            # its peer is still busy could abort at exit ("terminate called without an active exception",
            # seen in CI). Whatever of the trainer's DDP wrapper sits in reference cycles would be freed
            # only at interpreter teardown, where freeing tensors that gloo work still holds can abort
            # (pytorch/pytorch#179291): collect it first. A mitigation; the abort was too rare to test.
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
