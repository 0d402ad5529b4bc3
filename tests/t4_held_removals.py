"""Tier 4: held files in a directory a mount keeps creating in and removing from
(PostMark past a third of a lease's term, issue 64) keep their exclusive leases, through a
real mount of node processes.

Every third of a term ``HeldFiles.renew_used`` turned the held files without a held-back
write for a term into shared leases bound to the session (``Leases.to_session``), and the
next removal in their directory found its file shared and asked every such file's
exclusive lease back (``Claims.reclaim``): two grants per file and sweep where
a renewal costs one (PostMark under ``reject-everything``, 18 s: 215 conversions and 215
grants back).  A directory whose files were asked back keeps them exclusive while the
mount creates or removes there.  Counted by the mount's lease statistics (its status file)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import suite_cluster
from t4_leases import _leases

from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

#: The shortest lease term a mount takes: a sweep every 3.3 s.
TERM = 10
#: Files kept in the directory; the work's length in terms.
FILES = 60
WORK_TERMS = 2.5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with suite_cluster(tmp_path_factory.mktemp("cluster") / "c") as pc:
        yield pc


@pytest.mark.slow
def test_a_directory_being_worked_keeps_its_files_exclusive(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """PostMark's loop by hand (seeded): 60 files, then for 2.5 terms read one, replace
    one (remove and create) every 20 ms.  The held files are turned into shared leases and
    asked back once (two per file at most, not at every sweep), and the grants over held leases
    (``renewed``) under 1.6 per live file and sweep (the churn: two, and more)."""
    rng = random.Random(64)
    with Mount(cluster.config, tmp_path / "m", options=f"allow_other,lease={TERM}") as m:
        d = m.mountpoint / "d"
        d.mkdir()
        names = []
        for i in range(FILES):
            (d / f"f{i}").write_bytes(rng.randbytes(rng.randint(500, 4000)))
            names.append(f"f{i}")
        made = FILES
        end = time.monotonic() + WORK_TERMS * TERM
        while time.monotonic() < end:
            (d / rng.choice(names)).read_bytes()
            gone = names.pop(rng.randrange(len(names)))
            (d / gone).unlink()
            names.append(f"f{made}")
            (d / f"f{made}").write_bytes(rng.randbytes(rng.randint(500, 4000)))
            made += 1
            time.sleep(0.02)  # (pace, not synchronisation: PostMark's rate here)
        got = {k: v for k, v in _leases(cluster, m).items() if not isinstance(v, list)}
    # Before: 467 conversions and 380 grants back for 244 files made, 859 "renewed"; now
    # one round of them (the removal that finds a file shared marks the directory), and
    # the live files renewed once a sweep: 543 "renewed" in all.
    assert got.get("to_session", 0) <= 2 * FILES, got
    assert got.get("exclusive", 0) <= 2 * FILES, got
    assert got.get("renewed", 0) <= 1.6 * FILES * WORK_TERMS * 3, got
