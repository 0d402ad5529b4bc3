"""Tier 3: ``rm -rf`` of a directory costs the same per file whatever its size (issue 62),
on the in-process cluster (real node services, TCP, LMDB, keys).

Every call of the mount on a directory first passes the gate (``CallOrder.before_call``),
which sends what the call must follow.  It read every removal held back in the directory
(``PendingUnlinks.before``) at each lookup and each removal there: a removal of the
``k``-th file of ``rm -rf`` looked at the ``k - 1`` held before it, so the whole removal
looked at ``n * (n - 1) / 2`` of them (up to the write-back bound).  The test counts that
work (``PendingUnlinks.examined``), not a time, at two sizes: it must not grow per file.
"""

from __future__ import annotations

from pathlib import Path

from fs_helpers import Env, run
from t3_fs_writeback import OPTIONS, exclusive, new_file

from bftfs.fs.filesystem import FileSystem
from bftfs.fsobjects import ROOT

#: The two directory sizes compared (files); both below the write-back bound.
SIZES = (12, 48)


async def examined_per_removal(fs: FileSystem, d: int, n: int) -> float:
    """Make ``n`` files in ``d``, send them, remove each as ``rm`` does (the kernel's
    lookup, then the unlink): the held-back removals the gate looked at, per file."""
    for k in range(n):
        await new_file(fs, d, b"f%04d" % k, b"x\n")
    await fs.write_back()  # on the servers: each removal is held back, not cancelled
    unlinks = fs.outbox.unlinks
    assert unlinks is not None
    before, held = unlinks.examined, fs.meta.leases.stats["unlinks_deferred"]  # type: ignore[union-attr]
    for k in range(n):
        await fs.lookup(d, b"f%04d" % k)
        await fs.unlink(d, b"f%04d" % k)
    assert fs.meta.leases is not None
    assert fs.meta.leases.stats["unlinks_deferred"] - held == n, "a removal went at once"
    per_file = (unlinks.examined - before) / n
    await fs.write_back()
    assert {name for name, _ in await fs.readdir(d)} <= {b".", b".."} | {
        b"warm%d" % k for k in range(3)
    }
    return per_file


def test_rm_rf_looks_at_a_constant_number_of_held_removals_per_file(tmp_path: Path) -> None:
    """The gate's work per removed file is the same for a directory of 12 files and one of
    48 (before: it grew with the removals held back, 5.5 and 23.5 per file)."""

    async def body(env: Env) -> None:
        fs = env.fs
        per_file = []
        for size in SIZES:
            d = (await fs.mkdir(ROOT, b"d%d" % size, 0o755, 0, 0)).ino
            await exclusive(fs, d)
            per_file.append(await examined_per_removal(fs, d, size))
        assert per_file[1] <= per_file[0] + 0.5, f"held removals looked at per file: {per_file}"
        assert per_file[1] <= 2, per_file

    run(tmp_path, body, clients=1, fs_options=OPTIONS)
