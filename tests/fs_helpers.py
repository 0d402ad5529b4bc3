"""Shared helpers for the tier-3 file-system tests: a cluster with one :class:`FileSystem`
per client, and one ``check_*`` per file-system invariant (STYLE.md 6 and 7: each test ends
with an in-process fsck).

The checks read the servers' objects directly (raw ``fs.*`` queries through a Q/U client),
not through the file system's caches, so they test what is stored.
"""

from __future__ import annotations

import os
import random
import stat
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import (
    AbstractContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from bftfs import fsobjects as obj
from bftfs.fab.metaclient import FabMetaClient
from bftfs.fs.errors import NotFound, StaleView
from bftfs.fs.filesystem import FileSystem, open_file_system
from bftfs.fs.leases import publish
from bftfs.fs.writeback import creates_sending
from bftfs.fsobjects.leases import DONE, LEASE_TIME
from bftfs.ids import client_id
from bftfs.outcome import patience
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.objects import MethodRefused
from bftfs.rw.client import RWClient, open_rw_client
from bftfs.testing.byzantine.fab import Behaviour as FabBehaviour
from bftfs.testing.cluster import Cluster, open_cluster, qu_client

#: The metadata engine of the clusters ``fs_env`` starts (:func:`engine` changes it).
_ENGINE = ["qu"]

T = TypeVar("T")


@contextmanager
def _scoped(stack: list[T], value: T) -> Iterator[None]:
    """``value`` on top of ``stack`` (the setting ``fs_env`` reads) inside the block."""
    stack.append(value)
    try:
        yield
    finally:
        stack.pop()


@contextmanager
def busy_writer() -> Iterator[None]:
    """A writer that keeps what it holds when a reader asks it to publish, however long a
    loaded machine pauses it between its work and the reader's look: ``publish.IDLE``
    and ``creates_sending.CLOSED_IDLE`` raised to a minute inside the block
    (``t3_fs_publish.py`` tests the hand-over of what is left idle).  A block, not a
    fixture: ``t3_fab_fs.py`` calls the tests itself."""
    idle, closed = publish.IDLE, creates_sending.CLOSED_IDLE
    publish.IDLE = creates_sending.CLOSED_IDLE = 60.0
    try:
        yield
    finally:
        publish.IDLE, creates_sending.CLOSED_IDLE = idle, closed


def engine(name: str) -> AbstractContextManager[None]:
    """Run the file-system tests inside on clusters of metadata engine ``name``
    (``t3_fab_fs.py`` runs t3 suites under ``"fab"``)."""
    return _scoped(_ENGINE, name)


#: The Byzantine FaB nodes of the clusters ``fs_env`` starts (:func:`fab_byzantine`).
_FAB_BYZANTINE: list[dict[int, FabBehaviour]] = [{}]


def fab_byzantine(nodes: dict[int, FabBehaviour]) -> AbstractContextManager[None]:
    """Run the file-system tests inside with node ``i``'s FaB engine Byzantine as
    ``nodes[i]`` (``t3_fab_byzantine.py``); :func:`run` then also checks that the
    correct nodes executed the same state."""
    return _scoped(_FAB_BYZANTINE, nodes)


async def fab_agreement(cluster: Cluster, within: float = 10.0) -> int:
    """Wait until the correct nodes of a FaB cluster (those not made Byzantine) have
    executed the same slots, as far as the furthest of them at the call; fail unless
    their states are then the same (a split decision shows here even when every client
    got ``f + 1`` matching answers).  The slot they agree on."""
    correct = [f.fab_replica for f in cluster.faults if f.fab_behaviour is None]
    replicas = [r for r in correct if r is not None]
    assert len(replicas) == len(correct)
    target = max(r.execution.executed for r in replicas)

    def settled() -> bool:
        executed = {r.execution.executed for r in replicas}
        return len(executed) == 1 and min(executed) >= target

    with trio.fail_after(within):
        while not settled():  # noqa: ASYNC110 (the replicas have no event to wait on)
            await trio.sleep(0.02)
    digests = {r.me: r.execution.digest().hex()[:16] for r in replicas}
    assert len(set(digests.values())) == 1, f"correct nodes' states differ: {digests}"
    return replicas[0].execution.executed


#: Seconds a FaB operation waits for ``f + 1`` replies in these tests (a view change on
#: the in-process cluster takes about two).
FAB_TIMEOUT = 10.0


def _metadata_client(cluster: Cluster, k: int, seed: int, **options: Any) -> Any:
    """Client ``k``'s Q/U client, or its FaB client on a FaB cluster."""
    if cluster.config.engine == "fab":
        config = cluster.config
        nodes = [int(i) for i in config.node_ids]
        return FabMetaClient(cluster.client(k), nodes, config.b, timeout=FAB_TIMEOUT)
    return qu_client(cluster, k, seed, **options)


#: Client options for tests: probe quickly, give up within seconds.
RW_OPTIONS = {"probe_after": 0.05, "timeout": 5.0}


async def write_file(fs: FileSystem, name: bytes, data: bytes, chunk: int = 32 * 1024) -> int:
    """Create ``name`` in the root and write ``data`` sequentially in ``chunk`` writes, then
    close; its inode number."""
    fh, a = await fs.create(obj.ROOT, name, 0o644, 0, 0, os.O_RDWR)
    for off in range(0, len(data), chunk):
        await fs.write(fh, off, data[off : off + chunk])
    await fs.release(fh)
    return a.ino


async def read_back(fs: FileSystem, ino: int) -> bytes:
    """The whole file through a fresh open (in 8 KiB reads, which straddle big blocks)."""
    fh = await fs.open(ino, os.O_RDONLY)
    try:
        size = (await fs.getattr(ino)).size
        return b"".join([await fs.read(fh, off, 8192) for off in range(0, size, 8192)])
    finally:
        await fs.release(fh)


@dataclass
class Env:
    """A running cluster and its file systems (``fss[k]`` is client k's)."""

    cluster: Cluster
    fss: list[FileSystem]
    raw: QUClient
    #: What the environment closes at its end (a test's own extra file systems go here).
    stack: AsyncExitStack
    clock: list[int] = field(default_factory=lambda: [1_700_000_000_000_000_000])

    @property
    def fs(self) -> FileSystem:
        return self.fss[0]


@asynccontextmanager
async def writing_client(
    tmp_path: Path, *, block_size: int, seed: int
) -> AsyncIterator[tuple[Cluster, RWClient, FileSystem]]:
    """A cluster of two clients and client 0's PASIS client and file system (seeded object
    ids), on this machine's clock: history tests compare the moments they take with the
    times the nodes give versions, which :func:`fs_env`'s fake clock would not match."""
    async with (
        open_cluster(tmp_path, clients=2, block_size=block_size) as cluster,
        AsyncExitStack() as stack,
    ):
        cfg = cluster.config
        rw = await stack.enter_async_context(open_rw_client(cluster.client(0), cfg, **RW_OPTIONS))
        fs = await stack.enter_async_context(
            open_file_system(qu_client(cluster, 0), rw, cfg, rng=random.Random(seed))
        )
        yield cluster, rw, fs


@asynccontextmanager
async def fs_env(
    tmp_path: Path,
    *,
    clients: int = 2,
    seed: int = 0,
    attr_ttl: float = 0.0,
    fs_options: dict[str, Any] | None = None,
    qu_options: dict[str, Any] | None = None,
    twins: bool = False,
    **cluster_options: Any,
) -> AsyncIterator[Env]:
    """A cluster with ``clients`` file systems (plus a raw Q/U client for the checks).

    Each file system gets a seeded RNG (object ids) and a shared fake clock that advances
    by 1 ms per reading, so times are deterministic and strictly increasing; ``qu_options``
    go to each file system's Q/U client.  ``twins``: every file system is client 0 (one
    identity, as two mounts with the same bundle), each with its own connections (and, on a
    FaB cluster, its own stream).
    """
    clock = [1_700_000_000_000_000_000]

    def clock_ns() -> int:
        clock[0] += 1_000_000
        return clock[0]

    async with (
        open_cluster(
            tmp_path, clients=clients + 1, seed=seed, engine=_ENGINE[-1], **cluster_options
        ) as cluster,
        AsyncExitStack() as stack,
    ):
        for i, behaviour in _FAB_BYZANTINE[-1].items():
            cluster.faults[i].fab(behaviour)
        fss = []
        for k in range(clients):
            endpoint = cluster.twin(0) if twins and k else cluster.client(0 if twins else k)
            rw = await stack.enter_async_context(
                open_rw_client(endpoint, cluster.config, **RW_OPTIONS)
            )
            if twins and cluster.config.engine == "fab":  # its own stream (fab/sessions.py)
                nodes = [int(i) for i in cluster.config.node_ids]
                qu = FabMetaClient(endpoint, nodes, cluster.config.b, timeout=FAB_TIMEOUT)
            elif twins:
                qu = QUClient(
                    endpoint,
                    QUThresholds.from_config(cluster.config),
                    client_id=int(client_id(0)),
                    rng=random.Random(seed * 31 + k),
                    seq_start=1_000_000 * (k + 1),
                    **(qu_options or {}),
                )
            else:
                qu = _metadata_client(cluster, k, seed, **(qu_options or {}))
            fss.append(
                await stack.enter_async_context(
                    open_file_system(
                        qu,
                        rw,
                        cluster.config,
                        clock_ns=clock_ns,
                        rng=random.Random(seed * 1000 + k),
                        attr_ttl=attr_ttl,
                        **(fs_options or {}),
                    )
                )
            )
            fss[-1].meta.hints.listen(endpoint, cluster.config.node_ids)
            if fss[-1].meta.leases is not None:
                fss[-1].meta.leases.listen(endpoint, cluster.config.node_ids)
        yield Env(cluster, fss, _metadata_client(cluster, clients, seed), stack, clock)


def run(tmp_path: Path, body: Callable[[Env], Any], **options: Any) -> None:
    """Run ``body(env)`` on a fresh cluster, then every invariant check."""

    async def main() -> None:
        async with fs_env(tmp_path, **options) as env:
            await body(env)
            for fs in env.fss:  # as an unmount: write-back sent, leases given back
                await fs.write_back()
                if fs.meta.leases is not None:
                    await fs.meta.leases.release_all()
                assert not any(f.dirty for f in fs.open_files().values()), "unflushed data"
            await check_all(env.raw)
            if _FAB_BYZANTINE[-1]:
                await fab_agreement(env.cluster)

    trio.run(main)


JOURNAL_FLAGS = os.O_CREAT | os.O_TRUNC | os.O_WRONLY


async def open_creat_trunc(fs: FileSystem, parent: int, name: bytes) -> int:
    """What the kernel does for ``open(name, O_CREAT|O_TRUNC|O_WRONLY)``: look up, open
    with O_TRUNC if the name exists, create otherwise; a race with the other client's
    create or unlink makes it walk again (ENOENT on a removed object, ESTALE on a create
    of a name created meanwhile)."""
    for _ in range(50):
        try:
            a = await fs.lookup(parent, name)
        except NotFound:
            try:
                fh, _ = await fs.create(parent, name, 0o644, 0, 0, JOURNAL_FLAGS)
                return fh
            except StaleView:
                continue
        try:
            return await fs.open(a.ino, JOURNAL_FLAGS)
        except NotFound:
            continue
    raise AssertionError("open(O_CREAT) did not settle")


async def names(fs: FileSystem, ino: int) -> list[bytes]:
    return sorted(n for n, _ in await fs.readdir(ino) if n not in (b".", b".."))


# Contention amplified (issue 31, item 11) ---------------------------------------------------

#: The patience each "system call" of :func:`journal_until_contended` gets (a mount's timeo,
#: 10 s by default) with in-process nodes: short enough that the backoffs below outlast it,
#: long enough that a loaded machine's fsyncs do not (at 0.2 s, three of six nodes stayed
#: silent through it on CI, and the create was refused as unavailable).
CALL_PATIENCE = 1.0
#: The same with durable node processes (t5_fs_contention): at 1 s a call once failed in
#: CI's slow suite with "0 answered", its patience gone while it queued behind its own
#: client's backoff (since fixed, ``qu.client.ObjectLock``); 3 s leaves a loaded CI room.
PROCESS_CALL_PATIENCE = 3.0
#: Rounds of the journal each client runs at most before contention must have shown: 300
#: left node processes one backoff short (5 of 6) once, 600 two backoffs of four (12-04);
#: the loop stops as soon as it shows.
JOURNAL_ROUNDS = 1200


def backoff_past(call_patience: float) -> Callable[[float], Awaitable[None]]:
    """A Q/U client's backoff (its ``sleep``) made longer than a call's whole patience."""

    async def sleep(_delay: float) -> None:
        await trio.sleep(1.5 * call_patience)

    return sleep


backoff_past_the_patience = backoff_past(CALL_PATIENCE)


async def journal_until_contended(
    fss: list[FileSystem], parent: int, call_patience: float, backoffs: int = 3
) -> None:
    """SQLite's journal from each of ``fss`` at once on one name in ``parent``: create (or
    open and truncate), write, fsync, close, unlink, each call under ``call_patience`` as
    the FUSE layer runs it, until the clients' Q/U clients have backed off for contention
    ``backoffs`` times each on average (at most :data:`JOURNAL_ROUNDS` rounds each: then it
    fails)."""

    def contended() -> bool:
        return sum(fs.qu.statistics().backoffs for fs in fss) >= backoffs * len(fss)

    async def call(fn: Any, *args: Any) -> Any:
        with patience(call_patience, trio.current_time()):
            return await fn(*args)

    async def loop(k: int, fs: FileSystem) -> None:
        for _ in range(JOURNAL_ROUNDS):
            if contended():
                return
            fh = await call(open_creat_trunc, fs, parent, b"j")
            await call(fs.write, fh, 0, b"%d" % k * 512)
            await call(fs.fsync, fh)
            await call(fs.release, fh)
            with suppress(NotFound):  # the other client may have unlinked it first
                await call(fs.unlink, parent, b"j")

    async with trio.open_nursery() as n:
        for k, fs in enumerate(fss):
            n.start_soon(loop, k, fs)
    assert contended(), [fs.qu.statistics() for fs in fss]


# Invariants ---------------------------------------------------------------------------------


@dataclass
class Tree:
    """What a walk from the root found."""

    dirs: dict[int, dict[str, Any]] = field(default_factory=dict)  # oid -> stat
    files: dict[int, dict[str, Any]] = field(default_factory=dict)
    entries: dict[int, dict[bytes, list[int]]] = field(default_factory=dict)
    names: Counter[int] = field(default_factory=Counter)  # non-dir oid -> entries naming it


async def read_unleased(qu: QUClient, oid: int, method: str) -> Any:
    """``method`` of ``oid`` read from the servers, as a mount reads it past a lease that
    ended: a query carries no lease time, so a node refuses ``leased`` while an exclusive
    record stays, ended or not, until an update tidies it (``fsobjects.leases.guarded``).
    A mount that let a lease end without giving it back (dropped when next looked at, so
    its unmount's ``release_all`` no longer names it) leaves one; its next reader's recall
    tidies it.  The checks tidy with a recall that recalls nothing (``ld``) and read again:
    a lease still live then is one an unmount left held, and fails the check."""
    try:
        return await qu.query(oid, method)
    except MethodRefused as e:
        if e.code != "leased":
            raise
    await qu.update([oid], "fs.recall", {LEASE_TIME: time.time_ns(), DONE: 1})
    try:
        return await qu.query(oid, method)
    except MethodRefused as e:
        raise AssertionError(f"object {oid}: a live exclusive lease after every release") from e


async def walk(qu: QUClient) -> Tree:
    """Every directory and file reachable from the root, read from the servers."""
    tree = Tree()
    todo = [obj.ROOT]
    while todo:
        d = todo.pop()
        assert d not in tree.dirs, f"directory {d} reachable twice: the tree has a cycle"
        tree.dirs[d] = await read_unleased(qu, d, "fs.stat")
        ents = obj.entries(await read_unleased(qu, d, "fs.readdir"))
        tree.entries[d] = ents
        for _name, (oid, code) in ents.items():
            if code == obj.DIR_TYPE:
                todo.append(oid)
            else:
                tree.names[oid] += 1
                if oid not in tree.files:
                    tree.files[oid] = await read_unleased(qu, oid, "fs.stat")
    return tree


def check_directory_links(tree: Tree) -> None:
    """A directory's link count is 2 plus its subdirectories; none reachable is removed."""
    for d, s in tree.dirs.items():
        subdirs = sum(1 for _, code in tree.entries[d].values() if code == obj.DIR_TYPE)
        assert s["nl"] == 2 + subdirs, (d, s["nl"], subdirs)


def check_parent_pointers(tree: Tree) -> None:
    """Each subdirectory's ``..`` is the directory that names it; the root's is itself."""
    assert tree.dirs[obj.ROOT]["p"] == obj.ROOT
    for d, ents in tree.entries.items():
        for _name, (oid, code) in ents.items():
            if code == obj.DIR_TYPE:
                assert tree.dirs[oid]["p"] == d, (oid, tree.dirs[oid]["p"], d)


def check_file_links(tree: Tree) -> None:
    """A file's link count equals the number of entries naming it."""
    for oid, s in tree.files.items():
        assert s["nl"] == tree.names[oid], (oid, s["nl"], tree.names[oid])


def check_entry_types(tree: Tree) -> None:
    """An entry's type code is its object's file type."""
    for ents in tree.entries.values():
        for _name, (oid, code) in ents.items():
            s = tree.dirs.get(oid) or tree.files[oid]
            assert stat.S_IFMT(s["mode"]) >> 12 == code, (oid, code, s["mode"])


def check_file_layout(tree: Tree) -> None:
    """Regular files have a data id and a reservation covering their size' blocks' writes
    (inline content within its bound, stored bytes within the size); symlinks' size is
    their target's length."""
    for oid, s in tree.files.items():
        if stat.S_ISREG(s["mode"]):
            assert s["d"] > 0, oid
            assert s["alloc"] >= 0 and s["size"] >= 0, oid
            assert not s["inl"] or s["size"] <= obj.INLINE_MAX, oid
            assert s["al"] is None or 0 <= s["al"] <= s["size"], oid  # stored bytes
        else:
            assert s["d"] == 0, oid


async def check_all(qu: QUClient) -> Tree:
    """Every invariant check above; the tree they checked."""
    tree = await walk(qu)
    check_directory_links(tree)
    check_parent_pointers(tree)
    check_file_links(tree)
    check_entry_types(tree)
    check_file_layout(tree)
    return tree
