"""A set of trained concept EBMs for the MuJoCo Scenes attributes, and their condition encoding.

A *concept set* maps attribute names to conditional energy models (files written by
:func:`ebm_fast.models.save_model`, e.g. the ``model.pt`` of ``ebm-fast train``):

=============  ===============================================  ==============================
attribute      condition value (user side)                      what the model is fed
=============  ===============================================  ==============================
``position``   ``(x, y)`` floats, normalised to ``[-1, 1]^2``   float ``(2,)``
``color``      a colour name (``COLOR_NAMES``) or class index   one-hot float ``(n_colors,)``
``shape``      a shape name (``SHAPES``, ``cube`` = ``box``)    one-hot float ``(n_shapes,)``
``size``       half-extent in metres                            float ``(1,)``
=============  ===============================================  ==============================

Training (:mod:`ebm_fast.training`) feeds class labels as int64 indices, which the model turns into
one-hots (:meth:`ebm_fast.models.EnergyResNet.condition`); here they are encoded as float one-hots
directly, the same input, so a shared condition ``(C,)`` and a per-sample one ``(B, C)`` are
unambiguous. Class names come from the model's ``meta["data"]`` (``colors`` / ``shapes``, written
by training) and default to the dataset's.

Default location: ``ebm_fast/paper/assets/concepts/<attribute>.pt`` (:func:`default_concepts_dir`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..compose import Concept
from .scenes import COLOR_NAMES, SHAPE_ALIASES, SHAPES

__all__ = ["ATTRIBUTES", "ALIASES", "default_concepts_dir", "canonical_attribute", "concept_paths",
           "load_concepts", "class_names", "encode_condition", "encode_conditions", "make_concept",
           "train_command", "generation_caveat"]

ATTRIBUTES: tuple[str, ...] = ("position", "color", "shape", "size")
ALIASES = {"pos": "position", "colour": "color"}
CLASS_ATTRIBUTES = {"color": ("colors", COLOR_NAMES, {}), "shape": ("shapes", SHAPES, SHAPE_ALIASES)}

ConceptSet = Mapping[str, "tuple[nn.Module, dict]"]


def default_concepts_dir() -> Path:
    """``ebm_fast/paper/assets/concepts``: where the shipped concept models live."""
    return Path(__file__).resolve().parent / "assets" / "concepts"


def canonical_attribute(name: str) -> str:
    """``"pos"`` -> ``"position"``, ``"colour"`` -> ``"color"``; ValueError for an unknown attribute."""
    a = ALIASES.get(str(name).lower(), str(name).lower())
    if a not in ATTRIBUTES:
        raise ValueError(f"attribute: expected one of {ATTRIBUTES} (or {sorted(ALIASES)}), got {name!r}")
    return a


# The recipe every shipped concept is trained with (small32 at 32x32, trainable on a 2-core CPU; see
# docs/training.md, "Choosing the recipe"). scripts/train_concepts.sh runs it for each concept; the
# printed commands below use it. From the released code's MuJoCo-Scenes runs: step 100, noise 0.001,
# no effective gradient clip, Adam 3e-4 with beta1 = 0, a free head. Changed for the CPU budget: no
# spectral norm (with it, 3300 iterations left data, uniform noise and grey the same energy, per-pixel
# gradients ~1e-6), a 1000-image buffer so that persistent chains are revisited every ~60 iterations,
# and K = 20 at B = 16 for ~3x more updates per hour. Added after ~8000 iterations in which no run
# learned to read its condition (cond_acc 0.5): the conditional ranking term (--cond-contrast 5), the
# max of the final feature map beside its mean (--pool meanmax: with the mean alone even that term
# left colour at chance for 4000 iterations, runs/stage1/color32_contrast_meanpool), and coordinate
# input channels for positions (POSITION_FLAGS; without them the model is blind to where
# an object is, see ebm_fast.models.EnergyResNet's ``coords``). Positions also rank near misses
# (--cond-jitter 0.1): against far-away positions alone the inferred positions shrank to the centre.
# Last, the sampler: the ranking term makes the energy ~1000x steeper (median per-pixel |dE/dx| 3.5e-3
# against ~4e-6 without it), so step 100 with the 0.01 gradient clip moved pixels up to 1.0 a step and
# the negatives became colour blotches (judged colour accuracy from noise at chance); step 10 with noise
# 0.005 kept them scene-like for a few thousand iterations. Then the ranking term lifted the energy of a
# data image under a wrong condition to ~+7 (negatives ~+0.5, uniform noise ~+0.9), the gradients grew
# again and the judged accuracies fell; --cond-reg 1 applies the paper's E^2 regulariser to those
# energies too (docs/training.md, "Generation after the ranking term"). Generation still peaks and
# falls as a run goes on, so every 500th step's model is kept (--export-every) to judge afterwards.
# The same recipe at the paper's 64x64 with its MuJoCo-Scenes architecture (scenes64, ~16x the cost of
# small32 per image), for a GPU: at 32x32 the objects are 2-6 pixels wide and the shape runs read
# shape without drawing it. Batch 32 instead of 16. Not yet run anywhere (docs/training.md).
RESOLUTION_FLAGS = {32: "--resolution 32 --model small32 --batch-size 16",
                    64: "--resolution 64 --model scenes64 --batch-size 32"}
_SHARED_FLAGS = ("--n-images 10000 --no-spectral-norm --iterations 20000 --langevin-steps 20 --step-size 10 "
                 "--noise 0.005 --replay-capacity 1000 --ema 0.999 --checkpoint-every 100 --image-every 100 "
                 "--export-every 500 --compile --cond-contrast 5 --cond-reg 1 --pool meanmax")
RECIPE_FLAGS = f"{RESOLUTION_FLAGS[32]} {_SHARED_FLAGS}"
POSITION_FLAGS = "--coords --cond-jitter 0.1"


def recipe_flags(attribute: str, resolution: int = 32) -> str:
    """The recipe's flags for a concept of ``attribute`` at ``resolution`` 32 (small32, the shipped
    concepts) or 64 (scenes64); positions also get :data:`POSITION_FLAGS`."""
    if resolution not in RESOLUTION_FLAGS:
        raise ValueError(f"resolution: expected one of {sorted(RESOLUTION_FLAGS)}, got {resolution!r}")
    flags = f"{RESOLUTION_FLAGS[resolution]} {_SHARED_FLAGS}"
    return f"{flags} {POSITION_FLAGS}" if canonical_attribute(attribute) == "position" else flags


def generation_caveat(meta: Mapping | None) -> str | None:
    """What a concept's model file says its samples do not show (``meta["generation"]["caveat"]``), or
    None. The shipped shape concept has one: it recognises shape but does not draw it."""
    caveat = ((meta or {}).get("generation") or {}).get("caveat")
    return str(caveat) if caveat else None


# Concepts shipped as an ensemble of recipe runs (docs/training.md, "A colour ensemble"): per member,
# its weight and the flags its run adds to the recipe (--iterations: the step shipped); then the chain
# from noise written into the combined file. Colour weighs the recipe run's step-12400 model and a
# --alpha 0.1 --langevin-steps 60 run's step 3250 at 0.45 each, and the first run's step 5000 (trained
# before --cond-reg existed) at 0.1: alone, each drew colours the others missed.
ENSEMBLE_MEMBERS: dict[str, tuple[tuple[float, str], ...]] = {
    "color": ((0.45, "--iterations 12400"),
              (0.45, "--alpha 0.1 --langevin-steps 60 --iterations 3250"),
              (0.1, "--cond-reg 0 --iterations 5000")),
}
ENSEMBLE_CHAIN_FLAGS = "--steps 400 --step-size 7.5"


def override_flags(flags: str, extra: str) -> str:
    """``flags`` with the options in ``extra`` replacing theirs in place (new ones appended), e.g.
    ``override_flags("--steps 20 --compile", "--steps 60 --alpha 0.1") == "--steps 60 --compile --alpha 0.1"``.
    An option's value is the token after it unless that token is itself an option."""
    def parse(text: str) -> dict[str, str | None]:
        tokens, out, i = text.split(), {}, 0
        while i < len(tokens):
            if not tokens[i].startswith("--"):
                raise ValueError(f"flags: expected an option at {tokens[i]!r} in {text!r}")
            has_value = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
            out[tokens[i]] = tokens[i + 1] if has_value else None
            i += 2 if has_value else 1
        return out

    merged = {**parse(flags), **parse(extra)}
    return " ".join(k if v is None else f"{k} {v}" for k, v in merged.items())


