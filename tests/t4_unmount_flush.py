"""An unmount sends everything closed: nothing written and closed is lost by a clean
unmount, whatever a background send of it met before (close-to-open).

``t4_machines``' node replacement once read a file of the first mount back EMPTY from the
second: the file's create, held back by directory write-back, was sent with its blocks
left for after it (``fs/writeback/creates_sending.py``); the blocks' write failed while
the view moved, was logged ("not sent yet") and never tried again - not at the lease's
end, not at the unmount (``Outbox.send_all`` sent only what write-back still had due).
The file stayed on the servers as its create made it: size 0.

Here the same happens on the in-process cluster (real node services, TCP, LMDB): the
nodes withhold every PASIS request while the held-back create goes, so the blocks' write
fails after a short patience; once they answer again, what the unmount sends
(``FileSystem.write_back``, as ``fs/session.py`` does) must include those blocks, and
another client reads every byte.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import pytest
import trio
from fs_helpers import Env, run
from t3_fs_writeback import OPTIONS, exclusive, new_file

from bftfs.fs.errors import Unavailable
from bftfs.fs.session import write_back_at_end
from bftfs.fsobjects import ROOT
from bftfs.outcome import patience
from bftfs.qu.messages import KIND_REQUEST
from bftfs.rw.batch import KIND_BATCH
from bftfs.rw.messages import KIND_WRITE

#: The failed background send logs its failure (it keeps the writes for later).
NOT_SENT = pytest.mark.expected_logs("bftfs.fs", "WARNING", match=r".*not sent yet")


async def _withheld(ctx: Any, payload: Any, honest: Any) -> Any:
    """A node that never answers a PASIS request (its Q/U requests are answered)."""
    await trio.sleep_forever()


@NOT_SENT
def test_blocks_whose_write_failed_after_their_create_go_at_the_unmount(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        assert a.meta.leases is not None
        data = random.Random(8).randbytes(150_000)  # past the inline limit: blocks
        deferred = a.meta.leases.stats["deferred"]
        ino = await new_file(a, d, b"f8", data)
        assert a.meta.leases.stats["deferred"] == deferred + 1  # its create held back
        for f in env.cluster.faults:
            for kind in (KIND_WRITE, KIND_BATCH):
                f.byzantine(kind, _withheld)
        # The create goes (Q/U), its blocks do not: the send logs it and keeps them (held
        # write-back, due again, tries them once more here and reports that it failed;
        # before, nothing did and this call said nothing).
        with patience(0.5, trio.current_time(), soft=True), contextlib.suppress(Unavailable):
            await a.write_back()
        assert a.open_files()[ino].buffered
        for f in env.cluster.faults:
            f.honest()
        await a.write_back()  # the unmount's send
        assert (await b.lookup(d, b"f8")).ino == ino
        fh = await b.open(ino, 0)
        assert await b.read(fh, 0, len(data) + 10) == data
        await b.release(fh)

    run(tmp_path, body, fs_options=OPTIONS)


#: What the end of a session gives up on is logged as an error, naming the count.
LOST = pytest.mark.expected_logs("bftfs.fs.session", "ERROR", match=r".*are lost")


async def _held_back_tree(fs: Any, directories: int) -> list[int]:
    """``directories`` new directories of two small files each, all held back by directory
    write-back (the mkdirs and the creates: nothing sent yet); their inodes."""
    made = []
    for k in range(directories):
        d = (await fs.mkdir(ROOT, b"d%d" % k, 0o755, 0, 0)).ino
        for j in range(2):
            await new_file(fs, d, b"f%d" % j, b"x" * (k + j + 1))
        made.append(d)
    assert fs.outbox.unsent() >= 3 * directories  # a mkdir and two creates each, at least
    return made


def test_the_end_of_a_session_sends_past_its_stall_limit_while_it_delivers(
    tmp_path: Path,
) -> None:
    """Every request to every node is held 0.25 s (a slow cluster, quorums up): the
    session's end takes longer than its stall limit, since each update delivers something,
    and loses nothing (it stopped after a fixed 60 s, delivering or not, and a copy to a
    slow cluster lost what was still held)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        await exclusive(a, ROOT)
        dirs = await _held_back_tree(a, 12)
        for f in env.cluster.faults:
            f.delay(0.25)
        began = trio.current_time()
        assert await write_back_at_end(a, stalled_after=2.0) == 0
        assert trio.current_time() - began > 2.0  # past the limit: it went on delivering
        assert a.outbox.unsent() == 0
        for f in env.cluster.faults:
            f.clear()
        for k, d in enumerate(dirs):
            assert (await b.lookup(ROOT, b"d%d" % k)).ino == d
            for j in range(2):
                ino = (await b.lookup(d, b"f%d" % j)).ino
                fh = await b.open(ino, 0)
                assert await b.read(fh, 0, 100) == b"x" * (k + j + 1)
                await b.release(fh)

    run(tmp_path, body, fs_options=OPTIONS)


@LOST
@NOT_SENT
def test_the_end_of_a_session_gives_up_after_its_stall_limit_and_says_what_is_lost(
    tmp_path: Path,
) -> None:
    """No node answers a Q/U request (no quorum for any update): the session's end gives
    up after its stall limit, not before, and returns and logs how many changes are lost;
    once the nodes answer again, a later send delivers them all (kept, not dropped, until
    the session is really over)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        await exclusive(a, ROOT)
        dirs = await _held_back_tree(a, 2)
        held = a.outbox.unsent()
        for f in env.cluster.faults:
            f.byzantine(KIND_REQUEST, _withheld)
        began = trio.current_time()
        assert await write_back_at_end(a, stalled_after=1.0) == held
        assert 1.0 <= trio.current_time() - began < 10.0
        for f in env.cluster.faults:
            f.honest()
        await a.write_back()
        assert a.outbox.unsent() == 0
        assert [(await b.lookup(ROOT, b"d%d" % k)).ino for k in range(2)] == dirs

    run(tmp_path, body, fs_options=OPTIONS)
