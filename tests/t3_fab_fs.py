"""Tier 3 under the FaB engine (issue 39): the file-system suites of the in-process cluster
run again with ``engine = "fab"`` - every metadata method ordered by FaB Paxos
(``node/fab_server.py``) and called through ``fab/metaclient.py`` - with their invariant
checks (``fs_helpers.check_all``, over the FaB client).

The suites' own tests run unchanged (:func:`fs_helpers.engine`), but those that are about
Q/U or about what FaB does not do yet (docs/fab.md, "Not yet"), each named with why in
:data:`NOT_UNDER_FAB` and skipped here.
"""

from __future__ import annotations

import errno
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fs_helpers
import pytest
import t3_fs_attacks
import t3_fs_contention
import t3_fs_entryback
import t3_fs_faults
import t3_fs_fileblocks
import t3_fs_files
import t3_fs_leases
import t3_fs_locks
import t3_fs_namespace
import t3_fs_reclaim
import t3_fs_sealed
import t3_fs_streaming
import t3_fs_writeback
import t3_fs_writebehind
import trio

from bftfs.fab.metaclient import FabMetaClient, FabUnavailable
from bftfs.fab.sessions import STREAMS
from bftfs.fs.errors import FsError
from bftfs.fs.filesystem import FileSystem
from bftfs.fsobjects import ROOT
from bftfs.policy import LimitsPolicy

SUITES = [
    t3_fs_namespace,
    t3_fs_files,
    t3_fs_fileblocks,
    t3_fs_reclaim,
    t3_fs_streaming,
    t3_fs_sealed,
    t3_fs_writebehind,
    t3_fs_contention,
    t3_fs_faults,
    t3_fs_leases,
    t3_fs_locks,
    t3_fs_writeback,
    t3_fs_entryback,
]

#: The suites ``make test`` runs under FaB (8 s); the others (50 s more) with the slow ones.
FAST = [t3_fs_namespace, t3_fs_files]

#: Of these suites only the tests named run under FaB (slow, 20 s; the whole suites take
#: 100 s and pass but for what ``NOT_UNDER_FAB`` names): leases kept and recalled by the
#: pushes of executing nodes, write-back under a lease, lock wake-ups.
REPRESENTATIVE = {
    t3_fs_leases: {
        "test_lookups_stats_and_listings_under_a_lease_need_no_round",
        "test_two_holders_changing_one_directory_release_to_each_other",
        "test_a_mount_that_slept_past_its_leases_stops_answering_from_them",
        "test_a_lease_time_gone_stale_on_the_way_is_sent_again_fresh",
    },
    t3_fs_locks: {
        "test_a_conflict_is_refused_and_ranges_that_do_not_overlap_are_held_at_once",
        "test_a_renewal_that_finds_the_locks_gone_makes_them_lost",
    },
    t3_fs_writeback: {
        "test_a_stat_of_a_file_left_to_write_back_sends_nothing",
        "test_a_query_refused_for_an_exclusive_lease_recalls_it",
        "test_fsync_and_the_commit_interval_send_what_write_back_holds",
    },
    t3_fs_entryback: {
        "test_a_tree_made_in_a_held_directory_costs_no_round_until_written_back",
        "test_a_recall_sends_the_waiting_mkdirs_before_the_release",
    },
}

NOT_UNDER_FAB = {
    "test_a_create_that_cannot_be_sent_does_not_hold_up_its_directory": (
        "waits out the FaB client's timeout, not Q/U's per-round one"
    ),
    "test_a_create_whose_close_said_eio_and_that_then_fails_for_good": (
        "waits out the FaB client's timeout, not Q/U's per-round one"
    ),
    "test_a_collision_that_cannot_take_the_data_fails_the_close": (
        "declares its expected log records with a marker this runner does not carry"
    ),
    "test_journal_loop_with_contention_costing_more_than_the_patience_never_fails": (
        "Q/U contention: FaB orders the journal's updates, it has no backoff to measure"
    ),
    "test_a_file_created_to_be_written_is_leased_to_its_creator_until_it_closes": (
        "runs its own trio loop"
    ),
    "test_a_switching_byzantine_node_cannot_make_two_clients_hold_one_exclusive_lock": (
        "installs Q/U's Byzantine behaviours, which a FaB node does not run"
    ),
}