def train_command(attribute: str, out: str | Path | None = None) -> str:
    """The shell command that trains a concept model of ``attribute`` with the recipe and writes it to
    ``out`` (default: the shipped file's path). For an attribute in :data:`ENSEMBLE_MEMBERS` it
    trains every member and combines them with ``ebm-fast models combine``. Add ``--resume`` to a
    ``train`` to go on after a stop."""
    attribute = canonical_attribute(attribute)
    out = Path(out) if out is not None else default_concepts_dir() / f"{attribute}.pt"
    members = ENSEMBLE_MEMBERS.get(attribute, ((1.0, ""),))
    runs = [f"runs/concepts/{attribute}32" + (f"_member{i}" if i else "") for i in range(len(members))]
    trains = [f"ebm-fast train --data scenes --cond {attribute} {override_flags(recipe_flags(attribute), extra)} "
              f"--out {run}" for (_, extra), run in zip(members, runs)]
    if attribute not in ENSEMBLE_MEMBERS:
        return f"{trains[0]} && cp {runs[0]}/model.pt {out}"
    combine = (f"ebm-fast models combine {' '.join(f'{run}/model.pt' for run in runs)} "
               f"--weights {' '.join(f'{w:g}' for w, _ in members)} {ENSEMBLE_CHAIN_FLAGS} --out {out}")
    return " && ".join(trains + [combine])


