"""Progress bars for hashing and transfers: on stderr, for a person at a terminal only.

tqdm is imported when a bar is first shown, never at start: ``hivemind`` loads only what
its command needs (tests/unit/test_entry_points.py), and scripts (``--json``, no terminal)
never load it at all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


class Meter:
    """Bytes moved, counted into a bar (or nowhere: ``Meter()``)."""

    def __init__(self, bar: tqdm[Any] | None = None) -> None:
        self._bar = bar

    def advance(self, moved: int) -> None:
        if self._bar is not None:
            self._bar.update(moved)

    def move_to(self, position: int) -> None:
        """Where a resumed transfer stands now (the hub may hold less than was sent)."""
        if self._bar is not None and self._bar.n != position:
            self._bar.n = position
            self._bar.refresh()


@dataclass(frozen=True)
class Bars:
    """Whether bars are shown (``Bars(True)``: stderr is a terminal and no ``--json``)."""

    shown: bool = False

    @contextmanager
    def meter(self, what: str, total: int, initial: int = 0) -> Iterator[Meter]:
        """A bar for ``total`` bytes (0: unknown), ``initial`` of them done already."""
        if not self.shown:
            yield Meter()
            return
        from tqdm import tqdm  # lazily: see the module docstring

        with tqdm(
            total=total or None,
            initial=initial,
            desc=what,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            dynamic_ncols=True,
        ) as bar:
            yield Meter(bar)


QUIET = Bars()
