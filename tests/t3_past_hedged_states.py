"""A history reader's state fetch with a host that withholds while the transport gives it
a long timeout (real nodes, TCP, LMDB): the fetch asks the next host after
``ROUND_TIMEOUT``, it does not wait out the host's stretched timeout.

The campaign's final history reads hung 60 s in ``PastReader.states`` on one call to the
Byzantine node (``qu/pastread.py`` ``_fetch``): the transport stretches a call's timeout
to four of the node's response times (``net/rtt.py``), 20-40 s on a loaded machine, and
the fetch asked one host at a time.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from fs_helpers import qu_client, writing_client

from bftfs.fs.history import Past, Version
from bftfs.fsobjects import ROOT
from bftfs.qu.canon import unpack
from bftfs.qu.classify import QUThresholds
from bftfs.qu.pastread import PastReader
from bftfs.testing.byzantine import history
from bftfs.testing.cluster import open_cluster

BS = 4096
#: Seconds of a response time the reader measured for node 0 (a loaded machine's, and
#: more): its calls' timeouts stretch to four RTOs, far beyond the hang guard below.
MEASURED = 120.0
#: A hang guard, not a timing: the fixed fetch answers after one ROUND_TIMEOUT (5 s); the
#: unfixed one waited out node 0's stretched timeout (about 16 minutes).
HANG = 60.0


def _withholding(asked: list[Any]) -> Callable[[Any, Any, Any], Awaitable[Any]]:
    """A node's handler that notes each request in ``asked`` and never answers (live: the
    node still answers its heartbeats)."""

    async def withhold(ctx: Any, payload: Any, handler: Any) -> Any:
        asked.append(payload)
        await trio.sleep_forever()

    return withhold


async def test_a_host_silent_on_states_is_followed_by_the_next_not_waited_for(
    tmp_path: Path,
) -> None:
    async with writing_client(tmp_path, block_size=BS, seed=7) as (cluster, rw, fs):
        cfg = cluster.config
        fh, attr = await fs.create(ROOT, b"a", 0o644, 0, 0, os.O_RDWR | os.O_TRUNC)
        await fs.write(fh, 0, b"old")
        await fs.release(fh)
        moment = time.time_ns()
        fh, _ = await fs.create(ROOT, b"a", 0o644, 0, 0, os.O_RDWR | os.O_TRUNC)
        await fs.write(fh, 0, b"new")
        await fs.release(fh)

        asked: list[Any] = []
        cluster.faults[0].byzantine(history.KIND_STATES, _withholding(asked))
        reader = PastReader(cluster.client(1), QUThresholds.from_config(cfg))
        _, at = await qu_client(cluster, 1).query_at(attr.ino, "fs.peek")
        walk = await reader.walk(attr.ino, at, until_ns=moment)
        # Node 0 hosts the version (it stored it honestly) and is listed first when its
        # page was among the quorum's; here the quorum may have been the others'.
        then = dataclasses.replace(walk.versions[-1], hosts=(0, *walk.versions[-1].hosts))
        assert len(set(then.hosts)) == len(then.hosts) and walk.versions[-1].time_ns
        for _ in range(4):  # measured now, after the walk (a slow node is asked last)
            cluster.client(1).rtt.sample(0, MEASURED, trio.current_time())
        with trio.fail_after(HANG):
            got = await reader.states(attr.ino, [then])
        state = unpack(got[then.lt] or b"")
        past = Past(qu_client(cluster, 1), reader, rw, BS)
        v = Version(attr.ino, then.lt, then.time_ns, then.lt.client, state, ())
        assert await past.content(v) == b"old"
        assert asked, "node 0 was not asked: the test did not test"
        assert reader.hedged == 1
        assert 0 in reader._unanswered


async def test_a_history_round_from_everyone_waits_once_for_a_node_that_withholds(
    tmp_path: Path,
) -> None:
    """A ``qu.versions`` round from every node with one (live) node withholding: the round
    ends after one ``ROUND_TIMEOUT`` with the others' pages.  Before, the silent node was
    asked again twice, each time twice as patiently (5 + 10 + 20 s): in the campaign, one
    such round was more than half of an operation's 60 s."""
    async with open_cluster(tmp_path, clients=2, block_size=BS) as cluster:
        cfg = cluster.config
        qu = qu_client(cluster, 0)
        _, at = await qu.query_at(ROOT, "fs.peek")
        asked: list[Any] = []
        cluster.faults[0].byzantine(history.KIND_VERSIONS, _withholding(asked))
        reader = PastReader(cluster.client(1), QUThresholds.from_config(cfg))
        with trio.fail_after(HANG):
            pages = await reader._pages(ROOT, at, everyone=True)
        assert sorted(pages) == [1, 2, 3, 4, 5] and asked
        assert reader.waits == 0, reader.waits