def concept_paths(directory: str | Path | None = None,
                  attributes: Sequence[str] = ("position", "color", "shape")) -> dict[str, Path]:
    """``{attribute: directory / "<attribute>.pt"}`` (default directory: :func:`default_concepts_dir`)."""
    d = Path(directory) if directory is not None else default_concepts_dir()
    return {canonical_attribute(a): d / f"{canonical_attribute(a)}.pt" for a in attributes}


def load_concepts(paths: Mapping[str, str | Path] | str | Path | None = None,
                  attributes: Sequence[str] = ("position", "color", "shape"),
                  map_location: str | torch.device = "cpu") -> dict[str, tuple[nn.Module, dict]]:
    """Load a concept set: ``{attribute: (model, meta)}``, models in eval mode without parameter grads.

    Args:
        paths: ``{attribute: model file}``, or a directory holding ``<attribute>.pt`` files, or None
            for :func:`default_concepts_dir`. With a mapping, ``attributes`` is ignored.
        attributes: the attributes to load from a directory (default position, color, shape).
        map_location: device for the models (default CPU).

    Raises:
        FileNotFoundError: naming every missing file and the ``ebm-fast train`` command that makes it.
        ValueError: a model whose condition type does not fit its attribute.
    """
    if paths is None or isinstance(paths, (str, Path)):
        paths = concept_paths(paths, attributes)
    else:
        paths = {canonical_attribute(a): Path(p) for a, p in paths.items()}
    missing = {a: p for a, p in paths.items() if not Path(p).is_file()}
    if missing:
        lines = "\n".join(f"  {a}: {p}\n    make it with: {train_command(a, p)}" for a, p in missing.items())
        raise FileNotFoundError(f"concept models: expected {len(paths)} file(s), {len(missing)} missing:\n{lines}")
    from ..models import load_model

    out = {}
    for a, p in paths.items():
        model, meta = load_model(p, map_location=map_location)
        for q in model.parameters():
            q.requires_grad_(False)
        expected = ("onehot",) if a in CLASS_ATTRIBUTES else ("continuous",)
        ctype = getattr(model, "cond_type", meta.get("cond_type"))
        if ctype not in expected:
            raise ValueError(f"concept {a} ({p}): expected a model with cond_type {expected[0]!r}, got {ctype!r}")
        meta = dict(meta)
        meta.setdefault("path", str(p))
        out[a] = (model, meta)
    return out


def class_names(attribute: str, meta: Mapping | None = None) -> tuple[str, ...]:
    """Class names of ``color`` / ``shape`` for a model (its ``meta["data"]``, else the dataset's)."""
    key, default, _ = CLASS_ATTRIBUTES[canonical_attribute(attribute)]
    names = ((meta or {}).get("data") or {}).get(key)
    return tuple(names) if names else tuple(default)


