"""Configs as dataclasses: dicts of primitives for files, and command-line options generated from the fields.

:class:`DictConfig` gives a dataclass ``to_dict()`` / ``from_dict()`` (JSON- and
``torch.load(weights_only=True)``-safe). :func:`option` declares a field with its help text (and, where
the plain rule does not fit, its flag or argparse settings); :func:`add_config_arguments` turns every
field into one argparse option, so each option is written in one place, beside its field.

The rules, by field type: ``--field-name VALUE`` converted to the type; ``X | None`` also takes
``none`` (or ``off``); a tuple of variable length takes ``nargs="+"``, a fixed one that many values; a
bool defaulting to False is a ``--flag`` that sets it, one defaulting to True a ``--no-flag`` that
clears it (``both=True``: ``--flag/--no-flag``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

__all__ = ["DictConfig", "option", "add_config_arguments", "given_fields"]


class DictConfig:
    """``to_dict()`` / ``from_dict()`` for a dataclass whose fields are primitives, lists or tuples."""

    def to_dict(self) -> dict:
        """A dict of primitives (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict):
        """Rebuild from :meth:`to_dict` output (lists become tuples); unknown keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)} (expected some of {sorted(names)})")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def option(default: Any, help: str, *, flag: str | None = None, both: bool = False, cli: bool = True,
           **argparse_kw) -> Any:
    """A dataclass field with its command-line option: ``help`` (the default is appended), ``flag``
    (instead of ``--field-name``, or ``--no-field-name`` for a bool defaulting to True), ``both``
    (a bool gets ``--flag/--no-flag``), ``cli=False`` (no option), and extra ``argparse_kw``
    (``choices``, ``metavar``)."""
    meta = {"help": help, "flag": flag, "both": both, "cli": cli, "argparse": argparse_kw}
    return dataclasses.field(default=default, metadata=meta)


def _none_or(type_):
    def parse(s: str):
        return None if s.lower() in ("none", "off", "") else type_(s)

    parse.__name__ = type_.__name__  # argparse names the type in its error message
    return parse


def _split_optional(tp) -> tuple[Any, bool]:
    """``(type without None, whether None is allowed)``."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), len(rest) < len(args)
    return tp, False


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One option per field of dataclass ``cls`` declared with :func:`option` (see the module doc).

    Options left out of the command line are absent from the parsed namespace (``argparse.SUPPRESS``),
    so :func:`given_fields` returns only what the user set and the dataclass keeps its defaults.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", False):
            continue
        tp, nullable = _split_optional(hints[f.name])
        kw = dict(meta["argparse"], dest=f.name, default=argparse.SUPPRESS)
        default = f.default
        shown = "none" if default in (None, ()) else (" ".join(map(str, default)) if isinstance(default, tuple) else default)
        help_ = f"{meta['help']} (default {shown})"
        name = "--" + f.name.replace("_", "-")
        if tp is bool:
            if meta["both"]:
                parser.add_argument(meta["flag"] or name, action=argparse.BooleanOptionalAction, help=help_, **kw)
            elif default:
                parser.add_argument(meta["flag"] or "--no-" + f.name.replace("_", "-"), action="store_false",
                                    help=meta["help"], **kw)
            else:
                parser.add_argument(meta["flag"] or name, action="store_true", help=meta["help"], **kw)
            continue
        origin = typing.get_origin(tp)
        if origin is tuple:
            items = typing.get_args(tp)
            if len(items) == 2 and items[1] is Ellipsis:
                kw.update(nargs="+", type=items[0])
            else:
                kw.update(nargs=len(items), type=items[0])
        else:
            kw["type"] = _none_or(tp) if nullable else tp
        parser.add_argument(meta["flag"] or name, help=help_, **kw)


def given_fields(namespace: argparse.Namespace, cls) -> dict:
    """The fields of ``cls`` set in ``namespace`` (by :func:`add_config_arguments` options)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(namespace).items() if k in names}