def _cases() -> list[Any]:
    out = []
    for suite in SUITES:
        for name, fn in vars(suite).items():
            if not (name.startswith("test_") and inspect.isfunction(fn)):
                continue
            if list(inspect.signature(fn).parameters) != ["tmp_path"]:
                continue
            if inspect.iscoroutinefunction(fn):  # (history tests: Q/U's version history)
                continue
            if suite in REPRESENTATIVE and name not in REPRESENTATIVE[suite]:
                continue
            why = NOT_UNDER_FAB.get(name)
            marks = list(getattr(fn, "pytestmark", []))  # (the logs it expects)
            if why:
                marks.append(pytest.mark.skip(reason=f"not under FaB: {why}"))
            if suite not in FAST:
                marks.append(pytest.mark.slow)
            out.append(pytest.param(fn, id=f"{suite.__name__[3:]}.{name[5:]}", marks=marks))
    return out


@pytest.mark.parametrize("case", _cases())
def test_under_fab(case: Callable[[Path], None], tmp_path: Path) -> None:
    with fs_helpers.engine("fab"):
        case(tmp_path)


@pytest.mark.slow
def test_another_clients_change_recalls_the_lease_under_fab(tmp_path: Path) -> None:
    """The holder's lease recalled by the pushes of ``b + 1`` nodes that executed the other
    client's ``fs.recall`` (``node/recalls.py``), well within the lease's term."""
    with fs_helpers.engine("fab"):
        t3_fs_leases.test_another_clients_change_recalls_the_lease_and_is_seen_at_once(
            tmp_path, twins=False
        )


@pytest.mark.slow
def test_a_waiter_is_woken_when_the_lock_frees_under_fab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock waiter that would poll only after a minute is woken by the nodes that
    executed the holder's release."""
    with fs_helpers.engine("fab"):
        t3_fs_locks.test_a_waiter_is_woken_when_the_lock_frees_and_a_cancelled_one_takes_nothing(
            tmp_path, monkeypatch
        )


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["bt ahead", "lease from ahead"])
def test_a_client_claiming_a_time_years_ahead_is_refused_under_fab(
    tmp_path: Path, attack: str
) -> None:
    """A Byzantine client's update declaring a time ten years ahead is refused ``ahead`` by
    every correct node before it is held or accepted (``qu/clocks.py``, ``Replica.admit``),
    and another writer still writes the file (t3_fs_attacks; its third case, ``bt`` and
    ``now`` both ahead, is the first's check again)."""
    with fs_helpers.engine("fab"):
        t3_fs_attacks.test_a_client_claiming_a_time_years_ahead_locks_no_writer_out(
            tmp_path, attack
        )


@pytest.mark.slow
@pytest.mark.parametrize(("offset_s", "refused"), [(3.0, "ahead"), (-3.0, "behind")])
def test_nodes_refuse_a_lock_lease_time_off_their_clock_under_fab(
    tmp_path: Path, offset_s: float, refused: str
) -> None:
    """A lock's lease time off the nodes' clocks by more than the lease skew, either way,
    is refused by FaB nodes as by Q/U ones."""
    with fs_helpers.engine("fab"):
        t3_fs_locks.test_nodes_refuse_a_lock_lease_time_off_their_clock(tmp_path, offset_s, refused)


async def _read(fs: FileSystem, name: bytes) -> bytes:
    fh = await fs.open((await fs.lookup(ROOT, name)).ino, os.O_RDONLY)
    try:
        return await fs.read(fh, 0, 1 << 20)
    finally:
        await fs.release(fh)


FILES = 5


