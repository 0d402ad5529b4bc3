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

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from bftfs.taskstacks import task_stacks


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
