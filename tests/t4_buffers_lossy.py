"""Bounded buffers over a lossy, duplicating link (issue 39; seed 002 L1-13, L14-35;
docs/buffers.md): six node processes on six network namespaces whose cables lose and
duplicate packets, a client in the root namespace doing real file-system work.

TCP retransmits what the link loses and drops what it duplicates, so every operation must
complete as it does on a clean link, with the nodes' and the client's memory under the
same bounds as in ``t4_buffers.py``; with ``t + 1`` hosts cut off completely an operation
must fail with a clear error within its patience, never hang.  The link's damage is
counted (``Hosts.impaired``) so that a link that did nothing fails the test.

Ports: each namespace is a fresh network stack with nothing listening, so the nodes use
one fixed port there; nothing in the root namespace is bound.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from t4_buffers import (
    BLOCK,
    INFLIGHT,
    MiB,
    _client_work,
    client_allowance,
    node_bound,
    rw_reply_bound,
)

from bftfs import fsobjects as obj
from bftfs import local
from bftfs.fs.errors import FsError
from bftfs.fs.session import open_session
from bftfs.outcome import patience
from bftfs.policy import LimitsPolicy
from bftfs.testing import netns
from bftfs.testing.flood import anon_rss

pytestmark = [
    pytest.mark.skipif(
        not netns.available(),
        reason="needs root and iproute2's ip with network namespaces, veths and bridges",
    ),
    pytest.mark.slow,
]

PORT = 7000
HOSTS = 6
#: What each cable does to the packets crossing it, both ways.
LOSS = 0.05
DUPLICATE = 0.05
REORDER = 0.25
#: The patience of the mkdir made with ``t + 1`` hosts cut off (a mount's default ``timeo``).
PATIENCE = 10.0


@contextmanager
def nodes_on(hosts: netns.Hosts, config: Any) -> Iterator[list[subprocess.Popen[bytes]]]:
    """One node process per host (``ip netns exec`` runs it in place: its pid is the
    node's), stopped at the end whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, spec in enumerate(config.nodes):
            cmd = [sys.executable, "-P", "-m", "bftfs", "node", "--config"]
            cmd += [str(local.config_path(config.home)), "--id", str(spec.id)]
            procs.append(hosts.spawn(i, cmd, local.log_path(spec)))
            local.pid_path(spec).write_text(f"{procs[-1].pid}\n")  # what wait_ready looks at
        local.wait_ready(config, timeout=60)
        yield procs
    finally:
        netns.stop_all(procs)


class _Nodes:
    """The nodes' anonymous memory above where it was, at most, polled every 20 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.base = [anon_rss(p) for p in pids]
        self.grew = [0] * len(pids)

    async def watch(self) -> None:
        while True:
            for k, pid in enumerate(self.pids):
                self.grew[k] = max(self.grew[k], anon_rss(pid) - self.base[k])
            await trio.sleep(0.02)


async def _work_watched(config: Any, nodes: _Nodes, tag: str) -> int:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(nodes.watch)
        with trio.fail_after(300):
            peak, _ = await _client_work(config, tag)
        nursery.cancel_scope.cancel()
    return peak


async def _mkdir_fails_cleanly(
    config: Any, hosts: netns.Hosts
) -> tuple[BaseException | None, float]:
    """An mkdir after ``t + 1`` hosts (1 and 2) dropped off the network: the exception it
    ended with, and how long it took (its patience is :data:`PATIENCE`)."""
    async with open_session(config, "client0") as s:
        for i in (1, 2):
            hosts.cut(i)
        began = trio.current_time()
        try:
            with trio.fail_after(120), patience(PATIENCE, trio.current_time()):
                await s.fs.mkdir(obj.ROOT, b"never", 0o755, 0, 0)
        except FsError as e:
            return e, trio.current_time() - began
        return None, trio.current_time() - began


def test_a_lossy_duplicating_link_completes_every_operation_within_the_bounds(
    tmp_path: Path,
) -> None:
    with netns.Hosts(HOSTS, seed=39) as hosts:
        config = local.init_cluster(
            tmp_path / "c",
            addresses=[(hosts.address(i), PORT) for i in range(HOSTS)],
            block_size=BLOCK,
            limits=LimitsPolicy(max_inflight=INFLIGHT),
            map_size=1 << 30,
        )
        with nodes_on(hosts, config) as procs:
            tracemalloc.start(1)
            try:
                clean = trio.run(_client_work_of, config, "c")
                how = ""
                for i in range(HOSTS):
                    how = hosts.impair(i, loss=LOSS, duplicate=DUPLICATE, reorder=REORDER)
                nodes = _Nodes([p.pid for p in procs])
                lossy = trio.run(_work_watched, config, nodes, "lossy")
            finally:
                tracemalloc.stop()
            damage = [hosts.impaired(i) for i in range(HOSTS)]
            bound = node_bound(rw_reply_bound(config))
            print(
                f"link ({how}): {damage}; client peak clean {clean / MiB:.1f} MiB, lossy "
                f"{lossy / MiB:.1f} MiB (bound {(clean + client_allowance()) / MiB:.1f}); "
                f"nodes grew {[round(g / MiB, 1) for g in nodes.grew]} MiB "
                f"(bound {bound / MiB:.1f})"
            )
            if how == "bpf":
                assert sum(d.get("lost", 0) for d in damage) > 0, "the link lost nothing"
                assert sum(d.get("duplicated", 0) for d in damage) > 0
            assert lossy <= clean + client_allowance()
            assert max(nodes.grew) <= bound

            # t + 1 = 2 hosts lose everything: operations fail, cleanly and in time.
            error, took = trio.run(_mkdir_fails_cleanly, config, hosts)
            print(f"with hosts 1 and 2 cut off: {error!r} after {took:.1f} s")
            assert error is not None, "an mkdir succeeded with t + 1 nodes unreachable"
            # Each round short of a quorum still had answers, and an answer renews the
            # patience (bftfs/outcome.py): the Q/U client gives up after three such rounds,
            # so within three patiences (20 or 40 s measured at a patience of 20 s, 10 s at
            # 10 s), never by the 120 s guard.
            assert took <= 3 * PATIENCE + 5, "the failure took longer than three patiences"
            assert all(p.poll() is None for p in procs), "a node process died"


async def _client_work_of(config: Any, tag: str) -> int:
    return (await _client_work(config, tag))[0]
