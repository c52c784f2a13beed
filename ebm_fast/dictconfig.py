"""A dataclass mixin: configs as dicts of primitives (JSON- and ``torch.load(weights_only=True)``-safe)."""

from __future__ import annotations

import dataclasses
import json

__all__ = ["DictConfig"]


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
