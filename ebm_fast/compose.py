"""The composition algebra: concepts combined by conjunction, disjunction and negation.

An expression is a tree whose leaves are :class:`Concept` s (an energy model and an optional
condition) and whose inner nodes are :class:`And` (weighted sum of energies), :class:`Or`
(soft-min, ``-T log sum exp(-e/T + beta)``), :class:`Not` (``-alpha * e``) and :class:`Scale`
(``s * e``). ``energy(x)`` evaluates the composed energy with autograd (the oracle); the samplers
instead ask each leaf for its energy and input gradient and let the fused step combine them with
per-sample weights, evaluated from :attr:`Expr.program` (see :mod:`ebm_fast.program`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["Expr", "Concept", "And", "Or", "Not", "Scale", "balance_disjunctions", "balance_conjunctions",
           "leaf_energy_from_output", "per_column", "Negated"]

DEFAULT_NOT_ALPHA = 0.01  # the paper's value; the released code uses 0.001
# The disjunction temperature the sampling tools (`ebm-fast sample`, `eval composition`, the demo)
# use; ``Or`` itself defaults to the paper's T = 1. On the uniform noise a chain starts from, the
# shipped position concept's energies under two targets differ by ~0.08 either way, so at T = 1 the branch
# weights softmax(-E_j / T) start near 1/2, the chain follows the average gradient and draws BOTH
# objects; at the released code's 0.01 it commits to one (Disj(Position 1, Position 2), 1000
# samples: 0.879 of samples at a position against 0.455 at T = 1; docs/composition.md, "Disjunction
# temperature").
DEFAULT_SAMPLE_TEMPERATURE = 0.01


def leaf_energy_from_output(out: Tensor, batch: int, where: str = "energy model", column: int | None = None) -> Tensor:
    """Reduce a model output of shape ``(B,)``, ``(B, 1)`` or ``(B, k)`` to per-sample energies ``(B,)``.

    A 0-dim output is accepted when ``batch`` is 1: models that end in ``.squeeze()`` (JEM's ``F``,
    short_run's and ebm-anatomy's nets) return one at a batch of one. ``column=j`` picks column ``j``
    of the output flattened to ``(B, k)`` instead of summing the columns.
    """
    if not isinstance(out, Tensor):
        raise TypeError(f"{where} must return a Tensor of shape (B,) or (B, ...), got {type(out).__name__}")
    if out.dim() == 0 and batch == 1:
        out = out.reshape(1)
    if out.dim() == 0 or out.shape[0] != batch:
        raise ValueError(
            f"{where} must return energies with batch size {batch} as the first dimension, "
            f"got shape {tuple(out.shape)}"
        )
    if column is not None:
        flat = out.reshape(batch, -1)
        if not -flat.shape[1] <= column < flat.shape[1]:
            raise ValueError(f"{where}: column {column} asked for, but the model returns {flat.shape[1]} "
                             f"column(s) (output shape {tuple(out.shape)})")
        return flat[:, column]
    return out.reshape(batch, -1).sum(dim=1) if out.dim() > 1 else out


class Expr:
    """Base class of composed energies. Supports ``a & b``, ``a | b``, ``~a`` and ``s * a``."""

    # --- operators -------------------------------------------------------------------------
    def __and__(self, other: "Expr") -> "And":
        return And(self, _as_expr(other))

    def __or__(self, other: "Expr") -> "Or":
        return Or(self, _as_expr(other))

    def __invert__(self) -> "Not":
        return Not(self)

    def __mul__(self, s: float) -> "Scale":
        if not isinstance(s, numbers.Real) or isinstance(s, bool):
            return NotImplemented
        return Scale(self, float(s))

    __rmul__ = __mul__

    def __neg__(self) -> "Scale":
        return Scale(self, -1.0)

    # --- structure ---------------------------------------------------------------------------
    def children(self) -> tuple["Expr", ...]:
        return ()

    def leaves(self) -> list["Concept"]:
        """Leaves depth-first, left to right, one entry per occurrence."""
        out: list[Concept] = []
        self._collect_leaves(out)
        return out

    def _collect_leaves(self, out: list["Concept"]) -> None:
        for c in self.children():
            c._collect_leaves(out)

    def _with_children(self, children: tuple["Expr", ...]) -> "Expr":
        """The same node over ``children`` (a leaf returns itself)."""
        return self

    # --- evaluation ----------------------------------------------------------------------------
    def energy(self, x: Tensor) -> Tensor:
        """Composed energy ``(B,)`` of ``x`` ``(B, ...)``, differentiable with autograd."""
        return self.combine([leaf.energy(x) for leaf in self.leaves()])

    def combine(self, leaf_energies: Sequence[Tensor]) -> Tensor:
        """Composed energy from the leaves' energies (one ``(B,)`` tensor per entry of ``leaves()``)."""
        it = iter(leaf_energies)
        e = self._combine(it)
        if next(it, None) is not None:
            raise ValueError("combine: more leaf energies than leaves")
        return e

    def _combine(self, it: Iterator[Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def program(self):
        """The compiled per-sample encoding of this tree (cached; see :mod:`ebm_fast.program`)."""
        prog = self.__dict__.get("_program")
        if prog is None:
            from .program import compile_expr

            prog = compile_expr(self)
            self.__dict__["_program"] = prog
        return prog

    def __repr__(self) -> str:
        return self._repr()

    def _repr(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


def _as_expr(e: Any) -> Expr:
    if not isinstance(e, Expr):
        raise TypeError(f"expected an ebm_fast expression (Concept, And, Or, Not, Scale), got {type(e).__name__}")
    return e


class Concept(Expr):
    """A leaf: ``E(x) = model(x, cond)`` (or ``model(x)`` when ``cond`` is None).

    Args:
        model: callable ``(x, cond) -> energies`` (or ``x -> energies``) returning ``(B,)``,
            ``(B, 1)`` or ``(B, k)``; the leaf energy sums every dimension after the batch one.
        cond: the condition. By default it is *shared*: a number, a sequence or a tensor without a
            batch dimension (a one-hot ``(C,)``, a position ``(2,)``) that is broadcast along the batch,
            so the model sees ``cond`` of shape ``(B, *cond.shape)``.
        per_sample: if True, ``cond`` already holds one condition per chain, shape ``(B, ...)``,
            and is passed through unchanged (its first dimension must equal the batch size).
        name: a label used in messages and reprs.
        column: None (default: the leaf energy is the sum of the output's columns), or ``j``: the
            leaf energy is column ``j`` of a ``(B, k)`` output. :func:`per_column` builds these.
    """

    def __init__(self, model: Callable[..., Tensor], cond: Any = None, *, per_sample: bool = False,
                 name: str | None = None, column: int | None = None):
        if not callable(model):
            raise TypeError(f"Concept: model must be callable, got {type(model).__name__}")
        if per_sample and cond is None:
            raise ValueError("Concept: per_sample=True needs a condition of shape (B, ...), got None")
        if column is not None and (isinstance(column, bool) or not isinstance(column, numbers.Integral)
                                   or column < 0):
            raise ValueError(f"Concept: column must be None or an int >= 0, got {column!r}")
        self.model = model
        self.column = None if column is None else int(column)
        self.per_sample = bool(per_sample)
        if cond is not None and not isinstance(cond, Tensor):
            cond = torch.as_tensor(cond)
            if cond.is_floating_point():
                cond = cond.to(torch.get_default_dtype())
        self.cond: Tensor | None = cond
        self.name = name

    def _collect_leaves(self, out: list["Concept"]) -> None:
        out.append(self)

    def batched_cond(self, batch: int, device: torch.device) -> Tensor | None:
        """The condition as the model sees it: ``(batch, *cond_shape)`` on ``device``, or None."""
        c = self.cond
        if c is None:
            return None
        c = c.to(device)
        if self.per_sample:
            if c.dim() == 0 or c.shape[0] != batch:
                raise ValueError(
                    f"{self._repr()}: per-sample condition must have batch size {batch} as its first "
                    f"dimension, got shape {tuple(c.shape)}"
                )
            return c
        return c.unsqueeze(0).expand(batch, *c.shape)

    def energy(self, x: Tensor) -> Tensor:
        c = self.batched_cond(x.shape[0], x.device)
        out = self.model(x) if c is None else self.model(x, c)
        return leaf_energy_from_output(out, x.shape[0], self._repr(), self.column)

    def at_column(self, j: int) -> "Concept":
        """This concept restricted to column ``j`` of its model's ``(B, k)`` output."""
        return Concept(self.model, self.cond, per_sample=self.per_sample, name=self.name, column=j)

    def _combine(self, it: Iterator[Tensor]) -> Tensor:
        try:
            return next(it)
        except StopIteration:
            raise ValueError("combine: fewer leaf energies than leaves") from None

    def _repr(self) -> str:
        col = "" if self.column is None else f"[:, {self.column}]"
        if self.name:
            return self.name + col
        m = getattr(self.model, "__name__", type(self.model).__name__)
        if self.cond is None:
            return f"Concept({m}){col}"
        if self.per_sample:
            return f"Concept({m}, per-sample cond {tuple(self.cond.shape)}){col}"
        c = self.cond.tolist() if self.cond.numel() <= 6 else f"<{tuple(self.cond.shape)}>"
        return f"Concept({m}, {c}){col}"


class And(Expr):
    """Conjunction: ``e = sum_j c_j e_j`` (product of experts). ``coefs`` default to 1."""

    def __init__(self, *terms: Expr, coefs: Sequence[float] | None = None):
        if len(terms) == 1 and isinstance(terms[0], (list, tuple)):
            terms = tuple(terms[0])
        if not terms:
            raise ValueError("And needs at least one term")
        self.terms = tuple(_as_expr(t) for t in terms)
        self.coefs = tuple(float(c) for c in coefs) if coefs is not None else (1.0,) * len(self.terms)
        if len(self.coefs) != len(self.terms):
            raise ValueError(f"And: {len(self.terms)} terms but {len(self.coefs)} coefs")

    def children(self) -> tuple[Expr, ...]:
        return self.terms

    def _with_children(self, children: tuple[Expr, ...]) -> "And":
        return And(*children, coefs=self.coefs)

    def _combine(self, it: Iterator[Tensor]) -> Tensor:
        total = None
        for c, t in zip(self.coefs, self.terms):
            e = t._combine(it)
            e = e if c == 1.0 else c * e
            total = e if total is None else total + e
        return total

    def _repr(self) -> str:
        parts = [t._repr() if c == 1.0 else f"{c:g}*{t._repr()}" for c, t in zip(self.coefs, self.terms)]
        return "(" + " & ".join(parts) + ")"


class Or(Expr):
    """Disjunction: ``e = -T log sum_j exp(-e_j / T + beta_j)`` (a mixture of the terms).

    Args:
        temperature: ``T`` > 0 (paper: 1; released code: 0.01).
        log_weights: ``beta_j``, the log mixture weights (default 0 for every term).
    """

    def __init__(self, *terms: Expr, temperature: float = 1.0, log_weights: Sequence[float] | None = None):
        if len(terms) == 1 and isinstance(terms[0], (list, tuple)):
            terms = tuple(terms[0])
        if not terms:
            raise ValueError("Or needs at least one term")
        self.terms = tuple(_as_expr(t) for t in terms)
        self.temperature = float(temperature)
        if not (self.temperature > 0.0) or self.temperature == float("inf"):
            raise ValueError(f"Or: temperature must be a finite positive number, got {temperature}")
        self.log_weights = (
            tuple(float(b) for b in log_weights) if log_weights is not None else (0.0,) * len(self.terms)
        )
        if len(self.log_weights) != len(self.terms):
            raise ValueError(f"Or: {len(self.terms)} terms but {len(self.log_weights)} log_weights")
        if not all(math.isfinite(b) for b in self.log_weights):
            raise ValueError(f"Or: log_weights must be finite numbers, got {self.log_weights}")

    def children(self) -> tuple[Expr, ...]:
        return self.terms

    def _with_children(self, children: tuple[Expr, ...]) -> "Or":
        return Or(*children, temperature=self.temperature, log_weights=self.log_weights)

    def _combine(self, it: Iterator[Tensor]) -> Tensor:
        t = self.temperature
        z = torch.stack([-term._combine(it) / t + b for term, b in zip(self.terms, self.log_weights)])
        return -t * torch.logsumexp(z, dim=0)

    def _repr(self) -> str:
        s = " | ".join(t._repr() for t in self.terms)
        extra = f", T={self.temperature:g}" if self.temperature != 1.0 else ""
        if any(self.log_weights):
            extra += f", beta={list(self.log_weights)}"
        return f"Or({s}{extra})" if extra else f"({s})"


class Not(Expr):
    """Negation: contributes ``-alpha * e`` (meant to sit inside an :class:`And`).

    ``alpha`` defaults to 0.01 (the paper); the released code uses 0.001.
    """

    def __init__(self, term: Expr, alpha: float = DEFAULT_NOT_ALPHA):
        self.term = _as_expr(term)
        self.alpha = float(alpha)
        if not (self.alpha > 0.0) or self.alpha == float("inf"):
            raise ValueError(f"Not: alpha must be a finite positive number, got {alpha}")

    def children(self) -> tuple[Expr, ...]:
        return (self.term,)

    def _with_children(self, children: tuple[Expr, ...]) -> "Not":
        return Not(*children, alpha=self.alpha)

    def _combine(self, it: Iterator[Tensor]) -> Tensor:
        return -self.alpha * self.term._combine(it)

    def _repr(self) -> str:
        a = "" if self.alpha == DEFAULT_NOT_ALPHA else f"[{self.alpha:g}]"
        return f"~{a}{self.term._repr()}"


class Scale(Expr):
    """``s * e``: a scalar multiple of an energy (``s * a`` or ``a * s``)."""

    def __init__(self, term: Expr, scale: float):
        self.term = _as_expr(term)
        self.scale = float(scale)
        if self.scale != self.scale or abs(self.scale) == float("inf"):
            raise ValueError(f"Scale: the factor must be finite, got {scale}")

    def children(self) -> tuple[Expr, ...]:
        return (self.term,)

    def _with_children(self, children: tuple[Expr, ...]) -> "Scale":
        return Scale(*children, scale=self.scale)

    def _combine(self, it: Iterator[Tensor]) -> Tensor:
        return self.scale * self.term._combine(it)

    def _repr(self) -> str:
        return f"{self.scale:g}*{self.term._repr()}"


def per_column(expr: Expr, columns: int) -> "And":
    """The composition applied to each of ``columns`` output columns, the results summed.

    Models that return ``(B, k)`` energies (the released CelebA code's ``k`` scales) normally enter a
    composition through the sum of their columns. The released composition code instead combines
    column by column -- for a disjunction, ``sum_j -T log sum_i exp(-e_i[:, j] / T)`` -- which
    differs from the soft-min of the column sums. ``per_column(a | b, k)`` is that energy:
    ``And(expr_0, ..., expr_{k-1})`` where ``expr_j`` is ``expr`` with every leaf restricted to
    column ``j`` (:meth:`Concept.at_column`). Conjunctions, negations and scalings are linear, so
    for them it equals ``expr``; the difference is in the disjunctions.

    Every leaf counts ``columns`` times in ``leaves()`` (at most 32 leaves in all), and each costs
    its own model pass in a chain: ``k`` times the work of summing the columns.
    """
    if isinstance(columns, bool) or not isinstance(columns, numbers.Integral) or columns < 1:
        raise ValueError(f"per_column: columns must be an int >= 1, got {columns!r}")
    expr = _as_expr(expr)
    for leaf in expr.leaves():
        if leaf.column is not None:
            raise ValueError(f"per_column: {leaf._repr()} already picks a column")
    return And(*(_at_column(expr, j) for j in range(int(columns))))


def _at_column(e: Expr, j: int) -> Expr:
    if isinstance(e, Concept):
        return e.at_column(j)
    return e._with_children(tuple(_at_column(c, j) for c in e.children()))


class Negated:
    """``x, ... -> -f(x, ...)``: a score or log-density to climb, turned into an energy to descend.

    Plain attributes only, so :func:`ebm_fast.model_state.inspect_model` finds the modules ``f`` holds.
    """

    def __init__(self, f: Callable[..., Tensor]):
        if not callable(f):
            raise TypeError(f"Negated: f must be callable, got {type(f).__name__}")
        self.f = f
        self.__name__ = "-" + getattr(f, "__name__", type(f).__name__)

    def __call__(self, *args, **kwargs) -> Tensor:
        return -self.f(*args, **kwargs)


def balance_disjunctions(expr: Expr, x: Tensor, settle: Callable[[Expr, Tensor], Tensor] | None = None,
                         strength: float = 1.0) -> Expr:
    """A copy of ``expr`` in which every :class:`Or` weighs its terms equally at ``x``, or with
    ``settle`` at their own modes.

    Term ``j`` of an ``Or`` gets weight ``softmax_j(-e_j / T + beta_j)``. An unnormalised energy's
    level is arbitrary: two conditions of one model, or two models, can reach their modes at
    different energies, and at a low ``T`` the deeper term then wins most chains (the mixture
    weights of the plain log-sum-exp are the terms' unknown partition functions). Here each ``Or``'s
    ``beta_j`` is raised by ``(m_j - mean_k m_k) / T``, where ``m_j`` is the median over the batch of
    term ``j``'s energy at ``settle(term_j, x)``: ``x`` moved towards that term's own modes, for
    example by a short chain of the term alone (what the sampling tools do). Terms that differ by a
    constant then get equal mixture weights; the caller's ``log_weights`` still apply on top.
    Without ``settle`` the energies are taken at ``x`` itself. ``strength`` scales the correction
    (0: none, 1: the whole gap; docs/composition.md, "Balancing the terms", has what fractions of it
    did on the paper's disjunction). Nested disjunctions are balanced too.
    Nodes above a disjunction are copied, subtrees without one are returned as they are, and
    ``expr`` is not modified.

    Args:
        expr: the expression (leaves with per-sample conditions need ``x``'s batch size).
        x: ``(B, ...)`` images, usually the chains' starting images.
        settle: ``settle(term, x) -> x'`` of ``x``'s shape, or None.
        strength: the fraction of the correction applied.

    Raises:
        ValueError: if a term's energy there is not finite, or ``strength`` is not finite.
    """
    if not math.isfinite(strength):
        raise ValueError(f"balance_disjunctions: strength must be finite, got {strength!r}")
    return _map_nodes(_as_expr(expr), Or, lambda e, kids: _level_disjunction(e, kids, x, settle, strength))


def balance_conjunctions(expr: Expr, x: Tensor) -> Expr:
    """A copy of ``expr`` in which every :class:`And` scales its terms so that each pulls on ``x``
    no harder than the weakest.

    A conjunction's gradient is the weighted sum of its terms' gradients, and concept models trained
    apart differ in scale: one whose input gradient is several times another's sets the chains'
    course, and the other concept is lost (measured: the shipped colour concept's gradient on the
    starting noise is 2.9x the position concept's). Here term ``j``'s coefficient is multiplied by
    ``g_min / g_j``, where ``g_j`` is the median over the batch of ``||grad_x E_j(x)||`` and ``g_min``
    the smallest of them. Coefficients only shrink, so no term steps further than it would alone.
    Terms that only push away (a :class:`Not`, a negative :class:`Scale`: no leaf enters with a
    positive weight) and terms with a coefficient <= 0 keep theirs and are not counted: their weight
    says how hard to push away, set by the caller's ``alpha``. Nested conjunctions are
    balanced too, each at ``x``; nodes above one are copied, subtrees without one are returned as
    they are, and ``expr`` is not modified.

    Args:
        expr: the expression (leaves with per-sample conditions need ``x``'s batch size).
        x: ``(B, ...)`` images, usually the chains' starting images.

    Raises:
        ValueError: if a term's gradient there is not finite, or its median norm is zero.
    """
    return _map_nodes(_as_expr(expr), And, lambda e, kids: _level_conjunction(e, kids, x))


def _map_nodes(e: Expr, kind: type, rebuild: Callable[[Expr, tuple], Expr]) -> Expr:
    """``e`` with every node of type ``kind`` replaced by ``rebuild(node, new_children)``, bottom-up;
    a subtree with no such node stays the same object (and program)."""
    kids = tuple(_map_nodes(c, kind, rebuild) for c in e.children())
    return rebuild(e, kids) if isinstance(e, kind) else _over(e, kids)


def _over(e: Expr, kids: tuple) -> Expr:
    """``e`` over ``kids``: ``e`` itself when they are its own children, else a copy."""
    return e if all(k is c for k, c in zip(kids, e.children())) else e._with_children(kids)


def _level_disjunction(e: "Or", kids: tuple, x: Tensor, settle, strength: float = 1.0) -> "Or":
    med = []
    for j, term in enumerate(kids):
        at = x if settle is None else settle(term, x)
        with torch.no_grad():
            energies = term.energy(at)
        if not bool(torch.isfinite(energies).all()):
            raise ValueError(f"balance_disjunctions: term {j} of {e._repr()} has non-finite energies")
        med.append(float(energies.double().median()))
    mean = sum(med) / len(med)
    beta = [b + strength * (m - mean) / e.temperature for b, m in zip(e.log_weights, med)]
    return Or(*kids, temperature=e.temperature, log_weights=beta)


def _level_conjunction(e: "And", kids: tuple, x: Tensor) -> "And":
    pulling = [j for j, (t, c) in enumerate(zip(kids, e.coefs))
               if c > 0 and any(s > 0 for s in t.program.leaf_signs)]
    if len(pulling) < 2:
        return _over(e, kids)
    norms = {}
    for j in pulling:
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(kids[j].energy(xg).sum(), xg)
        per_sample = g.detach().flatten(1).double().norm(dim=1)
        if not bool(torch.isfinite(per_sample).all()):
            raise ValueError(f"balance_conjunctions: term {j} of {e._repr()} has non-finite gradients")
        norms[j] = float(per_sample.median())
        if norms[j] <= 0.0:
            raise ValueError(f"balance_conjunctions: term {j} of {e._repr()} has a zero gradient at x")
    weakest = min(norms.values())
    coefs = [c * weakest / norms[j] if j in norms else c for j, c in enumerate(e.coefs)]
    return And(*kids, coefs=coefs)
