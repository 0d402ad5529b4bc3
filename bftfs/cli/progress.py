"""Progress of the long history commands (``diff``, ``changes``, ``restore``, ``revert``):
a bar with counts, elapsed time and an estimate of the time left, on standard error and
only when it is a terminal (a script reading the output, or a log, gets none of it).

rich draws it (maintained, widely used; it redraws in place and estimates the time left
from the recent rate); it is imported only when a bar is shown.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

#: ``update(done, total)``: steps done so far, and steps known in all (it may grow).
Update = Callable[[int, int], None]


def _quiet(done: int, total: int) -> None:
    """The update of a bar not shown."""


@contextmanager
def progress(what: str, stream: IO[str] | None = None) -> Iterator[Update]:
    """A bar titled ``what`` on ``stream`` (standard error) while the block runs, if it is
    a terminal; what to call with the counts.  The bar is wiped at the end, so what the
    command prints afterwards stands alone."""
    out = sys.stderr if stream is None else stream
    if not out.isatty():
        yield _quiet
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=Console(file=out, force_terminal=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
