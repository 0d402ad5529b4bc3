"""When held-back work goes, and the entry updates' sending (``fs/writeback/schedule.py``'s
``WriteBack`` keeps the due times; this module decides what a pass sends with them).

Items come due one at a time, as they were held back: sent only when due, each would go
alone, a round apiece.  Sending one early is always allowed (it would go anyway, and
nothing waits for it), so the update that must go now carries its directory's next ones
(:func:`with_their_batches`): creates and removals, and the mkdirs of one directory
(``fs.mkdirmany``: ``git`` makes ``.git/objects/xx`` one at a time, a tree's unpacking its
directories one after another).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

import trio

log = logging.getLogger(__name__)


class _InDirectory(Protocol):
    @property
    def parent(self) -> int: ...


Deferred = TypeVar("Deferred", bound=_InDirectory)

#: The kinds of entry update held back besides creates and removals, in the order they
#: are sent: a mkdir first (``fs/writeback/mkdirs.py``: what is made in a directory
#: follows it), then a rename (``fs/writeback/renames.py``), then a link to a file whose
#: create waits (``fs/writeback/links.py``: it sends the create first).
ENTRY_KINDS = ("mkdir", "rename", "link")
#: The kind of entry update several of which, in one directory, go in one update.
BATCHED_KIND = "mkdir"
#: Seconds before a mkdir or rename the cluster did not answer is sent again.
ENTRY_RESEND = 1.0


class EntrySenders(Protocol):
    """How held-back entry updates go (``HeldBack`` in ``fs/writeback/outbox.py``)."""

    async def send_entries(self, kind: str, updates: list[Any]) -> None:
        """Send held-back entry updates of ``kind``, of one directory, together when the
        kind can (:data:`BATCHED_KIND`: ``PendingMkdirs.send_many``)."""


def with_their_batches(
    waiting: Iterable[tuple[Deferred, float]], now: float, batch: int
) -> list[Deferred]:
    """What is due at ``now``, each directory's filled up to whole updates of
    ``batch`` with that directory's next ones (soonest due first).

    Items come due one at a time, as they were deferred (a removal every few milliseconds
    under PostMark): sent only when due, each would go alone, a round apiece.  Sending one
    early is always allowed (it would go anyway, and nothing waits for it), so the update
    that must go now carries the ones that would follow it."""
    by_dir: dict[int, list[tuple[float, Deferred]]] = {}
    for item, at in waiting:
        by_dir.setdefault(item.parent, []).append((at, item))
    out: list[Deferred] = []
    for items in by_dir.values():
        due = sum(1 for at, _ in items if at <= now)
        if due:
            items.sort(key=lambda e: e[0])
            out.extend(item for _, item in items[: -(-due // batch) * batch])
    return out


async def send_entries(
    entries: dict[tuple[str, int], tuple[Any, float]],
    senders: EntrySenders,
    due_by: float,
    parent: int | None = None,
    batch: int = 1,
) -> bool:
    """Send the entry updates of ``entries`` (``WriteBack._entries``) due by ``due_by``
    (of directory ``parent`` only, if given), kind by kind, each by its kind's sender
    (which calls ``WriteBack.entry_sent`` once it was taken or failed for good); one that
    is still there after its send failed (no answer) is due again in
    :data:`ENTRY_RESEND` seconds.  The mkdirs of one directory go ``batch`` per update,
    each filled with that directory's next ones (:func:`with_their_batches`: a tree's
    directories are made one after another, ``git``'s 256 ``objects/xx`` over seconds).
    Whether any was due."""
    sent = False
    for kind in ENTRY_KINDS:
        waiting = [
            (u, at)
            for (k, _), (u, at) in entries.items()
            if k == kind and (parent is None or u.parent == parent)
        ]
        width = batch if kind == BATCHED_KIND else 1
        if width > 1:
            due = with_their_batches(waiting, due_by, width)
        else:  # (in the order they were held back: a rename's earlier renames first)
            due = [u for u, at in waiting if at <= due_by]
        groups: dict[int, list[Any]] = {}
        for u in due:
            groups.setdefault(u.parent if width > 1 else id(u), []).append(u)
        for group in groups.values():
            sent = True
            for i in range(0, len(group), width):
                chunk = group[i : i + width]
                try:
                    await senders.send_entries(kind, chunk)
                except Exception as e:  # noqa: BLE001 - a background task must go on
                    _resend_later(entries, kind, chunk, e)
    return sent


def _resend_later(
    entries: dict[tuple[str, int], tuple[Any, float]], kind: str, updates: list[Any], e: Exception
) -> None:
    """Entry updates whose send failed (no answer) are due again in :data:`ENTRY_RESEND`."""
    left = {id(u): key for (k, key), (u, _) in entries.items() if k == kind}
    for u in updates:
        key = left.get(id(u))
        if key is None:
            continue  # (sent before the one that failed, or failed for good)
        log.warning(
            "%s of %r not sent yet (again in %g s): %s",
            kind,
            getattr(u, "name", u),
            ENTRY_RESEND,
            e,
        )
        entries[kind, key] = (u, trio.current_time() + ENTRY_RESEND)
