"""Progress of the long history commands (``diff``, ``changes``, ``restore``, ``revert``):
a bar with counts, elapsed time and an estimate of the time left, on standard error and
only when it is a terminal (a script reading the output, or a log, gets none of it).

rich draws it (maintained, widely used; it redraws in place and estimates the time left
from the recent rate); it is imported only when a bar is shown.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

#: ``update(done, total)``: steps done so far, and steps known in all (it may grow).
Update = Callable[[int, int], None]


def no_progress(done: int, total: int) -> None:
    """The update of a bar not shown."""


@contextmanager
def progress(what: str, stream: IO[str] | None = None) -> Iterator[Update]:
    """A bar titled ``what`` on ``stream`` (standard error) while the block runs, if it is
    a terminal; what to call with the counts.  The bar is wiped at the end, so what the
    command prints afterwards stands alone."""
    out = sys.stderr if stream is None else stream
    start = time.perf_counter()
    try:
        if not out.isatty():
            yield no_progress
        else:
            with _bar(what, out) as update:
                yield update
    finally:  # (the benchmarks read each phase's time from the INFO log)
        took = time.perf_counter() - start
        logging.getLogger("bftfs.cli.when").info("phase: %s: %.2f s", what, took)


@contextmanager
def _bar(what: str, out: IO[str]) -> Iterator[Update]:
    """The bar itself (rich), on the terminal ``out``."""
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