def test_two_mounts_of_one_client_identity_write_and_read_each_others_files(
    tmp_path: Path,
) -> None:
    """Two mounts of one client identity (one bundle on two machines: ``twins``) create and
    write five files each at once, then each reads every file of both.  Their requests
    interleave on the nodes with ids of their own (each mount's stream,
    ``fab/sessions.py``); with one last request id per client, the nodes dropped the
    slower mount's calls and its writes failed (EIO after the client's timeout)."""

    async def body(env: fs_helpers.Env) -> None:
        a, b = env.fss
        fab = [fs.meta.qu.inner for fs in (a, b)]  # under the mount tag
        assert all(isinstance(c, FabMetaClient) for c in fab)
        assert fab[0].me == fab[1].me and fab[0].stream != fab[1].stream

        async def writes(fs: FileSystem, tag: bytes) -> None:
            for i in range(FILES):
                await fs_helpers.write_file(fs, b"%s%d" % (tag, i), tag * 50 + bytes([i]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writes, a, b"a")
            nursery.start_soon(writes, b, b"b")
        for fs in (a, b):
            for tag in (b"a", b"b"):
                for i in range(FILES):
                    assert await _read(fs, b"%s%d" % (tag, i)) == tag * 50 + bytes([i])

    with fs_helpers.engine("fab"):
        fs_helpers.run(tmp_path, body, twins=True)


@pytest.mark.parametrize("engine", [pytest.param("qu", marks=pytest.mark.slow), "fab"])
def test_a_client_over_its_quota_gets_edquot_and_another_client_does_not(
    tmp_path: Path, engine: str
) -> None:
    """``[limits] quota_fraction`` small: client a creates 4000-byte files until one fails,
    and it fails with EDQUOT under both engines (FaB: every correct node refuses the
    execution ``quota``, ``fab/execution.py``; without a FaB quota a's files all went in).
    Client b still creates and writes, a can still remove a file, and both read b's."""

    async def body(env: fs_helpers.Env) -> None:
        a, b = env.fss
        refused = None
        for i in range(60):
            try:
                await fs_helpers.write_file(a, b"a%d" % i, b"q" * 4000)
            except FsError as e:
                refused = e
                break
        assert refused is not None and refused.errno == errno.EDQUOT, refused
        assert i > 2  # a's quota held some files first
        await fs_helpers.write_file(b, b"b", b"other client")
        await a.unlink(ROOT, b"a0")
        for fs in (a, b):
            assert await _read(fs, b"b") == b"other client"

    with fs_helpers.engine(engine):
        fs_helpers.run(tmp_path, body, limits=LimitsPolicy(quota_fraction=0.001))


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        t3_fs_leases.test_another_clients_change_recalls_the_lease_and_is_seen_at_once,
        t3_fs_writeback.test_closes_under_an_exclusive_lease_leave_creates_to_write_back,
    ],
    ids=["leases", "writeback"],
)
def test_one_client_two_mounts_under_fab(case: Callable[..., None], tmp_path: Path) -> None:
    """The lease and write-back suites' ``one-client-two-mounts`` cases under FaB: a lease
    is a mount's, and the other mount of the same identity recalls it and sees what the
    holder wrote (before streams, its calls were dropped by the nodes)."""
    with fs_helpers.engine("fab"):
        case(tmp_path, twins=True)


@pytest.mark.slow
def test_a_mount_whose_stream_was_evicted_goes_on_and_an_expired_call_is_unavailable(
    tmp_path: Path,
) -> None:
    """Five more FaB clients of one identity (``STREAMS`` is 4) push the first one's stream
    out of the nodes' table while it is idle: its next call runs (no error).  A call whose
    id is not above its evicted stream's last one (as a request that ran and whose reply
    was lost) is refused ``expired`` by ``f + 1`` nodes: the client raises unavailable,
    not a made-up answer, and its ids move past the bar, so the call after runs."""

    async def body(env: fs_helpers.Env) -> None:
        nodes = [int(i) for i in env.cluster.config.node_ids]

        def fab() -> FabMetaClient:
            ep = env.cluster.twin(0)
            return FabMetaClient(ep, nodes, env.cluster.config.b, timeout=fs_helpers.FAB_TIMEOUT)

        first = fab()
        assert (await first.query(ROOT, "fs.peek"))["k"] is not None
        for _ in range(STREAMS + 1):
            await fab().query(ROOT, "fs.peek")
        await first.query(ROOT, "fs.peek")  # evicted while idle: goes on
        for _ in range(STREAMS + 1):
            await fab().query(ROOT, "fs.peek")
        first.rid -= 1  # its next id is its last one again (its clock set far behind)
        first.clock_ns = lambda: 0
        with pytest.raises(FabUnavailable, match="expired"):
            await first.query(ROOT, "fs.peek")
        assert (await first.query(ROOT, "fs.peek"))["k"] is not None
        assert first.statistics().unavailable == 1

    with fs_helpers.engine("fab"):
        fs_helpers.run(tmp_path, body)


def test_a_second_fab_client_on_one_endpoint_leaves_the_first_its_replies(
    tmp_path: Path,
) -> None:
    """A FaB client made on an endpoint that already has one (a history reader beside a
    mount's client) takes the pushes first: the replies on the first one's stream go on
    to it, so both complete (the first timed out, unavailable, when the second kept every
    reply)."""

    async def body(env: fs_helpers.Env) -> None:
        config = env.cluster.config
        nodes = [int(i) for i in config.node_ids]
        second = FabMetaClient(env.cluster.client(0), nodes, config.b, timeout=4.0)
        first = env.fs.meta.qu  # the mount's FaB client (tagged with its mount)
        assert (await second.query(ROOT, "fs.peek"))["k"] is not None
        with trio.fail_after(4.0):
            assert (await first.query(ROOT, "fs.peek"))["k"] is not None

    with fs_helpers.engine("fab"):
        fs_helpers.run(tmp_path, body)
