"""Tier 3: the mkdirs write-back holds back in one directory go together, ``fs.mkdirmany``
(``fs/writeback/mkdirs.py``), on the in-process cluster (real node services, TCP, LMDB,
keys).

``git`` makes ``.git/objects/xx`` one at a time and writes an object into each at once; a
tree's unpacking makes a directory's subdirectories one after another.  Each held-back
mkdir went in an update of its own (147-201 ``fs.mkdir`` in a ``git add`` of 562 files);
now those of one directory go ``batch`` per update when due (filled with the directory's
next ones); a call that needs one of them sends that one alone, as before."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from fs_helpers import Env, busy_writer, run
from t3_fs_writeback import OPTIONS, new_file, rounds_since

from bftfs.fs.clients import IdTaken
from bftfs.fs.errors import from_refusal
from bftfs.fs.writeback.mkdirs import PendingMkdirs
from bftfs.fs.writeback.schedule import WriteBack
from bftfs.fsobjects import ROOT

NAMES = [b"%02x" % k for k in range(13)]


def parts(fs: Any) -> tuple[WriteBack, PendingMkdirs]:
    """``fs``'s write-back schedule and held mkdirs."""
    wb, mkdirs = fs.outbox.writeback, fs.outbox.mkdirs
    assert isinstance(wb, WriteBack) and isinstance(mkdirs, PendingMkdirs)
    return wb, mkdirs


async def held_tree(fs: Any) -> tuple[int, dict[bytes, int]]:
    """``objects`` (made leased by ``fs``) and 13 subdirectories held back in it."""
    top = (await fs.mkdir(ROOT, b"objects", 0o755, 0, 0)).ino
    await fs.write_back()
    subs = {n: (await fs.mkdir(top, n, 0o750, 0, 0)).ino for n in NAMES}
    leases = fs.meta.leases
    assert leases is not None and leases.stats["mkdirs_deferred"] == len(NAMES)
    return top, subs


async def seen_by_other(env: Env, top: int, subs: dict[bytes, int]) -> None:
    """The other client finds every directory, its mode, and the parent's link count."""
    b = env.fss[1]
    assert {n for n, _ in await b.readdir(top)} == set(subs)
    for name, ino in subs.items():
        assert (await b.lookup(top, name)).ino == ino
        assert (await b.getattr(ino)).mode & 0o7777 == 0o750
    assert (await b.getattr(top)).nlink == 2 + len(subs)


def test_held_mkdirs_of_one_directory_go_batch_per_update(tmp_path: Path) -> None:
    """13 held-back mkdirs and a file in one of them: write-back sends the mkdirs in
    ``ceil(13 / batch)`` ``fs.mkdirmany`` (no ``fs.mkdir``), the file after its
    directory; the other client finds them all."""

    async def body(env: Env) -> None:
        a = env.fss[0]
        top, subs = await held_tree(a)
        await new_file(a, subs[NAMES[5]], b"obj", b"blob")
        before = Counter(a.meta.methods)
        await a.write_back()
        rounds = rounds_since(a, before)
        wb, _ = parts(a)
        assert rounds["fs.mkdirmany"] == -(-len(NAMES) // wb.batch), rounds
        assert rounds["fs.mkdir"] == 0, rounds
        assert wb.stats["mkdirs_written_back"] == len(NAMES)
        await seen_by_other(env, top, subs)
        b = env.fss[1]
        ino = (await b.lookup(subs[NAMES[5]], b"obj")).ino
        fh = await b.open(ino, 0)
        assert await b.read(fh, 0, 100) == b"blob"
        await b.release(fh)

    with busy_writer():
        run(tmp_path, body, fs_options=OPTIONS)


def test_a_call_that_needs_one_held_mkdir_sends_that_one_alone(tmp_path: Path) -> None:
    """An extended attribute set on one of them (an update that must follow its mkdir,
    sent at once) sends that mkdir alone: the others stay held back (a mount killed then
    loses them with what was made in them, as before, ``t4_leases.py``); write-back sends
    them together later."""

    async def body(env: Env) -> None:
        a = env.fss[0]
        top, subs = await held_tree(a)
        before = Counter(a.meta.methods)
        await a.setxattr(subs[NAMES[0]], b"user.k", b"v")
        rounds = rounds_since(a, before)
        assert rounds["fs.mkdir"] == 1 and rounds["fs.mkdirmany"] == 0, rounds
        assert rounds["fs.setxattr"] == 1, rounds
        before = Counter(a.meta.methods)
        await a.write_back()
        rounds = rounds_since(a, before)
        assert rounds["fs.mkdirmany"] == -(-(len(NAMES) - 1) // parts(a)[0].batch), rounds
        assert rounds["fs.mkdir"] == 0, rounds
        await seen_by_other(env, top, subs)

    with busy_writer():
        run(tmp_path, body, fs_options=OPTIONS)


def test_nodes_without_the_method_get_each_mkdir_alone(tmp_path: Path) -> None:
    """Nodes of an older release refuse ``fs.mkdirmany`` ``no-such-method`` (their answer
    stood in for here, at the mount's one path to the cluster): the batch goes as one
    ``fs.mkdir`` each, the mount asks no batch again, and nothing is lost."""

    async def body(env: Env) -> None:
        a = env.fss[0]
        real = a.meta.update_now
        refused: list[str] = []

        async def older_nodes(objects: Any, method: str, arg: Any) -> Any:
            if method == "fs.mkdirmany":
                refused.append(method)
                raise from_refusal("no-such-method", method)  # as update_now translates it
            return await real(objects, method, arg)

        a.meta.update_now = older_nodes  # type: ignore[method-assign]
        top, subs = await held_tree(a)
        before = Counter(a.meta.methods)
        await a.write_back()
        assert refused == ["fs.mkdirmany"]
        assert rounds_since(a, before)["fs.mkdir"] == len(NAMES)
        assert not parts(a)[1]._many
        await seen_by_other(env, top, subs)

    with busy_writer():
        run(tmp_path, body, fs_options=OPTIONS)


def test_a_batch_that_took_effect_unanswered_is_found_made(tmp_path: Path) -> None:
    """A batch whose update took effect but whose answer the mount never saw is sent
    again and refused: its objects exist (``oid-exists``, ``IdTaken``).  Each then goes
    alone and finds itself made (the entry names its object id, ``_made_before``): no
    directory is lost, none answers ESTALE."""

    async def body(env: Env) -> None:
        a = env.fss[0]
        real = a.meta.update_now
        lost: list[str] = []

        async def answer_lost(objects: Any, method: str, arg: Any) -> Any:
            got = await real(objects, method, arg)
            if method == "fs.mkdirmany" and not lost:
                lost.append(method)
                raise IdTaken()  # as the same update sent again is answered
            return got

        a.meta.update_now = answer_lost  # type: ignore[method-assign]
        top, subs = await held_tree(a)
        await a.write_back()
        assert lost == ["fs.mkdirmany"]
        assert not parts(a)[1].holds_back()
        for ino in subs.values():
            assert (await a.getattr(ino)).mode & 0o7777 == 0o750
        await seen_by_other(env, top, subs)

    with busy_writer():
        run(tmp_path, body, fs_options=OPTIONS)
