"""Composed-concept expressions written on the command line, e.g.
``"shape=sphere & color=red & ~position=(0.5,0.5)"``.

Grammar (``~`` binds tighter than ``&``, which binds tighter than ``|``)::

    expr    := and ('|' and)*                      -> Or(...)   (temperature: ``temperature``)
    and     := factor ('&' factor)*                -> And(...)
    factor  := '~' ['[' NUMBER ']'] factor         -> Not(factor, alpha)   (default: ``alpha``)
             | NUMBER '*' factor                   -> Scale(factor, NUMBER)
             | '(' expr ')'
             | ATTRIBUTE '=' value                 -> Concept(model, encoded condition)
    value   := NAME | NUMBER | '(' NUMBER ',' NUMBER ')'

Attributes are those of :mod:`ebm_fast.paper.concepts` (``position``/``pos``, ``color``/``colour``,
``shape``, ``size``); names and attributes are case-insensitive; whitespace is free. Chains of one
operator are flat (``a & b & c`` is one ``And`` of three terms). Bad syntax or an unknown
attribute/value raises :class:`ExprError` (a ``ValueError``) whose message shows the expression with
a caret under the 1-based ``column`` of the problem.

:func:`parse` gives the syntax tree (plain tuples, no models); :func:`build` turns it into an
``ebm_fast`` expression over a concept set; :func:`parse_expr` does both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..compose import DEFAULT_NOT_ALPHA, And, Expr, Not, Or

__all__ = ["ExprError", "Atom", "parse", "build", "parse_expr", "tokenize", "tree_attributes", "tree_targets"]


class ExprError(ValueError):
    """A bad expression; ``column`` is the 1-based position of the problem in ``text``."""

    def __init__(self, message: str, text: str, column: int):
        self.text, self.column, self.reason = text, column, message
        super().__init__(f"{message} at column {column}\n  {text}\n  {' ' * (column - 1)}^")


@dataclass(frozen=True)
class Atom:
    """``attribute=value`` as written (``value``: a name str, a float, or an ``(x, y)`` tuple)."""

    attribute: str
    value: Any
    column: int


# Syntax tree: Atom | ("and", [nodes]) | ("or", [nodes]) | ("not", node, alpha or None)
#              | ("scale", factor, node)

_TOKEN = re.compile(r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<sym>[&|~()\[\]=,*]))")


def tokenize(text: str) -> list[tuple[str, Any, int]]:
    """``(kind, value, column)`` tokens, kind in ``num``/``name``/``sym``/``end``; columns are 1-based."""
    if not isinstance(text, str):
        raise TypeError(f"expression: expected a str, got {type(text).__name__}")
    toks, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            toks.append(("end", None, i + 1))
            return toks
        m = _TOKEN.match(text, i)
        if m is None or m.end() == i:
            raise ExprError(f"unexpected character {text[i]!r}", text, i + 1)
        kind = m.lastgroup
        col = m.start(kind) + 1
        val = float(m.group(kind)) if kind == "num" else m.group(kind)
        toks.append((kind, val, col))
        i = m.end()


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

    def peek(self):
        return self.toks[self.i]

    def take(self):
        t = self.toks[self.i]
        self.i += 1
        return t

    def fail(self, what: str, tok=None):
        kind, val, col = tok or self.peek()
        got = "the end of the expression" if kind == "end" else repr(_show(kind, val))
        raise ExprError(f"expected {what}, got {got}", self.text, col)

    def expect(self, sym: str, what: str | None = None):
        t = self.peek()
        if t[0] != "sym" or t[1] != sym:
            self.fail(what or repr(sym))
        return self.take()

    def is_sym(self, sym: str) -> bool:
        t = self.peek()
        return t[0] == "sym" and t[1] == sym

    def number(self, what: str) -> float:
        t = self.peek()
        if t[0] != "num":
            self.fail(what)
        return self.take()[1]

    def expr(self):
        terms = [self.conj()]
        while self.is_sym("|"):
            self.take()
            terms.append(self.conj())
        return terms[0] if len(terms) == 1 else ("or", terms)

    def conj(self):
        terms = [self.factor()]
        while self.is_sym("&"):
            self.take()
            terms.append(self.factor())
        return terms[0] if len(terms) == 1 else ("and", terms)

    def factor(self):
        kind, val, col = self.peek()
        if kind == "sym" and val == "~":
            self.take()
            alpha = None
            if self.is_sym("["):
                self.take()
                t = self.peek()
                alpha = self.number("a number (the negation's alpha)")
                if not alpha > 0:
                    raise ExprError(f"alpha: expected a number > 0, got {alpha:g}", self.text, t[2])
                self.expect("]")
            return ("not", self.factor(), alpha)
        if kind == "num":
            self.take()
            self.expect("*", "'*' after a scale factor")
            return ("scale", val, self.factor())
        if kind == "sym" and val == "(":
            self.take()
            node = self.expr()
            self.expect(")", "')' or an operator")
            return node
        if kind == "name":
            self.take()
            self.expect("=", f"'=' after the attribute {val!r}")
            return Atom(val, self.value(), col)
        self.fail("an attribute=value term, '~', '(' or a scale factor")

    def value(self):
        kind, val, col = self.peek()
        if kind in ("name", "num"):
            self.take()
            return val
        if kind == "sym" and val == "(":
            self.take()
            x = self.number("a number (x)")
            self.expect(",", "',' between x and y")
            y = self.number("a number (y)")
            self.expect(")", "')' after (x, y")
            return (x, y)
        self.fail("a value (a name, a number or (x, y))")


def _show(kind, val):
    return f"{val:g}" if kind == "num" else val


def parse(text: str):
    """The syntax tree of ``text`` (see the module docstring); :class:`ExprError` on bad syntax."""
    p = _Parser(text)
    if p.peek()[0] == "end":
        raise ExprError("expected an expression, got an empty string", text, 1)
    node = p.expr()
    if p.peek()[0] != "end":
        p.fail("'&', '|' or the end of the expression")
    return node


def build(node, concepts: Mapping, *, alpha: float = DEFAULT_NOT_ALPHA, temperature: float = 1.0,
          text: str = "") -> Expr:
    """The ``ebm_fast`` expression of a syntax tree over a concept set ``{attribute: (model, meta)}``.

    ``alpha`` is the default of ``~`` without ``[alpha]``; ``temperature`` that of every ``|``.
    """
    from . import concepts as C

    if isinstance(node, Atom):
        try:
            attr = C.canonical_attribute(node.attribute)
        except ValueError:
            raise ExprError(f"unknown attribute {node.attribute!r} (expected one of {C.ATTRIBUTES})",
                            text, node.column) from None
        if attr not in concepts:
            raise ExprError(f"no concept model loaded for {attr!r} (loaded: {sorted(concepts)})", text, node.column)
        try:
            return C.make_concept(concepts, attr, node.value)
        except ValueError as exc:
            raise ExprError(f"bad value for {attr}: {exc}", text, node.column) from None
    tag = node[0]
    if tag == "and":
        return And(*(build(t, concepts, alpha=alpha, temperature=temperature, text=text) for t in node[1]))
    if tag == "or":
        return Or(*(build(t, concepts, alpha=alpha, temperature=temperature, text=text) for t in node[1]),
                  temperature=temperature)
    if tag == "not":
        return Not(build(node[1], concepts, alpha=alpha, temperature=temperature, text=text),
                   alpha=alpha if node[2] is None else node[2])
    if tag == "scale":
        return node[1] * build(node[2], concepts, alpha=alpha, temperature=temperature, text=text)
    raise ValueError(f"syntax tree: unknown node {node!r}")


def parse_expr(text: str, concepts: Mapping, *, alpha: float = DEFAULT_NOT_ALPHA, temperature: float = 1.0) -> Expr:
    """Parse ``text`` and build it over ``concepts`` (``{attribute: (model, meta)}``, see
    :func:`ebm_fast.paper.concepts.load_concepts`). Raises :class:`ExprError` (a ``ValueError``)."""
    return build(parse(text), concepts, alpha=alpha, temperature=temperature, text=text)


def tree_attributes(node) -> list[str]:
    """The known attributes a syntax tree uses, canonical names, sorted (unknown ones are left for
    :func:`build` to report with their column)."""
    from .concepts import ATTRIBUTES

    return sorted({t["attribute"] for t in tree_targets(node)} & set(ATTRIBUTES))


def tree_targets(node) -> list[dict]:
    """The targets a syntax tree names, in the order written: ``{"attribute", "value", "negated"}`` per
    ``attribute=value`` (``value`` as written: a name, a number or ``[x, y]``; ``negated`` when an odd
    number of ``~`` apply). What ``ebm-fast sample --out FILE.npz`` stores beside the samples."""
    from .concepts import canonical_attribute

    out: list[dict] = []

    def walk(n, negated: bool):
        if isinstance(n, Atom):
            try:
                attribute = canonical_attribute(n.attribute)
            except ValueError:
                attribute = n.attribute.lower()
            value = list(n.value) if isinstance(n.value, tuple) else n.value
            out.append({"attribute": attribute, "value": value.lower() if isinstance(value, str) else value,
                        "negated": negated})
        elif n[0] in ("and", "or"):
            for t in n[1]:
                walk(t, negated)
        elif n[0] == "not":
            walk(n[1], not negated)
        else:  # ("scale", factor, node)
            walk(n[2], negated)

    walk(node, False)
    return out
