"""The chain options of the commands that sample the paper's concepts (``ebm-fast sample``,
``ebm-fast eval composition``, ``ebm-fast eval models`` and the demo), and the settings they give.

Unset chain options take the chain the concepts were trained with (:func:`ebm_fast.chains.chain_settings_of`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Mapping

from ..chains import CHAIN_FIELDS, ChainSettings, agreed_chain_fields, chain_settings_of, recorded_chains
from ..compose import DEFAULT_NOT_ALPHA, DEFAULT_SAMPLE_TEMPERATURE

__all__ = ["add_chain_args", "settings_from_args"]


def add_chain_args(p: argparse.ArgumentParser, *, balance_and: bool = False) -> None:
    """The chain options shared by ``ebm-fast sample``, ``ebm-fast eval composition`` and the demo.

    ``--steps``, ``--step-size``, ``--noise``, ``--grad-clip`` and ``--order`` default to the chain the
    concepts were trained with (:func:`chain_settings_of`); unset, they are absent from the namespace.
    ``balance_and`` is the default of ``--balance-and`` (the demo's; the plain sum everywhere else)."""
    d = ChainSettings()
    fallback = "(default: the concepts' training chain, else {})"
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
