"""``ebm-fast sample "EXPR"``: sample a composed-concept expression and write a PNG grid.

Also holds :class:`ChainSettings` and :func:`sample_images`, the Langevin chain used for images of
concept compositions (here and by :mod:`ebm_fast.evaluate`). The chain defaults to the one the
concepts were trained with (recorded in each model file), run as long as the training's persistent
chains were on average (:func:`from_noise_steps`: K / (1 - p) with a replay buffer); without that
record, to
:class:`ebm_fast.train.TrainConfig`'s defaults (60 steps, step size 10, noise 0.005, element-wise
gradient clip 0.01, the released code's ``noise_first`` order). Chains start from uniform noise in [0, 1].
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from .compose import DEFAULT_NOT_ALPHA, DEFAULT_SAMPLE_TEMPERATURE, Expr, balance_conjunctions, balance_disjunctions
from .train import TrainConfig

__all__ = ["ChainSettings", "chain_settings_of", "generation_chain", "from_noise_steps", "sample_images", "concepts_resolution", "to_uint8", "resolve_device",
           "add_chain_args", "settings_from_args", "sample_cli_main"]

_TRAIN = TrainConfig  # class attributes hold the dataclass defaults


@dataclass
class ChainSettings:
    """How image chains are run: ``steps`` K, ``step_size``, ``noise``, ``grad_clip`` (element-wise,
    None = off), ``order`` (``noise_first``/``ula``), ``backend``, ``resolution`` (None: the concepts'
    training resolution), ``batch_size`` (chains sampled at once), ``balance_and`` (scale every
    conjunction's terms to the weakest one's gradient at the starting noise,
    :func:`ebm_fast.compose.balance_conjunctions`), ``balance_or`` (give every disjunction's terms
    equal weight at their own modes, :func:`ebm_fast.compose.balance_disjunctions`),
    ``balance_strength`` (the fraction of that correction applied) and ``balance_steps`` (the length
    of the chain of each term alone that finds those modes)."""

    steps: int = _TRAIN.langevin_steps
    step_size: float = _TRAIN.step_size
    noise: float = _TRAIN.noise
    grad_clip: float | None = _TRAIN.sample_grad_clip
    order: str = _TRAIN.order
    backend: str = "auto"
    resolution: int | None = None
    batch_size: int = 128
    balance_and: bool = False
    balance_or: bool = False
    # half the gap: on Disj(Position 1, Position 2) chosen at 128 samples (seed 0), then 0.452 / 0.450
    # at 1000 fresh ones (seed 1), where the whole gap overshoots (docs/sampling.md)
    balance_strength: float = 0.5
    balance_steps: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps: expected an integer >= 0, got {self.steps!r}")
        if not math.isfinite(self.balance_strength):
            raise ValueError(f"balance_strength: expected a finite number, got {self.balance_strength!r}")
        if not isinstance(self.balance_steps, int) or self.balance_steps < 0:
            raise ValueError(f"balance_steps: expected an integer >= 0, got {self.balance_steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {self.batch_size!r}")
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 1):
            raise ValueError(f"resolution: expected a positive integer or None, got {self.resolution!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The chain in a few words: ``"400 steps of 7.5, noise 0.005, clip 0.01"``."""
        clip = "no clip" if self.grad_clip is None else f"clip {self.grad_clip:g}"
        return f"{self.steps} steps of {self.step_size:g}, noise {self.noise:g}, {clip}"


def concepts_resolution(concepts: Mapping) -> int:
    """The image size the concepts were trained at (their data's ``scene_config``, else the model's
    registered resolution, else 32); ValueError if they disagree."""
    found = {}
    for attr, (model, meta) in concepts.items():
        r = (((meta or {}).get("data") or {}).get("scene_config") or {}).get("resolution")
        r = r or (getattr(model, "config", {}) or {}).get("resolution")
        if r:
            found[attr] = int(r)
    if len(set(found.values())) > 1:
        raise ValueError(f"concepts: expected one training resolution, got {found} (pass a resolution)")
    return next(iter(found.values()), 32)


