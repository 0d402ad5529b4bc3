"""The two-mount consistency checker on a FaB cluster with a Byzantine leader (issue 39).

Node processes of an ``engine = "fab"`` cluster, node 0 (the leader of regency 0) run as
``bftfs node --byzantine fab-lying-leader`` (``testing/byzantine/profiles.py``: it
equivocates, claims accepts and REPs it never made and answers clients with made-up
results), two real FUSE mounts: seeded create/write/append/truncate/rename/unlink/read
from both, every read checked against close-to-open semantics
(``bftfs.testing.consistency``), and the liar replaced by a view change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bftfs.local import query_status
from bftfs.testing import consistency
from bftfs.testing.mounts import fuse_available

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]


def test_two_mounts_close_to_open_with_a_lying_fab_leader(tmp_path: Path) -> None:
    liar = {0: ["--byzantine", "fab-lying-leader"]}
    with consistency.mounted(tmp_path, 2, engine="fab", node_args=liar) as (cluster, dirs):
        report = consistency.run(cluster, dirs, seed=1, ops=100, faults=0)
        stats = [s.stats or {} for s in trio.run(query_status, cluster.config)]
    print(report.text())
    assert report.steps == 100 and sum(report.ops.values()) > 60
    fab = [(st.get("progress") or {}).get("fab") or {} for st in stats]
    assert all(f.get("regency", 0) >= 1 for f in fab[1:]), fab  # the liar was replaced
