"""Tier 1: the order in which a mount gives leases back (``fs/leases/releases.py``).

A recall of a directory makes its holder give up what it leased with its creates there too
(new files and subdirectories, and what was made in those).  Another client's recall waits
for the directory's own release only, so the new subdirectories must be released (their
gates sending the creates held back in them) before the directory is: a ``diff -r`` on
another mount under load once listed a new subdirectory before its creates had gone.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio

from bftfs.fs.leases import BATCH, Releases


def _recorded(levels: list[list[int]]) -> list[list[int]]:
    """The ``fs.release`` updates :meth:`Releases.after` sends, in the order sent; each
    waits a tick, so updates sent side by side would interleave."""
    sent: list[list[int]] = []

    async def update(objects: list[int], method: str, arg: Any) -> None:
        assert method == "fs.release" and "lt" in arg
        await trio.sleep(0.01 * (len(sent) % 3))
        sent.append(list(objects))

    async def main() -> None:
        forgotten: list[list[int]] = []

        async def forget(objects: list[int]) -> None:
            forgotten.append(list(objects))

        await Releases(update, lambda: 0, Counter()).after(forget, levels)
        # The kernel forgets everything first, in one go.
        assert forgotten == [[oid for level in levels for oid in level]]

    trio.run(main)
    return sent


def test_what_was_made_in_a_directory_is_released_before_it_deepest_first() -> None:
    top = [1]
    children = list(range(100, 100 + 3 * BATCH))  # several batches
    grandchildren = [1000, 1001]
    sent = _recorded([top, children, grandchildren])
    assert sent[0] == grandchildren and sent[-1] == top
    assert sorted(o for batch in sent[1:-1] for o in batch) == children
    assert all(len(batch) <= BATCH for batch in sent)


def test_one_level_goes_as_one_release() -> None:
    sent = _recorded([[1, 2, 3]])
    assert sent == [[1, 2, 3]]
