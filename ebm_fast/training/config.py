"""The configuration of a training run: :class:`TrainConfig`, one field per setting with its help text.

``ebm-fast train``'s options are generated from these fields (:func:`ebm_fast.dictconfig.add_config_arguments`),
so a new setting is one field here. Fields marked ``resumable`` may differ between a checkpoint and the
run that resumes it (:data:`RESUME_OVERRIDABLE`); any other difference is refused.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..dictconfig import DictConfig, option
from ..models import MODEL_CONFIGS, POOLS

__all__ = ["TrainConfig", "OBJECTIVES", "RESUME_OVERRIDABLE", "ATTRIBUTES", "label_key"]

# Training objectives of this config. "cd": contrastive divergence with Langevin negatives from a replay
# buffer (Du & Mordatch 2019). Denoising score matching ("dsm", ebm_fast.diffusion.DSMTrainer) has a
# config of its own; `ebm-fast train --objective dsm` dispatches to it in ebm_fast.cli.train.
OBJECTIVES = ("cd",)

# dataset attribute -> (label key in the scenes labels, cond_type); class counts come from the dataset
ATTRIBUTES = {"position": ("pos", "continuous"), "pos": ("pos", "continuous"), "size": ("size", "continuous"),
              "color": ("color", "onehot"), "shape": ("shape", "onehot")}


def label_key(name: str) -> str:
    """The label an attribute name reads (``"position"`` and ``"pos"`` both read ``"pos"``); a name
    :data:`ATTRIBUTES` does not list (another label of an .npz, ``"none"``) is its own key."""
    return ATTRIBUTES.get(name, (name,))[0]


def _resumable(default, help_, **kw):
    """An option that a resumed run may change (bookkeeping, where the run folder is, how the same chains
    execute, and the terms a stalled run can be fine-tuned with)."""
    return dataclasses.field(default=default, metadata={**option(default, help_, **kw).metadata, "resumable": True})


@dataclass
class TrainConfig(DictConfig):
    """Everything a training run needs (defaults: the paper's settings where it gives them).

    Data: ``data`` names a registered data source (``"scenes"``, provided by :mod:`ebm_fast.paper`;
    see :func:`ebm_fast.training.data.register_data_source`) or the path of an ``.npz`` with ``images``
    (``(N, H, W, 3)`` or ``(N, 3, H, W)``, uint8 or floats in [0, 1]) and labels ``label_<name>`` or
    ``<name>``. ``cond`` names the label that conditions the model: ``position``, ``color``, ``shape``,
    ``size``, any other label key of the .npz, or ``none``.
    """

    out: str = _resumable("runs/concept", "output folder: log.jsonl, samples/, ckpt/, model.pt")
    objective: str = option("cd", "training objective: cd (contrastive divergence with Langevin negatives); "
                                  "`ebm-fast train --objective dsm` trains a diffusion energy instead "
                                  "(its options: --objective dsm --help)", choices=OBJECTIVES)
    # data
    data: str = option("scenes", "'scenes' or the path of an .npz with images and label_<name> arrays")
    cond: str = option("position", "label conditioning the model: position, color, shape, size, another label key, "
                                   "or none")
    resolution: int = option(32, "scenes: image size (32, 64, 128)")
    n_images: int = option(10000, "scenes: number of images")
    data_seed: int = option(0, "scenes: dataset seed")
    shapes: tuple[str, ...] | None = option(None, "scenes: keep only these shapes (e.g. box)")
    colors: tuple[str, ...] | None = option(None, "scenes: keep only these colours (e.g. purple)")
    distractors: int = option(0, "scenes: background objects per image")
    renderer: str = option("auto", "scenes: auto, mujoco or numpy")
    # model
    model: str = option("small32", f"architecture: one of {sorted(MODEL_CONFIGS)}")
    spectral_norm: bool = option(True, "drop spectral norm")
    pool: str | None = option(None, "pooling of the final feature map: mean, sum, max or meanmax (none: the model's)")
    coords: bool = option(False, "give the model two coordinate input channels (CoordConv), so it can read positions")
    init_from: str | None = _resumable(None, "start from this model's or checkpoint's weights (EMA if it has them); "
                                             "input channels it lacks, such as --coords', start at zero")
    # optimisation
    iterations: int = _resumable(1000, "training iterations")
    batch_size: int = option(32, "positives (and negatives) per iteration, per rank")
    lr: float = option(3e-4, "Adam learning rate")
    betas: tuple[float, float] = option((0.0, 0.999), "Adam betas")
    alpha: float = option(1.0, "weight of the energy regulariser alpha (E+^2 + E-^2)")
    cond_contrast: float = _resumable(
        0.0, "weight of the conditional ranking term softplus(E(x+|c+) - E(x+|wrong c)); 0: the paper's loss alone "
             "(may be switched on when resuming)")
    cond_jitter: float = _resumable(
        0.0, "continuous conditions: every second wrong condition of the ranking term is the true one plus Gaussian "
             "noise of this scale (a near miss; 0: off)")
    cond_reg: float = _resumable(
        0.0, "weight of the regulariser E(x+|wrong c)^2 on the ranking term's energies, which keeps them near the "
             "negatives' (0: off; may be switched on when resuming)")
    cond_adv: float = _resumable(
        0.0, "the ranking term (and --cond-reg) on adversarial positives: each positive moved by a random start and "
             "signed-gradient steps within this L-inf radius (pixel units, e.g. 0.03) towards its wrong condition "
             "(0: off; may be switched on when resuming)")
    cond_adv_steps: int = _resumable(
        1, "signed-gradient steps of the --cond-adv attack: 1 steps by the radius, n > 1 by 2.5 x radius / n each "
           "(projected gradient descent; may be changed when resuming)")
    grad_clip: float | None = option(None, "clip the gradient norm to this value (none: off)")
    ema: float | None = option(None, "EMA decay of the weights, e.g. 0.999 (none: off)")
    # negatives
    langevin_steps: int = option(60, "Langevin steps per negative chain (K)")
    step_size: float = option(10.0, "Langevin step size on the energy gradient")
    noise: float = option(0.005, "Langevin noise scale")
    sample_grad_clip: float | None = option(0.01, "element-wise clip of the Langevin gradient (none: off)")
    order: str = option("noise_first", "noise_first (the released code's) or ula")
    backend: str = _resumable("auto", "fused-step backend: auto, torch, cpu, cuda, triton")
    replay_capacity: int = option(10000, "replay buffer size, per rank")
    replay_p: float = option(0.95, "probability a chain starts from the replay buffer (else uniform noise)")
    replay_dtype: str = option("uint8", "replay storage: uint8 or float32")
    replay_labels: bool = option(True, "replayed chains take the data batch's labels (the released code) instead of "
                                       "their own")
    compile: bool = _resumable(False, "run the energy + input gradient of the chains under torch.compile (minutes to "
                                      "compile on a 2-core CPU; ~1.1x per step there); --no-compile turns it off in "
                                      "a resumed run", both=True)
    # continual learning: frozen concepts "PATH=ATTRIBUTE"
    frozen: tuple[str, ...] = option((), "continual learning: frozen concepts PATH=ATTRIBUTE "
                                         "(e.g. runs/pos/model.pt=position)")
    # bookkeeping
    seed: int = option(0, "random seed")
    device: str = _resumable("auto", "auto, cpu, cuda")
    threads: int | None = _resumable(None, "torch CPU threads (none: torch's default)")
    log_every: int = _resumable(10, "iterations between log.jsonl lines")
    image_every: int = _resumable(250, "iterations between PNG grids of negatives")
    checkpoint_every: int = _resumable(100, "iterations between checkpoints")
    export_every: int = _resumable(0, "iterations between model exports OUT/models/model_NNNNNN.pt (EMA weights; "
                                      "0: off), to pick the best step by judging afterwards")
    max_minutes: float | None = _resumable(None, "wall-clock budget: stop at the first checkpoint after it "
                                                 "(resumable, no model.pt; none: no limit)")
    progress: bool = _resumable(True, "no tqdm bar")
    resume: bool = _resumable(False, "continue the checkpoint in OUT/ckpt (its config; --iterations and bookkeeping "
                                     "may change)")

    def __post_init__(self) -> None:
        def positive(name, integer=True, allow_zero=False):
            v = getattr(self, name)
            ok = isinstance(v, int) and not isinstance(v, bool) if integer else isinstance(v, (int, float))
            if not ok or (v < 0 if allow_zero else v <= 0) or (not integer and not math.isfinite(v)):
                kind = "an integer" if integer else "a number"
                raise ValueError(f"{name}: expected {kind} {'>= 0' if allow_zero else '> 0'}, got {v!r}")

        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("resolution", "n_images", "iterations", "batch_size", "langevin_steps", "replay_capacity",
                     "log_every", "image_every", "checkpoint_every", "cond_adv_steps"):
            positive(name)
        for name in ("data_seed", "export_every", "seed", "distractors"):
            positive(name, allow_zero=True)
        for name in ("lr", "step_size"):
            positive(name, integer=False)
        for name in ("noise", "alpha", "cond_contrast", "cond_jitter", "cond_reg", "cond_adv"):
            positive(name, integer=False, allow_zero=True)
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


# Config fields a resumed run may change; cond_contrast (and its companions) may be switched on or
# re-weighted so that a run that has not learned to read its condition can be fine-tuned with the term
# (its log lines carry cond_loss from then on); init_from is read only when a run starts.
RESUME_OVERRIDABLE = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resumable"))