def _cond_dim(attribute: str, meta: Mapping | None, model: nn.Module | None) -> int | None:
    if model is not None and getattr(model, "cond_dim", None):
        return int(model.cond_dim)
    d = (meta or {}).get("cond_dim")
    return int(d) if d else None


def _class_index(attribute: str, value: Any, names: Sequence[str]) -> int:
    aliases = CLASS_ATTRIBUTES[attribute][2]
    if isinstance(value, str):
        v = aliases.get(value.lower(), value.lower())
        if v not in names:
            raise ValueError(f"{attribute}: expected one of {tuple(names)}, got {value!r}")
        return names.index(v)
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    # a number written in an expression arrives as a float: accept integral ones as class indices
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or float(value) != int(value)):
        raise ValueError(f"{attribute}: expected a name in {tuple(names)} or a class index, got {value!r}")
    i = int(value)
    if not 0 <= i < len(names):
        raise ValueError(f"{attribute}: expected a class index in [0, {len(names)}), got {i}")
    return i


def encode_conditions(attribute: str, values: Any, meta: Mapping | None = None,
                      model: nn.Module | None = None) -> Tensor:
    """Per-sample conditions ``(B, cond_dim)`` float32 for ``values`` (one per sample).

    ``values``: for ``color``/``shape`` a sequence of names or an integer tensor of class indices
    ``(B,)``; for ``position`` floats ``(B, 2)``; for ``size`` floats ``(B,)``.
    """
    a = canonical_attribute(attribute)
    dim = _cond_dim(a, meta, model)
    if a in CLASS_ATTRIBUTES:
        names = class_names(a, meta)
        n_cls = dim or len(names)
        if n_cls != len(names):
            raise ValueError(f"{a}: the model has {n_cls} classes but its class names are {names}")
        if isinstance(values, Tensor) and not values.is_floating_point():
            idx = values.reshape(-1).long()
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_cls):
                raise ValueError(f"{a}: expected class indices in [0, {n_cls}), got "
                                 f"[{int(idx.min())}, {int(idx.max())}]")
        else:
            idx = torch.tensor([_class_index(a, v, names) for v in values], dtype=torch.long)
        return torch.nn.functional.one_hot(idx, n_cls).float()
    width = 2 if a == "position" else 1
    if dim is not None and dim != width:
        raise ValueError(f"{a}: expected a model with cond_dim {width}, got {dim}")
    c = torch.as_tensor(values, dtype=torch.float32)
    c = c.reshape(-1, width) if (a == "size" and c.dim() <= 1) else c
    if c.dim() != 2 or c.shape[1] != width:
        raise ValueError(f"{a}: expected values of shape (B, {width}), got {tuple(c.shape)}")
    if not torch.isfinite(c).all():
        raise ValueError(f"{a}: expected finite values, got {c.tolist()}")
    return c


def encode_condition(attribute: str, value: Any, meta: Mapping | None = None,
                     model: nn.Module | None = None) -> Tensor:
    """One shared condition ``(cond_dim,)`` float32: a colour/shape name or index, a position
    ``(x, y)``, a size in metres."""
    a = canonical_attribute(attribute)
    if a == "position":
        if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 2:
            raise ValueError(f"position: expected (x, y), got {value!r}")
        if not all(math.isfinite(float(v)) for v in value):
            raise ValueError(f"position: expected finite (x, y), got {value!r}")
    return encode_conditions(a, [value], meta, model)[0]


def make_concept(concepts: ConceptSet, attribute: str, value: Any, *, per_sample: bool = False) -> Concept:
    """``Concept(model, cond)`` of ``attribute`` from a concept set.

    ``value``: one condition (shared by every chain) or, with ``per_sample=True``, one per chain
    (see :func:`encode_conditions`).
    """
    a = canonical_attribute(attribute)
    if a not in concepts:
        raise ValueError(f"attribute {a!r}: no concept model loaded for it (loaded: {sorted(concepts)})")
    model, meta = concepts[a]
    if per_sample:
        cond = encode_conditions(a, value, meta, model)
        name = f"{a}[per-sample]"
    else:
        cond = encode_condition(a, value, meta, model)
        name = f"{a}={_fmt_value(value)}"
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return Concept(model, cond.to(device), per_sample=per_sample, name=name)


def _fmt_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(f"{float(v):g}" for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)
