"""The compact per-sample encoding of a composed expression (the "program" kernels evaluate).

An expression tree is flattened to ``M`` nodes of three kinds and stored as one float32 table
``[M, 5]`` whose rows are in *post-order* (every child before its parent, the root last):

====== ============ =================================================================
column name         meaning
====== ============ =================================================================
0      ``kind``     0 = LEAF, 1 = SUM (``e = sum_j c_j e_j``), 2 = LSE (``e = -T log sum_j exp(-e_j/T + b_j)``)
1      ``leaf``     for a LEAF, its index ``i`` into ``expr.leaves()`` (``e = E[i]``); else -1
2      ``parent``   row of the parent node; -1 for the root
3      ``edge``     the edge to the parent: ``c_j`` if the parent is a SUM, ``b_j`` if it is an LSE
4      ``temp``     ``T`` of an LSE node; 1 otherwise
====== ============ =================================================================

Integers are stored exactly (``M`` is far below 2**24). Flattening merges a SUM under a SUM (And,
Not and Scale all become SUM nodes; coefficients multiply) and an LSE under an LSE of the same
temperature (log-weights add), which leaves the energy unchanged, so nesting costs nothing.

Evaluation, per sample, is two passes over the rows:

* forward (rows in order): a LEAF reads ``E[leaf]``, a SUM finishes its accumulated sum, an LSE
  finishes its running log-sum-exp; then the node pushes its energy into its parent's accumulator
  (``acc += c e`` or an online log-sum-exp update with ``z = -e/T_p + b``).
* backward (rows in reverse): the root's adjoint is 1; every other node has exactly one parent, so
  ``adj[k] = adj[parent] * d`` with ``d = c_k`` under a SUM and
  ``d = exp((e_parent - e_k)/T_parent + b_k)`` (the softmax weight) under an LSE. A LEAF's adjoint is
  its weight ``w_i``: the composed gradient is ``sum_i w_i grad E_i``.

Each leaf occurs once in the tree, so the sign of ``w_i`` is the sign of the product of the SUM
coefficients on its path (softmax weights are positive). An expression whose every leaf has
``w_i <= 0`` for all inputs (``~a`` alone) has no normalisable density; :meth:`Program.check_integrable`
raises for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Program", "compile_expr", "LEAF", "SUM", "LSE", "MAX_NODES", "MAX_LEAVES", "COLUMNS"]

LEAF, SUM, LSE = 0, 1, 2
COLUMNS = 5
MAX_NODES = 64  # native kernels keep the per-sample node energies in fixed-size scratch
MAX_LEAVES = 32


@dataclass
class Program:
    """A compiled expression: the node ``table`` ``[M, 5]`` (float32, CPU) and facts about it."""

    table: Tensor
    num_leaves: int
    leaf_signs: tuple[float, ...]
    description: str
    _on_device: dict = field(default_factory=dict, repr=False)

    @property
    def num_nodes(self) -> int:
        return self.table.shape[0]

    def on(self, device: torch.device | str) -> Tensor:
        """The table, contiguous, on ``device`` (copied once per device and cached)."""
        device = torch.device(device)
        key = str(device)
        t = self._on_device.get(key)
        if t is None:
            t = self.table.to(device).contiguous()
            self._on_device[key] = t
        return t

    def check_integrable(self) -> None:
        """Raise ``ValueError`` when every leaf weight is <= 0 for all inputs."""
        if not any(s > 0 for s in self.leaf_signs):
            raise ValueError(
                f"expression {self.description} defines no normalisable distribution: every leaf "
                "enters with a weight <= 0 for all inputs (for example a negation ~a on its own), "
                "so Langevin sampling would diverge; conjoin it with a positive concept, e.g. b & ~a"
            )

    # ---- the reference evaluation (torch, any device), used by the torch backend and the tests ---
    def weights_and_energy(self, energies: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample leaf weights ``w`` ``[N, B]`` and root energy ``e`` ``[B]`` from ``energies`` ``[N, B]``.

        Arithmetic in the dtype of ``energies`` (fp32 for the step, fp64 in tests).
        """
        rows = self.table.tolist()
        m = len(rows)
        e: list[Tensor | None] = [None] * m
        acc: list[Tensor | None] = [None] * m  # SUM: running sum; LSE: running max
        s: list[Tensor | None] = [None] * m  # LSE: running sum of exp(z - max)
        for k, (kind, leaf, parent, edge, temp) in enumerate(rows):
            kind, parent = int(kind), int(parent)
            if kind == LEAF:
                ek = energies[int(leaf)]
            elif kind == SUM:
                ek = acc[k]
            else:
                ek = -temp * (acc[k] + torch.log(s[k]))
            e[k] = ek
            if parent < 0:
                continue
            pkind, ptemp = int(rows[parent][0]), rows[parent][4]
            if pkind == SUM:
                term = edge * ek
                acc[parent] = term if acc[parent] is None else acc[parent] + term
            else:
                z = -ek / ptemp + edge
                if acc[parent] is None:
                    acc[parent], s[parent] = z, torch.ones_like(z)
                else:
                    mx = torch.maximum(acc[parent], z)
                    s[parent] = s[parent] * torch.exp(acc[parent] - mx) + torch.exp(z - mx)
                    acc[parent] = mx
        w = torch.empty_like(energies)
        adj: list[Tensor | float | None] = [None] * m
        for k in range(m - 1, -1, -1):
            kind, leaf, parent, edge, _ = rows[k]
            parent = int(parent)
            if parent < 0:
                adj[k] = torch.ones_like(e[k])
            else:
                prow = rows[parent]
                if int(prow[0]) == SUM:
                    adj[k] = adj[parent] * edge
                else:
                    adj[k] = adj[parent] * torch.exp((e[parent] - e[k]) / prow[4] + edge)
            if int(kind) == LEAF:
                w[int(leaf)] = adj[k]
        return w, e[m - 1]


