"""What a hung campaign step was waiting on: its tasks' stacks, taken just before its
deadline cancels it.

A hang in the campaign (no answer within ``campaign.DEADLINE``) is rarely reproduced by a
replay of its seed alone: the sockets' interleaving differs.  The finding then has to say
what the step was stuck in - which protocol round, waiting on which call - and once the
deadline's cancellation has unwound the step, that is gone.  :func:`watched` takes the
stacks of the step's task and every task it started (only this package's frames, equal
stacks counted once) at the deadline, before cancelling it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

#: Frames of files under this directory are shown (the package's own code).
_PACKAGE = str(Path(__file__).resolve().parents[1])


def _frames(task: trio.lowlevel.Task) -> str:
    parts = []
    for frame, line in task.iter_await_frames():
        path = frame.f_code.co_filename
        if path.startswith(_PACKAGE):
            parts.append(f"{path[len(_PACKAGE) + 1 :]}:{line} {frame.f_code.co_name}")
    return " > ".join(parts)


def task_stacks(task: trio.lowlevel.Task, skip: frozenset[int] = frozenset()) -> list[str]:
    """The stacks of ``task`` and its descendants (package frames only), each distinct
    stack once with how many tasks share it, deepest tasks' stacks last; ``skip``: ids of
    ``task``'s nurseries not to descend into (those it had before the step: the
    cluster's nodes, the clients' background tasks)."""
    seen: Counter[str] = Counter()
    todo = [task]
    while todo:
        t = todo.pop(0)
        stack = _frames(t)
        if stack:
            seen[stack] += 1
        nurseries = [n for n in t.child_nurseries if t is not task or id(n) not in skip]
        todo.extend(c for n in nurseries for c in n.child_tasks)
    return [f"{k} x {s}" if k > 1 else s for s, k in seen.items()]


@asynccontextmanager
async def watched(seconds: float, hung: Callable[[list[str]], Exception]) -> AsyncIterator[None]:
    """Run the block for at most ``seconds`` (trio's clock); past them, take its tasks'
    stacks (:func:`task_stacks`), cancel it and raise ``hung(stacks)``."""
    stacks: list[str] = []
    body = trio.lowlevel.current_task()
    before = frozenset(id(n) for n in body.child_nurseries)
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            await trio.sleep(seconds)
            stacks.extend(
                task_stacks(body, before | {id(nursery)}) or ["(no frames of this package)"]
            )
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()
    if stacks:
        raise hung(stacks)
