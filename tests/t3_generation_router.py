"""Tier 3: a file system over two generations while objects move (issue 35;
docs/membership.md, "Generations: moving objects").

Generation g is an in-process cluster of 6 nodes (t = b = 1), generation g + 1 one of 11
(t = b = 2): new nodes, other thresholds.  A tree written in g with a plain file system
reads back, and changes, through :class:`~bftfs.fs.generations.GenerationalQU` and
:class:`~bftfs.fs.generations.GenerationalRW`; nothing is written to g.  The node side
(frozen nodes, ``gen.status``) is another part: here g's nodes are not frozen, and
:func:`~bftfs.fs.generations.wait_frozen` is tested on its counting rule alone, with an
asking function that returns chosen answers.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from fs_helpers import RW_OPTIONS, check_all

from bftfs.fs.clients import Switch, SwitchingQU
from bftfs.fs.filesystem import FileSystem, open_file_system
from bftfs.fs.generations import (
    GenerationalQU,
    GenerationalRW,
    frozen_needed,
    wait_frozen,
)
from bftfs.fsobjects import ROOT, SNAPSHOTS
from bftfs.fsobjects.leases import EXCLUSIVE, holders, tag_query, who
from bftfs.fsobjects.locks import lock_object
from bftfs.fsobjects.methods import FS
from bftfs.fsobjects.moves import pack_state, unpack_state
from bftfs.fsobjects.pubstate import PUB_KEY
from bftfs.fsobjects.state import new_dir
from bftfs.ids import client_id
from bftfs.qu.canon import canonical, unpack
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.objects import MethodRefused
from bftfs.rw.client import open_rw_client
from bftfs.rw.messages import block_id
from bftfs.testing.cluster import Cluster, open_cluster
from bftfs.thresholds import qu_quorums

BS = 4096
SIZES = {"block_size": BS, "inline_limit": 1024}
BIG = bytes(random.Random(5).randbytes(3 * BS + 500))
SMALL = b"small file, inline\n" * 5


_SEQ = [0]


def qu_client(cluster: Cluster, k: int, seed: int = 0) -> QUClient:
    """A Q/U client of client ``k`` with request ids of its own: one test makes several
    of one client identity (``testing.cluster.qu_client`` gives each the same range)."""
    _SEQ[0] += 1
    return QUClient(
        cluster.client(k),
        QUThresholds.from_config(cluster.config),
        client_id=int(client_id(k)),
        rng=random.Random(seed),
        seq_start=10**9 * _SEQ[0],
    )


@dataclass
class Gens:
    """Generation g, generation g + 1, and a file system's clock shared by every mount."""

    g: Cluster
    g1: Cluster
    stack: AsyncExitStack
    clock: list[int] = field(default_factory=lambda: [1_700_000_000_000_000_000])

    def clock_ns(self) -> int:
        self.clock[0] += 1_000_000
        return self.clock[0]

    async def rw(self, cluster: Cluster, k: int) -> Any:
        return await self.stack.enter_async_context(
            open_rw_client(cluster.client(k), cluster.config, **RW_OPTIONS)
        )

    async def plain_fs(self, k: int) -> FileSystem:
        """Client ``k``'s file system on g alone."""
        qu = qu_client(self.g, k, seed=k)
        return await self.stack.enter_async_context(open_file_system(
            qu, await self.rw(self.g, k), self.g.config, clock_ns=self.clock_ns,
            rng=random.Random(k),
        ))  # fmt: skip

    def router(self, k: int, **options: Any) -> GenerationalQU:
        """Client ``k``'s Q/U router from g to g + 1."""
        new, old = qu_client(self.g1, k, seed=k), qu_client(self.g, k, seed=k)
        return GenerationalQU(new, old, **{"clock_ns": self.clock_ns, **options})

    async def routed_fs(self, k: int) -> tuple[FileSystem, GenerationalQU, GenerationalRW]:
        """Client ``k``'s file system over both generations."""
        qu = self.router(k)
        rw = GenerationalRW(await self.rw(self.g1, k), await self.rw(self.g, k))
        fs = await self.stack.enter_async_context(
            open_file_system(
                qu, rw, self.g1.config, clock_ns=self.clock_ns, rng=random.Random(100 + k)
            )
        )
        return fs, qu, rw


@asynccontextmanager
async def generations(tmp_path: Path) -> AsyncIterator[Gens]:
    async with (
        open_cluster(tmp_path / "g", t=1, b=1, clients=4, **SIZES) as g,
        open_cluster(tmp_path / "g1", t=2, b=2, clients=4, seed=1, **SIZES) as g1,
        AsyncExitStack() as stack,
    ):
        assert (g.config.n, g1.config.n) == (6, 11)
        yield Gens(g, g1, stack)


