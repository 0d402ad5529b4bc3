"""Version history users can see, on an ``engine = "fab"`` cluster (issue 39): the history
commands of ``t4_history.py`` and the ``.snapshots`` directory of ``t4_snapshot_dirs.py``,
unchanged, against real FaB node processes and real FUSE mounts.  The versions come from
what the FaB nodes executed (``fab/versions.py``, read through ``fs/history/fab.py``), the old
file blocks from PASIS as under Q/U.

``bftfs log`` lists each write with its client and a directory's changes, ``cat --at``
gives each version's bytes (by moment, by version id, also after the file was removed),
``mount --at`` shows a tree as it was and refuses writes, and ``.snapshots/NAME`` in a
live mount shows the tree as it was (``snapshot create``/``list``), ``diff`` lists what
changed between two moments, ``changes`` and ``revert`` find and undo one client's
changes since a moment, keeping another's later work.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import t4_history
import t4_snapshot_dirs

from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]

Setup = tuple[ProcessCluster, Path, Path, str]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A FaB cluster of real node processes and two mounts of it."""
    home = tmp_path_factory.mktemp("fabhist") / "c"
    with ProcessCluster(home, engine="fab", map_size=1 << 30, durable=False) as pc:
        base = tmp_path_factory.mktemp("mnt")
        with (
            Mount(pc.config, base / "a", client="client0") as a,
            Mount(pc.config, base / "b", client="client1") as b,
        ):
            yield pc, a.mountpoint, b.mountpoint, "healthy"


def test_log_and_cat_at_each_version_under_fab(setup: Setup) -> None:
    t4_history.test_each_version_is_listed_and_read_back_byte_for_byte(setup, 200_000)


def test_directory_log_under_fab(setup: Setup) -> None:
    t4_history.test_directory_log_names_what_changed(setup)


def test_a_time_travel_mount_under_fab(setup: Setup, tmp_path: Path) -> None:
    t4_history.test_a_time_travel_mount_shows_the_tree_as_it_was_and_refuses_writes(setup, tmp_path)


def test_a_snapshot_directory_under_fab(setup: Setup) -> None:
    cluster, mine, _, _ = setup
    t4_snapshot_dirs.test_a_snapshot_directory_shows_the_tree_as_it_was((cluster, mine))


def test_diff_under_fab(setup: Setup) -> None:
    t4_history.test_diff_lists_exactly_what_changed(setup)


def test_changes_and_revert_under_fab(setup: Setup) -> None:
    t4_history.test_revert_undoes_one_clients_vandalism_and_keeps_everyone_elses_later_work(setup)
