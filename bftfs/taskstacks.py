"""Where trio tasks are waiting: their await stacks, this package's frames only.

A call that never ends shows nowhere but in the program stuck on it; what it waits on (a
lock another task holds, an event a send should set, a round no node answers) is gone once
it is cancelled.  The mount logs these stacks for a request in flight past a minute
(``fuse/callrecord.py``), and the test campaign for a step past its deadline
(``testing/campaign_stacks.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import trio

#: Frames of files under this directory are shown (the package's own code).
_PACKAGE = str(Path(__file__).resolve().parent)


def frames(task: trio.lowlevel.Task) -> str:
    """``task``'s await stack, outermost first, as ``path:line function`` of this package's
    frames joined by `` > `` (empty when it has none)."""
    return _joined(task.iter_await_frames())


def coro_frames(coro: Any) -> str:
    """The await stack below coroutine ``coro``, as :func:`frames` gives a task's.  A
    request's handler is awaited by pyfuse3's compiled coroutines, whose await chain trio
    cannot follow: the handler's own coroutine is where its stack starts."""
    walked = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        walked.append((frame, frame.f_lineno))
        nxt = getattr(coro, "cr_await", None)
        coro = nxt if nxt is not None else getattr(coro, "gi_yieldfrom", None)
    return _joined(walked)


def _joined(walked: Iterable[tuple[FrameType, int]]) -> str:
    parts = []
    for frame, line in walked:
        path = frame.f_code.co_filename
        if path.startswith(_PACKAGE):
            parts.append(f"{path[len(_PACKAGE) + 1 :]}:{line} {frame.f_code.co_name}")
    return " > ".join(parts)


def task_stacks(task: trio.lowlevel.Task, skip: frozenset[int] = frozenset()) -> list[str]:
    """The stacks of ``task`` and its descendants (package frames only), each distinct
    stack once with how many tasks share it, deepest tasks' stacks last; ``skip``: ids of
    ``task``'s nurseries not to descend into."""
    seen: Counter[str] = Counter()
    todo = [task]
    while todo:
        t = todo.pop(0)
        stack = frames(t)
        if stack:
            seen[stack] += 1
        nurseries = [n for n in t.child_nurseries if t is not task or id(n) not in skip]
        todo.extend(c for n in nurseries for c in n.child_tasks)
    return [f"{k} x {s}" if k > 1 else s for s, k in seen.items()]
