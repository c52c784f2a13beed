"""Progress bars with an ETA for long work (training, rendering, sampling many expressions).

One place decides how they look and when they show: on stderr, and only when stderr is a terminal, so
logs, pipes and test output carry no bar lines. Lines printed while a bar runs go through :func:`say`,
which keeps the bar below them.
"""

from __future__ import annotations

import sys

__all__ = ["progress_bar", "say"]


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", disable: bool | None = None):
    """A ``tqdm`` bar on stderr; ``disable=None`` turns it off when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, file=sys.stderr)


def say(text: str) -> None:
    """Print ``text`` to stdout above any running bar (the same as ``print`` when none runs)."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()
