"""The KV protocol on both stores (conformance), group commit, isolation, SIGKILL safety."""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs.kv import MemoryKV
from bftfs.node.store import BACKGROUND_SHARE, Store


class _SyncLmdb:
    """Runs each KV call in its own LMDB transaction, so one conformance suite serves both."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _write(self, fn: Callable[[Any], Any]) -> Any:
        async def go() -> Any:
            async with trio.open_nursery() as n:
                n.start_soon(self.store.committer)
                r = await self.store.write(fn)
                n.cancel_scope.cancel()
            return r

        return trio.run(go)

    def get(self, db: str, key: bytes) -> bytes | None:
        return self.store.read(lambda kv: kv.get(db, key))

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._write(lambda kv: kv.put(db, key, value))

    def delete(self, db: str, key: bytes) -> bool:
        return bool(self._write(lambda kv: kv.delete(db, key)))

    def lower(self, db: str, key: bytes) -> tuple[bytes, bytes] | None:
        return self.store.read(lambda kv: kv.lower(db, key))

    def scan(self, db: str, start: bytes, stop: bytes, *, reverse: bool = False) -> list[Any]:
        return self.store.read(lambda kv: list(kv.scan(db, start, stop, reverse=reverse)))

    def has(self, db: str, key: bytes) -> bool:
        return bool(self.store.read(lambda kv: kv.has(db, key)))

    def lower_key(self, db: str, key: bytes) -> bytes | None:
        return self.store.read(lambda kv: kv.lower_key(db, key))

    def scan_keys(
        self, db: str, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> list[bytes]:
        return self.store.read(lambda kv: list(kv.scan_keys(db, start, stop, reverse=reverse)))


@pytest.fixture(params=["memory", "lmdb"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryKV()
    else:
        store = Store(tmp_path / "lmdb", map_size=1 << 24, durable=False)
        yield _SyncLmdb(store)
        store.close()


def test_kv_conformance(kv: Any) -> None:
    assert kv.get("a", b"x") is None
    assert kv.lower("a", b"x") is None
    assert list(kv.scan("a", b"", b"\xff")) == []
    for k in (b"b1", b"b3", b"b2", b"a9", b"c0"):
        kv.put("a", k, k + b"!")
    kv.put("other", b"b25", b"elsewhere")  # databases are separate namespaces
    assert kv.get("a", b"b2") == b"b2!"
    assert kv.lower("a", b"b3") == (b"b2", b"b2!")  # strictly less
    assert kv.lower("a", b"b25") == (b"b2", b"b2!")
    assert kv.lower("a", b"zz") == (b"c0", b"c0!")
    assert kv.lower("a", b"a9") is None
    assert [k for k, _ in kv.scan("a", b"b", b"c")] == [b"b1", b"b2", b"b3"]
    assert [k for k, _ in kv.scan("a", b"b", b"c", reverse=True)] == [b"b3", b"b2", b"b1"]
    assert [k for k, _ in kv.scan("a", b"b2", b"b3")] == [b"b2"]
    assert [k for k, _ in kv.scan("a", b"b15", b"zz", reverse=True)] == [b"c0", b"b3", b"b2"]
    kv.put("a", b"b2", b"new")
    assert kv.get("a", b"b2") == b"new"
    assert kv.delete("a", b"b2") is True
    assert kv.delete("a", b"b2") is False
    assert kv.get("a", b"b2") is None
    assert kv.lower("a", b"b3") == (b"b1", b"b1!")


def test_key_only_reads_agree_with_the_full_ones(kv: Any) -> None:
    """``has``, ``lower_key`` and ``scan_keys`` (which never copy a value out: a value may
    be a block's fragment) say what ``get``, ``lower`` and ``scan`` say of the keys, on
    both stores, over seeded keys and bounds."""
    rng = random.Random(34)
    assert not kv.has("k", b"x") and kv.lower_key("k", b"x") is None
    assert list(kv.scan_keys("k", b"", b"\xff")) == []
    keys = {bytes(rng.randrange(4) for _ in range(rng.randrange(1, 4))) for _ in range(40)}
    for k in keys:
        kv.put("k", k, k * 1000)  # values of a few KB: overflow pages in LMDB
    kv.put("other", b"\x01", b"elsewhere")
    probes = [bytes(rng.randrange(5) for _ in range(rng.randrange(1, 4))) for _ in range(60)]
    for probe in probes:
        assert kv.has("k", probe) == (kv.get("k", probe) is not None)
        full = kv.lower("k", probe)
        assert kv.lower_key("k", probe) == (None if full is None else full[0])
    for start, stop in zip(probes, reversed(probes), strict=True):
        for reverse in (False, True):
            want = [k for k, _ in kv.scan("k", start, stop, reverse=reverse)]
            assert list(kv.scan_keys("k", start, stop, reverse=reverse)) == want


async def test_group_commit_shares_one_transaction_and_isolates_failures(tmp_path: Path) -> None:
    store = Store(tmp_path / "lmdb", map_size=1 << 24, durable=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.committer)

        def bad(kv: Any) -> None:
            kv.put("d", b"poison", b"1")
            raise ValueError("refused")

        failures = []

        async def good(i: int) -> None:
            await store.write(lambda kv: kv.put("d", b"k%03d" % i, b"v"))

        async def failing() -> None:
            try:
                await store.write(bad)
            except ValueError as e:
                failures.append(e)

        async with trio.open_nursery() as writers:
            for i in range(20):
                writers.start_soon(good, i)
            writers.start_soon(failing)
        assert len(failures) == 1
        nursery.cancel_scope.cancel()
    assert store.read(lambda kv: kv.get("d", b"poison")) is None
    assert len(store.read(lambda kv: list(kv.scan("d", b"k", b"l")))) == 20
    assert store.commits < 21  # grouped: fewer commits than writes
    store.close()
    reopened = Store(tmp_path / "lmdb", map_size=1 << 24, durable=True)
    assert reopened.read(lambda kv: kv.get("d", b"k007")) == b"v"
    reopened.close()


async def test_write_each_commits_its_steps_together_and_isolates_a_failure(
    tmp_path: Path,
) -> None:
    """Several steps of the node's own work, one transaction (the Q/U pruner's looks,
    collection's revisits); a step that raises loses only its own changes, and its
    exception comes back in its place."""
    store = Store(tmp_path / "lmdb", map_size=1 << 24, durable=True)

    def put(i: int, kv: Any) -> int:
        kv.put("d", b"k%03d" % i, b"v")
        return i

    def bad(kv: Any) -> None:
        kv.put("d", b"poison", b"1")
        raise ValueError("refused")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.committer)
        got = await store.write_each([functools.partial(put, i) for i in range(8)])
        assert got == list(range(8)) and store.commits == 1
        mixed: list[Callable[[Any], Any]] = [functools.partial(put, 8), bad]
        mixed += [functools.partial(put, i) for i in (9, 10)]
        got = await store.write_each(mixed, background=True)
        assert got[0] == 8 and got[2:] == [9, 10]
        assert isinstance(got[1], ValueError)
        nursery.cancel_scope.cancel()
    assert store.read(lambda kv: kv.get("d", b"poison")) is None
    assert len(store.read(lambda kv: list(kv.scan("d", b"k", b"l")))) == 11
    store.close()


@pytest.mark.parametrize("durable", [True, False])
async def test_a_database_being_created_is_not_read_before_its_commit(
    tmp_path: Path, durable: bool
) -> None:
    """Reads run beside the committer (inside its open batch): while a batch creates
    a named database, a read of it finds nothing instead of failing (LMDB refuses the
    handle of an uncommitted database), and after the commit finds the data."""
    store = Store(tmp_path / "lmdb", map_size=1 << 24, durable=durable)
    seen: list[Any] = []

    def create(kv: Any) -> None:
        kv.put("fresh", b"k", b"v")
        seen.append(store.read(lambda r: r.get("fresh", b"k")))  # the batch is still open

    def fail(kv: Any) -> None:
        kv.put("aborted", b"k", b"v")
        raise ValueError("refused")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.committer)
        await store.write(create)
        with pytest.raises(ValueError):
            await store.write(fail)
        nursery.cancel_scope.cancel()
    assert seen == [None]
    assert store.read(lambda kv: kv.get("fresh", b"k")) == b"v"
    assert store.read(lambda kv: kv.get("aborted", b"k")) is None
    store.close()


def test_a_read_begun_before_a_database_was_created_does_not_see_its_handle(
    tmp_path: Path,
) -> None:
    """A read transaction begun before a commit that creates a named database must not be
    handed that database's handle (issue 60 item 14: ``InvalidParameterError:
    mdb_cursor_open`` at a new node's start, its first commits creating databases while a
    read ran beside the durable committer's worker thread): the read sees the database
    as absent, as its snapshot has it, and a read begun after the commit finds the data."""
    store = Store(tmp_path / "lmdb", map_size=1 << 24, durable=False)
    seen: list[Any] = []

    def read(kv: Any) -> None:
        kv.get("other", b"k")  # the transaction is open from here
        store.write_now(lambda w: w.put("fresh", b"k", b"v"))  # a commit beside it
        seen.append(
            (
                kv.get("fresh", b"k"),
                list(kv.scan("fresh", b"", b"\xff")),
                kv.has("fresh", b"k"),
                kv.lower("fresh", b"z"),
            )
        )

    try:
        store.read(read)
        assert seen == [(None, [], False, None)]
        assert store.read(lambda kv: kv.get("fresh", b"k")) == b"v"
    finally:
        store.close()


_WRITER = textwrap.dedent(
    """
    import sys, trio
    from pathlib import Path
    from bftfs.node.store import Store
    store = Store(Path(sys.argv[1]), map_size=1 << 26, durable=False)
    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(store.committer)
            i = 0
            while True:
                await store.write(lambda kv, i=i: kv.put("acked", b"%08d" % i, b"x" * 100))
                print(i, flush=True)  # acknowledged: committed before this line
                i += 1
    trio.run(main)
    """
)


def test_sigkill_loses_no_committed_write(tmp_path: Path) -> None:
    """Writes acknowledged before a SIGKILL are all there after reopening (even unsynced)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path / "lmdb")],
        stdout=subprocess.PIPE,
        text=True,
    )
    acked = -1
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked = int(line)
            if acked >= 300:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert acked >= 300
    store = Store(tmp_path / "lmdb", map_size=1 << 26, durable=False)
    keys = store.read(lambda kv: [k for k, _ in kv.scan("acked", b"", b"\xff")])
    store.close()
    assert len(keys) >= acked + 1
    assert keys[: acked + 1] == [b"%08d" % i for i in range(acked + 1)]