async def unmount(fs: FileSystem) -> None:
    """What an unmount does: write-back sent, leases given back."""
    await fs.write_back()
    if fs.meta.leases is not None:
        await fs.meta.leases.release_all()


async def write(fs: FileSystem, parent: int, name: bytes, data: bytes) -> int:
    fh, a = await fs.create(parent, name, 0o644, 0, 0, os.O_RDWR)
    await fs.write(fh, 0, data)
    await fs.release(fh)
    return a.ino


async def read(fs: FileSystem, ino: int) -> bytes:
    fh = await fs.open(ino, os.O_RDONLY)
    try:
        return await fs.read(fh, 0, 1 << 20)
    finally:
        await fs.release(fh)


async def raw_states(qu: Any, oids: list[int]) -> dict[int, Any]:
    return {oid: await qu.query(oid, "fs.state") for oid in oids}


def test_a_tree_of_g_reads_and_changes_through_the_router_and_g_stays_as_it_was(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with generations(tmp_path) as gens:
            fs = await gens.plain_fs(0)
            a = (await fs.mkdir(ROOT, b"a", 0o755, 0, 0)).ino
            b = (await fs.mkdir(a, b"b", 0o750, 0, 0)).ino
            small = await write(fs, a, b"small", SMALL)
            other = await write(fs, ROOT, b"other", b"linked twice\n")
            big = await write(fs, ROOT, b"big", BIG)
            link = (await fs.symlink(ROOT, b"ln", b"a/small", 0, 0)).ino
            await fs.setxattr(small, b"user.k", b"value")
            await fs.setxattr(a, b"user.d", b"on a directory")
            await fs.link(other, a, b"hard")
            await unmount(fs)
            oids = [ROOT, a, b, small, other, big, link]
            raw_g = qu_client(gens.g, 3, seed=3)
            before = await raw_states(raw_g, oids)
            d = (await raw_g.query(big, "fs.stat"))["d"]
            blocks = [block_id(d, k) for k in range(4)]
            rw_g = await gens.rw(gens.g, 3)
            g_versions = {k: (await rw_g.read_version(k)).ts for k in blocks}

            fs1, qu1, rw1 = await gens.routed_fs(1)
            assert sorted(n for n, _ in await fs1.readdir(ROOT) if n not in (b".", b"..")) == [
                b"a", b"big", b"ln", b"other",
            ]  # fmt: skip
            assert await read(fs1, small) == SMALL
            assert await read(fs1, big) == BIG
            assert await read(fs1, (await fs1.lookup(a, b"hard")).ino) == b"linked twice\n"
            assert (await fs1.getattr(other)).nlink == 2
            assert await fs1.readlink(link) == b"a/small"
            assert await fs1.getxattr(small, b"user.k") == b"value"
            assert await fs1.getxattr(a, b"user.d") == b"on a directory"
            assert (await fs1.lookup(a, b"b")).mode & 0o777 == 0o750
            assert rw1.old_reads >= 4  # every block of big came from g

            before_append = time.time_ns()
            await fs1.rename(a, b"small", b, b"moved")
            fh = await fs1.open(big, os.O_RDWR)
            await fs1.write(fh, len(BIG), b"appended")
            await fs1.release(fh)
            fresh = await write(fs1, b, b"new", b"made in g+1")
            await fs1.unlink(ROOT, b"other")
            await unmount(fs1)

            assert await read(fs1, big) == BIG + b"appended"
            assert await read(fs1, (await fs1.lookup(b, b"moved")).ino) == SMALL
            assert await read(fs1, fresh) == b"made in g+1"
            assert (await fs1.getattr(other)).nlink == 1
            # The appended block is g + 1's; the untouched ones are still read from g.
            rw_new = rw1.new
            assert not (await rw_new.read_version(blocks[3])).absent
            assert [(await rw_new.read_version(k)).absent for k in blocks] == [1, 1, 1, 0]
            assert await rw1.read_block(blocks[0]) == BIG[:BS]
            # A read as of before the append finds no version in g + 1 up to then: g's.
            old_tail = await rw1.read_as_of(blocks[3], before_append)
            assert old_tail == BIG[3 * BS :]
            assert await rw1.read_as_of(blocks[3], time.time_ns()) == BIG[3 * BS :] + b"appended"

            # Nothing was written to g: every object and block as it was.
            assert await raw_states(raw_g, oids) == before
            assert {k: (await rw_g.read_version(k)).ts for k in blocks} == g_versions
            # g + 1 holds every object touched, consistently (links, parents, layout).
            assert qu1.moves["moved"] >= len(oids) and qu1.moves["absent"] >= 1
            raw_new = qu_client(gens.g1, 3, seed=3)
            for oid in oids:
                assert await raw_new.query(oid, "fs.state") is not None
            await check_all(raw_new)

    trio.run(main)


def test_two_routers_moving_one_object_end_consistent(tmp_path: Path) -> None:
    """Client 1's router reads g + 1 (nothing), waits for g to be frozen, and meanwhile
    client 2's moves the object: client 1's ``fs.movein`` is refused ``exists``, which it
    takes as done.  A lease of another mount holds a move up until it is given back; the
    mover's own mount's does not."""

    async def main() -> None:
        async with generations(tmp_path) as gens:
            fs = await gens.plain_fs(0)
            x = await write(fs, ROOT, b"x", b"x")
            y = await write(fs, ROOT, b"y", b"y")
            z = await write(fs, ROOT, b"z", b"z")
            w = await write(fs, ROOT, b"w", b"w")
            await unmount(fs)
            raw_g = qu_client(gens.g, 3, seed=3)
            moved_by_2 = trio.Event()
            one = gens.router(1, ready=moved_by_2.wait)
            two = gens.router(2)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one.move, x)

                async def second() -> None:
                    await two.move(x)
                    moved_by_2.set()

                nursery.start_soon(second)
            assert (one.moves["raced"], two.moves["moved"]) == (1, 1)
            assert one.moved(x) and two.moved(x)
            got = await one.query(x, "fs.open")
            assert got == await two.query(x, "fs.open")
            assert got["i"] == b"x"

            # y: leased by another mount (7) of client 3 in g, given back while waited for.
            now = time.time_ns()
            lease = {"kind": EXCLUSIVE, "lt": now, "term": 60 * 10**9, "lm": 7}
            await raw_g.update([y], "fs.lease", lease)
            looks: list[float] = []

            async def sleep(pause: float) -> None:
                looks.append(pause)
                if len(looks) == 2:
                    await raw_g.update([y], "fs.release", {"lt": time.time_ns(), "lm": 7})

            waiting = gens.router(1, clock_ns=time.time_ns, sleep=sleep)
            await waiting.move(y)
            assert looks == [0.05, 0.1]  # backing off, not spinning
            assert waiting.moves["moved"] == 1
            moved = unpack_state(await waiting.new.query(y, "fs.state"))
            assert "ls" not in moved and "lr" not in moved

            # The mover's own mount's lease does not hold it up (a lock object moves too).
            await raw_g.update([z], "fs.lease", dict(lease, lt=time.time_ns(), lm=5))
            lk = lock_object(z)
            setlk = {"m": 5, "d": 0, "o": 1, "t": 2, "s": 0, "e": 9, "lt": time.time_ns()}
            await raw_g.update([lk], "fs.setlk", dict(setlk, term=60 * 10**9))
            own = qu_client(gens.g1, 3, seed=30), qu_client(gens.g, 3, seed=30)

            async def no_sleep(pause: float) -> None:
                raise AssertionError("waited for its own lease")

            let_go: list[int] = []
            mine = GenerationalQU(
                *own, mount=5, clock_ns=time.time_ns, sleep=no_sleep, own_lease_moved=let_go.extend
            )
            await mine.update([lk], "fs.unlockowner", {"m": 5, "lt": time.time_ns()})
            # (as mount 5, which holds it: the lease moved with it)
            assert (await mine.query(z, "fs.open", tag_query(None, 5)))["i"] == b"z"
            assert mine.moves["moved"] == 2
            assert let_go == []  # its lease moved with it: it answers from it on
            assert [who(h) for h in holders(unpack_state(await mine.new.query(z, "fs.state")))] == [
                (int(client_id(3)), 5)
            ]
            assert unpack_state(await mine.new.query(lk, "fs.state"))["h"] == []
            assert unpack_state(await raw_g.query(lk, "fs.state"))["h"] != []

            # A lease given back on an object not moved is given back in g; nothing moves.
            await raw_g.update([w], "fs.lease", dict(lease, lt=time.time_ns(), lm=9))
            giver = GenerationalQU(qu_client(gens.g1, 3), qu_client(gens.g, 3), sleep=no_sleep)
            await giver.update([w], "fs.release", {"lt": time.time_ns(), "lm": 9})
            assert "ls" not in unpack_state(await raw_g.query(w, "fs.state"))
            assert await giver.new.query(w, "fs.state") is None and not giver.moved(w)
            assert giver.mount == 9  # learnt from the call

    trio.run(main)


