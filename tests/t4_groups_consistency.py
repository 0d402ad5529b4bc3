"""The two-mount consistency checker (``bftfs.testing.consistency``, issue 22) on a cluster
of three groups of six (issue 66, docs/layout.md): 18 real node processes, two real
mounts at the shortest lease term (``lease=10``) and three at the default one, seeded
operations on names in three directories, one on each group (a file lives on its
directory's group, so a rename or unlink between them is a cross-group transaction), a
node killed and restarted per cycle, every read checked against close-to-open semantics
on the model.

Each case starts 18 node processes of its own, about half of its time.  Two mounts at
the default term, seeds 66 and 67 over 150 operations, were cases here too: seed 66 goes
on at ``lease=10`` (the same seed's operations, 200 of them), and three mounts at the
default term do what two do, with a third beside them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bftfs.layout.groups import load_layout
from bftfs.testing import consistency
from bftfs.testing.mounts import fuse_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]


@pytest.mark.parametrize(
    ("mounts", "seed", "ops", "options"),
    [(2, 66, 200, "lease=10"), (3, 5, 200, None)],
)
def test_mounts_on_three_groups_with_a_node_killed_per_cycle(
    tmp_path: Path, mounts: int, seed: int, ops: int, options: str | None
) -> None:
    """Seed 5 on three mounts failed with EINVAL before ``layout/txn.OUT_OF_DATE``."""
    with consistency.mounted(tmp_path, mounts, options=options, groups=3) as (cluster, dirs):
        layout = load_layout(cluster.config)
        assert layout is not None and len(layout.groups) == 3
        names = consistency.spread_names(cluster.config)
        tops = sorted({n.split("/")[0] for n in names})
        placed = {layout.group_of_object(os.stat(dirs[1] / d).st_ino) for d in tops}
        assert placed == {0, 1, 2}  # the names' directories on the three groups
        report = consistency.run(cluster, dirs, seed=seed, ops=ops, faults=3, names=names)
    print(report.text())
    assert report.steps == ops and sum(report.ops.values()) > ops * 2 // 3
    assert report.ops["rename across"] >= 2  # renames between directories of two groups
    assert len(report.schedule) == 2 * 3