def _device_of(expr: Expr) -> torch.device:
    for leaf in expr.leaves():
        for p in getattr(leaf.model, "parameters", lambda: iter(()))():
            return p.device
    return torch.device("cpu")


def sample_images(expr: Expr, n: int, settings: ChainSettings, resolution: int, seed: int) -> Tensor:
    """``n`` images ``(n, 3, resolution, resolution)`` float32 in [0, 1] from ``expr``, chains started
    from uniform noise drawn with ``seed`` (the Langevin noise uses ``seed`` too). Leaves with
    per-sample conditions must hold exactly ``n`` of them. With ``settings.balance_and`` the
    conjunctions are first balanced at that noise. With ``settings.balance_or`` the
    disjunctions are first balanced at their terms' modes, found by ``settings.balance_steps`` steps
    of each term alone from the same noise."""
    from .sampler import sample

    device = _device_of(expr)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x0 = torch.rand(n, 3, resolution, resolution, generator=gen).to(device)

    def chain(e: Expr, x: Tensor, steps: int) -> Tensor:
        return sample(e, x, steps=steps, step_size=settings.step_size, noise=settings.noise, clamp=(0.0, 1.0),
                      grad_clip=settings.grad_clip, order=settings.order, seed=int(seed), backend=settings.backend)

    if settings.balance_and:
        expr = balance_conjunctions(expr, x0)
    if settings.balance_or:
        expr = balance_disjunctions(expr, x0, settle=lambda term, x: chain(term, x, settings.balance_steps),
                                    strength=settings.balance_strength)
    x = chain(expr, x0, settings.steps)
    return x.detach().float().clamp(0.0, 1.0).cpu()