@pytest.mark.parametrize("durable", [True, False])
async def test_client_steps_go_ahead_of_a_background_backlog(tmp_path: Path, durable: bool) -> None:
    """Issue 31, item 11: a node's background work (catch-up, pruning, forgetting, scrub)
    must never starve client requests.  With 200 background steps queued before it, a
    client's step runs in the next batch, behind at most ``BACKGROUND_SHARE`` of them (a
    single queue ran the whole backlog first: queued as client steps, they all run
    before it); the backlog still completes."""
    store = Store(tmp_path / "lmdb", map_size=1 << 24, durable=durable)
    order: list[str] = []

    def step(name: str) -> Callable[[Any], None]:
        def fn(kv: Any) -> None:
            kv.put("d", name.encode(), b"v")
            order.append(name)

        return fn

    async with trio.open_nursery() as writers:
        for i in range(200):
            writers.start_soon(functools.partial(store.write, step(f"bg{i}"), background=True))
        with trio.fail_after(10):  # the backlog is queued before the client's step
            while store.queued != (0, 200):
                await trio.lowlevel.checkpoint()
        writers.start_soon(store.write, step("client"))
        with trio.fail_after(10):
            while store.queued != (1, 200):
                await trio.lowlevel.checkpoint()
        writers.start_soon(store.committer)  # the writer starts on a full queue
        with trio.fail_after(10):
            while len(order) < 201:
                await trio.lowlevel.checkpoint()
        writers.cancel_scope.cancel()
    assert order.index("client") <= BACKGROUND_SHARE
    assert sorted(n for n in order if n != "client") == sorted(f"bg{i}" for i in range(200))
    store.close()