# ---- compilation ---------------------------------------------------------------------------------
def compile_expr(expr) -> Program:
    """Flatten ``expr`` into a :class:`Program` (normally reached through ``expr.program``)."""
    from .compose import And, Concept, Not, Or, Scale

    counter = [0]

    def build(node):
        """-> ("leaf", i) | ("sum", [(c, child)]) | ("lse", T, [(b, child)])"""
        if isinstance(node, Concept):
            i = counter[0]
            counter[0] += 1
            return ("leaf", i)
        if isinstance(node, (And, Not, Scale)):
            if isinstance(node, And):
                pairs = list(zip(node.coefs, node.terms))
            elif isinstance(node, Not):
                pairs = [(-node.alpha, node.term)]
            else:
                pairs = [(node.scale, node.term)]
            terms = []
            for c, t in pairs:
                sub = build(t)
                if sub[0] == "sum":  # SUM under SUM: inline, coefficients multiply
                    terms.extend((c * c2, g) for c2, g in sub[1])
                else:
                    terms.append((c, sub))
            return ("sum", terms)
        if isinstance(node, Or):
            terms = []
            for b, t in zip(node.log_weights, node.terms):
                sub = build(t)
                if sub[0] == "sum" and len(sub[1]) == 1 and sub[1][0][0] == 1.0:
                    sub = sub[1][0][1]  # a unit SUM is its child
                if sub[0] == "lse" and sub[1] == node.temperature:  # same-T LSE: inline, b's add
                    terms.extend((b + b2, g) for b2, g in sub[2])
                else:
                    terms.append((b, sub))
            return ("lse", node.temperature, terms)
        raise TypeError(f"cannot compile {type(node).__name__} into a program")

    root = build(expr)
    if root[0] == "sum" and len(root[1]) == 1 and root[1][0][0] == 1.0:
        root = root[1][0][1]
    num_leaves = counter[0]

    rows: list[list[float]] = []
    signs = [0.0] * num_leaves

    def emit(node, sign: float) -> int:
        kind = node[0]
        if kind == "leaf":
            rows.append([LEAF, node[1], -1, 0.0, 1.0])
            signs[node[1]] = sign
            return len(rows) - 1
        children = node[1] if kind == "sum" else node[2]
        idx = [emit(g, sign * (e if kind == "sum" else 1.0)) for e, g in children]
        rows.append([SUM if kind == "sum" else LSE, -1, -1, 0.0, 1.0 if kind == "sum" else node[1]])
        me = len(rows) - 1
        for (e, _), i in zip(children, idx):
            rows[i][2] = me
            rows[i][3] = e
        return me

    emit(root, 1.0)
    if num_leaves > MAX_LEAVES or len(rows) > MAX_NODES:
        raise ValueError(
            f"expression too large for the fused step: {num_leaves} leaves and {len(rows)} nodes "
            f"after flattening (at most {MAX_LEAVES} leaves and {MAX_NODES} nodes)"
        )
    table = torch.tensor(rows, dtype=torch.float32)
    return Program(table=table, num_leaves=num_leaves, leaf_signs=tuple(signs), description=repr(expr))