def to_uint8(images: Tensor) -> np.ndarray:
    """float ``(N, 3, H, W)`` in [0, 1] -> uint8 ``(N, H, W, 3)`` (what the grid writers take)."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# Chain options that default to the concepts' own training chain (see chain_settings_of).
CHAIN_FIELDS = {"steps": "langevin_steps", "step_size": "step_size", "noise": "noise", "grad_clip": "sample_grad_clip",
                "order": "order"}


def from_noise_steps(train_config: Mapping) -> int:
    """Langevin steps for a chain started from uniform noise that matches the training's chains.

    Training continues chains from its replay buffer: each draw extends a stored chain by ``K`` steps
    with probability ``p`` and starts a fresh one otherwise, so the chains it learned from were on
    average ``K / (1 - p)`` steps long (400 for K = 20, p = 0.95). Without a buffer (p = 0) it is ``K``.
    """
    k = int(train_config["langevin_steps"])
    p = float(train_config.get("replay_p", 0.0) or 0.0)
    if not 0.0 <= p < 1.0:
        return k
    return max(k, int(round(k / (1.0 - p))))


def generation_chain(meta: Mapping | None) -> dict:
    """The chain fields a concept's file recommends for sampling from noise
    (``meta["generation"]["chain"]``, a subset of :data:`CHAIN_FIELDS`' keys), measured to generate
    better than its training chain; ``{}`` when it names none."""
    chain = dict(((meta or {}).get("generation") or {}).get("chain") or {})
    unknown = sorted(set(chain) - set(CHAIN_FIELDS))
    if unknown:
        raise ValueError(f"generation chain: unknown fields {unknown} (expected some of {sorted(CHAIN_FIELDS)})")
    return chain


def chain_settings_of(concepts: Mapping | None, **overrides) -> ChainSettings:
    """Chain settings for sampling ``concepts`` from noise: the Langevin chain they were trained with
    (step size, noise, gradient clip, order from each model's recorded ``train_config``; steps
    :func:`from_noise_steps`, as long as the training's persistent chains), with the fields a model's
    file recommends for generation (:func:`generation_chain`) in place of those. Each field takes the
    concepts' value where all of them record a chain and agree on that field, else
    :class:`ChainSettings`' default (:func:`agreed_chain_fields`); ``overrides`` win. A file without a
    training chain (an ensemble of trained models, :class:`ebm_fast.models.EnergyEnsemble`) counts
    when its recommended chain names every field."""
    return ChainSettings(**{**agreed_chain_fields(recorded_chains(concepts)), **overrides})


def agreed_chain_fields(recorded: Mapping[str, tuple | None]) -> dict:
    """The fields of ``CHAIN_FIELDS`` on which every chain in ``recorded`` (:func:`recorded_chains`)
    agrees; none where a concept records no chain."""
    if not recorded or None in recorded.values():
        return {}
    return {f: vals[0] for f, *vals in zip(CHAIN_FIELDS, *recorded.values()) if len(set(vals)) == 1}


def recorded_chains(concepts: Mapping | None) -> dict[str, tuple | None]:
    """Per concept, the values of ``CHAIN_FIELDS`` it records (its training chain with its file's
    recommended generation fields in place), or None where it records no complete chain."""
    out: dict[str, tuple | None] = {}
    for name, (_, meta) in (concepts or {}).items():
        tc = (meta or {}).get("train_config") or {}
        own = {}
        if all(v in tc for v in CHAIN_FIELDS.values()):
            own = {f: from_noise_steps(tc) if f == "steps" else tc[v] for f, v in CHAIN_FIELDS.items()}
        own.update(generation_chain(meta))
        out[name] = tuple(own[f] for f in CHAIN_FIELDS) if all(f in own for f in CHAIN_FIELDS) else None
    return out


def add_chain_args(p: argparse.ArgumentParser, *, balance_and: bool = False) -> None:
    """The chain options shared by ``ebm-fast sample``, ``ebm-fast eval composition`` and the demo.

    ``--steps``, ``--step-size``, ``--noise``, ``--grad-clip`` and ``--order`` default to the chain the
    concepts were trained with (:func:`chain_settings_of`); unset, they are absent from the namespace.
    ``balance_and`` is the default of ``--balance-and`` (the demo's; the plain sum everywhere else)."""
    d = ChainSettings()
    fallback = f"(default: the concepts' training chain, else {{}})"
    steps_default = "(default: as long as the concepts' training chains, K / (1 - replay p), else {})"
    p.add_argument("--steps", type=int, default=argparse.SUPPRESS, help="Langevin steps " + steps_default.format(d.steps))
    p.add_argument("--step-size", type=float, default=argparse.SUPPRESS, help="step size " + fallback.format(d.step_size))
    p.add_argument("--noise", type=float, default=argparse.SUPPRESS, help="noise scale " + fallback.format(d.noise))
    p.add_argument("--grad-clip", type=lambda s: None if s.lower() in ("none", "off") else float(s),
                   default=argparse.SUPPRESS, help="element-wise gradient clip, or none " + fallback.format(d.grad_clip))
    p.add_argument("--order", default=argparse.SUPPRESS, choices=("noise_first", "ula"), help=fallback.format(d.order))
    p.add_argument("--backend", default="auto", help="fused-step backend: auto, torch, cpu, cuda, triton")
    p.add_argument("--res", type=int, default=None, help="image size (default: the concepts' training size)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"chains at once (default {d.batch_size})")
    p.add_argument("--alpha", type=float, default=DEFAULT_NOT_ALPHA,
                   help=f"alpha of a negation written without [alpha] (default {DEFAULT_NOT_ALPHA})")
    p.add_argument("--temperature", type=float, default=DEFAULT_SAMPLE_TEMPERATURE,
                   help=f"temperature of every disjunction (default {DEFAULT_SAMPLE_TEMPERATURE}, the released "
                        "code's; 1 is the paper's equation and draws both objects of a two-way OR)")
    p.add_argument("--balance-and", action=argparse.BooleanOptionalAction, default=balance_and,
                   help="scale the terms of every conjunction down to the weakest one's gradient norm at the "
                        "starting noise (default " + ("on; --no-balance-and gives" if balance_and else "off:")
                        + " the plain sum of energies; see docs/sampling.md)")
    p.add_argument("--balance-or", action=argparse.BooleanOptionalAction, default=False,
                   help="level the terms of every disjunction at their own modes (log weights from their median "
                        "energies after a short chain of each term alone, by --balance-strength of the gap; "
                        "default off: the plain log-sum-exp; see docs/sampling.md)")
    p.add_argument("--balance-strength", type=float, default=d.balance_strength,
                   help=f"the fraction of --balance-or's correction applied (default {d.balance_strength:g}; "
                        "docs/sampling.md has measured fractions)")
    p.add_argument("--balance-steps", type=int, default=d.balance_steps,
                   help=f"steps of those per-term chains (default {d.balance_steps})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto", help="device of the models: auto (cuda if available), cpu, cuda")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None


def settings_from_args(args: argparse.Namespace, concepts: Mapping | None = None) -> ChainSettings:
    """The chain settings of parsed :func:`add_chain_args` options, unset ones from ``concepts``."""
    given = {k: getattr(args, k) for k in CHAIN_FIELDS if hasattr(args, k)}
    recorded = recorded_chains(concepts)
    agreed = agreed_chain_fields(recorded)
    fallback = [f for f in CHAIN_FIELDS if f not in given and f not in agreed]
    if fallback and any(c is not None for c in recorded.values()):
        d = ChainSettings()
        chains = "; ".join(f"{name}: " + ("none recorded" if c is None else
                                         ", ".join(f"{f} {v}" for f, v in zip(CHAIN_FIELDS, c)))
                           for name, c in recorded.items())
        print(f"note: the concepts' sampling chains disagree on {', '.join(fallback)} ({chains}); those options "
              f"take the generic defaults ({', '.join(f'{f} {getattr(d, f)}' for f in fallback)})", file=sys.stderr)
    return chain_settings_of(concepts, **given, backend=args.backend, resolution=args.res,
                             batch_size=args.batch_size, balance_and=args.balance_and,
                             balance_or=args.balance_or, balance_strength=args.balance_strength,
                             balance_steps=args.balance_steps)


def sample_cli_main(argv: list[str] | None = None) -> int:
    """``ebm-fast sample "EXPR" --n 16 --out grid.png [--concepts DIR] [--steps ...] [--seed ...]``."""
    from .concepts import generation_caveat, load_concepts
    from .data.scenes import save_image_grid
    from .expr_parser import parse, parse_expr, tree_attributes

    p = argparse.ArgumentParser(prog="ebm-fast sample", description=__doc__.split("\n\n")[0])
    p.add_argument("expr", help='expression, e.g. "shape=sphere & color=red & ~position=(0.5,0.5)"')
    p.add_argument("--n", type=int, default=16, help="samples (default 16)")
    p.add_argument("--out", default="grid.png", help="PNG grid path (default grid.png)")
    p.add_argument("--concepts", default=None, help="folder of <attribute>.pt models (default: the shipped ones)")
    p.add_argument("--ncols", type=int, default=8, help="grid columns (default 8)")
    add_chain_args(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        attrs = tree_attributes(parse(args.expr))
        concepts = load_concepts(args.concepts, attributes=attrs, map_location=resolve_device(args.device))
        expr = parse_expr(args.expr, concepts, alpha=args.alpha, temperature=args.temperature)
        settings = settings_from_args(args, concepts)
        if args.n < 1:
            raise ValueError(f"--n: expected an integer >= 1, got {args.n}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for attribute, (_, meta) in concepts.items():
        caveat = generation_caveat(meta)
        if caveat:
            print(f"note: the {attribute} concept {caveat}", file=sys.stderr)
    res = settings.resolution or concepts_resolution(concepts)
    t0 = time.perf_counter()
    chunks = [sample_images(expr, min(settings.batch_size, args.n - i), settings, res, args.seed + i)
              for i in range(0, args.n, settings.batch_size)]
    dt = time.perf_counter() - t0
    path = save_image_grid(Path(args.out), to_uint8(torch.cat(chunks)), ncols=args.ncols)
    print(f"{expr!r}: {args.n} samples at {res}x{res}, {settings.describe()} in {dt:.2f} s; wrote {path}")
    return 0