class CutOffAfterTaking:
    """Generation g's client as a freeze arriving right after an update took effect meets
    it: the update runs (on g's real nodes), then its answer is lost to a ``moved``
    refusal, as when the old nodes froze between taking it and answering."""

    def __init__(self, client: QUClient) -> None:
        self.client = client
        self.cut = 0
        self.was_cut = trio.Event()

    def next_seq(self) -> int:
        return self.client.next_seq()

    async def update(self, objects: Any, method: str, arg: Any = None, *, seq: int) -> Any:
        await self.client.update(objects, method, arg, seq=seq)
        self.cut += 1
        self.was_cut.set()
        raise MethodRefused("moved", "nodes [0, 1]: their generation is moved")


def test_an_update_that_took_effect_in_g_runs_once_when_retried_in_g_plus_1(
    tmp_path: Path,
) -> None:
    """A hard link made in g whose answer the mount never saw (the freeze refused it right
    after g took it) runs again in g + 1 under its first request id (``SwitchingQU``): the
    moved objects' applied tables show it took effect, and g + 1 answers it without
    running it again: one new name, a link count of 2, the first answer.  Under a new id
    the same link is refused ``exists``, which is what the retry answered before the
    tables moved."""

    async def main() -> None:
        async with generations(tmp_path) as gens:
            fs = await gens.plain_fs(0)
            f = await write(fs, ROOT, b"f", b"data")
            d = (await fs.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
            e = await write(fs, ROOT, b"e", b"not moved yet")
            await unmount(fs)
            g_client = qu_client(gens.g, 1, seed=1)
            cut = CutOffAfterTaking(g_client)
            switch = Switch()
            qu = SwitchingQU(cut, switch)
            arg = {"p": d, "o": f, "name": b"hard", "now": gens.clock_ns()}
            router = GenerationalQU(qu_client(gens.g1, 1, seed=1), g_client, clock_ns=gens.clock_ns)
            async with trio.open_nursery() as nursery:
                answered: list[Any] = []

                async def link() -> None:
                    answered.append(await qu.update([f, d], "fs.link", arg))

                nursery.start_soon(link)
                await cut.was_cut.wait()
                qu.target = router  # the mount takes the view: the router's generation
                switch.switched()
            assert (cut.cut, switch.retried, router.moves["moved"]) == (1, 1, 2)
            (answer,) = answered
            assert answer[0]["nl"] == 2
            state = unpack_state(await router.query(f, "fs.state"))
            assert state["nl"] == 2  # linked once, not twice
            other, _, _ = await gens.routed_fs(2)
            assert [n for n, _ in await other.readdir(d)].count(b"hard") == 1
            with pytest.raises(MethodRefused) as refused:
                await router.update([f, d], "fs.link", dict(arg, now=gens.clock_ns()))
            assert refused.value.code == "exists"

            # The table a move installs is checked for form by the replica: refused
            # ``invalid``, nothing installed.
            packed, table = await g_client.query(e, "fs.export")
            assert unpack(table)[int(client_id(0))][0] > 0  # client 0 made it
            for bad in (b"\xc1", canonical({"x": [1, None]}), canonical({5: [1]}), 7):
                with pytest.raises(MethodRefused) as refused:
                    await router.new.update(e, "fs.movein", {"s": packed, "a": bad})
                assert refused.value.code == "invalid", bad
            assert await router.new.query(e, "fs.state") is None

    trio.run(main)


# fs.movein on its own (the method every node runs) -------------------------------------------

_METHODS = {m.name: m for m in FS.methods}


def movein(oid: int, present: Any, state: Any) -> Any:
    s = pack_state(state) if isinstance(state, dict) else state
    return _METHODS["fs.movein"].fn({oid: present}, {"s": s}, 1)


def a_file(**extra: Any) -> dict[str, Any]:
    base = {
        "k": "f", "mode": 0o100644, "uid": 0, "gid": 0, "rdev": 0, "nl": 1, "size": 5,
        "alloc": 8192, "d": 77, "at": 1, "mt": 1, "ct": 1, "t": None, "x": {}, "v": 3,
        "i": None, "w": [[0, 5]], "z": [],
    }  # fmt: skip
    return {**base, **extra}


def test_movein_installs_a_well_formed_state_without_leases_and_refuses_the_rest() -> None:
    d = new_dir(ROOT, 0o755, 0, 0, 10)
    made, _ = movein(ROOT, None, {**d, "ls": [[1, EXCLUSIVE, 99, 0]], "lr": [1, 2, 0, 99]})
    assert made == {ROOT: d}
    # So do the publication counts (fsobjects/publish.py): before, "lp" refused the move.
    made, _ = movein(ROOT, None, {**d, "ls": [[1, EXCLUSIVE, 99, 0]], PUB_KEY: [3, 2]})
    assert made == {ROOT: d}
    with pytest.raises(MethodRefused, match="exists"):
        movein(ROOT, d, d)
    # A write lease goes; what it declared it would write becomes stale.
    made, _ = movein(5, None, a_file(wl=[42, 10**18, [[4096, 8192]]]))
    assert "wl" not in made[5] and made[5]["z"] == [[4096, 8192]]
    # A lock object keeps its locks, not its waiters.
    lk = lock_object(5)
    locks = {"k": "l", "h": [[1, 5, 0, 1, 0, 9, 2, 10**18]], "w": [[2, 10**18]]}
    assert movein(lk, None, locks)[0] == {lk: {"k": "l", "h": locks["h"]}}
    # The snapshot list moves at its own id only.
    snaps = {"k": "s", "snaps": {"daily": 5}}
    assert movein(SNAPSHOTS, None, snaps)[0] == {SNAPSHOTS: snaps}
    with pytest.raises(MethodRefused, match="invalid"):
        movein(SNAPSHOTS, None, {"k": "s", "snaps": {"no/slash": 5}})
    with pytest.raises(MethodRefused, match="invalid"):
        movein(9, None, snaps)
    bad = [
        b"\xc1 not msgpack",
        "not bytes",
        a_file(k="x"),
        a_file(mode=0o040755),  # a file claiming to be a directory
        a_file(size=-1),
        a_file(nl=True),
        a_file(extra=1),
        a_file(i=b"short"[:3]),
        a_file(w=[[5, 1]]),
        a_file(x={b"": b"v"}),
        a_file(t=b""),
        {**d, "e": {70: b"\x80"}},
        {**d, "e": {0: b"not a map"}},
        {**d, "e": {0: pack_state({b"x" * 300: [5, 8]})}},
        {**d, "dead": 0},
        {**d, "p": 0},
        {"k": "l", "h": []},  # a lock object's state at a file's id
    ]
    for state in bad:
        with pytest.raises(MethodRefused) as e:
            movein(9, None, state)
        assert e.value.code == "invalid", state
    with pytest.raises(MethodRefused, match="invalid"):
        movein(lk, None, a_file())  # a file's state at a lock object's id
    assert _METHODS["fs.state"].fn({9: None}, None) is None
    assert unpack_state(_METHODS["fs.state"].fn({ROOT: d}, None)) == d


# wait_frozen's counting rule ---------------------------------------------------------------


def test_wait_frozen_counts_frozen_answers_of_the_generation_until_enough() -> None:
    """The rule alone (a unit test, no mock of a part): the asking function returns
    chosen answers; the real one (``gen.status`` to g's nodes) is the node side's."""
    q, _ = qu_quorums(6, 1, 1)
    needed = frozen_needed(6, q, 1)
    assert needed == 6 - q + 2
    rounds: list[int] = []
    asked: list[int] = []
    frozen = {"g": 4, "frozen": True, "retired": False, "view": 9}

    def answers(node: int) -> Any:
        if node in (0, 1):
            return frozen
        if node == 2:
            raise OSError("unreachable")
        if node == 3:
            return {**frozen, "g": 5}  # frozen, but of another generation
        if node == 4:
            return {**frozen, "frozen": "yes"}  # not an answer
        return frozen if len(rounds) >= 2 else {**frozen, "frozen": False}

    async def status(node: int) -> Any:
        asked.append(node)
        return answers(node)

    async def sleep(pause: float) -> None:
        rounds.append(len(rounds))

    async def main() -> set[int]:
        return await wait_frozen(status, list(range(6)), needed, generation=4, sleep=sleep)

    assert trio.run(main) == {0, 1, 5}
    assert len(rounds) == 2  # two pauses: the third round found node 5 frozen
    assert asked.count(0) == 1 and asked.count(5) == 3  # a frozen node is asked once
    with pytest.raises(ValueError):
        trio.run(lambda: wait_frozen(status, [0, 1], 3, generation=4))
