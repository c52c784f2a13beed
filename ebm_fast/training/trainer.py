"""The trainer of conditional EBMs: contrastive divergence with Langevin negatives and a replay buffer.

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

The loss terms are :mod:`ebm_fast.training.loss`; devices, the chains' model mode and the checkpoint
contents are :mod:`ebm_fast.training.state`. This trainer implements ``objective="cd"`` (the config's
``objective`` field names the training objective).

Everything is configured by :class:`~ebm_fast.training.TrainConfig` (also the CLI, ``ebm-fast train``). Outputs in
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

import copy
import json
import math
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointManager, rng_state, set_rng_state
from ..continual import FrozenConcept, load_frozen, negatives_expr, param_digest
from ..image_grid import save_image_grid
from ..leaf_eval import prefers_channels_last
from ..models import EnergyEnsemble, build_model, condition_head_keys, load_model, load_weights_widening, save_model
from . import loss as L
from .config import RESUME_OVERRIDABLE, TrainConfig, label_key
from .data import ConditionalData, load_data
from .state import dist_setup, replay_dtype, replay_state, roughness, sampling_mode, to_cpu, truncate_log

__all__ = ["Trainer", "train", "CHECKPOINT_KIND", "is_training_state"]

# The "kind" of a training checkpoint's state (also read by ebm_fast.models.load_model).
CHECKPOINT_KIND = "ebm_fast.train"


def is_training_state(state: dict) -> str | None:
    """None if ``state`` is a training checkpoint this trainer can resume, else why not (for
    :meth:`ebm_fast.checkpoint.CheckpointManager.load_latest`'s ``check``)."""
    if state.get("kind") != CHECKPOINT_KIND or not isinstance(state.get("config"), dict):
        return (f"not a training checkpoint (kind {state.get('kind')!r}, expected {CHECKPOINT_KIND!r} with a "
                "config)")
    return None


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
        self.rank, self.world, self.device = dist_setup(config.device)
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
        self.replay = ef.ReplayBuffer(config.replay_capacity, shape, dtype=replay_dtype(config.replay_dtype),
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
        with sampling_mode(self.model, self._cache_weights):
            expr = negatives_expr(self.model, own, self.frozen, others)
            x = ef.sample(expr, draw.x, steps=c.langevin_steps, step_size=c.step_size, noise=c.noise,
                          clamp=(0.0, 1.0), grad_clip=c.sample_grad_clip, order=c.order, seed=self._seed(),
                          backend=c.backend, compile=c.compile)
        x = x.detach()
        self.replay.add(x, labels=draw.labels)
        return x, neg_conds

    def mismatched_conditions(self, cond: Tensor) -> Tensor:
        """A wrong condition per positive for the ``cond_contrast`` term
        (:func:`ebm_fast.training.loss.mismatched_conditions`, with ``cond_jitter``), drawn from the run's
        generator, so only runs with the term draw it."""
        classes = None if cond.is_floating_point() else self.data.attribute(self.config.cond)[2]
        return L.mismatched_conditions(cond, classes, self.config.cond_jitter, self.gen)

    def adversarial_positives(self, x_pos: Tensor, cond_pos: Tensor, cond_wrong: Tensor, differs: Tensor) -> Tensor:
        """The positives moved towards their wrong conditions for the ``cond_adv`` term
        (:func:`ebm_fast.training.loss.adversarial_positives`, radius ``cond_adv``, ``cond_adv_steps`` steps);
        the random start is drawn from the run's generator."""
        return L.adversarial_positives(self.model, x_pos, cond_pos, cond_wrong, differs, self.config.cond_adv,
                                       self.config.cond_adv_steps, self.gen)

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
        loss = L.contrastive_loss(e_pos, e_neg, c.alpha)
        out = {}
        if contrast:
            e_right = e[2 * b:3 * b] if adv else e_pos
            e_wrong = e[-b:]
            cond_loss, wrong_reg = L.ranking_terms(e_right, e_wrong, differs)
            loss = loss + c.cond_contrast * cond_loss
            if c.cond_reg > 0:
                loss = loss + c.cond_reg * wrong_reg
            out["cond_loss"] = float(cond_loss.detach())
            out["e_wrong"] = float((e_wrong.detach() * differs).sum() / differs.sum().clamp(min=1))
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
        with torch.no_grad(), sampling_mode(self.model, self._cache_weights):
            e = self.model(torch.cat([x, x]), torch.cat([cond, other])).reshape(2 * x.shape[0], -1).sum(1)
        right, wrong = e[:x.shape[0]], e[x.shape[0]:]
        return float((right < wrong)[differs].float().mean())

    # --- state -------------------------------------------------------------------------------------
    def _rank_state(self) -> dict:
        return {"rank": self.rank, "replay": replay_state(self.replay), "rng": rng_state(),
                "gen": self.gen.get_state(), "replay_gen": self.replay_gen.get_state()}

    def state_dict(self) -> dict:
        """The full checkpoint state (call on every rank under DDP; complete on rank 0)."""
        ranks = [self._rank_state()]
        if self.world > 1:
            import torch.distributed as dist

            gathered = [None] * self.world if self.is_main else None
            dist.gather_object(to_cpu(ranks[0]), gathered, dst=0)
            ranks = gathered if self.is_main else []
        return {
            "kind": CHECKPOINT_KIND,
            "step": self.step_count,
            "config": self.config.to_dict(),
            "model_config": copy.deepcopy(getattr(self.model, "config", {})),
            "model": to_cpu(self.model.state_dict()),
            "ema": to_cpu(self.ema.state_dict()) if self.ema is not None else None,
            "optimizer": to_cpu(self.optimizer.state_dict()),
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
        if self.data.images.dim() == 4:  # the size inference must use (ebm_fast.infer.trained_image_size)
            m["data"]["image_size"] = [int(v) for v in self.data.images.shape[-2:]]
        if self.config.cond != "none":
            m["cond_type"], m["cond_dim"] = self.data.attribute(self.config.cond)[1:]
        return m

    def save_checkpoint(self) -> None:
        state = self.state_dict()
        if self.is_main:
            self.ckpt.save(state)

    def resume(self) -> bool:
        """Load the newest good checkpoint in ``out/ckpt``; False if there is none."""
        found = self.ckpt.load_latest(map_location="cpu", check=is_training_state)
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
            self.ckpt.remove_orphans()  # what a save cut short by a kill left behind
            (self.out / "config.json").write_text(json.dumps(c.to_dict(), indent=1))
            truncate_log(self.out / "log.jsonl", self.step_count)
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
        x = self.last_negatives[:64].detach().clamp(0, 1).mul(255).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        save_image_grid(path, x.permute(0, 2, 3, 1).cpu().numpy(), ncols=8, scale=2)


def train(config: TrainConfig, **kwargs) -> dict:
    """``Trainer(config, **kwargs).train()``."""
    return Trainer(config, **kwargs).train()
